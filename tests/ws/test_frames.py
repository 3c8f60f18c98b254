"""The frame core: RFC 6455 vectors, every violation with its close code, and properties.

Every test that takes `impl` runs against the compiled module and its pure-Python twin.
"""

from __future__ import annotations

import ast
import enum
import importlib
import itertools
import random
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sohbet.errors import ProtocolViolation
from sohbet.ws import _frames_py, frames

from ..conftest import load_compiled_core

KEY = b"\x37\xfa\x21\x3d"  # the masking key of RFC 6455 §5.7
Z = b"\x00\x00\x00\x00"  # an all-zero key leaves the payload readable in the vectors below


def as_tuples(frame_list: list[Any]) -> list[tuple[int, bool, bool, bytes]]:
    return [(f.opcode, f.fin, f.rsv1, f.payload) for f in frame_list]


# --- RFC 6455 §5.7 examples -------------------------------------------------------------------

RFC_EXAMPLES = [
    # (client role?, wire, [(opcode, fin, payload)])
    (True, b"\x81\x05\x48\x65\x6c\x6c\x6f", [(1, True, b"Hello")]),
    (False, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", [(1, True, b"Hello")]),
    (True, b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f", [(1, False, b"Hel"), (0, True, b"lo")]),
    (True, b"\x89\x05\x48\x65\x6c\x6c\x6f", [(9, True, b"Hello")]),
    (False, b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", [(10, True, b"Hello")]),
    (True, b"\x82\x7e\x01\x00" + bytes(range(256)), [(2, True, bytes(range(256)))]),
    (True, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + b"\xab" * 65536, [(2, True, b"\xab" * 65536)]),
]
RFC_IDS = ["unmasked-text", "masked-text", "fragmented-text", "ping", "masked-pong", "binary-256", "binary-64k"]


@pytest.mark.parametrize(("client", "wire", "expected"), RFC_EXAMPLES, ids=RFC_IDS)
def test_parse_rfc_examples(impl: ModuleType, client: bool, wire: bytes, expected: list[Any]) -> None:
    parsed = impl.FrameParser(client=client).feed(wire)
    assert [(f.opcode, f.fin, f.payload) for f in parsed] == expected
    assert all(f.rsv1 is False for f in parsed)


@pytest.mark.parametrize(("client", "wire", "expected"), RFC_EXAMPLES, ids=RFC_IDS)
def test_parse_rfc_examples_one_byte_at_a_time(
    impl: ModuleType, client: bool, wire: bytes, expected: list[Any]
) -> None:
    parser = impl.FrameParser(client=client)
    parsed = [f for i in range(len(wire)) for f in parser.feed(wire[i : i + 1])]
    assert [(f.opcode, f.fin, f.payload) for f in parsed] == expected


@pytest.mark.parametrize(("client", "wire", "expected"), RFC_EXAMPLES, ids=RFC_IDS)
def test_build_rfc_examples(impl: ModuleType, client: bool, wire: bytes, expected: list[Any]) -> None:
    mask = None if client else KEY
    built = b"".join(impl.build_frame(op, payload, fin=fin, mask=mask) for op, fin, payload in expected)
    assert built == wire


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_parser_accepts_any_buffer(impl: ModuleType, kind: type) -> None:
    wire = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert impl.FrameParser().feed(kind(wire)) == [impl.Frame(1, b"Hello")]


def test_control_frames_between_fragments(impl: ModuleType) -> None:
    wire = b"\x01\x83" + Z + b"Hel" + b"\x89\x82" + Z + b"hi" + b"\x80\x82" + Z + b"lo"
    parser = impl.FrameParser()
    assert as_tuples(parser.feed(wire)) == [(1, False, False, b"Hel"), (9, True, False, b"hi"), (0, True, False, b"lo")]
    assert not parser.is_mid_message


def test_is_mid_message_tracks_fragmentation(impl: ModuleType) -> None:
    parser = impl.FrameParser()
    parser.feed(b"\x02\x81" + Z + b"x")
    assert parser.is_mid_message
    parser.feed(b"\x80\x81" + Z + b"y")
    assert not parser.is_mid_message


def test_empty_frames(impl: ModuleType) -> None:
    parser = impl.FrameParser()
    wire = b"\x81\x80" + Z + b"\x82\x80" + Z + b"\x89\x80" + Z
    assert as_tuples(parser.feed(wire)) == [(1, True, False, b""), (2, True, False, b""), (9, True, False, b"")]


def test_one_byte_frames_get_their_own_payload_object(impl: ModuleType) -> None:
    # CPython caches 1-byte bytes objects; writing into a shared one would corrupt every b"x".
    masked = ord("q") ^ KEY[0]
    parsed = impl.FrameParser().feed(b"\x82\x81" + KEY + bytes([masked]))
    assert parsed[0].payload == b"q"
    # bytes([n]) is CPython's shared 1-byte object for n: the payload must not be either of them,
    # and neither may have been written into (unmasked in place).
    assert parsed[0].payload is not bytes([ord("q")]) and parsed[0].payload is not bytes([masked])
    assert bytes([masked])[0] == masked and bytes([ord("q")])[0] == ord("q")


def test_compressed_message_flag_with_extension(impl: ModuleType) -> None:
    parser = impl.FrameParser(allow_rsv1=True)
    wire = b"\x41\x81" + Z + b"\xff" + b"\x80\x81" + Z + b"\xfe"  # rsv1 on the first frame only
    # Compressed payloads are not UTF-8 checked: only the inflated text is (by the caller).
    assert as_tuples(parser.feed(wire)) == [(1, False, True, b"\xff"), (0, True, False, b"\xfe")]


# --- violations, each with its close code ------------------------------------------------------

VIOLATIONS = [
    # (id, parser kwargs, wire, close code)
    ("rsv2", {}, b"\xa1\x80" + Z, 1002),
    ("rsv3", {}, b"\x91\x80" + Z, 1002),
    ("rsv1-without-extension", {}, b"\xc1\x80" + Z, 1002),
    ("rsv1-on-continuation", {"allow_rsv1": True}, b"\x41\x80" + Z + b"\xc0\x80" + Z, 1002),
    ("rsv1-on-ping", {"allow_rsv1": True}, b"\xc9\x80" + Z, 1002),
    *[(f"opcode-{op:x}", {}, bytes([0x80 | op]) + b"\x80" + Z, 1002) for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    ("fragmented-ping", {}, b"\x09\x80" + Z, 1002),
    ("fragmented-close", {}, b"\x08\x80" + Z, 1002),
    ("ping-126-bytes", {}, b"\x89\xfe\x00\x7e" + Z + b"x" * 126, 1002),
    ("unmasked-from-client", {}, b"\x81\x05Hello", 1002),
    ("masked-from-server", {"client": True}, b"\x81\x85" + KEY + b"\x7f\x9f\x4d\x51\x58", 1002),
    ("64-bit-length-top-bit", {}, b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00" + Z, 1002),
    ("continuation-without-start", {}, b"\x80\x80" + Z, 1002),
    ("text-during-fragmented", {}, b"\x01\x80" + Z + b"\x81\x80" + Z, 1002),
    ("binary-during-fragmented", {}, b"\x02\x80" + Z + b"\x82\x80" + Z, 1002),
    ("frame-too-big", {"max_frame_bytes": 125}, b"\x82\xfe\x00\x7e" + Z, 1009),
    ("frame-too-big-64bit", {}, b"\x82\xff\x00\x00\x00\x01\x00\x00\x00\x00" + Z, 1009),
    ("message-too-big", {"max_message_bytes": 150}, b"\x02\xe4" + Z + b"a" * 100 + b"\x80\xe4" + Z, 1009),
    ("too-many-fragments", {"max_fragments": 2}, (b"\x01\x81" + Z + b"a") + (b"\x00\x81" + Z + b"a") * 2, 1009),
    ("invalid-utf8", {}, b"\x81\x82" + Z + b"\xc0\xaf", 1007),
    ("text-ends-mid-character", {}, b"\x81\x81" + Z + b"\xce", 1007),
    ("invalid-utf8-across-fragments", {}, b"\x01\x81" + Z + b"\xce" + b"\x80\x81" + Z + b"A", 1007),
    ("surrogate", {}, b"\x81\x83" + Z + b"\xed\xa0\x80", 1007),
    ("above-u10ffff", {}, b"\x81\x84" + Z + b"\xf4\x90\x80\x80", 1007),
]


@pytest.mark.parametrize(("kwargs", "wire", "code"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_violation_close_code(impl: ModuleType, kwargs: dict[str, Any], wire: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        impl.FrameParser(**kwargs).feed(wire)
    assert info.value.close_code == code
    assert str(info.value)


@pytest.mark.parametrize(("kwargs", "wire", "code"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_violation_whatever_the_chunking(impl: ModuleType, kwargs: dict[str, Any], wire: bytes, code: int) -> None:
    parser = impl.FrameParser(**kwargs)
    with pytest.raises(ProtocolViolation) as info:
        for i in range(len(wire)):
            parser.feed(wire[i : i + 1])
    assert info.value.close_code == code


def test_size_limit_is_checked_from_the_header(impl: ModuleType) -> None:
    # Only the header has arrived: the parser refuses before any payload is buffered.
    parser = impl.FrameParser(max_frame_bytes=1024)
    with pytest.raises(ProtocolViolation) as info:
        parser.feed(b"\x82\xff\x00\x00\x00\x00\x7f\xff\xff\xff" + Z)
    assert info.value.close_code == 1009
    assert "2147483647 bytes exceeds limit of 1024" in str(info.value)


def test_message_limit_does_not_apply_to_compressed_wire_bytes(impl: ModuleType) -> None:
    # A compressed message is bounded after inflating; its wire size may exceed the limit slightly.
    parser = impl.FrameParser(allow_rsv1=True, max_message_bytes=125)
    assert len(parser.feed(b"\xc2\xfe\x00\x82" + Z + b"z" * 130)) == 1


def test_invalid_utf8_fails_before_the_frame_is_complete(impl: ModuleType) -> None:
    parser = impl.FrameParser()
    parser.feed(b"\x81\x8a" + Z)  # a 10-byte text frame announced
    parser.feed(b"ok")
    with pytest.raises(ProtocolViolation) as info:
        parser.feed(b"\xff")  # 3 of 10 bytes in: no valid text can continue this
    assert info.value.close_code == 1007


def test_binary_and_unchecked_text_are_not_utf8_checked(impl: ModuleType) -> None:
    assert impl.FrameParser().feed(b"\x82\x81" + Z + b"\xff")[0].payload == b"\xff"
    assert impl.FrameParser(validate_utf8=False).feed(b"\x81\x81" + Z + b"\xff")[0].payload == b"\xff"


def test_utf8_character_split_across_fragments(impl: ModuleType) -> None:
    wire = b"\x01\x81" + Z + b"\xce" + b"\x80\x81" + Z + b"\xba"
    assert [f.payload for f in impl.FrameParser().feed(wire)] == [b"\xce", b"\xba"]


def test_frames_before_a_violation_are_kept(impl: ModuleType) -> None:
    good = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" + b"\x89\x80" + Z
    with pytest.raises(ProtocolViolation) as info:
        impl.FrameParser().feed(good + b"\x83\x80" + Z)
    assert info.value.close_code == 1002
    assert as_tuples(info.value.frames) == [(1, True, False, b"Hello"), (9, True, False, b"")]


def test_parser_is_dead_after_a_violation(impl: ModuleType) -> None:
    parser = impl.FrameParser()
    with pytest.raises(ProtocolViolation):
        parser.feed(b"\x81\x05Hello")
    with pytest.raises(ProtocolViolation) as info:
        parser.feed(b"\x81\x80" + Z)
    assert info.value.close_code == 1002
    assert info.value.frames == []


@pytest.mark.parametrize(
    "kwargs",
    [{"max_frame_bytes": 124}, {"max_message_bytes": -1}, {"max_fragments": -1}],
    ids=["frame-below-125", "negative-message", "negative-fragments"],
)
def test_parser_refuses_bad_limits(impl: ModuleType, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"of -?\d+ is below (125|0)"):
        impl.FrameParser(**kwargs)


def test_parser_exposes_its_settings(impl: ModuleType) -> None:
    parser = impl.FrameParser(
        client=True, max_frame_bytes=200, allow_rsv1=True, max_message_bytes=300, max_fragments=4, validate_utf8=False
    )
    assert (parser.client, parser.max_frame_bytes, parser.allow_rsv1) == (True, 200, True)
    assert (parser.max_message_bytes, parser.max_fragments, parser.validate_utf8) == (300, 4, False)


# --- building ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
    ids=["0", "125", "126", "65535", "65536"],
)
def test_build_length_encodings(impl: ModuleType, size: int, header: bytes) -> None:
    payload = b"p" * size
    assert impl.build_frame(2, payload) == header + payload


def test_build_flags(impl: ModuleType) -> None:
    assert impl.build_frame(1, b"", fin=False) == b"\x01\x00"
    assert impl.build_frame(1, b"", rsv1=True) == b"\xc1\x00"
    assert impl.build_frame(0, b"x") == b"\x80\x01x"


@pytest.mark.parametrize(
    "payload", ["Hello", b"Hello", bytearray(b"Hello"), memoryview(b"Hello")], ids=["str", "bytes", "bytearray", "mv"]
)
def test_build_accepts_str_and_buffers(impl: ModuleType, payload: Any) -> None:
    assert impl.build_frame(1, payload) == b"\x81\x05Hello"
    assert impl.build_frame(1, payload, mask=bytearray(KEY)) == b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


def test_build_str_is_utf8(impl: ModuleType) -> None:
    assert impl.build_frame(1, "κ") == b"\x81\x02\xce\xba"


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((3, b""), {}, "unknown opcode"),
        ((-1, b""), {}, "unknown opcode"),
        ((16, b""), {}, "unknown opcode"),
        ((9, b"x" * 126), {}, "exceeds 125"),
        ((9, bytearray(126)), {}, "exceeds 125"),
        ((10, b""), {"fin": False}, "fragmented"),
        ((1, b""), {"mask": b"abc"}, "4 bytes"),
        ((9, b""), {"rsv1": True}, "rsv1"),
        ((0, b""), {"rsv1": True}, "rsv1"),
        ((2**70, b""), {}, "unknown opcode"),
    ],
    ids=[
        "opcode-3",
        "opcode-negative",
        "opcode-16",
        "ping-too-big",
        "ping-too-big-buffer",
        "fragmented-pong",
        "mask",
        "rsv1-on-ping",
        "rsv1-on-continuation",
        "huge-opcode",
    ],
)
def test_build_refuses_bad_frames(impl: ModuleType, args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        impl.build_frame(*args, **kwargs)


# --- close frames ------------------------------------------------------------------------------

VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"", (1005, "")), (b"\x03\xe8", (1000, "")), (b"\x03\xe9bye", (1001, "bye")), (b"\x0f\xa0\xce\xba", (4000, "κ"))],
    ids=["empty", "normal", "going-away-reason", "utf8-reason"],
)
def test_parse_close(impl: ModuleType, payload: bytes, expected: tuple[int, str]) -> None:
    assert impl.parse_close(payload) == expected
    assert impl.parse_close(bytearray(payload)) == expected


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_valid_close_codes(impl: ModuleType, code: int) -> None:
    assert impl.is_valid_close_code(code)
    assert impl.parse_close(code.to_bytes(2, "big")) == (code, "")


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_invalid_close_codes(impl: ModuleType, code: int) -> None:
    assert not impl.is_valid_close_code(code)
    with pytest.raises(ProtocolViolation) as info:
        impl.parse_close(code.to_bytes(2, "big"))
    assert info.value.close_code == 1002


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\x03", 1002), (b"\x03\xe8\xff", 1007), (b"\x03\xe8\xce", 1007), (b"\x03\xe8\xed\xa0\x80", 1007)],
    ids=["one-byte", "bad-byte", "truncated-character", "surrogate"],
)
def test_parse_close_violations(impl: ModuleType, payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        impl.parse_close(payload)
    assert info.value.close_code == code


def test_build_close(impl: ModuleType) -> None:
    assert impl.build_close() == b"\x88\x02\x03\xe8"
    assert impl.build_close(1001, "bye") == b"\x88\x05\x03\xe9bye"
    assert impl.build_close(1005) == b"\x88\x00"
    masked = impl.build_close(4008, "slow", mask=KEY)
    assert impl.FrameParser().feed(masked) == [impl.Frame(8, b"\x0f\xa8slow")]


@pytest.mark.parametrize("code", [999, 1004, 1006, 1015, 5000])
def test_build_close_refuses_codes_not_for_the_wire(impl: ModuleType, code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        impl.build_close(code)


@pytest.mark.parametrize("char", ["a", "é", "€", "𝄞"], ids=["1-byte", "2-byte", "3-byte", "4-byte"])
def test_build_close_cuts_a_long_reason_at_a_character(impl: ModuleType, char: str) -> None:
    frame = impl.build_close(1000, char * 200)
    assert len(frame) <= 2 + 125
    code, reason = impl.parse_close(frame[2:])
    assert code == 1000
    assert reason == char * len(reason)
    assert 123 - len(char.encode()) < len(reason.encode()) <= 123


# --- masking and the accept key ----------------------------------------------------------------


def test_apply_mask_rfc_example(impl: ModuleType) -> None:
    assert impl.apply_mask(b"Hello", KEY) == b"\x7f\x9f\x4d\x51\x58"


@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 8, 9, 31, 32, 63, 64, 65, 125, 1000, 65536 + 5])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_apply_mask_matches_bytewise_xor(impl: ModuleType, size: int, kind: type) -> None:
    data = random.Random(size).randbytes(size)
    expected = bytes(b ^ KEY[i % 4] for i, b in enumerate(data))
    assert impl.apply_mask(kind(data), KEY) == expected
    assert impl.apply_mask(data, bytearray(KEY)) == expected


def test_apply_mask_refuses_bad_key(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="4 bytes, got 5"):
        impl.apply_mask(b"x", b"12345")


@pytest.mark.parametrize("key", ["dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25jZQ=="], ids=["str", "bytes"])
def test_accept_key_rfc_example(impl: ModuleType, key: str | bytes) -> None:
    assert impl.accept_key(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_frame_value_semantics(impl: ModuleType) -> None:
    a = impl.Frame(1, b"x", fin=False, rsv1=True)
    assert a == impl.Frame(1, bytearray(b"x"), fin=False, rsv1=True)
    assert a != impl.Frame(1, b"x")
    assert a != (1, b"x")
    assert repr(impl.Frame(2, b"y" * 40)) == f"Frame(opcode=2, payload={b'y' * 32!r}..., fin=True, rsv1=False)"
    assert repr(a) == "Frame(opcode=1, payload=b'x', fin=False, rsv1=True)"


# --- properties --------------------------------------------------------------------------------

SIZES = st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65535, 65536, 70000]))


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bool, list[tuple[int, bool, bool, bytes]], list[bytes | None]]:
    """A valid stream: data messages split into fragments, control frames in between."""
    client = draw(st.booleans())
    spec: list[tuple[int, bool, bool, bytes]] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            spec.append((draw(st.sampled_from([8, 9, 10])), True, False, draw(st.binary(max_size=125))))
            continue
        opcode = draw(st.sampled_from([1, 2]))
        compressed = draw(st.booleans())
        size = draw(SIZES)
        if opcode == 1 and not compressed:
            # Valid UTF-8 of 1- to 4-byte characters; fragments may cut a character in two.
            text = draw(st.text(max_size=40)) + "aé€𝄞" * (size // 10)
            message = text.encode()
        else:
            message = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
        cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=3)))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
        for j, payload in enumerate(pieces):
            last = j == len(pieces) - 1
            spec.append((opcode if j == 0 else 0, last, compressed and j == 0, payload))
            if not last and draw(st.booleans()):
                spec.append((9, True, False, draw(st.binary(max_size=16))))
    masks = [None if client else draw(st.binary(min_size=4, max_size=4)) for _ in spec]
    return client, spec, masks


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(stream=frame_streams(), cuts=st.lists(st.integers(0, 2**20), max_size=12))
def test_build_then_parse_round_trips(impl: ModuleType, stream: Any, cuts: list[int]) -> None:
    client, spec, masks = stream
    wire = b"".join(
        impl.build_frame(op, payload, fin=fin, rsv1=rsv1, mask=mask)
        for (op, fin, rsv1, payload), mask in zip(spec, masks, strict=True)
    )
    parser = impl.FrameParser(client=client, allow_rsv1=True, max_frame_bytes=1 << 17)
    parsed = [f for chunk in split(wire, cuts) for f in parser.feed(chunk)]
    assert as_tuples(parsed) == spec
    assert not parser.is_mid_message


@given(data=st.binary(max_size=3000), key=st.binary(min_size=4, max_size=4))
def test_apply_mask_is_its_own_inverse(impl: ModuleType, data: bytes, key: bytes) -> None:
    assert impl.apply_mask(impl.apply_mask(data, key), key) == data


def outcome(module: ModuleType, kwargs: dict[str, Any], chunks: list[bytes]) -> tuple[Any, ...]:
    parser = module.FrameParser(**kwargs)
    got: list[Any] = []
    try:
        for chunk in chunks:
            got += parser.feed(chunk)
    except ProtocolViolation as exc:
        return ("violation", exc.close_code, str(exc), as_tuples(got + exc.frames))
    return ("ok", as_tuples(got), parser.is_mid_message)


PARSER_KWARGS = st.fixed_dictionaries(
    {
        "client": st.booleans(),
        "allow_rsv1": st.booleans(),
        "max_frame_bytes": st.sampled_from([125, 200, 1 << 20]),
        "max_message_bytes": st.sampled_from([0, 130, 1000]),
        "max_fragments": st.sampled_from([0, 1, 3]),
        "validate_utf8": st.booleans(),
    }
)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Bytes near valid frames: random headers with small payloads, some bits flipped."""
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        b0 = draw(st.integers(0, 255))
        n = draw(st.sampled_from([0, 1, 2, 5, 125, 126, 127, 130]))
        masked = draw(st.booleans())
        if n < 126:
            head = bytes([b0, (0x80 if masked else 0) | n])
        else:
            head = bytes([b0, (0x80 if masked else 0) | 126]) + n.to_bytes(2, "big")
        key = draw(st.binary(min_size=4, max_size=4)) if masked else b""
        parts.append(head + key + draw(st.binary(min_size=n, max_size=n)))
    return b"".join(parts) + draw(st.binary(max_size=12))


@given(kwargs=PARSER_KWARGS, data=st.one_of(st.binary(max_size=400), hostile_streams()), cuts=st.lists(st.integers()))
def test_compiled_and_python_twins_agree(kwargs: dict[str, Any], data: bytes, cuts: list[int]) -> None:
    compiled = load_compiled_core()

    chunks = split(data, cuts)
    assert outcome(compiled, kwargs, chunks) == outcome(_frames_py, kwargs, chunks)


@given(kwargs=PARSER_KWARGS, data=hostile_streams(), cuts=st.lists(st.integers()))
def test_same_result_whatever_the_chunking(
    impl: ModuleType, kwargs: dict[str, Any], data: bytes, cuts: list[int]
) -> None:
    assert outcome(impl, kwargs, split(data, cuts)) == outcome(impl, kwargs, [data])


def test_frames_module_picks_the_compiled_core() -> None:
    load_compiled_core()
    assert frames.IMPLEMENTATION == "cython"
    assert frames.FrameParser.__module__ == "sohbet.ws._frames"


def test_twin_and_stub_export_the_same_names() -> None:
    compiled = load_compiled_core()

    assert sorted(compiled.__all__) == sorted(_frames_py.__all__)
    assert all(hasattr(compiled, name) and hasattr(_frames_py, name) for name in compiled.__all__)
    stub = ast.parse((Path(frames.__file__).parent / "_frames.pyi").read_text())
    stubbed = {node.name for node in stub.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    assert stubbed == set(compiled.__all__)


@example(b"\xed\xa0\x80")
@given(data=st.binary(max_size=40))
def test_twins_agree_on_utf8(data: bytes) -> None:
    compiled = load_compiled_core()

    assert compiled.is_valid_utf8(data) == _frames_py.is_valid_utf8(data)


def test_no_extensions_selects_the_python_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOHBET_NO_EXTENSIONS", "1")
    try:
        twin = importlib.reload(frames)
        assert twin.IMPLEMENTATION == "python"
        assert twin.FrameParser is _frames_py.FrameParser
    finally:
        monkeypatch.delenv("SOHBET_NO_EXTENSIONS")
        importlib.reload(frames)


# --- limits at their exact boundaries, huge lengths ----------------------------------------------


def test_limits_accept_exactly_their_value(impl: ModuleType) -> None:
    frame = b"\x82\xfe\x00\xc8" + Z + b"a" * 200
    assert len(impl.FrameParser(max_frame_bytes=200).feed(frame)) == 1
    fragments = b"\x02\xe4" + Z + b"a" * 100 + b"\x80\xe4" + Z + b"a" * 100
    assert len(impl.FrameParser(max_message_bytes=200).feed(fragments)) == 2
    three = (b"\x01\x81" + Z + b"a") + (b"\x00\x81" + Z + b"a") + (b"\x80\x81" + Z + b"a")
    assert len(impl.FrameParser(max_fragments=3).feed(three)) == 3


def test_non_minimal_length_encodings_are_accepted(impl: ModuleType) -> None:
    # A sender must use the shortest form (§5.2) but a receiver loses nothing by being lenient.
    wire = b"\x82\x7e\x00\x05Hello" + b"\x82\x7f" + (5).to_bytes(8, "big") + b"Hello"
    assert [f.payload for f in impl.FrameParser(client=True).feed(wire)] == [b"Hello", b"Hello"]


def test_largest_legal_64_bit_length_with_no_frame_limit(impl: ModuleType) -> None:
    parser = impl.FrameParser(max_frame_bytes=sys.maxsize)
    good = b"\x81\x82" + Z + b"hi"
    # A header announcing 2^63-1 bytes must not reserve them, nor lose the frame before it.
    assert [f.payload for f in parser.feed(good + b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff" + Z)] == [b"hi"]
    assert parser.feed(b"\x00" * 1000) == []
    assert parser.is_mid_message


def test_huge_continuation_cannot_wrap_the_message_size(impl: ModuleType) -> None:
    parser = impl.FrameParser(max_frame_bytes=sys.maxsize, max_message_bytes=1 << 20)
    parser.feed(b"\x02\x8a" + Z + b"0123456789")
    with pytest.raises(ProtocolViolation) as info:
        parser.feed(b"\x80\xff\x7f\xff\xff\xff\xff\xff\xff\xff" + Z)
    assert info.value.close_code == 1009
    assert "9223372036854775817 bytes exceeds limit of 1048576" in str(info.value)


def test_large_frames_arrive_in_chunks_and_stay_whole(impl: ModuleType) -> None:
    payload = random.Random(7).randbytes(300_000)
    wire = impl.build_frame(2, payload, mask=KEY)
    parser = impl.FrameParser()
    got = [f for i in range(0, len(wire), 65_000) for f in parser.feed(wire[i : i + 65_000])]
    assert [f.payload for f in got] == [payload]


def test_invalid_utf8_in_a_large_frame_reports_its_offset(impl: ModuleType) -> None:
    text = b"a" * 100_000 + b"\xff"
    wire = impl.build_frame(1, text, mask=KEY)
    parser = impl.FrameParser()
    parser.feed(wire[:70_000])
    with pytest.raises(ProtocolViolation, match="at byte 100000 of a text frame"):
        parser.feed(wire[70_000:])


MEMORY_SCRIPT = """
import resource, sys
from sohbet.ws import {module} as impl
from sohbet.errors import ProtocolViolation
size = 400 << 20
parser = impl.FrameParser(client=True, max_frame_bytes=1 << 40)
parser.feed(b"\\x81\\x02hi")
first = parser.feed(b"\\x81\\x02ok" + b"\\x82\\x7f" + size.to_bytes(8, "big"))
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (600 << 20), hard))
chunk = bytes(4 << 20)
try:
    for _ in range(size // len(chunk)):
        parser.feed(chunk)
except ProtocolViolation as exc:
    print(exc.close_code, [f.payload for f in first], exc.frames)
    sys.exit(0)
sys.exit("no violation")
"""


@pytest.mark.parametrize("module", ["_frames", "_frames_py"])
def test_running_out_of_memory_on_a_frame_is_a_1009(module: str) -> None:
    if module == "_frames":
        load_compiled_core()
    # Real memory exhaustion, in a child whose address space is capped just above its needs;
    # -I keeps the source tree off the child's path, so it imports the installed package.
    result = subprocess.run(
        [sys.executable, "-I", "-c", MEMORY_SCRIPT.format(module=module)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1009", "[b'ok']", "[]"]


# --- the twins agree on every public function, whatever the argument types ---------------------


class Reason(enum.StrEnum):
    BYE = "bye"


def strided(data: bytes) -> memoryview:
    return memoryview(data * 2)[::2]


ARGUMENTS = st.one_of(
    st.binary(max_size=70),
    st.binary(max_size=70).map(bytearray),
    st.binary(max_size=70).map(memoryview),
    st.binary(min_size=1, max_size=20).map(strided),
    st.text(max_size=20),
    st.just(Reason.BYE),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 4, 8, 9, 10, 1000, 1005, 4999, True, 1.0, None]),
)


def frame_fields(frame: Any) -> tuple[int, bytes, bool, bool]:
    return (frame.opcode, frame.payload, frame.fin, frame.rsv1)


CALLS = {
    "apply_mask": lambda m, a, b: m.apply_mask(a, b),
    "build_frame": lambda m, a, b: m.build_frame(a, b),
    "build_frame_masked": lambda m, a, b: m.build_frame(1, a, mask=b),
    "build_close": lambda m, a, b: m.build_close(a, b),
    "parse_close": lambda m, a, _b: m.parse_close(a),
    "is_valid_close_code": lambda m, a, _b: m.is_valid_close_code(a),
    "is_valid_utf8": lambda m, a, _b: m.is_valid_utf8(a),
    "utf8_feed": lambda m, a, _b: m.Utf8Validator().feed(a),
    "parser_feed": lambda m, a, _b: m.FrameParser().feed(a),
    "parser_limit": lambda m, a, _b: m.FrameParser(max_frame_bytes=a).max_frame_bytes,
    "frame": lambda m, a, b: frame_fields(m.Frame(a, b)),
}


def call_outcome(module: ModuleType, name: str, a: object, b: object) -> tuple[str, object]:
    try:
        result = CALLS[name](module, a, b)
    except ProtocolViolation as exc:
        return ("violation", exc.close_code)
    except (TypeError, ValueError, BufferError, OverflowError) as exc:
        return ("error", type(exc).__name__)
    return ("ok", result)


@given(name=st.sampled_from(sorted(CALLS)), a=ARGUMENTS, b=ARGUMENTS)
def test_twins_agree_on_any_arguments(name: str, a: object, b: object) -> None:
    compiled = load_compiled_core()
    assert call_outcome(compiled, name, a, b) == call_outcome(_frames_py, name, a, b)


def test_frames_are_read_only(impl: ModuleType) -> None:
    frame = impl.Frame(1, b"x")
    with pytest.raises(AttributeError):
        frame.payload = b"y"


@pytest.mark.parametrize("data", [1, 1.5, "text"], ids=["int", "float", "str"])
def test_byte_functions_refuse_non_buffers(impl: ModuleType, data: object) -> None:
    with pytest.raises(TypeError):
        impl.apply_mask(data, KEY)
    with pytest.raises(TypeError):
        impl.apply_mask(b"x", data)


def test_wire_constants() -> None:
    assert [int(op) for op in frames.Opcode] == [0, 1, 2, 8, 9, 10]
    assert frames.CloseCode.TOKEN_EXPIRED == 4001
    assert frames.CloseCode.SLOW_CONSUMER == 4008
    assert frames.CloseCode.DISCONNECTED_BY_APP == 4501
    assert all(frames.is_valid_close_code(c) for c in frames.CloseCode if c not in (1005, 1006))


def test_the_compiled_cores_constants_mirror_the_python_names() -> None:
    """`_frames.pxd` repeats the opcodes and close codes as a C enum: the same names, the same values."""
    pxd = (Path(frames.__file__).parent / "_frames.pxd").read_text()
    block = pxd[pxd.index("cdef enum:") : pxd.index("cdef struct")]
    mirrored = {name: int(value, 0) for name, value in re.findall(r"^\s+([A-Z_0-9]+) = (\w+)$", block, re.MULTILINE)}
    ops = {name.removeprefix("OP_"): v for name, v in mirrored.items() if name.startswith("OP_")}
    closes = {name.removeprefix("CLOSE_"): v for name, v in mirrored.items() if name.startswith("CLOSE_")}
    assert ops == {op.name: op.value for op in frames.Opcode}
    assert closes and all(frames.CloseCode[name] == value for name, value in closes.items())
    assert mirrored["MAX_CONTROL_PAYLOAD"] == frames.MAX_CONTROL_PAYLOAD


def test_strided_buffers_are_refused_alike(impl: ModuleType) -> None:
    view = strided(b"abcd")
    for call in (
        lambda: impl.apply_mask(view, KEY),
        lambda: impl.build_frame(2, view),
        lambda: impl.is_valid_utf8(view),
        lambda: impl.FrameParser().feed(view),
        lambda: impl.Utf8Validator().feed(view),
    ):
        with pytest.raises(BufferError):
            call()


@pytest.mark.parametrize("opcode", [-1, 16])
def test_frame_refuses_an_opcode_outside_four_bits(impl: ModuleType, opcode: int) -> None:
    with pytest.raises(ValueError, match="outside 0-15"):
        impl.Frame(opcode)


def test_build_close_refuses_a_reason_that_is_not_str(impl: ModuleType) -> None:
    with pytest.raises(TypeError, match="must be str, not bytes"):
        impl.build_close(1000, b"bye")
    assert impl.build_close(1000, Reason.BYE) == b"\x88\x05\x03\xe8bye"
