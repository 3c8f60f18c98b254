"""Real sockets on 127.0.0.1, under both the asyncio and the uvloop event loop, and on uvloop
once more with the pure-Python twins of the sockets' compiled paths (`_send_py.SocketCore`,
`_protocol_py.Connection`)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

import pytest
import uvloop

from sohbet.ws import _protocol_py, _send_py, websocket
from sohbet.ws import server as server_module
from sohbet.ws.config import Limits, WebSocketConfig
from sohbet.ws.server import Handler, Server, WebSocket

T = TypeVar("T")
TEST_TIMEOUT_S = 30.0


def twin_websocket() -> type[WebSocket]:
    """`WebSocket` on the pure-Python twin of its compiled core: the same class body (its
    methods, its slots), another base."""
    slots = set(WebSocket.__slots__)
    body = {k: v for k, v in vars(WebSocket).items() if k not in slots}
    return type("WebSocket", (_send_py.SocketCore, asyncio.Protocol), body)


TWIN_WEBSOCKET = twin_websocket()


def use_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make servers started from here on run the pure-Python twins: their sockets, their
    connections, their fan-out loop (the frame core stays compiled)."""
    monkeypatch.setattr(server_module, "WebSocket", TWIN_WEBSOCKET)
    monkeypatch.setattr(websocket, "sending", _send_py)
    monkeypatch.setattr(websocket, "Connection", _protocol_py.Connection)


@pytest.fixture(params=["asyncio", "uvloop", "uvloop-twin"])
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine to completion on the parametrized loop, within a time limit; with
    "uvloop-twin", servers run the pure-Python twin of the sockets' compiled core."""
    if request.param == "uvloop-twin":
        use_twin(monkeypatch)

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(TEST_TIMEOUT_S):
                return await coro

        if request.param.startswith("uvloop"):
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


class Frame(NamedTuple):
    opcode: int
    fin: bool
    rsv1: bool
    payload: bytes


def client_frame(opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame, built by hand: the tests' framing shares no code with sohbet's."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data)
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little") if n else b""
    return head + key + masked


def take_server_frames(buf: bytearray) -> list[Frame]:
    """Cut the complete (unmasked) server frames off the front of *buf*."""
    frames = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, "a server frame must not be masked"
        n, at = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < at + n:
            break
        frames.append(Frame(b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), bytes(buf[at : at + n])))
        del buf[: at + n]
    return frames


class RawClient:
    """A deliberately literal WebSocket client: it sends exactly the bytes a test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.frames: list[Frame] = []
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
        self.writer.write(client_frame(opcode, payload, fin=fin, rsv1=rsv1))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.writer.write(client_frame(8, code.to_bytes(2, "big") + reason.encode()))

    async def next_frame(self, timeout: float = 5.0) -> Any:
        """The next frame from the server; None when it closed the TCP connection."""
        async with asyncio.timeout(timeout):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.buffer += data
                self.frames.extend(take_server_frames(self.buffer))
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
