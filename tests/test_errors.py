"""The exception hierarchy carries what a caller needs to act on an error (docs/architecture.md)."""

from __future__ import annotations

from sohbet import errors


def test_protocol_violation_carries_its_close_code_and_earlier_frames() -> None:
    exc = errors.ProtocolViolation(1009, "frame of 9 bytes exceeds limit of 8", frames=["f"])
    assert (exc.close_code, str(exc), exc.frames) == (1009, "frame of 9 bytes exceeds limit of 8", ["f"])
    assert errors.ProtocolViolation(1002, "x").frames == []


def test_invalid_handshake_carries_status_and_headers() -> None:
    exc = errors.InvalidHandshake(426, "unsupported version 12", (("Sec-WebSocket-Version", "13"),))
    assert isinstance(exc, errors.ProtocolViolation)
    assert (exc.http_status, exc.headers) == (426, (("Sec-WebSocket-Version", "13"),))


def test_auth_errors_close_with_4001() -> None:
    assert errors.TokenExpired("expired").close_code == 4001
    assert issubclass(errors.TokenInvalid, errors.AuthError)


def test_error_codes_are_the_protocols() -> None:
    assert sorted(errors.ErrorCode) == [
        "bad_request", "forbidden", "internal", "not_found", "rate_limited", "too_large", "unauthorized", "unavailable",
    ]  # fmt: skip


def test_message_rejected_carries_code_and_retry_hint() -> None:
    exc = errors.MessageRejected("rate_limited", "slow down", retry_after_ms=250)
    assert (exc.code, exc.retry_after_ms) == ("rate_limited", 250)
    assert errors.MessageRejected("bad_request", "x").retry_after_ms is None


def test_every_error_is_a_sohbet_error() -> None:
    exported = {name: getattr(errors, name) for name in errors.__all__}
    # The exports that are not exceptions: the codes, and how a message quotes a peer's value.
    assert exported.pop("ErrorCode") is errors.ErrorCode
    assert exported.pop("shown") is errors.shown and exported.pop("SHOWN_CHARS") == errors.SHOWN_CHARS
    for error in exported.values():
        assert issubclass(error, errors.SohbetError)
    assert issubclass(errors.StoreUnavailable, errors.StoreError)
    assert not issubclass(errors.InvalidState, errors.ProtocolViolation)
