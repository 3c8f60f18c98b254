"""Autobahn|Testsuite's checks, section by section, as our own tests over real sockets.

The full suite runs by hand (benchmarks/README.md has its result); these cases keep CI guarding
the same behaviour: one or more representatives of every group, sent byte for byte to the echo
server, with what the suite expects back. "echo" entries are messages; ("pong", x) pongs;
("close", code) the server's close frame, after which the TCP connection must end.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sohbet.echo import ECHO_LIMITS, EchoHandler
from sohbet.ws.config import CompressionConfig, WebSocketConfig

from .conftest import RawClient, client_frame, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
K = b"\x01\x02\x03\x04"


f = client_frame


def raw_frame(first: int, payload: bytes) -> bytes:
    """A masked frame with an arbitrary first byte (reserved bits, unknown opcodes)."""
    assert len(payload) < 126
    masked = bytes(b ^ K[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len(payload)]) + K + masked


def chop(frame: bytes, size: int) -> list[bytes]:
    return [frame[i : i + size] for i in range(0, len(frame), size)]


BIG = os.urandom(65536)
UTF8 = "κόσμε Hello-µ@ßöäüàá-UTF-8!! 👋".encode()

CASES: list[tuple[str, list[bytes], list[Any]]] = [
    # 1.x framing: text and binary of the sizes where the length encoding changes.
    *[(f"1.1-text-{n}", [f(1, "*" * n)], [("text", b"*" * n)]) for n in (0, 125, 126, 127, 65535, 65536)],
    *[(f"1.2-binary-{n}", [f(2, b"\xfe" * n)], [("binary", b"\xfe" * n)]) for n in (0, 125, 126, 65536)],
    # 2.x pings and pongs.
    ("2.1-empty-ping", [f(9)], [("pong", b"")]),
    ("2.3-binary-ping", [f(9, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")], [("pong", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")]),
    ("2.4-ping-125", [f(9, b"\xfe" * 125)], [("pong", b"\xfe" * 125)]),
    ("2.5-ping-126", [raw_frame(0x89, b"")[:1] + b"\xfe\x00\x7e" + K + b"\x00" * 126], [("close", 1002)]),
    ("2.6-ping-chopped", chop(f(9, b"\xfe" * 125), 2), [("pong", b"\xfe" * 125)]),
    ("2.7-unsolicited-pong", [f(10, "unsolicited"), f(1, "after")], [("text", b"after")]),
    ("2.10-ten-pings", [f(9, f"ping {i}") for i in range(10)], [("pong", f"ping {i}".encode()) for i in range(10)]),
    # 3.x reserved bits: the echo of the earlier message still goes out first.
    ("3.2-rsv2-after-text", [f(1, "Hello"), raw_frame(0xA1, b"Hello"), f(9)], [("text", b"Hello"), ("close", 1002)]),
    ("3.4-rsv1+rsv2", [raw_frame(0xE1, b"x")], [("close", 1002)]),
    ("3.7-rsv-on-ping", [raw_frame(0xF9, b"")], [("close", 1002)]),
    # 4.x opcodes.
    ("4.1.1-opcode-3", [raw_frame(0x83, b"")], [("close", 1002)]),
    ("4.1.3-opcode-5-after-text", [f(1, "x"), raw_frame(0x85, b""), f(9)], [("text", b"x"), ("close", 1002)]),
    ("4.2.1-opcode-11", [raw_frame(0x8B, b"")], [("close", 1002)]),
    # 5.x fragmentation.
    ("5.1-fragmented-ping", [raw_frame(0x09, b"a"), raw_frame(0x80, b"b")], [("close", 1002)]),
    ("5.3-text-2-fragments", [f(1, "frag1", fin=False), f(0, "frag2")], [("text", b"frag1frag2")]),
    (
        "5.6-ping-between",
        [f(1, "fragment1", fin=False), f(9, "ping payload"), f(0, "fragment2")],
        [("pong", b"ping payload"), ("text", b"fragment1fragment2")],
    ),
    ("5.9-orphan-continuation", [f(0, "x"), f(1, "y")], [("close", 1002)]),
    ("5.18-new-message-mid-message", [f(1, "a", fin=False), f(1, "b")], [("close", 1002)]),
    (
        "5.19-pings-across-five",
        [
            f(1, "1", fin=False),
            f(0, "2", fin=False),
            f(9, "p1"),
            f(0, "3", fin=False),
            f(9, "p2"),
            f(0, "4", fin=False),
            f(0, "5"),
        ],
        [("pong", b"p1"), ("pong", b"p2"), ("text", b"12345")],
    ),
    # 6.x UTF-8, including characters split across fragments and the fail-fast rule.
    ("6.2.2-valid-split", [f(1, UTF8[:7], fin=False), f(0, UTF8[7:])], [("text", UTF8)]),
    ("6.3.1-invalid", [f(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited")], [("close", 1007)]),
    ("6.6-surrogate-in-fragments", [f(1, b"\xed", fin=False), f(0, b"\xa0\x80")], [("close", 1007)]),
    ("6.12-lone-continuation", [f(1, b"\x80")], [("close", 1007)]),
    ("6.22-above-10ffff", [f(1, b"\xf4\x90\x80\x80")], [("close", 1007)]),
    # 7.x closing.
    ("7.1.1-text-then-close", [f(1, "Hello"), f(8, b"\x03\xe8")], [("text", b"Hello"), ("close", 1000)]),
    ("7.1.3-ping-after-close", [f(8, b"\x03\xe8"), f(9)], [("close", 1000)]),
    ("7.3.1-empty-close", [f(8)], [("close", 1005)]),
    ("7.3.2-one-byte-close", [f(8, b"\x03")], [("close", 1002)]),
    ("7.3.6-close-payload-125", [f(8, b"\x03\xe8" + b"*" * 123)], [("close", 1000)]),
    *[(f"7.7-valid-{c}", [f(8, c.to_bytes(2, "big"))], [("close", c)]) for c in (1000, 1003, 1011, 1014, 3000, 4999)],
    *[
        (f"7.9-invalid-{c}", [f(8, c.to_bytes(2, "big"))], [("close", 1002)])
        for c in (0, 999, 1004, 1006, 1015, 2999, 5000)
    ],
    (
        "7.5.1-bad-utf8-reason",
        [f(8, b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")],
        [("close", 1007)],
    ),
    # 9.x sizes well above the chat limits, which the echo server allows.
    ("9.1-text-1MiB", [f(1, "*" * (1 << 20))], [("text", b"*" * (1 << 20))]),
    (
        "9.3-fragmented-64-byte",
        [f(1, BIG[:64].hex()[:64], fin=False), *[f(0, "a" * 64, fin=False)] * 200, f(0, "end")],
        [("text", BIG[:64].hex()[:64].encode() + b"a" * 64 * 200 + b"end")],
    ),
]


@pytest.mark.parametrize(("sent", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conformance(run: Run, sent: list[bytes], expected: list[Any]) -> None:
    async def main() -> None:
        async with running(EchoHandler(), limits=ECHO_LIMITS) as server:
            client = await RawClient.connect(server.port)
            for chunk in sent:
                client.send_raw(chunk)
            for kind, value in expected:
                frame = await client.next_frame()
                assert frame is not None, f"TCP closed while waiting for {kind}"
                got_kind = {1: "text", 2: "binary", 10: "pong", 8: "close"}.get(frame.opcode)
                assert got_kind == kind, (frame, kind, value)
                if kind == "close":
                    code = int.from_bytes(frame.payload[:2], "big") if frame.payload else 1005
                    assert code == value
                    client.close(1000)
                    await client.expect_eof()
                else:
                    assert frame.payload == value
            if expected[-1][0] != "close":
                client.close()
                await client.expect_close(1000)
                await client.expect_eof()

    run(main())


def test_fail_fast_on_invalid_utf8_mid_frame(run: Run) -> None:
    """6.4.3: the frame announces 21 bytes; the bad byte arrives first, the rest never does."""

    async def main() -> None:
        async with running(EchoHandler(), limits=ECHO_LIMITS) as server:
            client = await RawClient.connect(server.port)
            payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64"
            frame = f(1, payload)
            client.send_raw(frame[: 6 + 13])  # up to and including \x90, which cannot follow \xf4
            assert await client.expect_close(1007) != ""
            client.abort()

    run(main())


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover; client_max_window_bits",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
    ],
    ids=["12.1-default", "13.2-client-no-context", "13.5-server-bits-9"],
)
def test_compressed_echo(run: Run, offer: str) -> None:
    async def main() -> None:
        websocket = WebSocketConfig(compression=CompressionConfig(enabled=True, window_bits=15))
        async with running(EchoHandler(), limits=ECHO_LIMITS, websocket=websocket) as server:
            client = await RawClient.connect(server.port, f"Sec-WebSocket-Extensions: {offer}")
            agreed = client.response.split(b"Sec-WebSocket-Extensions: ")[1].split(b"\r\n")[0].decode()
            server_bits = int(agreed.split("server_max_window_bits=")[1][:2]) if "server_max" in agreed else 15
            inflater = zlib.decompressobj(-server_bits)
            client_bits = int(agreed.split("client_max_window_bits=")[1][:2]) if "client_max" in agreed else 15
            deflater = zlib.compressobj(6, zlib.DEFLATED, -client_bits)  # one stream: context takeover
            for message in [b"compress me " * 100, os.urandom(2000), b"compress me " * 100]:
                if "client_no_context_takeover" in agreed:
                    deflater = zlib.compressobj(6, zlib.DEFLATED, -client_bits)
                payload = (deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
                client.send(2, payload, rsv1=True)
                frame = await client.next_frame()
                data = frame.payload
                if frame.rsv1:
                    if "server_no_context_takeover" in agreed:
                        inflater = zlib.decompressobj(-server_bits)
                    data = inflater.decompress(data + b"\x00\x00\xff\xff")
                assert data == message
            client.close()
            await client.expect_close(1000)

    run(main())
