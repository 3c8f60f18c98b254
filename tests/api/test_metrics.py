"""`GET /metrics` over real sockets: the counters move as traffic flows, the label sets stay
bounded whatever peers send, and the endpoint can sit behind a token.

Scrapes are parsed with prometheus-client's own parser, so what is checked is what Prometheus
would read.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import websockets
from prometheus_client.parser import text_string_to_metric_families

from sohbet.app.compose import App
from sohbet.config import WebhookConfig
from sohbet.ws.config import Limits

from ..chatkit import API_KEY, Harness, chat_server, token, with_chat
from ..integration.test_guards import Stalled
from .test_http_api import BACKEND, api_of

Run = Callable[[Coroutine[Any, Any, Any]], Any]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(h: Harness, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of one scrape, by name and sorted labels."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{h.server.port}/metrics", headers=headers or {}) as r,
    ):
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = await r.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_the_counters_move_as_traffic_flows(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            before = await scrape(h)
            assert value(before, "sohbet_connections") == 0
            alice, bob = await h.connect("alice"), await h.connect("bob")
            cid = await alice.create("bob", "carol")
            for n in range(3):
                await alice.send(cid, f"m{n}")
            for _ in range(3):
                await bob.expect("chat:message")
            await alice.send_raw({"type": "no:such", "ref": "u"})
            await alice.expect("error")
            reply = await alice.request("chat:history", {"conversation_id": 987654})
            assert reply["payload"]["code"] == "forbidden"
            during = await scrape(h)
            assert value(during, "sohbet_connections") == 2
            assert value(during, "sohbet_users_online") == 2
            assert moved(before, during, "sohbet_handshakes_total", result="accepted") == 2
            assert moved(before, during, "sohbet_messages_received_total", type="chat:send") == 3
            assert moved(before, during, "sohbet_messages_received_total", type="unknown") == 1
            assert moved(before, during, "sohbet_messages_acked_total") == 3
            # created to bob, and each message to bob: alice's own connection sent them
            assert moved(before, during, "sohbet_deliveries_total") == 4
            assert moved(before, during, "sohbet_errors_total", code="bad_request") == 1
            assert moved(before, during, "sohbet_errors_total", code="forbidden") == 1
            assert moved(before, during, "sohbet_store_batch_size_count") >= 1
            assert moved(before, during, "sohbet_store_batch_size_sum") == 3
            assert moved(before, during, "sohbet_ack_latency_seconds_count") == 3
            assert moved(before, during, "sohbet_ack_latency_seconds_sum") > 0
            assert moved(before, during, "sohbet_store_commit_seconds_sum") > 0
            # A byte count that moves by at least what crossed: three sends of ~90 bytes each.
            assert moved(before, during, "sohbet_bytes_received_total") > 3 * 80
            assert moved(before, during, "sohbet_bytes_sent_total") > 3 * 2 * 150  # acks and deliveries
            everyone = {"type": "app:all", "payload": {}}
            before_broadcast = value(await scrape(h), "sohbet_deliveries_total")
            assert await api.ok("POST", "/api/broadcast", json=everyone, headers=BACKEND) == {
                "delivered_connections": 2
            }
            assert value(await scrape(h), "sohbet_deliveries_total") - before_broadcast == 2  # one per connection
            await api.call("GET", "/api/presence", headers=BACKEND)
            await api.call("GET", "/api/presence")
            await api.call("GET", "/no/such/path/7")
            await api.call("GET", "/no/such/path/8")
            await alice.ws.close()
            async with asyncio.timeout(5):
                while value(after := await scrape(h), "sohbet_connections") != 1:
                    await asyncio.sleep(0.01)
            assert moved(before, after, "sohbet_closes_total", code="1000") == 1
            assert moved(before, after, "sohbet_http_requests_total", route="/api/presence", status="200") == 1
            assert moved(before, after, "sohbet_http_requests_total", route="/api/presence", status="401") == 1
            # Every path nobody serves counts under one label: clients cannot grow the label set.
            assert moved(before, after, "sohbet_http_requests_total", route="unmatched", status="404") == 2
            assert value(after, "process_resident_memory_bytes") > 0  # the process collector is there

    run(main())


def test_refused_upgrades_and_odd_close_codes_are_counted_in_bounded_labels(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h:
            url = f"ws://127.0.0.1:{h.server.port}/ws"
            before = await scrape(h)
            for _ in range(2):
                try:
                    async with websockets.connect(url, additional_headers={"Authorization": "Bearer nope"}):
                        pass
                except websockets.InvalidStatus as exc:
                    assert exc.response.status_code == 401
            for code in (4321, 4322, 3999):
                async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token('u')}"}) as ws:
                    await ws.recv()  # hello
                    await ws.close(code)
            async with asyncio.timeout(5):
                while (
                    value(after := await scrape(h), "sohbet_closes_total", code="other")
                    - value(before, "sohbet_closes_total", code="other")
                    < 3
                ):
                    await asyncio.sleep(0.01)
            assert moved(before, after, "sohbet_handshakes_total", result="401") == 2
            codes = {dict(labels)["code"] for name, labels in after if name == "sohbet_closes_total"}
            assert not codes & {"4321", "4322", "3999"}

    run(main())


def test_a_slow_consumer_is_counted(run: Run, tmp_path: Any) -> None:
    limits = Limits(max_buffered_bytes=128 * 1024, slow_consumer_s=60.0, max_frames_per_10s=0)

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h, api_of(h) as api:
            before = await scrape(h)
            stalled = await Stalled.connect(h.server.port, "bob")
            try:
                event = {"user_ids": ["bob"], "type": "app:blob", "payload": {"x": "y" * 60_000}}
                for _ in range(200):  # 12 MB: more than both kernels' buffers and the limit
                    await api.ok("POST", "/api/publish", json=event, headers=BACKEND)
                frames = await stalled.read_until_close()
            finally:
                stalled.close()
            assert frames and int.from_bytes(frames[-1].payload[:2], "big") == 4008
            after = await scrape(h)
            assert moved(before, after, "sohbet_slow_consumers_total") == 1
            assert moved(before, after, "sohbet_closes_total", code="4008") == 1

    run(main())


def test_the_endpoint_behind_a_token(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", metrics_token="m" * 24) as h:
            app = h.app
            assert isinstance(app, App)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{h.server.port}/metrics"
                for headers in ({}, {"Authorization": "Bearer " + "m" * 23}, {"Authorization": f"Bearer {API_KEY}"}):
                    async with http.get(url, headers=headers) as r:
                        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
                        assert (await r.json())["error"]["code"] == "unauthorized"
            samples = await scrape(h, {"Authorization": "Bearer " + "m" * 24})
            assert value(samples, "sohbet_http_requests_total", route="/metrics", status="401") == 3

    run(main())


def test_a_send_heavy_minute_does_not_grow_the_label_sets(run: Run, tmp_path: Any) -> None:
    """Whatever types, paths and codes clients use, the number of series stays where it was."""

    async def main() -> None:
        limits = Limits(max_frames_per_10s=0)
        async with chat_server(
            f"sqlite:///{tmp_path}/db.sqlite", chat=with_chat(max_errors_per_10s=1000), limits=limits
        ) as h:
            alice = await h.connect("alice")
            await alice.send_raw({"type": "warm:up", "ref": "w"})
            await alice.expect("error")
            await scrape(h)  # its own request is counted after it is answered: a series of its own
            series = len(await scrape(h))
            for n in range(200):
                await alice.send_raw({"type": f"made:up:{n}", "ref": f"r{n}"})
            for n in range(200):
                await alice.expect("error", ref=f"r{n}")
            async with aiohttp.ClientSession() as http:
                for n in range(50):
                    async with http.get(f"http://127.0.0.1:{h.server.port}/x/{n}") as r:
                        assert r.status == 404
            after = await scrape(h)
            assert len(after) <= series + 1  # at most the 404s' one new series
            assert value(after, "sohbet_messages_received_total", type="unknown") == 201

    run(main())


def test_every_metric_the_dashboard_plots_is_exported(run: Run, tmp_path: Any) -> None:
    dashboard = json.loads((Path(__file__).parent.parent.parent / "docs" / "grafana-dashboard.json").read_text())
    plotted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:sohbet|process)_[a-z_]+)", target["expr"])
    }

    async def main() -> None:
        webhook = WebhookConfig(url="http://127.0.0.1:9/hook", secret="w" * 32)
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", webhook=webhook) as h:
            client = await h.connect("alice")  # a handshake and a close: their families get samples
            await client.ws.close()
            async with asyncio.timeout(5):
                while h.server.connections:
                    await asyncio.sleep(0.01)
            await scrape(h)  # an HTTP request, counted
            exported = {name for name, _ in await scrape(h)}
        missing = sorted(name for name in plotted if name not in exported)
        assert not missing, missing
        assert len(plotted) > 15

    run(main())


def test_a_scrape_is_served_again_for_a_second(run: Run, tmp_path: Any) -> None:
    """One rendering costs about a millisecond of the loop: an open endpoint hammered by anyone
    costs at most that per second."""

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", metrics_reuse_s=3600.0) as h:
            first = await scrape(h)
            await h.connect("alice")
            again = await scrape(h)
            assert again == first  # the same rendering: alice's connection is not in it yet
            assert value(again, "sohbet_connections") == 0

    run(main())
