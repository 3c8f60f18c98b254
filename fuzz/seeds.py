"""Write the seed corpus: `python fuzz/seeds.py` fills `fuzz/corpus/<target>/` with small,
meaningful inputs (valid frames, a real handshake, real envelopes), each in its target's input
format, so the fuzzer starts from the protocol rather than from nothing.

The seeds are committed; rerun this after changing a target's input format. Files are named
`seed-<name>`, so inputs the fuzzer adds (named by their hash) stay apart.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from _harness import encode_chunking

from sohbet.ws import _frames_py as f

HERE = Path(__file__).resolve().parent
KEY = b"\x37\xfa\x21\x3d"  # RFC 6455 §5.7
ONE = encode_chunking([])  # the whole stream in one piece
BYTEWISE = encode_chunking([1])
ODD = encode_chunking([3, 7, 1])


def _deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = obj.compress(data) + obj.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def _masked(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    return f.build_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=KEY)


# Streams a client sends (masked); the server-role parser reads them.
CLIENT_STREAMS = {
    "hello": _masked(1, b"Hello"),
    "fragmented": _masked(1, b"Hel", fin=False) + _masked(0, b"lo"),
    "ping-pong-close": _masked(9, b"hi") + _masked(10, b"") + f.build_close(1000, "bye", mask=KEY),
    "binary-126": _masked(2, bytes(range(126))),
    "utf8-split": _masked(1, "é€𝄞".encode()[:3], fin=False) + _masked(0, "é€𝄞".encode()[3:]),
    "bad-utf8": _masked(1, b"\xed\xa0\x80"),
    "compressed": _masked(1, _deflate(b"Hello Hello Hello"), rsv1=True),
    "compressed-fragments": _masked(1, _deflate(b"ab" * 40)[:5], rsv1=True, fin=False)
    + _masked(0, _deflate(b"ab" * 40)[5:]),
    "close-1005": _masked(8, b""),
    "close-bad-code": _masked(8, b"\x03\xe7"),
    "len64": b"\x82\xff" + (200).to_bytes(8, "big") + KEY + bytes(200),
    "interleaved-ping": _masked(1, b"a", fin=False) + _masked(9, b"p") + _masked(0, b"b"),
}
# Streams a server sends (unmasked); the client-role parser reads them.
SERVER_STREAMS = {
    "rfc-hello": b"\x81\x05Hello",
    "rfc-binary-256": b"\x82\x7e\x01\x00" + bytes(range(256)),
    "close-normal": f.build_close(1000, "done"),
}


def frames_seeds() -> dict[str, bytes]:
    """Options (two bytes: 0x0002 is server role with rsv1 allowed), chunking, key, stream."""
    seeds = {}
    for name, stream in CLIENT_STREAMS.items():
        seeds[name] = b"\x00\x02" + ONE + KEY + stream
        seeds[name + "-bytewise"] = b"\x00\x02" + BYTEWISE + KEY + stream
    for name, stream in SERVER_STREAMS.items():
        seeds[name] = b"\x00\x03" + ODD + KEY + stream
    seeds["limits"] = b"\x01\x6a" + ODD + KEY + CLIENT_STREAMS["fragmented"] * 3
    return seeds


def utf8_seeds() -> dict[str, bytes]:
    texts = {
        "ascii": b"Hello, world",
        "mixed": "héllo €uro 𝄞 ✓".encode(),
        "surrogate": b"\xed\xa0\x80",
        "overlong": b"\xc0\xaf\xe0\x80\xaf",
        "above-max": b"\xf4\x90\x80\x80",
        "truncated": "𝄞".encode()[:3],
        "long-ascii-then-bad": b"a" * 40 + b"\xff",
    }
    seeds = {}
    for name, text in texts.items():
        seeds[name] = ONE + text
        seeds[name + "-split"] = encode_chunking([1, 2, 5]) + text
    return seeds


def inflater_seeds() -> dict[str, bytes]:
    """Compressed mode: mode, limit index, messages of frames; plain mode: mode | 16."""
    text = b"Hello Hello Hello " * 4
    stream = _deflate(text)
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    ended = final.compress(b"ends with a final block") + final.flush()
    bomb = _deflate(bytes(100000))
    seeds = {
        "one-frame": bytes([7, 4, 0, len(stream)]) + stream,
        "two-frames": bytes([7, 4, 1, 10]) + stream[:10] + bytes([len(stream) - 10]) + stream[10:],
        "final-block": bytes([7, 4, 0, len(ended)]) + ended + bytes([0, 0]),
        "no-context-takeover": bytes([15, 4, 0, len(stream)]) + stream + bytes([0, len(stream)]) + stream,
        "bomb-over-limit": bytes([7, 3, 0, len(bomb)]) + bomb,
        "plain": bytes([16 | 7, 4]) + BYTEWISE + bytes([len(text) // 8]) + text,
        "plain-over-limit": bytes([16 | 7, 1]) + encode_chunking([5]) + bytes([20]) + bytes(160),
    }
    return seeds


HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Origin: https://chat.example\r\nSec-WebSocket-Protocol: sohbet.v1\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_max_window_bits=10\r\n\r\n"
)


def http11_seeds() -> dict[str, bytes]:
    """Configuration byte (0x0e: default limits, origins, subprotocols, compression), chunking, stream."""
    get = b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    post = b'POST /v1/tokens HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n{"a": true}'
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    return {
        "handshake": b"\x0e" + ONE + HANDSHAKE + _masked(1, b"early frame"),
        "handshake-bytewise": b"\x0e" + BYTEWISE + HANDSHAKE,
        "handshake-small-limits": b"\x0f" + ODD + HANDSHAKE,
        "version-8": b"\x0e" + ONE + HANDSHAKE.replace(b"Version: 13", b"Version: 8"),
        "pipelined": b"\x00" + ODD + get + post + chunked + get,
        "http10": b"\x00" + ONE + b"GET / HTTP/1.0\r\n\r\n",
        "h2c": b"\x00" + ONE + b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nPRI",
        "post-small-limits": b"\x01" + encode_chunking([60, 0]) + post,
        "long-url-small-limits": b"\x01" + ODD + b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        "big-body-small-limits": b"\x01"
        + ONE
        + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1100\r\n\r\n"
        + b"x" * 1100,
    }


ENVELOPES: list[dict[str, Any]] = [
    {"type": "chat:send", "ref": "1", "payload": {"conversation_id": 7, "content": "hi", "client_id": "c-1"}},
    {"type": "chat:typing", "payload": {"conversation_id": 7}},
    {"type": "chat:read", "payload": {"conversation_id": 7, "seq": 12}},
    {"type": "chat:history", "ref": "h", "payload": {"conversation_id": 7, "before_seq": 40, "limit": 20}},
    {"type": "sync", "payload": {"cursors": {"7": 12, "9": 0}}},
    {"type": "conversation:create", "payload": {"members": ["bob", "carol"], "title": "Team"}},
    {"type": "conversation:list", "payload": {"cursor": "1700000000000.7", "limit": 10}},
    {"type": "conversation:members", "payload": {"conversation_id": 7, "cursor": "bob", "limit": 100}},
    {"type": "conversation:leave", "payload": {"conversation_id": 7}},
    {"type": "presence:query", "payload": {"user_ids": ["bob"]}},
    {"type": "auth:refresh", "payload": {"token": "eyJ.eyJ.sig"}},
    {"type": "sync", "payload": {"cursors": {"²": 1}}},
    {"type": "conversation:list", "payload": {"cursor": "99999999999999999999999.1"}},
]


def envelope_seeds() -> dict[str, bytes]:
    """Raw mode (an even mode byte): the message as the client sends it."""
    seeds = {
        f"raw-{i}-{e['type'].replace(':', '-')}": b"\x00" + json.dumps(e).encode() for i, e in enumerate(ENVELOPES)
    }
    seeds["raw-not-json"] = b'\x00{"type": '
    seeds["built"] = bytes([1, 3, 0, 1, 1, 1, 0, 3, 0, 2, 7, 5, 2, 4, 1, 4, 3, 0])
    return seeds


def protocol_seeds() -> dict[str, bytes]:
    """Options (two bytes), actions, chunking, stream; 0x3822 is the server role with deflate
    (15-bit client window), a 1000-byte message limit."""
    seeds = {}
    for name, stream in CLIENT_STREAMS.items():
        seeds[name] = b"\x38\x22\x00" + ONE + stream
        seeds[name + "-split"] = b"\x07\x12\x65" + ODD + stream
    seeds["client-role"] = b"\x00\x01\x00" + ODD + SERVER_STREAMS["rfc-hello"] + SERVER_STREAMS["close-normal"]
    seeds["frame-flood"] = b"\x40\x00\x01" + BYTEWISE + _masked(1, b"x") * 8
    return seeds


TARGETS = {
    "frames": frames_seeds,
    "utf8": utf8_seeds,
    "inflater": inflater_seeds,
    "http11": http11_seeds,
    "envelope": envelope_seeds,
    "protocol": protocol_seeds,
}


def write() -> None:
    for target, make in TARGETS.items():
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("seed-*"):
            stale.unlink()
        for name, data in make().items():
            (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    write()
