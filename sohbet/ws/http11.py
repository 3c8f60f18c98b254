"""HTTP/1.1 requests in and responses out, sans-I/O: the part of every connection before an upgrade.

Layer: ws (sans-I/O). Imports the standard library, httptools, orjson and `sohbet.errors`,
`sohbet.ws.config`; nothing of chat.

One port serves HTTP and WebSocket, so every connection starts as HTTP: `RequestReader` turns
bytes into `Request`s (httptools does the HTTP syntax; the size limits are ours, checked as bytes
arrive, before a header is complete). Responses, and the JSON error bodies every refusal
carries (docs/protocol.md), are built here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import httptools
import orjson

from sohbet.errors import ErrorCode, InvalidHandshake
from sohbet.ws.config import Limits

__all__ = [
    "CONTINUE",
    "ERROR_CODES",
    "HEAD",
    "INTERNAL_ERROR",
    "NOT_FOUND",
    "HeadCheck",
    "Request",
    "RequestReader",
    "Response",
    "error_body",
    "error_response",
    "http_response",
]

#: The method whose responses carry no body (RFC 9110 §9.3.2).
HEAD: Final = "HEAD"
_CONTINUE: Final = "100-continue"
#: The interim answer to `Expect: 100-continue`: send the body.
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

#: The `error.code` a JSON error body carries for each HTTP status (docs/protocol.md).
ERROR_CODES: Final[dict[int, ErrorCode]] = {
    HTTPStatus.BAD_REQUEST: ErrorCode.BAD_REQUEST,
    HTTPStatus.UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
    HTTPStatus.FORBIDDEN: ErrorCode.FORBIDDEN,
    HTTPStatus.NOT_FOUND: ErrorCode.NOT_FOUND,
    HTTPStatus.METHOD_NOT_ALLOWED: ErrorCode.BAD_REQUEST,
    HTTPStatus.REQUEST_TIMEOUT: ErrorCode.BAD_REQUEST,
    HTTPStatus.EXPECTATION_FAILED: ErrorCode.BAD_REQUEST,
    HTTPStatus.NOT_IMPLEMENTED: ErrorCode.BAD_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ErrorCode.TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: ErrorCode.BAD_REQUEST,
    HTTPStatus.UPGRADE_REQUIRED: ErrorCode.BAD_REQUEST,
    HTTPStatus.TOO_MANY_REQUESTS: ErrorCode.RATE_LIMITED,
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: ErrorCode.BAD_REQUEST,
    HTTPStatus.INTERNAL_SERVER_ERROR: ErrorCode.INTERNAL,
    HTTPStatus.SERVICE_UNAVAILABLE: ErrorCode.UNAVAILABLE,
}
_NO_BODY: Final = frozenset((HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED))


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request: header names lower-cased, values as sent (latin-1)."""

    method: str
    path: str
    query: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        """Return the value of header *name* (lower-case), repeated fields joined by commas."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None

    @property
    def bearer(self) -> str | None:
        """The credential of `Authorization: Bearer <credential>` (RFC 6750 §2.1); "" when the
        header is there but says something else, None when there is none."""
        header = self.header("authorization")
        if header is None:
            return None
        scheme, _, credential = header.strip().partition(" ")
        return credential.strip() if scheme.lower() == "bearer" else ""

    def count(self, name: str) -> int:
        """Return how many times header *name* (lower-case) appears."""
        return sum(1 for n, _ in self.headers if n == name)

    def tokens(self, name: str) -> list[str]:
        """Return the comma-separated elements of header *name*, stripped and lower-cased."""
        value = self.header(name)
        return [t.strip().lower() for t in value.split(",") if t.strip()] if value else []

    @property
    def is_upgrade(self) -> bool:
        """Whether the request asks to switch to WebSocket (the headers of RFC 6455 §4.2.1)."""
        return "websocket" in self.tokens("upgrade")


@dataclass(frozen=True, slots=True)
class Response:
    """A plain HTTP response, as an application's `Handler.on_http` returns it."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


#: Called with each request's head (its `body` empty) before a byte of its body is read: returns
#: the most body bytes it may carry (None: `max_body_bytes`), or raises `InvalidHandshake` to
#: refuse it there, so that a request refused anyway never makes the server read its body.
HeadCheck = Callable[[Request], int | None]


def _error(status: HTTPStatus, message: str) -> Response:
    return Response(status, error_body(status, message))


class _Full(Exception):
    """Raised inside the parser's callbacks to stop it: a request begins beyond `room`."""


class _Collector:
    """httptools callbacks: gather requests, counting bytes against the limits as they come."""

    __slots__ = (
        "begun",
        "body",
        "body_bytes",
        "body_limit",
        "check",
        "done",
        "expects",
        "head",
        "header_bytes",
        "headers",
        "in_body",
        "limits",
        "parser",
        "room",
        "url",
    )

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.check: HeadCheck | None = None  # these two only while a feed runs (see RequestReader.feed)
        self.parser: httptools.HttpRequestParser | None = None
        self.done: list[Request] = []
        self.room = 0  # how many requests this feed may complete (see RequestReader.feed)
        self._reset()

    def on_message_begin(self) -> None:
        if len(self.done) >= self.room:
            raise _Full  # stop parsing here: the requests behind it are never read
        self.begun = True

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.body_limit = self.limits.max_body_bytes
        self.head: Request | None = None  # known once the head is complete
        self.in_body = False  # the head is complete: what follows is body, not head
        self.begun = False  # a request has begun and is not complete
        self.expects = False  # its head asked for 100 Continue

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_line_bytes:
            raise InvalidHandshake(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request line exceeds {self.limits.max_line_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        self.header_bytes += size
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        if size > self.limits.max_line_bytes:
            raise InvalidHandshake(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"header line of {size} bytes exceeds {self.limits.max_line_bytes}",
            )
        if self.header_bytes > self.limits.max_header_bytes:
            raise InvalidHandshake(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"headers exceed {self.limits.max_header_bytes} bytes"
            )
        if len(self.headers) > self.limits.max_headers:
            raise InvalidHandshake(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {self.limits.max_headers} headers"
            )

    def on_headers_complete(self) -> None:
        self.in_body = True
        parser = self.parser
        assert parser is not None  # set while a feed runs, the only time callbacks do
        try:
            url = httptools.parse_url(self.url) if self.url else None
        except httptools.HttpParserInvalidURLError:
            raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "malformed request target") from None
        head = self.head = Request(
            method=parser.get_method().decode("latin-1"),
            path=url.path.decode("latin-1") if url and url.path else "/",
            query=url.query.decode("latin-1") if url and url.query else "",
            version=parser.get_http_version(),
            headers=tuple(self.headers),
        )
        if self.check is not None:
            asked = self.check(head)
            if asked is not None:
                self.body_limit = min(asked, self.body_limit)
        # A body announced larger than the limit is refused before a byte of it is read
        # (httptools has already refused a malformed or repeated Content-Length); a chunked
        # body is counted as it arrives (`on_body`).
        for name, value in self.headers:
            if name == "content-length" and int(value) > self.body_limit:
                raise InvalidHandshake(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body of {int(value)} bytes exceeds {self.body_limit}"
                )
            elif name == "transfer-encoding":
                # Only chunked is read: a body in another coding (gzip) would be taken as it is,
                # its coding ignored (RFC 9112 §6.1: 501 for a coding not understood).
                codings = [c.strip().lower() for c in value.split(",") if c.strip()]
                if any(c != "chunked" for c in codings):
                    raise InvalidHandshake(
                        HTTPStatus.NOT_IMPLEMENTED, "only Transfer-Encoding: chunked is read; send the body as it is"
                    )
            elif name == "expect":
                if value.strip().lower() != _CONTINUE:
                    raise InvalidHandshake(HTTPStatus.EXPECTATION_FAILED, "only Expect: 100-continue is understood")
                self.expects = True  # the client waits for 100 Continue before it sends the body

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.body_bytes += len(body)
        if self.body_bytes > self.body_limit:
            raise InvalidHandshake(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body exceeds {self.body_limit} bytes")

    def on_message_complete(self) -> None:
        parser, head = self.parser, self.head
        assert parser is not None and head is not None  # set while a feed runs; the head comes first
        self.done.append(
            Request(
                head.method,
                head.path,
                head.query,
                head.version,
                head.headers,
                body=b"".join(self.body),
                keep_alive=parser.should_keep_alive(),
            )
        )
        self._reset()


class RequestReader:
    """Read HTTP/1.1 requests from a byte stream, within the limits; pipelining allowed.

    Parsing stops after an upgrade request: `rest` then holds the bytes that followed it, the
    client's first WebSocket frames. It also stops where a request begins beyond the room the
    caller gave (`full`): one read of pipelined requests is parsed only as far as it is answered,
    so the parse work per read is bounded by the room, not by the read's size.
    """

    __slots__ = ("_cb", "_limits", "_parser", "_pending", "full", "rest", "upgraded")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._cb = _Collector(limits)
        self._parser = httptools.HttpRequestParser(self._cb)
        self._pending = 0  # bytes of the request head being read
        self.rest = b""
        self.upgraded = False
        self.full = False

    @property
    def is_partial(self) -> bool:
        """Whether a request has begun to arrive and is not complete."""
        return self._cb.begun

    def take_continue(self) -> bool:
        """Whether to send `100 Continue` now: a request's head asked for it (`Expect:
        100-continue`, RFC 9110 §10.1.1) and its body has not come; once per request."""
        cb = self._cb
        if cb.expects and cb.in_body:
            cb.expects = False
            return True
        return False

    @property
    def stopped(self) -> bool:
        """Whether parsing has ended (an upgrade, or a request beyond the room): no request follows."""
        return self.upgraded or self.full

    def feed(self, data: bytes, room: int | None = None, check: HeadCheck | None = None) -> list[Request]:
        """Consume bytes; return the requests they complete, in order, at most *room* of them.

        *room* is how many more requests the caller can hold unanswered (default: the limit
        `max_pipelined_requests`). A request that begins beyond it stops the reader for good
        (`full`): the caller answers what it got and closes. Once stopped, bytes are ignored.
        *check* is asked about each request's head as soon as it is read (see `HeadCheck`).

        Raises:
            InvalidHandshake: 431 (a line or the headers too large), 413 (body too large),
                400 (not HTTP/1.x), or what the head check raised.
        """
        if self.stopped:
            return []
        cb = self._cb
        cb.room = self._limits.max_pipelined_requests if room is None else room
        # The parser holds the collector's methods; the collector holds the parser and the check
        # (its owner's method) only while they are needed, so that a socket's HTTP state forms
        # no reference cycle: it is freed when the socket upgrades or closes, not by the next
        # full garbage collection, which on a busy server may be minutes and a churn away.
        cb.parser, cb.check = self._parser, check
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.rest = data[exc.args[0] :]
            self.upgraded = True
        except httptools.HttpParserCallbackError as exc:
            # No local name for the callback's exception: its traceback leads back to this
            # frame, and a name here would close a cycle holding the socket and what it read.
            if isinstance(exc.__context__, InvalidHandshake):
                raise exc.__context__ from None
            if not isinstance(exc.__context__, _Full):
                raise  # pragma: no cover  # only a bug in _Collector gets here, never the peer
            self.full = True
        except httptools.HttpParserError as exc:
            raise InvalidHandshake(HTTPStatus.BAD_REQUEST, f"malformed HTTP request: {exc}") from None
        finally:
            cb.parser = cb.check = None
        done, cb.done = cb.done, []
        if done:
            self._pending = 0
        elif not cb.in_body:
            # httptools reports a header only once it is complete, so an endless header line
            # would grow unseen: bound an unfinished head ourselves. Counted after parsing,
            # when the parser says that all of *data* was head (no head ended, no request did):
            # guessing from the bytes before parsing took body bytes, or a read that ended
            # inside the blank line, for head bytes. It lets the parser hold one read more.
            self._pending += len(data)
            head_limit = self._limits.max_line_bytes + self._limits.max_header_bytes + 4
            if self._pending > head_limit:
                raise InvalidHandshake(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head exceeds {head_limit} bytes"
                )
        return done


def http_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
    head: bool = False,
) -> bytes:
    """Build an HTTP/1.1 response with a Content-Length body.

    For a *head* request the headers describe the body a GET would get, but the body is left
    out (RFC 9110 §9.3.2): bytes after them would be read as the next response.
    """
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    if body or status not in _NO_BODY:
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = (), *, close: bool = True
) -> bytes:
    """Build a JSON error response (docs/protocol.md)."""
    return http_response(status, error_body(status, message), headers=headers, close=close)


def error_body(status: int, message: str, retry_after_ms: int | None = None) -> bytes:
    """The JSON body of an HTTP error: `{"error": {"code", "message"}}` (docs/protocol.md), with
    `retry_after_ms` when the client should wait (a 429)."""
    error: dict[str, object] = {"code": ERROR_CODES.get(status, ErrorCode.BAD_REQUEST), "message": message}
    if retry_after_ms is not None:
        error["retry_after_ms"] = retry_after_ms
    return orjson.dumps({"error": error})


#: What `Handler.on_http` answers by default, and what a failing one is answered with.
NOT_FOUND: Final = _error(HTTPStatus.NOT_FOUND, "no such endpoint")
INTERNAL_ERROR: Final = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
