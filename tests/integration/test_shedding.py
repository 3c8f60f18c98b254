"""Handshakes are shed when the server is over capacity (docs/operations.md, "Shedding"): with
`max_admitting` connections still being admitted (their storage reads held open by a gate, so
the race is made, not hoped for), the next upgrade gets 503 with `Retry-After` and a JSON error
body; once the admissions finish, upgrades are accepted again. The `max_connections` 503 carries
`Retry-After` too, and sohbet's own client waits it out before it tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from sohbet.chat.ids import ConversationId, UserId
from sohbet.client import ChatClient, HandshakeRefused
from sohbet.errors import StoreUnavailable
from sohbet.store import MessageStore
from sohbet.ws.config import Limits
from sohbet.ws.http_phase import BUSY_RETRY_S, BUSY_RETRY_SPREAD_S

from ..chatkit import chat_server, open_store, token, with_chat
from .conftest import http

Run = Callable[[Coroutine[Any, Any, Any]], Any]
#: What a refusal for capacity may say: `BUSY_RETRY_S` plus up to `BUSY_RETRY_SPREAD_S`.
RETRY_AFTERS = {str(s) for s in range(BUSY_RETRY_S, BUSY_RETRY_S + BUSY_RETRY_SPREAD_S + 1)}


def upgrade(user: str) -> bytes:
    return (
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token(user)}\r\n\r\n"
    ).encode()


class GatedAdmissions:
    """A real store whose `conversation_ids` (the read a new user's admission waits for) waits
    for a gate: admissions held open for as long as a test needs."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.waiting = 0
        self.fail = False  # the reads let through the gate fail, as a storage outage would

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def conversation_ids(self, user: UserId) -> list[ConversationId]:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.fail:
            raise StoreUnavailable("the test's storage is down")
        return await self._store.conversation_ids(user)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_the_upgrade_past_max_admitting_is_shed_with_503_and_retry_after(run: Run, database_url: str) -> None:
    async def main() -> None:
        store = GatedAdmissions(await open_store(database_url))
        chat = with_chat(max_admitting=3)
        async with chat_server(database_url, chat=chat, store=store) as h:  # type: ignore[arg-type]  # a store by delegation
            held = [await ChatClient.connect(h.url, token(f"u{i}")) for i in range(3)]  # each says hello
            await until(lambda: store.waiting == 3)
            assert h.chat.admitting == 3
            status, headers, body = await http(h.server.port, upgrade("u3"))
            assert status == 503, body
            assert headers["retry-after"] in RETRY_AFTERS
            assert headers["content-type"] == "application/json"
            error = orjson.loads(body)["error"]
            assert error["code"] == "unavailable"
            assert "3 users' connections are being admitted" in error["message"]
            # Shed after the token is checked, as the protocol orders them: a bad one is told 401,
            # not to come back later.
            status, headers, _ = await http(h.server.port, upgrade("u4").replace(b"Bearer ", b"Bearer x"))
            assert status == 401 and "retry-after" not in headers
            assert h.server.stats.handshakes.get("503") == 1
            # The earlier ones are admitted, and are served once their reads finish.
            store.gate.set()
            await until(lambda: h.chat.admitting == 0)
            created = await held[0].request("conversation:create", {"members": ["u1", "u2"]})
            assert created["conversation"]["id"] >= 1
            late = await ChatClient.connect(h.url, token("u3"))  # room again: accepted
            assert late.hello["user_id"] == "u3"
            assert h.server.stats.handshakes["accepted"] == 4
            for client in [*held, late]:
                await client.close()
            await store.close()

    run(main())


def test_a_user_already_loaded_is_not_counted_and_zero_means_unlimited(run: Run, database_url: str) -> None:
    async def main() -> None:
        store = GatedAdmissions(await open_store(database_url))
        async with chat_server(database_url, chat=with_chat(max_admitting=0), store=store) as h:  # type: ignore[arg-type]  # a store by delegation
            clients = [await ChatClient.connect(h.url, token(f"v{i}")) for i in range(5)]
            await until(lambda: store.waiting == 5)
            assert h.chat.admitting == 5 and not h.chat.is_admitting_full  # 0: no limit
            store.gate.set()
            await until(lambda: h.chat.admitting == 0)
            again = await ChatClient.connect(h.url, token("v0"))  # v0's conversations are known now
            assert h.chat.admitting == 0
            for client in [*clients, again]:
                await client.close()
            await store.close()

    run(main())


def test_the_client_waits_out_retry_after_and_then_connects(run: Run, database_url: str) -> None:
    async def main() -> None:
        store = GatedAdmissions(await open_store(database_url))
        async with chat_server(database_url, chat=with_chat(max_admitting=1), store=store) as h:  # type: ignore[arg-type]  # a store by delegation
            first = await ChatClient.connect(h.url, token("a"))
            await until(lambda: store.waiting == 1)
            with pytest.raises(HandshakeRefused, match=r"handshake refused: HTTP/1\.1 503") as refused:
                await ChatClient.connect(h.url, token("b"))  # no retry: the refusal is raised
            assert refused.value.status == 503 and refused.value.is_retryable
            assert refused.value.retry_after_s in {float(s) for s in RETRY_AFTERS}
            # A wait longer than the timeout allows is not started: the refusal is raised.
            with pytest.raises(HandshakeRefused):
                await ChatClient.connect(h.url, token("b"), retry=True, timeout=0.5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            patient = asyncio.ensure_future(ChatClient.connect(h.url, token("b"), retry=True, timeout=20.0))
            await until(lambda: h.server.stats.handshakes.get("503", 0) >= 3)  # b was refused again
            store.gate.set()  # a's admission ends: room for b, once it comes back
            second = await patient
            assert second.refusals >= 1
            assert loop.time() - started >= BUSY_RETRY_S  # it waited at least what it was told
            assert second.waited_s >= BUSY_RETRY_S
            # reconnect() honours it as well: held full again, by c's admission.
            await until(lambda: h.chat.admitting == 0)  # b's own admission is over
            store.gate.clear()
            await second.close()
            blocker = await ChatClient.connect(h.url, token("c"))
            await until(lambda: store.waiting == 1)
            reconnecting = asyncio.ensure_future(second.reconnect(timeout=20.0))
            await until(lambda: h.server.stats.handshakes.get("503", 0) >= 4)
            store.gate.set()
            done = await reconnecting
            assert done["complete"] and second.refusals >= 2
            for client in (first, second, blocker):
                await client.close()
            await store.close()

    run(main())


def test_the_max_connections_503_carries_retry_after(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, limits=Limits(max_connections=1)) as h:
            client = await ChatClient.connect(h.url, token("a"))
            status, headers, body = await http(h.server.port, upgrade("b"))
            assert status == 503, body
            assert headers["retry-after"] in RETRY_AFTERS
            assert orjson.loads(body)["error"]["code"] == "unavailable"
            assert h.server.stats.handshakes["503"] == 1
            await client.close()

    run(main())


def test_the_client_does_not_retry_a_refusal_for_good(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            with pytest.raises(HandshakeRefused) as refused:
                await ChatClient.connect(h.url, "not-a-jwt", retry=True, timeout=20.0)
            assert (refused.value.status, refused.value.retry_after_s, refused.value.is_retryable) == (401, None, False)

    run(main())


def test_admissions_are_uncounted_when_storage_fails_and_when_the_service_stops(run: Run, database_url: str) -> None:
    """However an admission ends (its storage read failing, or the service stopping while it is
    held), it stops counting: a count that only went up would shed every later upgrade."""

    async def main() -> None:
        store = GatedAdmissions(await open_store(database_url))
        async with chat_server(database_url, chat=with_chat(max_admitting=2), store=store) as h:  # type: ignore[arg-type]  # a store by delegation
            failing = [await ChatClient.connect(h.url, token(f"f{i}")) for i in range(2)]
            await until(lambda: store.waiting == 2)
            assert h.chat.is_admitting_full
            store.fail = True  # the held reads fail when let go
            store.gate.set()
            await until(lambda: h.chat.admitting == 0)
            store.fail = False
            store.gate.clear()
            held = [await ChatClient.connect(h.url, token(f"s{i}")) for i in range(2)]
            await until(lambda: store.waiting == 2 and h.chat.admitting == 2)
            for task in list(h.chat.ctx.tasks):  # as `ChatService.stop` does, before they ran
                task.cancel()
            await until(lambda: h.chat.admitting == 0)
            for client in [*failing, *held]:
                await client.close()
            store.gate.set()
            await store.close()

    run(main())


def test_one_user_opening_and_closing_connections_holds_one_admission(run: Run, database_url: str) -> None:
    """A user's admissions share one storage read and outlive the connections closed meanwhile:
    churning connections during a slow read must not fill the limit and lock everyone else out."""

    async def main() -> None:
        store = GatedAdmissions(await open_store(database_url))
        async with chat_server(database_url, chat=with_chat(max_admitting=2), store=store) as h:  # type: ignore[arg-type]  # a store by delegation
            for _ in range(5):
                churner = await ChatClient.connect(h.url, token("eve"))
                await churner.close()
            await until(lambda: store.waiting >= 1)
            assert h.chat.admitting == 1 and not h.chat.is_admitting_full
            other = await ChatClient.connect(h.url, token("frank"))  # room for someone else
            assert other.hello["user_id"] == "frank"
            assert h.chat.admitting == 2
            store.gate.set()
            await until(lambda: h.chat.admitting == 0)
            await other.close()
            await store.close()

    run(main())
