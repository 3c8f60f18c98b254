"""The chat server while its Postgres is stopped, then frozen, and restarted under load, on a
private cluster this test starts itself (never the shared server).

What a user relies on: while storage is down a send answers `unavailable` (over the WebSocket
and over HTTP, 503 with `Retry-After`), nothing is stored twice or half, `/readyz` says 503,
what the server holds in memory still works (presence, typing, app events), and when storage is
back the same server serves again by itself; every ack given is a message stored, and a retry of
a refused send with its `client_id` stores it once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import aiohttp
import pytest
import uvloop

from sohbet.store.postgres import PostgresStore
from sohbet.ws.config import Limits

from ..api.test_http_api import BACKEND, Api, api_of, as_user
from ..api.test_metrics import scrape, value
from ..chatkit import WsChat, chat_server, with_chat
from ..pgcluster import PrivatePostgres

TIMEOUT_S = 2.0  # the store's deadline for a database that does not answer


class Load:
    """Alice sends over the WebSocket, bob over HTTP, without pause, until stopped; what each
    was told is kept by client_id."""

    def __init__(self, alice: WsChat, api: Api, conversation: int) -> None:
        self.alice, self.api, self.conversation = alice, api, conversation
        self.acked: dict[str, dict[str, Any]] = {}  # client_id -> the message its ack carried
        self.refused: dict[str, str] = {}  # client_id -> the error code
        self.stop = asyncio.Event()
        self.refusal = asyncio.Event()
        self._ids = itertools.count()

    async def over_websocket(self) -> None:
        while not self.stop.is_set():
            client_id = f"ws-{next(self._ids)}"
            payload = {"conversation_id": self.conversation, "content": client_id, "client_id": client_id}
            reply = await self.alice.request("chat:send", payload)
            if reply["type"] == "chat:ack":
                self.acked[client_id] = reply["payload"]["message"]
            else:
                assert reply["payload"]["code"] == "unavailable", reply
                self.refused[client_id] = "unavailable"
                self.refusal.set()

    async def over_http(self) -> None:
        while not self.stop.is_set():
            client_id = f"http-{next(self._ids)}"
            body = {"content": client_id, "client_id": client_id}
            status, answer, headers = await self.api.call(
                "POST", f"/api/conversations/{self.conversation}/messages", json=body, headers=as_user("bob")
            )
            if status == 201:
                self.acked[client_id] = answer["message"]
            else:
                assert (status, answer["error"]["code"], headers["Retry-After"]) == (503, "unavailable", "1")
                self.refused[client_id] = "unavailable"
                self.refusal.set()
            await asyncio.sleep(0.01)

    async def acks_again(self) -> None:
        """Until a send made from now on is acked."""
        before = len(self.acked)
        while len(self.acked) <= before + 2:
            await asyncio.sleep(0.05)


async def ready(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
        return r.status


async def until_ready_is(port: int, status: int) -> None:
    while await ready(port) != status:  # its answer is cached for a second
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_storage_down_and_back_under_load(
    private_postgres: PrivatePostgres, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        store = PostgresStore(private_postgres.url, timeout_s=TIMEOUT_S)
        await store.migrate()
        try:
            unlimited, frames = with_chat(send_rate_per_s=0), Limits(max_frames_per_10s=0)
            async with (
                chat_server(private_postgres.url, store=store, chat=unlimited, limits=frames) as h,
                api_of(h) as api,
            ):
                created = await api.ok(
                    "POST", "/api/conversations", 201, json={"members": ["alice", "bob", "carol"]}, headers=BACKEND
                )
                cid = created["conversation"]["id"]
                alice, bob = await h.connect("alice"), await h.connect("bob")
                load = Load(alice, api, cid)
                senders = [asyncio.ensure_future(load.over_websocket()), asyncio.ensure_future(load.over_http())]
                while len(load.acked) < 50:
                    await asyncio.sleep(0.01)
                assert await ready(h.server.port) == 200

                if outage == "stopped":
                    await asyncio.to_thread(private_postgres.stop, "immediate")
                else:
                    await asyncio.to_thread(private_postgres.pause)
                async with asyncio.timeout(4 * TIMEOUT_S + 10):
                    await load.refusal.wait()  # both paths answer unavailable, nothing hangs
                    while set(load.refused) <= {k for k in load.refused if k.startswith("ws-")}:
                        await asyncio.sleep(0.05)  # an HTTP refusal too
                    await until_ready_is(h.server.port, 503)
                # What is in memory still works: presence, typing, app events.
                presence = await bob.ok("presence:query", {"user_ids": ["alice"]})
                assert presence == {"online": ["alice"]}
                await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": cid}})
                assert (await bob.expect("chat:typing"))["payload"]["user_id"] == "alice"
                event = {"user_ids": ["bob"], "type": "app:still_here", "payload": {}}
                assert await api.ok("POST", "/api/publish", json=event, headers=BACKEND) == {"delivered_connections": 1}
                assert value(await scrape(h), "sohbet_storage_up") == 0

                if outage == "stopped":
                    await asyncio.to_thread(private_postgres.start)
                else:
                    await asyncio.to_thread(private_postgres.resume)
                async with asyncio.timeout(4 * TIMEOUT_S + 10):
                    await load.acks_again()  # by itself: the server was not restarted
                    await until_ready_is(h.server.port, 200)
                load.stop.set()
                await asyncio.gather(*senders)
                assert value(await scrape(h), "sohbet_storage_up") == 1

                # Every refused send, retried with its client_id, is stored once (it may have been
                # stored already when the answer of its commit was lost).
                for client_id in load.refused:
                    body = {"content": client_id, "client_id": client_id}
                    status, answer, _ = await api.call(
                        "POST", f"/api/conversations/{cid}/messages", json={**body, "sender_id": "alice"}
                        if client_id.startswith("ws-") else body,
                        headers=BACKEND if client_id.startswith("ws-") else as_user("bob"),
                    )  # fmt: skip
                    assert status in (200, 201), answer
                    load.acked[client_id] = answer["message"]

            stored: dict[str, tuple[int, int]] = {}
            before = None
            while True:
                page, has_more = await store.history(cid, before, 100)
                stored.update({m.client_id: (m.id, m.seq) for m in page})
                if not has_more:
                    break
                before = page[0].seq
        finally:
            await store.close()
        for client_id, message in load.acked.items():  # every ack is a message stored as it said
            assert stored[client_id] == (message["id"], message["seq"]), client_id
        assert sorted(seq for _, seq in stored.values()) == list(range(1, len(stored) + 1))  # no gap, no twin
        assert set(stored) == set(load.acked)  # nothing stored that nobody was told of, after the retries
        assert load.refused, "the outage refused nothing: it tested nothing"

    uvloop.run(asyncio.wait_for(main(), 120))
    said = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("storage is down") for m in said) == 1  # once, however many sends failed
    assert "storage is back" in said
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("sohbet")]
