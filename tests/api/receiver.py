"""A real webhook receiver: an aiohttp.web server on 127.0.0.1 that records what it is sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

#: An answer: a status, a status with headers, or HANG (never answer; the gate does not apply).
Answer = int | tuple[int, dict[str, str]] | None
HANG: Answer = None


class Received(NamedTuple):
    at: float  # time.monotonic() when the whole body had arrived
    wall: float  # time.time() then
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = orjson.loads(self.body)["events"]
        return events


class Receiver:
    """Records every request, on any path, and answers each as `answer(index, body)` says.

    While `gate` is clear, answers wait for it (a receiver that is slow, then recovers).
    """

    def __init__(self, answer: Callable[[int, bytes], Answer]) -> None:
        self.answer = answer
        self.url = ""
        self.requests: list[Received] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self._arrived = asyncio.Event()
        self._never = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        index = len(self.requests)
        self.requests.append(Received(time.monotonic(), time.time(), request.path, request.headers, body))
        self._arrived.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            answer = self.answer(index, body)
            if answer is HANG:
                await self._never.wait()
                return web.Response(status=503)  # at the end of the test, if the sender still listens
            await self.gate.wait()
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            return web.Response(status=status, headers=headers)
        finally:
            self.in_flight -= 1

    async def wait_for(self, n: int) -> None:
        """Until *n* requests have arrived."""
        while len(self.requests) < n:
            self._arrived.clear()
            await self._arrived.wait()

    async def wait_for_event(self, content: str) -> None:
        """Until a request carrying a message with this content has arrived."""
        while not any(e["message"]["content"] == content for r in self.requests for e in r.events):
            self._arrived.clear()
            await self._arrived.wait()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event received, in order of arrival, retries included."""
        return [event for request in self.requests for event in request.events]

    def release(self) -> None:
        self.gate.set()
        self._never.set()


@asynccontextmanager
async def receiving(answer: Callable[[int, bytes], Answer] = lambda i, body: 200) -> AsyncIterator[Receiver]:
    """A receiver on a free port, at `receiver.url`; hung answers are released at the end."""
    receiver = Receiver(answer)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        receiver.release()
        await runner.cleanup()
