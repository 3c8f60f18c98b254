"""Real sockets on 127.0.0.1, under both the asyncio and the uvloop event loop."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import uvloop

from sohbet.config import Limits, WebSocketConfig
from sohbet.frames import FrameParser, build_close, build_frame
from sohbet.server import Handler, Server, WebSocket

T = TypeVar("T")
TEST_TIMEOUT_S = 30.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine to completion on the parametrized loop, within a time limit."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(TEST_TIMEOUT_S):
                return await coro

        if request.param == "uvloop":
            return uvloop.run(bounded())
        return asyncio.run(bounded())

    return runner


@asynccontextmanager
async def running(
    handler: Handler | None = None, *, limits: Limits | None = None, websocket: WebSocketConfig | None = None
) -> AsyncIterator[Server]:
    """A server on a free port; on exit it shuts down and must have let go of every socket."""
    server = Server(handler or Handler(), limits=limits, websocket=websocket)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(timeout_s=2.0)
        assert server.connections == {}
        assert server._sockets == {}


class RawClient:
    """A deliberately literal WebSocket client: it sends exactly the bytes a test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser(client=True, max_frame_bytes=1 << 26, allow_rsv1=True)
        self.frames: list[Any] = []
        self.response = b""

    @classmethod
    async def connect(cls, port: int, *headers: str, path: str = "/", upgrade: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if upgrade:
            await client.handshake(*headers, path=path)
        return client

    async def handshake(self, *headers: str, path: str = "/", extra: bytes = b"") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *headers,
        ]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + extra)
        self.response = await self.reader.readuntil(b"\r\n\r\n")
        assert self.response.startswith(b"HTTP/1.1 101 "), self.response
        return self.response

    def send(self, opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv1: bool = False) -> None:
        self.writer.write(build_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=os.urandom(4)))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.writer.write(build_close(code, reason, mask=os.urandom(4)))

    async def next_frame(self, timeout: float = 5.0) -> Any:
        """The next frame from the server; None when it closed the TCP connection."""
        async with asyncio.timeout(timeout):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    async def expect_close(self, code: int, timeout: float = 5.0) -> str:
        """Read until the server's close frame; check its code; return its reason."""
        while True:
            frame = await self.next_frame(timeout)
            assert frame is not None, "TCP closed without a close frame"
            if frame.opcode == 8:
                got = int.from_bytes(frame.payload[:2], "big") if frame.payload else 1005
                assert got == code, (got, frame.payload)
                return frame.payload[2:].decode()

    async def expect_eof(self, timeout: float = 5.0) -> None:
        """The server closes the TCP connection (after any frames, which are discarded)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass

    def abort(self) -> None:
        self.writer.transport.abort()


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw HTTP request; return status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict((n.strip().lower(), v.strip()) for n, v in (h.split(":", 1) for h in header_lines))
    return int(status_line.split()[1]), headers, body


class Recorder(Handler):
    """A handler that records what happens, as queues a test can await."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.opened: asyncio.Queue[WebSocket] = asyncio.Queue()
        self.messages: asyncio.Queue[tuple[WebSocket, bytes, bool]] = asyncio.Queue()
        self.closed: asyncio.Queue[tuple[int, int, str]] = asyncio.Queue()

    def on_open(self, ws: WebSocket) -> None:
        self.opened.put_nowait(ws)

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
        self.messages.put_nowait((ws, data, is_text))
        if self.echo:
            (ws.send_text if is_text else ws.send_binary)(data)

    def on_close(self, ws: WebSocket, code: int, reason: str) -> None:
        self.closed.put_nowait((ws.id, code, reason))


async def get(queue: asyncio.Queue[T], timeout: float = 5.0) -> T:
    return await asyncio.wait_for(queue.get(), timeout)
