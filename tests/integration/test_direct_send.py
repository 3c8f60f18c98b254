"""Writes that go straight to the kernel (`sohbet.ws._send`): never out of order, never after a
close frame, never to a socket that is gone; the compiled module and its twin alike (the `run`
fixture's uvloop-twin runs the servers on the twin)."""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from sohbet.ws.config import Limits
from sohbet.ws.server import WebSocket, broadcast

from .conftest import RawClient, Recorder, client_frame, get, running, take_server_frames

Run = Callable[[Coroutine[Any, Any, Any]], Any]
BIG = 65536
ROOMY = Limits(max_buffered_bytes=256 * 1024 * 1024)  # a reader behind by megabytes is not closed here


def test_the_twin_has_the_compiled_modules_names() -> None:
    compiled = importlib.import_module("sohbet.ws._send")
    twin = importlib.import_module("sohbet.ws._send_py")
    public = {"PHASE_WS", "SocketCore", "broadcast", "write_now"}
    assert public <= set(dir(compiled)) and public <= set(dir(twin))
    assert {
        n
        for n in dir(compiled)
        if callable(getattr(compiled, n)) and getattr(compiled, n).__module__ == compiled.__name__
    } == {"SocketCore", "broadcast", "write_now"}
    # The same attributes and methods (a WebSocket built on either is the same class otherwise).
    members = {n for n in dir(compiled.SocketCore) if not n.startswith("__")}
    assert members == {n for n in dir(twin.SocketCore) if not n.startswith("__")}
    assert {"data_received", "send_text", "send_binary", "_write", "_conn", "_batch", "_fd"} <= members


class PlainClient:
    """A client on a bare socket that reads only when told: a test can empty the kernel's
    buffer for it at a moment the server's loop has not run since, and the server's transport
    still holds bytes for it."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(rest)

    @classmethod
    async def connect(cls, port: int) -> PlainClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        await loop.sock_sendall(sock, UPGRADE % key)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
        status, _, rest = head.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101 "), status
        return cls(sock, rest)

    def read_now(self) -> None:
        """Take everything the kernel holds for us, without letting the server's loop run."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.buffer += chunk

    async def payloads(self, count: int) -> list[bytes]:
        """The next *count* frames' payloads, in the order they arrived."""
        frames: list[Any] = []
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            while True:
                frames.extend(take_server_frames(self.buffer))
                if len(frames) >= count:
                    return [f.payload for f in frames]
                self.buffer += await loop.sock_recv(self.sock, 1 << 20)


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def numbered(n: int) -> bytes:
    return n.to_bytes(4, "big") + b"\0" * BIG


async def behind(client: PlainClient, write: Callable[[bytes], None], ws: WebSocket) -> int:
    """Write until the transport holds bytes for *ws*, then empty the kernel's buffer for the
    client without yielding: the kernel has room again while the transport still holds bytes.
    Returns how many messages were written."""
    count = 0
    while not ws._transport.get_write_buffer_size():
        write(numbered(count))
        count += 1
    client.read_now()
    assert ws._transport.get_write_buffer_size(), "the transport wrote while nobody looked"
    return count


def test_a_write_to_a_reader_behind_queues_behind_what_the_transport_holds(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=False)
        async with running(handler, limits=ROOMY) as server:
            client = await PlainClient.connect(server.port)
            ws = await get(handler.opened)
            count = await behind(client, ws.send_binary, ws)
            ws.send_binary(numbered(count))  # the kernel has room: only the order forbids it now
            payloads = await client.payloads(count + 1)
            assert [int.from_bytes(p[:4], "big") for p in payloads] == list(range(count + 1))
            assert {len(p) for p in payloads} == {4 + BIG}
            client.sock.close()

    run(main())


def test_a_fanout_to_a_reader_behind_queues_behind_what_the_transport_holds(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=False)
        async with running(handler, limits=ROOMY) as server:
            lagging = await PlainClient.connect(server.port)
            ws = await get(handler.opened)
            reading = await RawClient.connect(server.port)
            other = await get(handler.opened)
            count = await behind(lagging, ws.send_text, ws)
            assert broadcast([ws, other], numbered(count)) == 2
            payloads = await lagging.payloads(count + 1)
            assert [int.from_bytes(p[:4], "big") for p in payloads] == list(range(count + 1))
            assert {len(p) for p in payloads} == {4 + BIG}
            assert (await reading.next_frame()).payload == numbered(count)
            lagging.sock.close()
            reading.abort()

    run(main())


def test_nothing_follows_our_close_frame(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=False)
        async with running(handler) as server:
            client = await RawClient.connect(server.port)
            ws = await get(handler.opened)
            ws.close(4000, "bye")  # the peer has not answered yet: the socket is closing
            assert broadcast([ws], b'{"late":true}') == 0
            ws.send_text("also late")
            assert await client.expect_close(4000) == "bye"
            client.send_raw(client_frame(9, "late ping") + client_frame(8, (4000).to_bytes(2, "big")))
            assert await client.next_frame() is None  # no pong, nothing at all: the TCP connection ends

    run(main())


def test_a_ping_among_messages_of_one_read_is_answered_in_their_order(run: Run) -> None:
    """The replies to one read (echoes, the pong) go out in the order their frames came in."""

    async def main() -> None:
        async with running(Recorder()) as server:
            client = await RawClient.connect(server.port)
            client.send_raw(
                client_frame(1, "first") + client_frame(9, "are you there") + client_frame(2, b"\x00second")
            )
            frames = [await client.next_frame() for _ in range(3)]
            assert [(f.opcode, f.payload) for f in frames] == [
                (1, b"first"),
                (10, b"are you there"),
                (2, b"\x00second"),
            ]
            client.close(1000)
            assert await client.expect_close(1000) == ""

    run(main())


def test_a_socket_gone_is_never_written_even_when_its_descriptor_is_reused(run: Run) -> None:
    """The descriptor of a closed socket is soon another client's; a fan-out list that still
    names the old connection must not write to it."""

    async def main() -> None:
        handler = Recorder(echo=False)
        async with running(handler, limits=Limits(linger_s=0)) as server:
            first = await RawClient.connect(server.port)
            gone = await get(handler.opened)
            fd = gone._fd
            assert fd >= 0  # a plain TCP socket: writes may go straight to it
            # The next client's socket exists before the old one is closed, so the number the
            # server frees is the lowest free one when it accepts the next connection.
            spare = socket.socket()
            spare.setblocking(False)
            gone.close(1000)
            await first.expect_close(1000)
            first.close(1000)
            await get(handler.closed)
            while gone.id in server._sockets:  # until connection_lost has run; the transport
                await asyncio.sleep(0.01)  # closes the descriptor as soon as it returns
            await asyncio.sleep(0)
            await asyncio.get_running_loop().sock_connect(spare, ("127.0.0.1", server.port))
            reader, writer = await asyncio.open_connection(sock=spare)
            second = RawClient(reader, writer)
            await second.handshake()
            now = await get(handler.opened)
            assert now._fd == fd, "the kernel gave the new socket another descriptor"
            assert broadcast([gone], b'{"for":"the old one"}') == 0
            gone.send_text(b'{"also":"the old one"}')
            assert broadcast([now], b'{"for":"the new one"}') == 1
            assert (await second.next_frame()).payload == b'{"for":"the new one"}'
            second.abort()
            first.abort()

    run(main())


def test_a_fanout_from_inside_a_read_queues_behind_the_replies_of_that_read(run: Run) -> None:
    class ReplyThenFanOut(Recorder):
        def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
            ws.send_text(b"reply to " + data)
            broadcast([ws], b"fan-out after " + data)

    async def main() -> None:
        handler = ReplyThenFanOut(echo=False)
        async with running(handler) as server:
            client = await RawClient.connect(server.port)
            await get(handler.opened)
            client.send(1, "one")
            assert (await client.next_frame()).payload == b"reply to one"
            assert (await client.next_frame()).payload == b"fan-out after one"
            client.abort()

    run(main())
