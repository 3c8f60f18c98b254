"""UTF-8 validation of the frame core: well-formedness, and failing at the first bad byte.

Python's own strict codec is the oracle: it is independent of our state machine.
"""

from __future__ import annotations

import itertools
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sohbet.errors import ProtocolViolation
from sohbet.ws import _frames_py

from ..conftest import load_compiled_core

VALID = [
    "",
    "a",
    "Hello-µ@ßöäüàá-UTF-8!!",
    "κόσμε",
    "\u0080",
    "\u07ff",
    "\u0800",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\U00010000",
    "\U0010ffff",
    "a𝄞b€cé",
]

# (bytes, index of the first byte after which no valid UTF-8 can follow; None: only truncated)
INVALID = [
    (b"\x80", 0),  # lone continuation byte
    (b"\xbf", 0),
    (b"\xc0\x80", 0),  # overlong: C0 and C1 can never start a character
    (b"\xc1\xbf", 0),
    (b"\xe0\x80\x80", 1),  # overlong 3-byte form
    (b"\xe0\x9f\xbf", 1),
    (b"\xed\xa0\x80", 1),  # UTF-16 surrogate U+D800
    (b"\xed\xbf\xbf", 1),  # surrogate U+DFFF
    (b"\xf0\x80\x80\x80", 1),  # overlong 4-byte form
    (b"\xf0\x8f\xbf\xbf", 1),
    (b"\xf4\x90\x80\x80", 1),  # U+110000, above the last code point
    (b"\xf5\x80\x80\x80", 0),  # F5-FF can never appear
    (b"\xfe", 0),
    (b"\xff", 0),
    (b"\xce\x41", 1),  # a character interrupted by ASCII
    (b"\xe1\x80\x41", 2),
    (b"abcdefgh\xce\xba\xff", 10),  # past the ASCII fast path
    (b"\xce", None),  # truncated: fine so far, but the message may not end there
    (b"\xe1\x80", None),
    (b"\xf0\x90\x80", None),
]


def prefix_can_continue(data: bytes) -> bool:
    """Whether some valid UTF-8 string starts with *data*, by asking Python's strict codec."""
    endings = [b"\x80", b"\x8f", b"\x90", b"\x9f", b"\xa0", b"\xbf"]
    for n in range(4):
        for tail in itertools.product(endings, repeat=n):
            try:
                (data + b"".join(tail)).decode("utf-8")
            except UnicodeDecodeError:
                continue
            return True
    return False


def first_bad_byte(data: bytes) -> int | None:
    """The oracle: the first index at which *data* stops being a prefix of valid UTF-8."""
    for i in range(len(data)):
        if not prefix_can_continue(data[: i + 1]):
            return i
    return None


@pytest.mark.parametrize(("data", "bad"), INVALID, ids=[d.hex() for d, _ in INVALID])
def test_oracle_agrees_with_the_table(data: bytes, bad: int | None) -> None:
    assert first_bad_byte(data) == bad


@pytest.mark.parametrize("text", VALID, ids=range(len(VALID)))
def test_valid_text(impl: ModuleType, text: str) -> None:
    data = text.encode()
    assert impl.is_valid_utf8(data)
    for i in range(len(data) + 1):
        v = impl.Utf8Validator()
        v.feed(data[:i])
        v.feed(memoryview(data)[i:])
        assert v.is_complete
        v.finish()


@pytest.mark.parametrize(("data", "bad"), INVALID, ids=[d.hex() for d, _ in INVALID])
def test_invalid_text_fails_at_the_first_bad_byte(impl: ModuleType, data: bytes, bad: int | None) -> None:
    assert not impl.is_valid_utf8(data)
    for i in range(len(data) + 1):
        v = impl.Utf8Validator()
        with pytest.raises(ProtocolViolation) as info:
            v.feed(data[:i])
            # The chunk holding the first bad byte is the one that must fail.
            assert bad is None or bad >= i
            v.feed(bytearray(data[i:]))
            assert bad is None
            assert not v.is_complete
            v.finish()
        assert info.value.close_code == 1007


def test_validator_is_reusable_after_finish_and_failure(impl: ModuleType) -> None:
    v = impl.Utf8Validator()
    with pytest.raises(ProtocolViolation):
        v.feed(b"\xff")
    v.feed(b"ok")
    v.finish()
    v.feed(b"\xce")
    with pytest.raises(ProtocolViolation):
        v.finish()
    v.feed(b"fresh")
    v.finish()


@pytest.mark.parametrize(("data", "bad"), INVALID, ids=[d.hex() for d, _ in INVALID])
def test_parser_fails_text_frame_at_the_first_bad_byte(impl: ModuleType, data: bytes, bad: int | None) -> None:
    wire = bytes([0x81, 0x80 | len(data)]) + b"\x00\x00\x00\x00" + data
    header = 6
    for i in range(header, len(wire) + 1):
        parser = impl.FrameParser()
        with pytest.raises(ProtocolViolation) as info:
            parser.feed(wire[:i])
            assert bad is None or header + bad >= i
            parser.feed(wire[i:])
        assert info.value.close_code == 1007


UTF8_PIECES = st.lists(
    st.one_of(
        st.text(max_size=4).map(str.encode),
        st.sampled_from([b"\x80", b"\xc0", b"\xc2", b"\xe0", b"\xed", b"\xf0", b"\xf4", b"\xf5", b"\xa0", b"\x90"]),
        st.binary(max_size=3),
    ),
    max_size=12,
).map(b"".join)


@given(data=UTF8_PIECES)
def test_validity_matches_python(impl: ModuleType, data: bytes) -> None:
    try:
        data.decode("utf-8")
        expected = True
    except UnicodeDecodeError:
        expected = False
    assert impl.is_valid_utf8(data) == expected


@given(data=UTF8_PIECES)
def test_first_bad_byte_matches_the_oracle(data: bytes) -> None:
    compiled = load_compiled_core()

    bad = first_bad_byte(data)
    for module in (compiled, _frames_py):
        v = module.Utf8Validator()
        for i, byte in enumerate(data):
            try:
                v.feed(bytes([byte]))
            except ProtocolViolation:
                assert i == bad
                break
        else:
            assert bad is None
