"""The direct writes (`_send.pyx` and its twin) on a real socket pair, with stand-ins for the
server's WebSocket objects: every branch, the compiled module and the twin alike."""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from sohbet.ws import _protocol_py, frames, websocket
from sohbet.ws.deflate import DeflateParams

from ..conftest import load_compiled_core

LIMIT = 1 << 20
HUGE = 64 << 20  # more than loopback TCP's send and receive buffers hold together


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "python":
        return importlib.import_module("sohbet.ws._send_py")
    load_compiled_core()  # fails in CI when nothing is built
    return importlib.import_module("sohbet.ws._send")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection over loopback, both ends non-blocking (TCP takes part of a write when
    it has some room: the partial sends below need that)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setblocking(False)
    theirs.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


class Transport:
    """Holds what it is given, as a transport whose socket is not writable would."""

    def __init__(self, held: bytes = b"") -> None:
        self.held = bytearray(held)

    def write(self, data: bytes) -> None:
        self.held += data

    def get_write_buffer_size(self) -> int:
        return len(self.held)


class Limits:
    max_buffered_bytes = LIMIT


class Server:
    limits = Limits()


def connection_class(impl: ModuleType) -> Any:
    """The Connection the implementation's sockets hold: the compiled core's is typed to the
    compiled connection."""
    return (
        _protocol_py.Connection
        if impl.__name__.endswith("_py")
        else importlib.import_module("sohbet.ws._protocol").Connection
    )


@pytest.fixture
def make(impl: ModuleType) -> Callable[..., Any]:
    """Stand-ins for the server's `WebSocket`: the implementation's `SocketCore` with what
    `broadcast` reads set, a real connection, and a transport that holds what it is given."""
    connection = connection_class(impl)

    class Socket(impl.SocketCore):  # type: ignore[misc,name-defined]  # a module chosen at run time
        def __init__(self, fd: int = -1, *, phase: int = websocket.PHASE_WS, conn: Any = None) -> None:
            self._fd = fd
            self._drained = False
            self._phase = phase
            self._conn = conn if conn is not None else connection()
            self._batch = None
            self._transport = Transport()
            self._paused_at = 0.0
            self._server = Server()
            self._rx = self._tx = 0
            self.over = 0

        def _over_limit(self) -> None:
            self.over += 1

    return Socket


def read_all(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def fill(sock: socket.socket) -> None:
    """Send until the kernel takes no more."""
    while True:
        try:
            sock.send(b"f" * 65536)
        except BlockingIOError:
            return


def test_the_phase_is_the_websockets(impl: ModuleType) -> None:
    assert impl.PHASE_WS == websocket.PHASE_WS


def test_write_now_sends_while_the_transport_is_empty(impl: ModuleType, pair: tuple[socket.socket, ...]) -> None:
    ours, theirs = pair
    transport = Transport()
    assert impl.write_now(ours.fileno(), transport, b"hello") == 0
    assert read_all(theirs) == b"hello" and transport.held == b""


def test_write_now_queues_behind_what_the_transport_holds(impl: ModuleType, pair: tuple[socket.socket, ...]) -> None:
    ours, theirs = pair
    transport = Transport(b"earlier")
    assert impl.write_now(ours.fileno(), transport, b"later") == len(b"earlierlater")
    assert read_all(theirs) == b"" and transport.held == b"earlierlater"


def test_write_now_without_a_descriptor_uses_the_transport(impl: ModuleType) -> None:
    transport = Transport()
    assert impl.write_now(-1, transport, b"x") == 1
    assert transport.held == b"x"


def test_what_the_kernel_does_not_take_goes_to_the_transport(impl: ModuleType, pair: tuple[socket.socket, ...]) -> None:
    ours, _theirs = pair
    fill(ours)
    transport = Transport()
    assert impl.write_now(ours.fileno(), transport, b"blocked") == len(b"blocked")  # would block: all to it
    assert transport.held == b"blocked"


def test_a_partial_send_leaves_the_rest_to_the_transport(impl: ModuleType, pair: tuple[socket.socket, ...]) -> None:
    ours, _theirs = pair
    data = bytes(range(256)) * (HUGE // 256)  # more than the kernel's buffers take at once
    transport = Transport()
    left = impl.write_now(ours.fileno(), transport, data)
    assert 0 < left < len(data)
    assert transport.held == data[len(data) - left :]  # the rest, in order


def test_a_failed_send_leaves_everything_to_the_transport(impl: ModuleType, pair: tuple[socket.socket, ...]) -> None:
    ours, theirs = pair
    theirs.close()  # the peer is gone: once its reset is back, send fails (EPIPE, ECONNRESET)
    transport = Transport()
    for _ in range(200):
        if impl.write_now(ours.fileno(), transport, b"lost"):
            break
        time.sleep(0.005)
    assert transport.held == b"lost"  # all of it: the transport finds the error and reports it


def test_broadcast_takes_each_recipient_its_way(
    impl: ModuleType, make: Callable[..., Any], pair: tuple[socket.socket, ...]
) -> None:
    ours, theirs = pair
    connection = connection_class(impl)
    direct = make(ours.fileno())
    no_fd = make()
    closing = make(ours.fileno(), phase=websocket.PHASE_CLOSING)
    stopped = make()
    stopped._conn.can_send = False
    gone = make()
    gone._conn = None  # a socket whose connection has ended
    deflate = DeflateParams()
    deflated = make(conn=connection(deflate=deflate))  # no descriptor: a compressed socket's writes go to its transport
    reading = make(ours.fileno())
    reading._batch = []  # inside its own data_received
    skipped = make(ours.fileno())
    everyone = [direct, no_fd, closing, stopped, gone, deflated, reading, skipped]
    text = "text, long enough to be compressed " * 2
    assert impl.broadcast(everyone, b"frame", text, skipped) == (4, 2)
    assert read_all(theirs) == b"frame"  # only the direct one, once
    assert no_fd._transport.held == b"frame"
    compressed = connection(deflate=deflate).frame_text(text)  # its own frame, as a fresh compressor makes it
    assert compressed[0] & 0x40  # rsv1: compressed
    assert deflated._transport.held == compressed and deflated._tx == len(compressed)
    assert reading._batch == [b"frame"]
    assert closing._transport.held == stopped._transport.held == gone._transport.held == b""
    assert skipped._transport.held == b""


def test_broadcast_closes_the_recipients_over_their_limit(
    impl: ModuleType, make: Callable[..., Any], pair: tuple[socket.socket, ...]
) -> None:
    ours, _theirs = pair
    partial = make(ours.fileno())  # the kernel takes part of it, the rest tips it over
    partial._paused_at = 1.0
    frame = b"z" * HUGE
    assert impl.broadcast([partial], frame, "text", None) == (1, 0)
    assert partial.over == 1 and 0 < len(partial._transport.held) < len(frame)
    queued = make()  # no descriptor: the transport takes it
    queued._paused_at = 1.0
    queued._transport = Transport(b"x" * LIMIT)
    blocked = make(ours.fileno())  # its kernel buffer is full: the transport takes it
    blocked._paused_at = 1.0
    blocked._transport = Transport(b"y" * LIMIT)
    assert impl.broadcast([queued, blocked], b"frame", "text", None) == (2, 0)
    assert (queued.over, blocked.over) == (1, 1)
    quiet = make()
    quiet._paused_at = 1.0  # paused, yet under the limit: left alone
    assert impl.broadcast([quiet], b"frame", "text", None) == (1, 0)
    assert quiet.over == 0


def test_the_compiled_module_refuses_none() -> None:
    load_compiled_core()
    compiled = importlib.import_module("sohbet.ws._send")
    with pytest.raises(TypeError):
        compiled.write_now(-1, Transport(), None)
    with pytest.raises(TypeError):
        compiled.broadcast([], None, "text", None)


def test_a_partial_send_under_the_limit_is_left_to_the_transport(
    impl: ModuleType, make: Callable[..., Any], pair: tuple[socket.socket, ...]
) -> None:
    ours, _theirs = pair
    reader = make(ours.fileno())  # reading as fast as it can: not paused, so not over any limit
    frame = b"q" * HUGE
    assert impl.broadcast([reader], frame, "text", None) == (1, 0)
    assert reader.over == 0 and 0 < len(reader._transport.held) < len(frame)
    assert frame.endswith(bytes(reader._transport.held))  # the rest, in order


def test_a_handler_escaping_with_a_base_exception_leaves_no_batch_behind(
    impl: ModuleType, make: Callable[..., Any]
) -> None:
    """The loop ends such a socket (a fatal error), but until then nothing may gather unsent."""

    class Cancelling:
        def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
            raise asyncio.CancelledError

    sock = make()
    sock._server.handler = Cancelling()
    sock._server.now = 1.0
    with pytest.raises(asyncio.CancelledError):
        sock.data_received(frames.build_frame(1, b"hi", mask=b"abcd"))
    assert sock._batch is None
    sock.send_text("after")  # written, not gathered
    assert sock._transport.held == frames.build_frame(1, b"after")


def test_a_write_takes_any_buffer(impl: ModuleType, make: Callable[..., Any]) -> None:
    sock = make()
    for data in (b"bytes ", bytearray(b"bytearray "), memoryview(b"memoryview")):
        sock._write(data)
    assert sock._transport.held == b"bytes bytearray memoryview"
    assert sock._tx == len(b"bytes bytearray memoryview")


class Counting(Transport):
    """A transport that counts how often it is asked what it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def get_write_buffer_size(self) -> int:
        self.asked += 1
        return super().get_write_buffer_size()


def test_a_socket_seen_drained_writes_on_without_asking_its_transport(
    impl: ModuleType, make: Callable[..., Any], pair: tuple[socket.socket, ...]
) -> None:
    ours, theirs = pair
    sock = make(ours.fileno())
    sock._transport = Counting()
    sock._write(b"one ")  # asks once: nothing held, so straight to the kernel
    assert impl.broadcast([sock], b"two ", "two ", None) == (1, 0)
    sock._write(b"three")
    assert read_all(theirs) == b"one two three"
    assert sock._transport.asked == 1 and sock._transport.held == b""
    fanned = make(ours.fileno())
    fanned._transport = Counting()
    impl.broadcast([fanned], b"four ", "four ", None)
    fanned._write(b"five")
    assert read_all(theirs) == b"four five" and fanned._transport.asked == 1


@pytest.mark.parametrize("first", ["write", "broadcast"])
def test_after_a_partial_send_every_write_queues_behind_it(
    impl: ModuleType, make: Callable[..., Any], pair: tuple[socket.socket, ...], first: str
) -> None:
    """Once the transport holds the rest of a message, the kernel's room (the reader caught up)
    must not let a later message overtake it, however the earlier one was written."""
    ours, theirs = pair
    sock = make(ours.fileno())
    sock._write(b"warm")  # seen drained
    data = bytes(range(256)) * (HUGE // 256)
    if first == "write":
        sock._write(data)
    else:
        impl.broadcast([sock], data, "text", None)
    held = bytes(sock._transport.held)
    assert 0 < len(held) < len(data)
    got = read_all(theirs)  # the kernel has room again; the transport still holds the rest
    sock._write(b"later")
    impl.broadcast([sock], b"latest", "latest", None)
    assert read_all(theirs) == b""
    assert got + bytes(sock._transport.held) == b"warm" + data + b"later" + b"latest"
