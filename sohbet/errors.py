"""The exception hierarchy: what went wrong, and what a caller needs to act on it; and the
protocol's error codes.

Layer: base. Imports the standard library and `sohbet.ws.codes` (itself a leaf). Also here: how
an error message quotes a value a peer sent (`shown`), bounded.

Peer errors (the other side broke a rule) and our own bugs (`InvalidState`) are separate types, so
a bug is never mistaken for bad input and answered with a close frame.
"""

from __future__ import annotations

import enum
from typing import Final

from sohbet.ws.codes import CloseCode

__all__ = [
    "SHOWN_CHARS",
    "AuthError",
    "ConfigError",
    "ErrorCode",
    "InvalidHandshake",
    "InvalidState",
    "MessageRejected",
    "ProtocolViolation",
    "SohbetError",
    "StoreError",
    "StoreUnavailable",
    "TokenExpired",
    "TokenInvalid",
    "shown",
]

#: The most characters of a peer's (or a file's) value that an error message quotes: a message
#: goes into the log and back to the peer, and a peer's value may be kilobytes long.
SHOWN_CHARS: Final = 64


def shown(value: object) -> str:
    """*value* quoted for an error message (`repr`, so a newline cannot forge a log line),
    cut to `SHOWN_CHARS`."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` message and of an HTTP error body (docs/protocol.md, "Errors")."""

    BAD_REQUEST = "bad_request"  # malformed: not JSON, unknown type, a missing or wrong field
    UNAUTHORIZED = "unauthorized"  # a token that does not verify
    FORBIDDEN = "forbidden"  # not a member, or no such conversation: the same answer
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"  # comes with retry_after_ms
    UNAVAILABLE = "unavailable"  # storage down: nothing was stored, retry with the same client_id
    INTERNAL = "internal"


class SohbetError(Exception):
    """Base class of every error sohbet raises on purpose."""


class ProtocolViolation(SohbetError):
    """The peer broke RFC 6455; the connection must close with `close_code`.

    `frames` holds the frames that were complete before the violation, in the order they arrived,
    so the caller can still act on them (an echo before the close, say) and nothing is lost.
    """

    def __init__(self, close_code: int, message: str, frames: list[object] | None = None) -> None:
        super().__init__(message)
        self.close_code = int(close_code)  # a plain int, as the compiled core raises it
        self.frames: list[object] = frames if frames is not None else []


class InvalidHandshake(ProtocolViolation):
    """The HTTP upgrade request is unacceptable; answer with `http_status`, never upgrade."""

    def __init__(self, http_status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(CloseCode.PROTOCOL_ERROR, message)
        self.http_status = http_status
        self.headers = headers


class InvalidState(SohbetError):
    """We misused an object (sent after close, say): a bug in sohbet, never the peer's fault."""


class AuthError(SohbetError):
    """A token was refused; an open connection closes with 4001."""

    close_code = CloseCode.TOKEN_EXPIRED


class TokenExpired(AuthError):
    """The token's `exp` has passed."""


class TokenInvalid(AuthError):
    """The token is malformed, badly signed, or lacks a required claim."""


class MessageRejected(SohbetError):
    """A chat envelope is unacceptable: reply with an `error` of `code`, keep the connection.

    `ref` is the request's ref when it was readable, so the error can answer the request.
    """

    def __init__(
        self, code: ErrorCode, message: str, retry_after_ms: int | None = None, ref: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_ms = retry_after_ms
        self.ref = ref


class StoreError(SohbetError):
    """Storage failed; driver exceptions never leave `sohbet.store` any other way."""


class StoreUnavailable(StoreError):
    """Storage cannot be reached: nothing was stored and the client may retry."""


class ConfigError(SohbetError):
    """The configuration is invalid; raised at startup only."""
