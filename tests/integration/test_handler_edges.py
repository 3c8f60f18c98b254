"""An application handler that fails, sends late or waits for a slow reader, over real sockets.

The server must outlive every handler bug (a clear answer to the peer, one log line with the
traceback, nothing else affected) and drop sends once a connection is no longer open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from sohbet.ws import http11
from sohbet.ws.config import Limits
from sohbet.ws.handshake import Upgrade
from sohbet.ws.server import WebSocket, broadcast

from .conftest import RawClient, Recorder, get, http, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
GET = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class Failing(Recorder):
    """Fails in whichever callback the test names; records the rest."""

    def __init__(self, *failing: str) -> None:
        super().__init__()
        self.failing = set(failing)
        self.late: list[str] = []

    def accept(self, request: http11.Request, upgrade: Upgrade) -> object:
        if "accept" in self.failing:
            raise RuntimeError("bug in accept")
        return None

    def on_open(self, ws: WebSocket) -> None:
        super().on_open(ws)
        if "on_open" in self.failing:
            raise RuntimeError("bug in on_open")

    def on_close(self, ws: WebSocket, code: int, reason: str) -> None:
        # Sends and closes after the end are dropped without a word, not raised.
        ws.send_text("too late")
        ws.send_binary(b"too late")
        ws.close(1000)
        self.late.append(f"is_open={ws.is_open}")
        super().on_close(ws, code, reason)
        if "on_close" in self.failing:
            raise RuntimeError("bug in on_close")

    def on_http(self, request: http11.Request) -> Any:
        if request.path == "/sync-bug":
            raise RuntimeError("bug in on_http")

        async def answer() -> http11.Response:
            raise RuntimeError("bug in an async on_http")

        return answer()


def tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.exc_info and text in str(r.exc_info[1]))


def test_a_failing_accept_is_a_500_with_a_json_body(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with running(Failing("accept")) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            client = RawClient(reader, writer)
            with pytest.raises(AssertionError, match="500"):
                await client.handshake()
            _, _, body = (client.response + await reader.read()).partition(b"\r\n\r\n")
            assert orjson.loads(body)["error"] == {"code": "internal", "message": "internal error"}
            writer.close()

    run(main())
    assert tracebacks(caplog, "bug in accept") == 1


def test_a_failing_on_open_closes_with_1011_and_on_close_still_runs(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    handler = Failing("on_open")

    async def main() -> None:
        async with running(handler) as server:
            client = await RawClient.connect(server.port)
            assert await client.expect_close(1011) == "internal error"
            client.close(1011)
            await client.expect_eof()
            assert (await get(handler.closed))[1:] == (1011, "internal error")

    run(main())
    assert tracebacks(caplog, "bug in on_open") == 1
    assert handler.late == ["is_open=False"]


def test_a_failing_on_close_is_logged_and_the_server_goes_on(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    handler = Failing("on_close")

    async def main() -> None:
        async with running(handler) as server:
            first = await RawClient.connect(server.port)
            first.abort()  # gone without a close frame: reported as 1006
            assert (await get(handler.closed))[1:] == (1006, "")
            second = await RawClient.connect(server.port)
            second.send(1, "still served")
            frame = await second.next_frame()
            assert (frame.opcode, frame.payload) == (1, b"still served")
            second.close()
            await second.expect_close(1000)
            await second.expect_eof()

    run(main())
    assert tracebacks(caplog, "bug in on_close") == 2
    assert handler.late == ["is_open=False", "is_open=False"]


def test_failing_http_answers_are_500s(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with running(Failing()) as server:
            for path in (b"/sync-bug", b"/async-bug"):
                status, _, body = await http(server.port, GET.replace(b"/x", path))
                assert (status, orjson.loads(body)["error"]["code"]) == (500, "internal")

    run(main())
    assert tracebacks(caplog, "bug in on_http") == 1
    assert tracebacks(caplog, "bug in an async on_http") == 1


def test_a_broadcast_from_inside_a_callback_reaches_the_sender_in_order(run: Run) -> None:
    class Relay(Recorder):
        server: Any = None

        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            ws.send_text(b"before")
            broadcast(self.server.connections.values(), data)
            ws.send_text(b"after")

    async def main() -> None:
        handler = Relay()
        async with running(handler) as server:
            handler.server = server
            sender = await RawClient.connect(server.port)
            other = await RawClient.connect(server.port)
            await asyncio.sleep(0.05)
            sender.send(1, "to all")
            got = [(await sender.next_frame()).payload for _ in range(3)]
            assert got == [b"before", b"to all", b"after"]
            assert (await other.next_frame()).payload == b"to all"
            for client in (sender, other):
                client.abort()

    run(main())


def test_a_handler_that_waits_for_drained_keeps_pace_with_a_slow_reader(run: Run) -> None:
    chunk, count = 64 * 1024, 64  # 4 MiB in all: far above the 1 MiB that would mean 4008

    class Streamer(Recorder):
        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            async def stream() -> None:
                for i in range(count):
                    ws.send_binary(i.to_bytes(4, "big") + bytes(chunk - 4))
                    await ws.drained()  # parks while the kernel and the client are behind
                ws.send_text("done")

            self.task = asyncio.ensure_future(stream())

    async def main() -> None:
        handler = Streamer()
        limits = Limits(max_message_bytes=1 << 20, max_buffered_bytes=1 << 20, buffer_high_water_bytes=64 * 1024)
        async with running(handler, limits=limits) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little for us
            sock.connect(("127.0.0.1", server.port))
            client = RawClient(*await asyncio.open_connection(sock=sock))
            await client.handshake()
            client.send(1, "go")
            numbers = []
            for _ in range(count):
                await asyncio.sleep(0.005)  # a reader slower than the writer could be
                frame = await client.next_frame()
                numbers.append(int.from_bytes(frame.payload[:4], "big"))
            assert numbers == list(range(count))
            assert (await client.next_frame()).payload == b"done"
            await handler.task
            client.abort()

    run(main())


def test_log_lines_name_the_connection(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sohbet.server")

    async def main() -> None:
        async with running(Failing("on_open")) as server:
            client = await RawClient.connect(server.port)
            await client.expect_close(1011)
            client.abort()

    run(main())
    assert any(r.getMessage().startswith("on_open failed on connection ") for r in caplog.records)
