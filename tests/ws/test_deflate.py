"""permessage-deflate (RFC 7692): negotiation, and a codec that can never inflate past a limit."""

from __future__ import annotations

import os
import sys
import zlib

import pytest

from sohbet.errors import ProtocolViolation
from sohbet.ws import deflate
from sohbet.ws.config import CompressionConfig

ON = CompressionConfig(enabled=True, window_bits=12)


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("permessage-deflate", [("permessage-deflate", [])]),
        (
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo",
            [
                ("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
                ("x-foo", []),
            ],
        ),
        (
            'permessage-deflate; server_max_window_bits="10"',
            [("permessage-deflate", [("server_max_window_bits", "10")])],
        ),
        ("permessage-deflate; =10", None),
        ("per message", None),
        ('permessage-deflate; a="b c"', None),
    ],
    ids=["plain", "params-and-second", "quoted", "no-name", "space-in-token", "bad-quoted"],
)
def test_parse_extensions(header: str, parsed: object) -> None:
    assert deflate.parse_extensions(header) == parsed


@pytest.mark.parametrize(
    ("offer", "response", "params"),
    [
        ("permessage-deflate", "permessage-deflate", deflate.DeflateParams(server_max_window_bits=12)),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=12",
            deflate.DeflateParams(server_max_window_bits=12, client_max_window_bits=12),
        ),
        (
            "permessage-deflate; client_max_window_bits=9",
            "permessage-deflate; client_max_window_bits=9",
            deflate.DeflateParams(server_max_window_bits=12, client_max_window_bits=9),
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
            deflate.DeflateParams(server_max_window_bits=10),
        ),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            deflate.DeflateParams(True, True, 12, 15),
        ),
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
            deflate.DeflateParams(client_no_context_takeover=True, server_max_window_bits=12),
        ),
        (
            "x-webkit-deflate-frame, permessage-deflate",
            "permessage-deflate",
            deflate.DeflateParams(server_max_window_bits=12),
        ),
    ],
    ids=["plain", "client-bits", "client-bits-9", "server-bits", "no-context", "decline-8-take-next", "other-first"],
)
def test_negotiate_accepts(offer: str, response: str, params: deflate.DeflateParams) -> None:
    assert deflate.negotiate(offer, ON) == (params, response)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; mystery",
        "x-other",
        "permessage-deflate; =",
    ],
    ids=[
        "bits-8",
        "bits-16",
        "bits-no-value",
        "client-bits-7",
        "flag-with-value",
        "repeated",
        "unknown",
        "other",
        "bad",
    ],
)
def test_negotiate_declines(offer: str) -> None:
    assert deflate.negotiate(offer, ON) is None


def test_negotiate_when_off_or_not_offered() -> None:
    assert deflate.negotiate("permessage-deflate", CompressionConfig(enabled=False)) is None
    assert deflate.negotiate(None, ON) is None


def test_configured_no_context_takeover_is_announced() -> None:
    config = CompressionConfig(enabled=True, server_no_context_takeover=True)
    params, response = deflate.negotiate("permessage-deflate", config) or (None, "")
    assert params is not None and params.server_no_context_takeover
    assert response == "permessage-deflate; server_no_context_takeover"


@pytest.mark.parametrize("no_context", [False, True], ids=["context-takeover", "no-context-takeover"])
def test_round_trip_through_independent_zlib(no_context: bool) -> None:
    deflater = deflate.Deflater(12, no_context)
    inflater = deflate.Inflater(12, no_context)
    reference = zlib.decompressobj(-12)  # the peer, built from zlib directly
    for message in [b"hello " * 50, b"", os.urandom(3000), b"hello " * 50]:
        payload = deflater.deflate(message)
        assert not payload.endswith(b"\x00\x00\xff\xff")
        assert inflater.inflate(payload, True, 1 << 20) == message
        if no_context:
            reference = zlib.decompressobj(-12)
        assert reference.decompress(payload + b"\x00\x00\xff\xff") == message


def test_context_takeover_makes_repeats_smaller() -> None:
    deflater = deflate.Deflater(15, no_context_takeover=False)
    first = deflater.deflate(b"the same sentence, again and again " * 3)
    second = deflater.deflate(b"the same sentence, again and again " * 3)
    assert len(second) < len(first)


def test_inflating_a_bomb_stops_at_the_limit() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(bytes(50 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(payload) < 100 * 1024
    with pytest.raises(ProtocolViolation) as info:
        deflate.Inflater(15, False).inflate(payload[:-4], True, 64 * 1024)
    assert info.value.close_code == 1009


@pytest.mark.parametrize("split", [False, True], ids=["whole", "in-two"])
def test_the_largest_limit_a_connection_can_have_inflates(split: bool) -> None:
    """max_message_bytes may be sys.maxsize (Limits refuses more): one over it must not
    overflow zlib's Py_ssize_t, in either call (the data, and the tail a final frame adds)."""
    payload = deflate.Deflater(15, False).deflate(b"big enough " * 100)
    inflater = deflate.Inflater(15, False)
    if split:
        got = inflater.inflate(payload[:10], False, sys.maxsize) + inflater.inflate(payload[10:], True, sys.maxsize)
    else:
        got = inflater.inflate(payload, True, sys.maxsize)
    assert got == b"big enough " * 100


def test_the_limit_is_the_room_the_message_has_left() -> None:
    payload = deflate.Deflater(15, False).deflate(b"x" * 10_000)
    half = len(payload) // 2
    whole = deflate.Inflater(15, False)
    first = whole.inflate(payload[:half], False, 10_000)
    assert first + whole.inflate(payload[half:], True, 10_000 - len(first)) == b"x" * 10_000
    short = deflate.Inflater(15, False)
    first = short.inflate(payload[:half], False, 10_000)
    with pytest.raises(ProtocolViolation) as info:
        short.inflate(payload[half:], True, 10_000 - len(first) - 1)
    assert info.value.close_code == 1009


def test_garbage_is_invalid_data() -> None:
    with pytest.raises(ProtocolViolation) as info:
        deflate.Inflater(15, False).inflate(b"\xff\xff\xff\xff", True, 1000)
    assert info.value.close_code == 1007


def finished(message: bytes, wbits: int = 15) -> bytes:
    """A message ended with a final (BFINAL) block instead of a sync flush (RFC 7692 §7.2.3.4)."""
    obj = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    return obj.compress(message) + obj.flush(zlib.Z_FINISH)


def test_a_final_block_ends_the_stream_and_the_next_message_starts_afresh() -> None:
    inflater = deflate.Inflater(15, no_context_takeover=False)
    assert inflater.inflate(finished(b"first message"), True, 1000) == b"first message"
    assert inflater.inflate(finished(b"second message"), True, 1000) == b"second message"
    payload = finished(b"split across fragments")
    assert inflater.inflate(payload[:5], False, 1000) + inflater.inflate(payload[5:], True, 1000) == (
        b"split across fragments"
    )


@pytest.mark.parametrize("split", [False, True], ids=["same-frame", "next-fragment"])
def test_data_after_a_final_block_is_invalid(split: bool) -> None:
    inflater = deflate.Inflater(15, no_context_takeover=False)
    payload = finished(b"done") + b"\x00garbage"
    with pytest.raises(ProtocolViolation) as info:
        if split:
            inflater.inflate(finished(b"done"), False, 1000)
            inflater.inflate(b"more", True, 1000)
        else:
            inflater.inflate(payload, True, 1000)
    assert info.value.close_code == 1007


def test_window_bits_with_a_leading_zero_are_declined() -> None:
    assert deflate.negotiate("permessage-deflate; server_max_window_bits=09", ON) is None


def test_an_empty_fragment_after_a_final_block_is_fine() -> None:
    inflater = deflate.Inflater(15, no_context_takeover=False)
    assert inflater.inflate(finished(b"all here"), False, 1000) == b"all here"
    assert inflater.inflate(b"", True, 1000) == b""
    assert inflater.inflate(finished(b"next"), True, 1000) == b"next"
