"""The server over real sockets: handshake answers, timeouts, backpressure, closing, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from sohbet.errors import InvalidHandshake
from sohbet.ws import server as server_module
from sohbet.ws.config import CompressionConfig, Limits, WebSocketConfig
from sohbet.ws.handshake import Upgrade
from sohbet.ws.http11 import Request
from sohbet.ws.server import Handler, Response, WebSocket, broadcast

from .conftest import RawClient, Recorder, get, http, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
)


def upgrade(path: str = "/ws", extra: str = "Sec-WebSocket-Version: 13\r\n") -> bytes:
    return UPGRADE.format(path=path, extra=extra).encode()


def test_echo_text_and_binary(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running(handler) as server:
            client = await RawClient.connect(server.port, path="/ws")
            assert b"Sec-WebSocket-Accept" in client.response
            ws = await get(handler.opened)
            assert ws.is_open and ws.data is None
            client.send(1, "héllo")
            client.send(2, b"\x00\x01")
            assert (await client.next_frame()).payload == "héllo".encode()
            assert (await client.next_frame()).payload == b"\x00\x01"
            assert [(d, t) for _, d, t in [await get(handler.messages), await get(handler.messages)]] == [
                ("héllo".encode(), True),
                (b"\x00\x01", False),
            ]
            client.close(1000, "done")
            assert await client.expect_close(1000) == ""
            await client.expect_eof()
            assert await get(handler.closed) == (ws.id, 1000, "done")

    run(main())


class Gate(Handler):
    """Refuses tokens it does not like, as the chat layer will."""

    def accept(self, request: Request, upgrade: Upgrade) -> Any:
        if request.query != "token=good":
            raise InvalidHandshake(401, "bad token")
        return "alice"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (upgrade(extra=""), 400, "bad_request"),
        (upgrade(extra="Sec-WebSocket-Version: 12\r\n"), 426, "bad_request"),
        (upgrade(path="/elsewhere?token=good"), 404, "not_found"),
        (upgrade(path="/ws?token=bad"), 401, "unauthorized"),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "bad_request"),
        (
            upgrade(path="/ws?token=good", extra="Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n"),
            403,
            "forbidden",
        ),
    ],
    ids=["400-no-version", "426", "404-path", "401", "431", "403-origin"],
)
def test_refused_upgrades_answer_json(run: Run, raw: bytes, status: int, code: str) -> None:
    async def main() -> None:
        origins = frozenset({"https://app.example"}) if status == 403 else frozenset()
        async with running(Gate(), websocket=WebSocketConfig(allowed_origins=origins)) as server:
            got, headers, body = await http(server.port, raw)
            assert got == status
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body)["error"]["code"] == code
            if status == 426:
                assert headers["sec-websocket-version"] == "13"
            assert server.connections == {}

    run(main())


def test_accept_data_and_capacity_limit(run: Run) -> None:
    async def main() -> None:
        async with running(Gate(), limits=Limits(max_connections=1)) as server:
            first = await RawClient.connect(server.port, path="/ws?token=good")
            [ws] = server.connections.values()
            assert ws.data == "alice"
            status, _, body = await http(server.port, upgrade(path="/ws?token=good"))
            assert status == 503
            assert orjson.loads(body)["error"]["code"] == "unavailable"
            first.close()
            await first.expect_eof()

    run(main())


def test_frames_sent_with_the_request_are_not_lost(run: Run) -> None:
    async def main() -> None:
        async with running(Recorder()) as server:
            client = await RawClient.connect(server.port, upgrade=False)
            first = b"\x81\x82\x00\x00\x00\x00hi"  # sent before the 101 arrived
            await client.handshake(path="/", extra=first)
            assert (await client.next_frame()).payload == b"hi"
            client.abort()

    run(main())


def test_a_request_not_finished_within_the_handshake_timeout_is_told_408(run: Run) -> None:
    async def main() -> None:
        async with running(limits=Limits(handshake_timeout_s=1.0)) as server:
            client = await RawClient.connect(server.port, upgrade=False)
            client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            answer = await asyncio.wait_for(client.reader.read(), 4.0)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
            assert b'"code":"bad_request"' in answer and b"within 1 s" in answer

    run(main())


def test_an_idle_kept_alive_socket_is_closed_without_an_answer(run: Run) -> None:
    async def main() -> None:
        async with running(limits=Limits(handshake_timeout_s=1.0)) as server:
            client = await RawClient.connect(server.port, upgrade=False)
            client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(client.reader.readuntil(b"}}"), 4.0)
            assert answer.startswith(b"HTTP/1.1 404 ")
            assert await asyncio.wait_for(client.reader.read(), 4.0) == b""  # idle: closed, nothing said

    run(main())


def test_idle_connection_is_pinged_and_closed_without_pong(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        limits = Limits(ping_interval_s=1.0, pong_timeout_s=1.0)
        async with running(handler, limits=limits) as server:
            client = await RawClient.connect(server.port)
            ping = await client.next_frame(timeout=4.0)
            assert ping.opcode == 9
            assert await client.expect_close(1011, timeout=4.0) == "no pong in time"
            client.close(1011)
            await client.expect_eof()
            assert (await get(handler.closed))[1:] == (1011, "no pong in time")

    run(main())


def test_a_pong_keeps_the_connection_alive(run: Run) -> None:
    async def main() -> None:
        limits = Limits(ping_interval_s=1.0, pong_timeout_s=1.0)
        async with running(Recorder(), limits=limits) as server:
            client = await RawClient.connect(server.port)
            for _ in range(2):
                ping = await client.next_frame(timeout=4.0)
                assert ping.opcode == 9
                client.send(10, ping.payload)
            client.send(1, "still here")
            frame = await client.next_frame()
            assert (frame.opcode, frame.payload) == (1, b"still here")
            client.abort()

    run(main())


def test_server_close_waits_for_the_peer_then_hangs_up(run: Run) -> None:
    class Closer(Recorder):
        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            ws.close(4000, "bye now")

    async def main() -> None:
        handler = Closer()
        async with running(handler, limits=Limits(close_timeout_s=1.0)) as server:
            polite = await RawClient.connect(server.port)
            polite.send(1, "close me")
            assert await polite.expect_close(4000) == "bye now"
            polite.close(4000)
            await polite.expect_eof()
            silent = await RawClient.connect(server.port)
            silent.send(1, "close me")
            assert await silent.expect_close(4000) == "bye now"
            await silent.expect_eof(timeout=4.0)  # no answer: dropped after close_timeout_s
            codes = sorted([(await get(handler.closed))[1:], (await get(handler.closed))[1:]])
            assert codes == [(4000, "bye now"), (4000, "bye now")]

    run(main())


def test_client_that_does_not_read_is_closed_with_4008(run: Run) -> None:
    class Flood(Recorder):
        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            for _ in range(400):
                ws.send_binary(b"x" * 65536)

    async def main() -> None:
        handler = Flood()
        limits = Limits(max_buffered_bytes=4 * 1024 * 1024, close_timeout_s=1.0)
        async with running(handler, limits=limits) as server:
            client = await RawClient.connect(server.port)
            client.send(1, "flood me")  # and then read nothing
            _, code, reason = await get(handler.closed, timeout=10.0)
            assert (code, reason) == (4008, "too slow: messages were not read")
            client.abort()

    run(main())


def test_slow_consumer_above_high_water_for_too_long(run: Run) -> None:
    class Trickle(Recorder):
        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            for _ in range(300):
                # ~19 MiB: more than the kernel's socket buffers take, under the hard limit.
                ws.send_binary(b"y" * 65536)

    async def main() -> None:
        handler = Trickle()
        limits = Limits(max_buffered_bytes=64 * 1024 * 1024, slow_consumer_s=1.0, close_timeout_s=1.0)
        async with running(handler, limits=limits) as server:
            client = await RawClient.connect(server.port)
            client.send(1, "go")
            _, code, _ = await get(handler.closed, timeout=10.0)
            assert code == 4008
            client.abort()

    run(main())


@pytest.mark.parametrize(
    ("limits", "frames", "code"),
    [
        (Limits(max_message_bytes=1000), [(2, b"x" * 1001, True)], 1009),
        (Limits(max_fragments=3), [(1, b"a", False)] + [(0, b"a", False)] * 3, 1009),
        (Limits(max_frames_per_10s=5), [(1, b"a", True)] * 6, 1008),
    ],
    ids=["message-too-big", "too-many-fragments", "frame-rate"],
)
def test_limits_close_the_connection(run: Run, limits: Limits, frames: list[Any], code: int) -> None:
    async def main() -> None:
        async with running(Recorder(echo=False), limits=limits) as server:
            client = await RawClient.connect(server.port)
            for opcode, payload, fin in frames:
                client.send(opcode, payload, fin=fin)
            await client.expect_close(code)
            await client.expect_eof()

    run(main())


def test_unfinished_message_times_out_with_1008(run: Run) -> None:
    async def main() -> None:
        async with running(Recorder(), limits=Limits(message_timeout_s=1.0)) as server:
            client = await RawClient.connect(server.port)
            client.send(1, "part one", fin=False)
            assert await client.expect_close(1008, timeout=4.0) == "message not finished within 1 s"
            client.abort()

    run(main())


def test_graceful_shutdown_sends_1001(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running(handler) as server:
            port = server.port
            clients = [await RawClient.connect(port) for _ in range(3)]
            shutdown = asyncio.ensure_future(server.shutdown(timeout_s=3.0))
            for client in clients:
                assert await client.expect_close(1001) == "server shutting down"
                client.close(1001)
            await shutdown
            for client in clients:
                await client.expect_eof()
            codes = [(await get(handler.closed))[1] for _ in clients]
            assert codes == [1001, 1001, 1001]
            # A new connection is refused once shut down.
            with pytest.raises(OSError):
                await RawClient.connect(port)

    run(main())


def test_handler_errors_close_with_1011(run: Run) -> None:
    class Broken(Recorder):
        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            raise RuntimeError("bug in the application")

    async def main() -> None:
        async with running(Broken()) as server:
            client = await RawClient.connect(server.port)
            client.send(1, "boom")
            assert await client.expect_close(1011) == "internal error"
            client.abort()

    run(main())


def test_plain_http_sync_and_async_with_keep_alive(run: Run) -> None:
    class Api(Handler):
        def on_http(self, request: Request) -> Any:
            if request.path == "/sync":
                return Response(200, b'{"ok":true}')
            if request.path != "/async":
                return super().on_http(request)

            async def later() -> Response:
                await asyncio.sleep(0)
                return Response(201, request.body, content_type="text/plain")

            return later()

    async def main() -> None:
        async with running(Api()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                b"GET /sync HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /async HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nping"
                b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            data = await asyncio.wait_for(reader.read(), 5.0)
            responses = data.split(b"HTTP/1.1 ")[1:]
            assert [r[:3] for r in responses] == [b"200", b"201", b"404"]
            assert responses[1].endswith(b"\r\n\r\nping")
            writer.close()

    run(main())


@pytest.mark.parametrize("cut", [0, 1], ids=["after-the-head", "in-the-blank-line"])
def test_a_body_read_after_its_head_is_a_body_not_a_long_head(
    run: Run, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """The head bound (line + headers, 772 bytes here) counts head bytes only: a body longer
    than it, read after the head (or with the last byte of the head's blank line), is answered,
    not refused with 431. Found with the http11 fuzz target's chunking property
    (fuzz/corpus/http11/crash-body-after-head, crash-blank-line-split)."""
    reads: asyncio.Queue[int] = asyncio.Queue()
    socket_class = server_module.WebSocket  # the one the server will make (`run` may have swapped it)
    data_received = socket_class.data_received

    def spy(self: WebSocket, data: bytes) -> None:
        reads.put_nowait(len(data))
        data_received(self, data)

    monkeypatch.setattr(socket_class, "data_received", spy)

    class Echo(Handler):
        def on_http(self, request: Request) -> Any:
            return Response(200, request.body, content_type="text/plain")

    limits = Limits(max_line_bytes=256, max_header_bytes=512)
    head_limit = 256 + 512 + 4
    body = bytes(range(256)) * 40
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def main() -> None:
        async with running(Echo(), limits=limits) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(head[: len(head) - cut])
            assert await get(reads) == len(head) - cut  # the server has read this much of the head, alone
            writer.write(head[len(head) - cut :] + body)
            assert await get(reads) > head_limit  # the case: one read of body beyond the head bound
            data = await asyncio.wait_for(reader.read(), 5.0)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
            assert data.endswith(b"\r\n\r\n" + body)
            writer.close()

    run(main())


def test_broadcast_frames_once_and_skips_closed(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=False)
        websocket = WebSocketConfig(compression=CompressionConfig(enabled=True))
        async with running(handler, websocket=websocket) as server:
            plain = [await RawClient.connect(server.port) for _ in range(3)]
            deflated = await RawClient.connect(server.port, "Sec-WebSocket-Extensions: permessage-deflate")
            sockets = [await get(handler.opened) for _ in range(4)]
            plain[2].close()
            await plain[2].expect_close(1000)
            await get(handler.closed)
            assert broadcast([], b"nobody") == 0
            assert broadcast([sockets[0]], b"nobody", skip=sockets[0]) == 0  # its only one is the sender
            assert broadcast([sockets[1]], b"one", skip=sockets[0]) == 1
            assert broadcast(sockets, b'{"hello":"everyone"}' * 5) == 3
            assert (await plain[1].next_frame()).payload == b"one"
            for client in plain[:2]:  # the first frame plain[0] gets: "nobody" never came
                frame = await client.next_frame()
                assert (frame.rsv1, frame.payload) == (False, b'{"hello":"everyone"}' * 5)
            frame = await deflated.next_frame()
            assert frame.rsv1  # compressed for the one that negotiated it
            for client in (*plain[:2], deflated):
                client.abort()

    run(main())


def test_4008_from_outside_a_callback_and_shutdown_still_returns(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=False)
        limits = Limits(max_buffered_bytes=2 * 1024 * 1024, close_timeout_s=1.0)
        async with running(handler, limits=limits) as server:
            client = await RawClient.connect(server.port)  # and never reads
            ws = await get(handler.opened)
            for _ in range(2000):  # a task pushing events, as the chat fan-out does
                ws.send_binary(b"z" * 65536)
                if not ws.is_open:
                    break
            _, code, reason = await get(handler.closed, timeout=10.0)
            assert (code, reason) == (4008, "too slow: messages were not read")
            await server.shutdown(timeout_s=3.0)
            assert server._sockets == {}
            client.abort()

    run(main())


def test_pipelined_requests_to_a_client_that_never_reads_are_bounded(run: Run) -> None:
    class Big(Handler):
        def on_http(self, request: Request) -> Any:
            return Response(200, b"x" * 65536)

    async def main() -> None:
        limits = Limits(handshake_timeout_s=1.0, close_timeout_s=1.0)
        async with running(Big(), limits=limits) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            with contextlib.suppress(ConnectionError, TimeoutError):
                for _ in range(100):
                    writer.write(request * 200)  # 20,000 requests, none of whose answers we read
                    await asyncio.wait_for(writer.drain(), 0.5)
            # The server reads no more than its pipelining limit, stops reading while its answers
            # pile up, and closes the connection instead of buffering 1.3 GB.
            for ws in server._sockets.values():
                assert ws.buffered_bytes <= limits.max_buffered_bytes + 2 * 65536
            await get_eof(reader, timeout=5.0)
            writer.close()  # the server lingers until we hang up too
            async with asyncio.timeout(5.0):
                while server._sockets:
                    await asyncio.sleep(0.05)

    run(main())


async def get_eof(reader: asyncio.StreamReader, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 20):
                pass


def test_a_closing_response_nobody_reads_is_dropped(run: Run) -> None:
    class Huge(Handler):
        def on_http(self, request: Request) -> Any:
            return Response(200, b"h" * (32 * 1024 * 1024))

    async def main() -> None:
        async with running(Huge(), limits=Limits(close_timeout_s=1.0)) as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(5.0):
                while server._sockets:
                    await asyncio.sleep(0.05)  # the sweep runs each second: wait for it, bounded
            writer.close()

    run(main())


def test_shutdown_during_an_async_http_answer(run: Run) -> None:
    gate = asyncio.Event()
    reached = asyncio.Event()

    class Slow(Recorder):
        def on_http(self, request: Request) -> Any:
            reached.set()

            async def later() -> Response:
                await gate.wait()
                return Response(200, b'{"late":true}')

            return later()

    async def main() -> None:
        handler = Slow()
        async with running(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade(path="/ws"))
            await asyncio.wait_for(reached.wait(), 5.0)
            started = asyncio.get_running_loop().time()
            shutdown = asyncio.ensure_future(server.shutdown(timeout_s=3.0))
            await asyncio.sleep(0)
            gate.set()
            data = await asyncio.wait_for(reader.read(), 5.0)
            await shutdown
            assert asyncio.get_running_loop().time() - started < 2.0
            assert data.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in data
            assert b"101 Switching" not in data  # the upgrade behind it was not accepted
            assert handler.opened.empty()
            writer.close()

    run(main())


def test_other_upgrades_are_plain_http(run: Run) -> None:
    class Health(Handler):
        def on_http(self, request: Request) -> Any:
            return Response(200, b'{"status":"ok"}')

    async def main() -> None:
        async with running(Health()) as server:
            raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n"
            status, _, body = await http(server.port, raw)
            assert (status, body) == (200, b'{"status":"ok"}')

    run(main())


def test_a_handler_returning_nonsense_gets_a_500(run: Run) -> None:
    class Wrong(Handler):
        def on_http(self, request: Request) -> Any:
            return None

    async def main() -> None:
        async with running(Wrong()) as server:
            status, _, body = await http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 500 and orjson.loads(body)["error"]["code"] == "internal"

    run(main())


def test_the_peer_address_is_asked_of_the_socket_while_it_is_open(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=False)
        async with running(handler) as server:
            client = await RawClient.connect(server.port)
            ws = await get(handler.opened)
            host, port = client.writer.get_extra_info("sockname")[:2]
            assert ws.remote[:2] == (host, port)  # type: ignore[index]  # an IPv4 (host, port)
            assert ws.address == host
            client.close()
            await client.expect_close(1000)
            await get(handler.closed)
            while ws.id in server._sockets:
                await asyncio.sleep(0.01)
            assert ws.address == host  # the log still says who it was, the socket gone
            client.abort()

    run(main())


def test_an_upgrade_while_shutting_down_is_told_when_to_come_back(run: Run) -> None:
    async def main() -> None:
        async with running(Recorder()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")  # a kept-alive plain request first
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404 ")
            length = int(
                next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            server.stop_accepting()  # shutting down: this socket is still open
            writer.write(upgrade())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ")
            headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            assert int(headers[b"Retry-After"]) >= 1
            writer.close()

    run(main())
