"""Fuzz target: the compiled frame parser against its pure-Python twin, and masking.

Property: fed the same bytes in the same chunks, with the same limits, `sohbet.ws._frames` and
`sohbet.ws._frames_py` return the same frames after every chunk, raise the same
`ProtocolViolation` (close code, message, frames completed before it) at the same chunk, agree on
`is_mid_message`, and stay dead alike after a violation. Nothing else escapes either parser.
Every close frame's payload parses the same in both, and masking agrees and is its own inverse.

Input: two bytes of options, the chunking (`Reader.chunking`), a 4-byte masking key, then the stream.
The compiled module is not coverage-instrumented (it is C); the twin is, and it follows the
compiled core branch for branch, so coverage of the twin steers the fuzzer through both.
"""

from __future__ import annotations

from typing import Any

from _harness import Reader, chunks, instrumented, main

with instrumented(__name__):
    from sohbet.errors import ProtocolViolation
    from sohbet.ws import _frames, _frames_py
    from sohbet.ws.codes import Opcode

_FRAME_LIMITS = (1 << 20, 125, 200, 1 << 16)  # the first is the default
_MESSAGE_LIMITS = (0, 130, 1000, 1 << 16)
_FRAGMENT_LIMITS = (0, 1, 3, 64)


def parser_options(flags: int) -> dict[str, Any]:
    """FrameParser's keyword arguments, from two bytes: role, rsv1, UTF-8 and the three limits."""
    return {
        "client": bool(flags & 1),
        "allow_rsv1": bool(flags & 2),
        "validate_utf8": not flags & 4,
        "max_frame_bytes": _FRAME_LIMITS[flags >> 3 & 3],
        "max_message_bytes": _MESSAGE_LIMITS[flags >> 5 & 3],
        "max_fragments": _FRAGMENT_LIMITS[flags >> 7 & 3],
    }


def _fields(frames: list[Any]) -> list[tuple[int, bool, bool, bytes]]:
    return [(f.opcode, f.fin, f.rsv1, f.payload) for f in frames]


def _feed(parser: Any, chunk: bytes) -> tuple[Any, ...]:
    try:
        got = parser.feed(chunk)
    except ProtocolViolation as exc:
        return ("violation", exc.close_code, str(exc), _fields(exc.frames))
    return ("ok", _fields(got), parser.is_mid_message)


def _close_outcome(module: Any, payload: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", *module.parse_close(payload))
    except ProtocolViolation as exc:
        return ("violation", exc.close_code, str(exc))


def TestOneInput(data: bytes) -> None:  # noqa: N802  # the name atheris and libFuzzer look for
    r = Reader(data)
    options = parser_options(r.uint(2))
    sizes = r.chunking()
    key = r.take(4).ljust(4, b"\x00")
    stream = r.rest()
    compiled = _frames.FrameParser(**options)
    twin = _frames_py.FrameParser(**options)
    for chunk in chunks(stream, sizes):
        a, b = _feed(compiled, chunk), _feed(twin, chunk)
        assert a == b, (a, b)
        frames = a[1] if a[0] == "ok" else a[3]
        for opcode, _fin, _rsv1, payload in frames:
            if opcode == Opcode.CLOSE:
                closed = _close_outcome(_frames, payload), _close_outcome(_frames_py, payload)
                assert closed[0] == closed[1], closed
        if a[0] == "violation":
            again = _feed(compiled, b"\x81"), _feed(twin, b"\x81")
            assert again[0] == again[1] == ("violation", a[1], a[2], []), again  # dead stays dead
            break
    masked = _frames.apply_mask(stream, key)
    assert masked == _frames_py.apply_mask(stream, key)
    assert _frames.apply_mask(masked, key) == stream
    if len(stream) > 1:  # the key stream runs on across a split at any byte
        cut = len(stream) // 2
        rotated = key[cut % 4 :] + key[: cut % 4]
        assert _frames.apply_mask(stream[:cut], key) + _frames.apply_mask(stream[cut:], rotated) == masked


if __name__ == "__main__":
    main(TestOneInput)
