"""Fuzz target: the permessage-deflate inflater and its size cap (`sohbet.ws.deflate.Inflater`).

Property: a message never inflates past its limit (each call returns at most the room it was
given, as `protocol.Connection` passes it); the only error is `ProtocolViolation` with 1009
(too big) or 1007 (not a deflate stream, or data after a final block); and what it inflates is
what zlib itself inflates from the same stream. Two modes: the fuzzer's bytes as compressed
data (mutations of the seeds' real deflate streams reach deep), and the fuzzer's bytes as
plain text compressed by our `Deflater`, which must come back exactly, or as 1009 when over
the limit.

Input: a mode-and-window byte, a limit byte, then messages. In the compressed mode each message
is a frame count byte and, per frame, a length byte and that many bytes; in the plain mode it is
a length byte and that many bytes, cut into frames of the chunking.
"""

from __future__ import annotations

import zlib

from _harness import Reader, chunks, instrumented, main

with instrumented(__name__):
    from sohbet.errors import ProtocolViolation
    from sohbet.ws.codes import CloseCode
    from sohbet.ws.config import MIN_WINDOW_BITS
    from sohbet.ws.deflate import Deflater, Inflater

_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1
_LIMITS = (0, 1, 16, 125, 1000, 4096, 65536, 1 << 20)
_MESSAGES = 8  # at most, per input: context takeover is across messages
_ERRORS = (CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG)


class _Oracle:
    """zlib on its own, unbounded: what the stream holds, or None once zlib refuses it."""

    def __init__(self, wbits: int, reset: bool) -> None:
        self.wbits, self.reset = wbits, reset
        self.obj: zlib._Decompress | None = None

    def inflate(self, data: bytes, final: bool) -> bytes | None:
        obj = self.obj = self.obj or zlib.decompressobj(-self.wbits)
        if obj.eof:  # a final block ended the stream: only empty frames may follow in the message
            out = b"" if not data else None
        else:
            try:
                out = obj.decompress(data)
                if obj.eof and obj.unused_data:
                    return None  # the peer's bytes go on past a final block
                if final and not obj.eof:
                    out += obj.decompress(_TAIL)  # the tail is ours: it may complete a final block
            except zlib.error:
                return None
        if final and (self.reset or obj.eof):
            self.obj = None
        return out


def _compressed_messages(r: Reader) -> list[list[tuple[bytes, bool]]]:
    messages: list[list[tuple[bytes, bool]]] = []
    while r.remaining and len(messages) < _MESSAGES:
        count = r.byte() % 4 + 1
        parts = [r.take(r.byte()) for _ in range(count)]
        messages.append([(p, i == count - 1) for i, p in enumerate(parts)])
    return messages


def _check_compressed(r: Reader, wbits: int, reset: bool, limit: int) -> None:
    inflater, oracle = Inflater(wbits, reset), _Oracle(wbits, reset)
    for message in _compressed_messages(r):
        produced = b""
        expected: bytes | None = b""
        for data, final in message:
            room = limit - len(produced)
            more = oracle.inflate(data, final)
            expected = None if expected is None or more is None else expected + more
            try:
                out = inflater.inflate(data, final, room)
            except ProtocolViolation as exc:
                assert exc.close_code in _ERRORS, exc.close_code
                if exc.close_code == CloseCode.INVALID_DATA:
                    assert expected is None, "1007 for data zlib inflates"
                else:
                    assert expected is None or len(expected) > limit, "1009 within the limit"
                return  # the connection fails: nothing more is inflated
            assert len(out) <= room, (len(out), room)
            produced += out
            assert expected is not None, "inflated what zlib refuses"
            assert produced == expected[: len(produced)]
        assert produced == expected


def _check_plain(r: Reader, wbits: int, reset: bool, limit: int) -> None:
    # zlib cannot compress with an 8-bit window (it uses 9), so our Deflater never offers one.
    wbits = max(wbits, MIN_WINDOW_BITS)
    deflater, inflater = Deflater(wbits, reset), Inflater(wbits, reset)
    sizes = r.chunking()
    while r.remaining:
        text = r.take(r.byte() * 8)
        pieces = chunks(deflater.deflate(text), sizes)
        produced = b""
        try:
            for i, piece in enumerate(pieces):
                out = inflater.inflate(piece, i == len(pieces) - 1, limit - len(produced))
                assert len(out) <= limit - len(produced)
                produced += out
        except ProtocolViolation as exc:
            assert exc.close_code == CloseCode.MESSAGE_TOO_BIG and len(text) > limit, (exc.close_code, len(text))
            return
        assert produced == text and len(text) <= limit


def TestOneInput(data: bytes) -> None:  # noqa: N802  # the name atheris and libFuzzer look for
    r = Reader(data)
    mode = r.byte()
    wbits = 8 + mode % 8  # 8-15: RFC 7692 lets a client promise an 8-bit window
    reset = bool(mode & 8)
    limit = _LIMITS[r.byte() % len(_LIMITS)]
    if mode & 16:
        _check_plain(r, wbits, reset, limit)
    else:
        _check_compressed(r, wbits, reset, limit)


if __name__ == "__main__":
    main(TestOneInput)
