"""Fuzz target: the UTF-8 validator, compiled and twin, whole and incremental, against Python's codec.

Property: `is_valid_utf8` says what `bytes.decode("utf-8")` says. `Utf8Validator`, fed the bytes
in chunks, raises 1007 in exactly the chunk holding the first byte that no valid UTF-8 text can
continue with (by Python's codec and Unicode's maximal-subpart rule), naming that byte's offset in
the chunk; before it, `is_complete` is true exactly when Python's decoder holds no partial
character; at the end, `finish()` raises 1007 exactly when the text stops inside a character.
Both implementations raise the same messages.

Input: the chunking (`Reader.chunking`), then the bytes to check.
"""

from __future__ import annotations

import codecs
from typing import Any

from _harness import Reader, chunks, instrumented, main

with instrumented(__name__):
    from sohbet.errors import ProtocolViolation
    from sohbet.ws import _frames, _frames_py
    from sohbet.ws.codes import CloseCode

_IMPLEMENTATIONS = (_frames, _frames_py)


def first_invalid_byte(data: bytes) -> int:
    """The index of the first byte no valid UTF-8 text continues with, by Python's codec; -1.

    Python reports the maximal ill-formed subpart (Unicode 3.9, U+FFFD substitution): a bad
    lead byte is the error's start, a bad continuation byte its end; data that only stops
    short of a character ("unexpected end") has no invalid byte.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "invalid start byte":
            return exc.start
        if exc.reason == "invalid continuation byte":
            return exc.end
        return -1
    return -1


def _incremental(module: Any, pieces: list[bytes]) -> list[tuple[Any, ...]]:
    """What the validator reports: after each piece, then at `finish()`."""
    validator = module.Utf8Validator()
    steps: list[tuple[Any, ...]] = []
    for piece in pieces:
        try:
            validator.feed(piece)
        except ProtocolViolation as exc:
            steps.append(("violation", exc.close_code, str(exc)))
            return steps
        steps.append(("ok", validator.is_complete))
    try:
        validator.finish()
    except ProtocolViolation as exc:
        steps.append(("unfinished", exc.close_code, str(exc)))
    else:
        steps.append(("finished",))
    return steps


def _expected(data: bytes, pieces: list[bytes]) -> list[tuple[Any, ...]]:
    bad = first_invalid_byte(data)
    decoder = codecs.getincrementaldecoder("utf-8")()
    steps: list[tuple[Any, ...]] = []
    start = 0
    for piece in pieces:
        if 0 <= bad < start + len(piece):
            return [*steps, ("violation", CloseCode.INVALID_DATA, bad - start)]
        decoder.decode(piece)
        steps.append(("ok", decoder.getstate()[0] == b""))
        start += len(piece)
    owed = decoder.getstate()[0]
    return [*steps, ("unfinished", CloseCode.INVALID_DATA) if owed else ("finished",)]


def TestOneInput(data: bytes) -> None:  # noqa: N802  # the name atheris and libFuzzer look for
    r = Reader(data)
    sizes = r.chunking()
    text = r.rest()
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    else:
        valid = True
    for module in _IMPLEMENTATIONS:
        assert module.is_valid_utf8(text) is valid, (module.__name__, valid)
    pieces = chunks(text, sizes)
    compiled, twin = (_incremental(m, pieces) for m in _IMPLEMENTATIONS)
    assert compiled == twin, (compiled, twin)
    expected = _expected(text, pieces)
    # The messages name the offset in the chunk; compare that, and the rest as values.
    got = [(s[0], s[1], int(s[2].split(" at byte ")[1].split()[0])) if s[0] == "violation" else s for s in compiled]
    got = [s[:2] if s[0] == "unfinished" else s for s in got]
    assert got == expected, (got, expected)
    assert (expected[-1] == ("finished",)) is valid


if __name__ == "__main__":
    main(TestOneInput)
