"""The webhook of a running server, against a real local receiver: messages for members with no
open connection arrive signed and batched, online members are never in them, a receiver that
fails for a while still gets everything, and the counts show in /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sohbet.api.webhook import verify_signature
from sohbet.chat.ids import UserId
from sohbet.config import WebhookConfig

from ..chatkit import chat_server
from .receiver import receiving
from .test_http_api import BACKEND, api_of, group
from .test_metrics import scrape, value

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SECRET = "the-webhook-secret-of-the-server-tests!!"


def hook(url: str, **changes: Any) -> WebhookConfig:
    settings: dict[str, Any] = {"url": url, "secret": SECRET, "batch_wait_s": 0.05, "backoff_first_s": 0.01}
    return WebhookConfig(**{**settings, **changes})


def test_messages_for_unconnected_members_reach_the_receiver_signed(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with (
            receiving() as receiver,
            chat_server(database_url, webhook=hook(receiver.url)) as h,
            api_of(h) as api,
        ):
            cid = await group(api, "alice", "bob", "carol", "dave")
            alice, bob = await h.connect("alice"), await h.connect("bob")
            sent = await alice.send(cid, "are you there?")
            await receiver.wait_for_event("are you there?")
            body = {"sender_id": "bob", "content": "from the backend"}
            by_key = await api.ok("POST", f"/api/conversations/{cid}/messages", 201, json=body, headers=BACKEND)
            await receiver.wait_for_event("from the backend")
            events = receiver.events
            assert [e["type"] for e in events] == ["chat:message", "chat:message"]
            assert events[0]["message"] == sent and sorted(events[0]["recipients"]) == ["carol", "dave"]
            assert events[1]["message"] == by_key["message"]
            assert sorted(events[1]["recipients"]) == ["carol", "dave"]  # alice and bob are connected
            other = "another-secret-of-thirty-two-bytes!!"
            for request in receiver.requests:
                signed = request.headers["Sohbet-Signature"]
                assert verify_signature(SECRET, signed, request.body, time.time())
                assert not verify_signature(other, signed, request.body, time.time())
                assert request.headers["Content-Type"] == "application/json"
            # With everyone connected nobody is told: the next event the receiver gets is the
            # marker sent once dave is gone again.
            carol = await h.connect("carol")
            dave = await h.connect("dave")
            await bob.send(cid, "all here")
            await dave.ws.close()
            async with asyncio.timeout(5):
                while h.chat.hub.connections(UserId("dave")):
                    await asyncio.sleep(0.01)
            await bob.send(cid, "marker")
            await receiver.wait_for_event("marker")
            assert [(e["message"]["content"], e["recipients"]) for e in receiver.events[2:]] == [("marker", ["dave"])]
            # The sender is never told of their own message, connected or not: dave, offline,
            # sends through the backend, and only carol (gone too) is told.
            await carol.ws.close()
            async with asyncio.timeout(5):
                while h.chat.hub.connections(UserId("carol")):
                    await asyncio.sleep(0.01)
            body = {"sender_id": "dave", "content": "from dave, offline"}
            await api.ok("POST", f"/api/conversations/{cid}/messages", 201, json=body, headers=BACKEND)
            await receiver.wait_for_event("from dave, offline")
            assert receiver.events[-1]["recipients"] == ["carol"]
            samples = await scrape(h)
            assert value(samples, "sohbet_webhook_events_total", result="delivered") == 4
            assert value(samples, "sohbet_webhook_batches_total") == 4

    run(main())


def test_a_receiver_that_fails_for_a_while_gets_every_event_once_it_recovers(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        failures = 3

        def answer(index: int, body: bytes) -> int:
            return 500 if index < failures else 200

        async with (
            receiving(answer) as receiver,
            chat_server(f"sqlite:///{tmp_path}/db.sqlite", webhook=hook(receiver.url, batch_max=5)) as h,
            api_of(h) as api,
        ):
            cid = await group(api, "alice", "bob", "carol")
            alice = await h.connect("alice")
            contents = [f"m{n}" for n in range(12)]
            for content in contents:
                await alice.send(cid, content)
            async with asyncio.timeout(10):
                await receiver.wait_for(failures + 1)
                while not any(e["message"]["content"] == contents[-1] for e in receiver.events[failures:]):
                    await receiver.wait_for(len(receiver.requests) + 1)
            delivered = [e["message"]["content"] for r in receiver.requests[failures:] for e in r.events]
            assert delivered == contents  # in order, each once after the failures
            assert all(len(r.events) <= 5 for r in receiver.requests)
            samples = await scrape(h)
            assert value(samples, "sohbet_webhook_retries_total") == failures
            assert value(samples, "sohbet_webhook_events_total", result="failed") == 0

    run(main())
