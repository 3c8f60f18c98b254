"""The chat service without sockets: fake sockets that record what they were sent, a clock the
test moves, and a real SQLite store in a temporary directory.

These fakes stand in only for the transport, which the real-socket tests in tests/integration
cover; every rule below the transport (validation, membership, rate buckets, idempotency,
throttles, grace periods) runs for real, against a real database.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from sohbet.auth import Identity, Verifier
from sohbet.chat.ids import UserId
from sohbet.config import AuthConfig, ChatConfig
from sohbet.service import ChatService, Session, Socket
from sohbet.store.sqlite import SqliteStore

AUTH = AuthConfig(secret="a-secret-for-the-service-tests-of-32+bytes", leeway_s=0.0)
START = 1_000.0  # where the fake monotonic clock starts


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.monotonic = START
        self.epoch = time.time()

    def now(self) -> float:
        return self.monotonic

    def wall(self) -> float:
        return self.epoch

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.epoch += seconds


class FakeSocket:
    """Records every message it is sent, and its close; a queue lets a test await replies."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self._id = next(self._ids)
        self.sent: list[dict[str, Any]] = []
        self.closed_with: tuple[int, str] | None = None
        self._arrived = asyncio.Event()

    @property
    def id(self) -> int:
        return self._id

    def send_text(self, data: str | bytes) -> None:
        self.sent.append(orjson.loads(data))
        self._arrived.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)

    async def drained(self) -> None:
        return None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]

    async def wait_for(
        self, kind: str | None = None, *, ref: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first message (of *kind*, with *ref*) sent so far or from now on."""
        async with asyncio.timeout(timeout):
            while True:
                for m in self.sent:
                    if (kind is None or m["type"] == kind) and (ref is None or m.get("ref") == ref):
                        return m
                self._arrived.clear()
                await self._arrived.wait()


class FakeOutbox:
    """Delivers to fake sockets one by one (the real one frames once for all)."""

    def deliver(self, sockets: Iterable[Socket], data: bytes, *, skip: Socket | None = None) -> int:
        count = 0
        for socket in sockets:
            if socket is not skip:
                socket.send_text(data)
                count += 1
        return count


class Device:
    """One fake connection of one user, opened on the service."""

    _refs = itertools.count(1)

    def __init__(self, service: ChatService, user: str, exp: float) -> None:
        self.service = service
        self.user = user
        self.socket = FakeSocket()
        session = service.open(self.socket, Identity(UserId(user), exp))
        self.session: Session | None = session

    def send(self, kind: str, payload: dict[str, Any] | None = None, *, ref: str | None = None) -> str:
        """Hand one envelope to the service, as the server does for a text frame; return its ref."""
        ref = ref or f"r{next(self._refs)}"
        assert self.session is not None, "refused at open"
        self.service.received(self.session, orjson.dumps({"type": kind, "payload": payload or {}, "ref": ref}))
        return ref

    async def request(self, kind: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and await its reply (its result, its ack or its error)."""
        return await self.socket.wait_for(ref=self.send(kind, payload))

    async def ok(self, kind: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.request(kind, payload)
        assert reply["type"] != "error", reply
        return dict(reply["payload"])

    def disconnect(self) -> None:
        assert self.session is not None
        self.service.closed(self.session)


class World:
    """A started chat service on a real SQLite file, and the fake clock it reads."""

    def __init__(self, service: ChatService, clock: FakeClock) -> None:
        self.service = service
        self.clock = clock

    def connect(self, user: str, *, ttl_s: float = 3600.0) -> Device:
        return Device(self.service, user, self.clock.wall() + ttl_s)

    async def settle(self) -> None:
        """Let every task the service started run to completion (contact loads, reads)."""
        for _ in range(100):
            pending = [t for t in self.service.ctx.tasks if not t.done()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=5.0)
        raise AssertionError("service tasks did not finish")

    async def conversation(self, creator: Device, *others: str, title: str | None = None) -> int:
        payload: dict[str, Any] = {"members": list(others)}
        if title is not None:
            payload["title"] = title
        created = await creator.ok("conversation:create", payload)
        await self.settle()
        return int(created["conversation"]["id"])


@asynccontextmanager
async def world(
    tmp_path: Path,
    *,
    leeway_s: float = 0.0,
    store: SqliteStore | None = None,
    max_batch: int = 512,
    max_queue: int = 20_000,
    depth: int = 1,
    gather_s: float = 0.0,
    notifier: Any = None,
    broker: Any = None,
    **changes: Any,
) -> AsyncIterator[World]:
    """A chat service with *changes* to the default `ChatConfig`, on *store* or a new SQLite file."""
    clock = FakeClock()
    store = store or SqliteStore(str(tmp_path / "service.db"))
    await store.migrate()
    service = ChatService(
        store,
        ChatConfig(**changes),
        Verifier(AUTH),
        FakeOutbox(),
        max_message_bytes=65536,
        leeway_s=leeway_s,
        max_batch=max_batch,
        max_queue=max_queue,
        depth=depth,
        gather_s=gather_s,
        clock=clock,
        notifier=notifier,
        broker=broker,
    )
    await service.start()
    try:
        yield World(service, clock)
    finally:
        await service.stop()
        await store.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30.0))
