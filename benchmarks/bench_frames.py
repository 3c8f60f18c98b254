"""The frame core against its peers: masking, parsing, building, the accept key.

Run: `pytest benchmarks/bench_frames.py --benchmark-group-by=group` (needs `.[bench]`).
Peers measured in the same run: websockets' C extension (`websockets.speedups`), a plain copy
of the same size, picows' parser, and websockets' own sans-I/O parser.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import pytest
from picows import picows as pw
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side
from websockets.speedups import apply_mask as websockets_mask
from websockets.utils import accept_key as websockets_accept_key

from sohbet.ws import _frames, _frames_py

SIZES = [16, 125, 1024, 65536, 1 << 20]
SIZE_IDS = ["16B", "125B", "1KiB", "64KiB", "1MiB"]
KEY = os.urandom(4)


CALLS = range(100)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("who", ["sohbet", "sohbet-python", "websockets-c", "copy"])
def bench_apply_mask(benchmark: Any, who: str, size: int) -> None:
    """100 calls per round, so the harness's own call does not drown a 30 ns function.

    (pytest-benchmark calls `fn(*args, **kwargs)`, a path that favours METH_VARARGS C
    functions such as websockets' over vectorcall ones such as ours; a loop of direct calls is
    how real code calls both.)
    """
    data = os.urandom(size)
    if who == "copy":

        def run() -> None:
            for _ in CALLS:
                bytearray(data)  # allocate and fill the same number of bytes, no XOR

    else:
        fn = {"sohbet": _frames.apply_mask, "sohbet-python": _frames_py.apply_mask, "websockets-c": websockets_mask}[
            who
        ]
        assert fn(fn(data, KEY), KEY) == data

        def run() -> None:
            for _ in CALLS:
                fn(data, KEY)

    benchmark.group = f"apply_mask {size} B (x100 calls)"
    benchmark.extra_info["bytes"] = size
    benchmark.extra_info["calls_per_round"] = len(CALLS)
    benchmark(run)


N_FRAMES = 10_000


def masked_text_frames() -> bytes:
    return b"".join(_frames.build_frame(1, os.urandom(16).hex(), mask=os.urandom(4)) for _ in range(N_FRAMES))


@pytest.mark.parametrize("who", ["sohbet", "sohbet-python"])
def bench_parse_10k_masked_text_frames(benchmark: Any, who: str) -> None:
    wire = masked_text_frames()
    module = _frames if who == "sohbet" else _frames_py
    benchmark.group = "parse 10,000 masked 32 B text frames"
    frames = benchmark(lambda: module.FrameParser().feed(wire))
    assert len(frames) == N_FRAMES


def bench_parse_websockets(benchmark: Any) -> None:
    """websockets' sans-I/O server protocol: frames in, events out (C masking)."""
    wire = masked_text_frames()

    def run() -> int:
        proto = Protocol(Side.SERVER, state=OPEN, max_size=None)
        proto.receive_data(wire)
        return sum(isinstance(e, Frame) for e in proto.events_received())

    benchmark.group = "parse 10,000 masked 32 B text frames"
    assert benchmark(run) == N_FRAMES


class _FakeTransport(asyncio.Transport):
    """Enough of a transport for picows' server protocol; the socket is real but unused."""

    def __init__(self) -> None:
        super().__init__()
        # picows sets TCP options on the socket, so it must be a TCP one.
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.peer = socket.create_connection(listener.getsockname())
            self.sock, _ = listener.accept()

    def close(self) -> None:
        self.sock.close()
        self.peer.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self.sock, "peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def bench_parse_picows(benchmark: Any) -> None:
    """picows' server protocol, fed through its own read buffer as uvloop would feed it."""
    wire = masked_text_frames()
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    count = 0

    class Listener(pw.WSListener):  # type: ignore[misc]  # picows ships no stubs for subclassing
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            nonlocal count
            count += 1

    def feed(proto: Any, data: bytes) -> None:
        view = memoryview(data)
        while view:
            buf = proto.get_buffer(-1)
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    async def make() -> Any:
        proto = pw.WSProtocol(
            None, "/", False, Listener, logging.getLogger("picows.bench"), True, None, False, 10, 10,
            pw.WSAutoPingStrategy.PING_WHEN_IDLE, True, 1 << 20, None, 1 << 20,
        )  # fmt: skip
        proto.connection_made(_FakeTransport())
        feed(proto, upgrade)
        return proto

    loop = asyncio.new_event_loop()
    try:
        proto = loop.run_until_complete(make())
        benchmark.group = "parse 10,000 masked 32 B text frames"
        benchmark(feed, proto, wire)
        proto.transport.underlying_transport.close()
    finally:
        loop.close()
    assert count >= N_FRAMES


@pytest.mark.parametrize("who", ["sohbet", "sohbet-python", "websockets"])
def bench_accept_key(benchmark: Any, who: str) -> None:
    fn = {"sohbet": _frames.accept_key, "sohbet-python": _frames_py.accept_key, "websockets": websockets_accept_key}[
        who
    ]
    benchmark.group = "accept_key"
    assert benchmark(fn, "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [16, 125, 65536], ids=["16B", "125B", "64KiB"])
@pytest.mark.parametrize("who", ["sohbet", "sohbet-python", "websockets"])
def bench_build_server_frame(benchmark: Any, who: str, size: int) -> None:
    payload = os.urandom(size)
    if who == "websockets":

        def fn() -> bytes:
            return Frame(Opcode.BINARY, payload).serialize(mask=False)
    else:
        module = _frames if who == "sohbet" else _frames_py

        def fn() -> bytes:
            return module.build_frame(2, payload)

    benchmark.group = f"build unmasked frame {size} B"
    assert len(benchmark(fn)) >= size
