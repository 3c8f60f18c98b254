"""The HTTP/1.1 phase of a socket: keep-alive, pipelined requests, async answers, until an upgrade.

Layer: ws-transport. Imports asyncio and the sans-I/O ws modules; nothing of chat.

Every socket starts here. `HttpPhase` reads requests (`sohbet.ws.http11`), answers plain ones
through `Handler.on_http` strictly in order (an async answer holds the ones behind it, and the
socket stops reading meanwhile), refuses a bad upgrade with its status and a JSON body, and hands
a good one to the socket to upgrade. It is dropped at the upgrade, so an open
WebSocket carries none of its state.

It reaches into its `WebSocket` (the two are one object's halves, split so each stays readable).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from sohbet.errors import InvalidHandshake, shown
from sohbet.ws import http11

if TYPE_CHECKING:
    from sohbet.ws.server import WebSocket

__all__ = ["BUSY_RETRY_S", "HttpPhase", "retry_busy", "too_many"]

log = logging.getLogger("sohbet.server")


_LAST_STATUS: Final = 599  # the status codes HTTP defines are 100-599 (RFC 9110 §15)
#: A request not answered in time may be retried at once (a send with the same client_id too).
_RETRY_SOON: Final = (("Retry-After", "1"),)


#: Seconds a client refused for capacity (503: `max_connections`, or too many being admitted) is
#: told to wait before it tries again ...
BUSY_RETRY_S: Final = 1
#: ... plus 0 to this many more, at random. Retry-After is whole seconds, so this is the only
#: jitter it can carry: 10,000 clients refused within one second and told the same number would
#: all come back in the same second, refused again in lockstep; spread over two, half the wave
#: comes back at a time while the first half is admitted. (Our own client adds a fraction too.)
BUSY_RETRY_SPREAD_S: Final = 1


def retry_busy() -> tuple[tuple[str, str], ...]:
    """The `Retry-After` header of a refusal for capacity: `BUSY_RETRY_S`, plus jitter."""
    wait_s = BUSY_RETRY_S + random.randint(0, BUSY_RETRY_SPREAD_S)
    return (("Retry-After", str(wait_s)),)


def too_many(refused: tuple[str, int]) -> InvalidHandshake:
    """The 429 of an address over its limits: why, and `Retry-After`."""
    reason, wait_s = refused
    return InvalidHandshake(HTTPStatus.TOO_MANY_REQUESTS, reason, (("Retry-After", str(wait_s)),))


def _checked(request: http11.Request, result: object) -> http11.Response:
    if isinstance(result, http11.Response) and HTTPStatus.CONTINUE <= result.status <= _LAST_STATUS:
        return result
    log.error("on_http returned %r for %s %s, not a Response", result, request.method, request.path)
    return http11.INTERNAL_ERROR


class HttpPhase:
    """The requests of one socket before it upgrades (or of a plain-HTTP socket, all its life).

    Bounds on what one unauthenticated socket can make us do: at most `max_pipelined_requests`
    read and unanswered (a request beyond them is not even parsed; the ones before it are
    answered, the last with `Connection: close`), an idle limit between requests
    (`handshake_timeout_s`), and a lifetime (`http_lifetime_s`) that answers do not extend.
    A request pipelined before an upgrade is answered first, in order, then the upgrade is
    handled: the same outcome as when the client waits for each answer, so nothing depends on
    how the bytes were split into reads.
    """

    __slots__ = ("_queued", "_reader", "_task", "_ws", "opened", "over_address", "over_capacity", "since")

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._reader = http11.RequestReader(ws._server.limits)
        self._queued: deque[http11.Request] = deque()
        self._task: asyncio.Task[None] | None = None
        #: Set when the socket was accepted with the server at `max_connections`: its first
        #: request is answered with a 503 (from its head: its body is never read) and it closes.
        self.over_capacity = False
        #: Set when its address held the most connections allowed at accept: why, and how long
        #: to wait; its first request is answered 429 (from its head) and it closes.
        self.over_address: tuple[str, int] | None = None
        #: When the socket opened: the start of its lifetime.
        self.opened = ws._server.now
        #: When the socket opened, or answered its last request: the start of its idle deadline.
        self.since = self.opened

    @property
    def is_answering(self) -> bool:
        """Whether an async answer is being awaited (the socket is not reading meanwhile)."""
        return self._task is not None

    def cancel(self) -> None:
        """The socket is gone: stop waiting for an answer nobody can receive."""
        task, self._task = self._task, None  # the cancelled task's traceback holds this object
        if task is not None:
            task.cancel()

    def expired(self, now: float) -> bool:
        """Whether the socket is past its idle limit or its lifetime, and should be dropped.

        An answer being awaited holds the socket, but not beyond its lifetime plus the close
        timeout (an answer that never comes must not hold it forever).
        """
        limits = self._ws._server.limits
        end = self.opened + limits.http_lifetime_s
        if self._task is not None:
            return now >= end + limits.close_timeout_s
        return now >= min(self.since + limits.handshake_timeout_s, end)

    def timed_out(self, now: float) -> InvalidHandshake | None:
        """The 408 for a request that began but did not arrive whole in time (a client too slow,
        or one holding the socket), naming the limit that ended it; None when no request is
        under way (an idle socket is only closed: nobody is waiting for an answer)."""
        if self._task is not None or not self._reader.is_partial:
            return None
        limits = self._ws._server.limits
        if now >= self.opened + limits.http_lifetime_s:
            said = f"within the connection's lifetime of {limits.http_lifetime_s:g} s"
        else:
            said = f"within {limits.handshake_timeout_s:g} s"
        return InvalidHandshake(HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive whole {said}")

    def at_capacity(self) -> InvalidHandshake:
        """The 503 for a socket accepted over `max_connections`: after the checks that come first."""
        limit = self._ws._server.limits.max_connections
        return InvalidHandshake(
            HTTPStatus.SERVICE_UNAVAILABLE, f"server is at its limit of {limit} connections", retry_busy()
        )

    def _head(self, head: http11.Request) -> int | None:
        """See `http11.HeadCheck`: a socket over a limit refuses its first plain request before
        its body (no `100 Continue`, nothing buffered); an upgrade is refused in the protocol's
        order (`WebSocket._upgrade`). Otherwise the application says how large a body may be."""
        if not head.is_upgrade:
            if self.over_capacity:
                raise self.at_capacity()
            if self.over_address is not None:
                raise too_many(self.over_address)
        return self._ws._server.handler.body_limit(head)

    def received(self, data: bytes) -> None:
        """Bytes from the peer: read the requests they complete and answer what can be answered."""
        ws = self._ws
        limits = ws._server.limits
        reader = self._reader
        room = limits.max_pipelined_requests - len(self._queued) - (self._task is not None)
        try:
            requests = reader.feed(data, room, self._head)
        except InvalidHandshake as exc:
            ws._refuse(exc, upgrade=False)  # a request the reader could not take, of whatever kind
            return
        if reader.full:
            log.debug(
                "connection %d pipelined over %d requests: closing after the answers",
                ws.id,
                limits.max_pipelined_requests,
            )
        self._queued.extend(requests)
        self._serve_queued()
        self._continue()

    def _continue(self) -> None:
        """Tell a client that waits before sending its body (`Expect: 100-continue`) to send it,
        once every request before it is answered: answers go out in order, and an interim one
        must not be taken for an earlier request's."""
        if not self._queued and self._task is None and self._ws._is_http and self._reader.take_continue():
            self._ws._write(http11.CONTINUE)

    def _serve_queued(self) -> None:
        """Answer queued requests in order; an async answer holds the rest until it is sent."""
        ws = self._ws
        server = ws._server
        # Not while the client is not reading: its pipelined requests wait (see `writable`), so
        # that 31 large answers are never written into memory at once.
        while self._queued and self._task is None and ws._is_http and not ws._paused_at:
            request = self._queued.popleft()
            if not request.is_upgrade:  # "Upgrade: h2c" and friends are plain HTTP to us
                self._answer(request)  # a socket over a limit never gets here: see `_head`
            elif server.closing:
                # Another instance (or this one, restarted) will take it: say when to come back.
                refusal = InvalidHandshake(HTTPStatus.SERVICE_UNAVAILABLE, "server is shutting down", retry_busy())
                ws._refuse(refusal, upgrade=True)
            elif request.path not in server.websocket.paths:
                refusal = InvalidHandshake(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {shown(request.path)}")
                ws._refuse(refusal, upgrade=True)
            else:
                # The parser stops at an upgrade, so this is the last request; `rest` holds the
                # client's first frames, if it sent any without waiting for our 101.
                reader = self._reader
                ws._upgrade(request, reader.rest if reader.upgraded else b"")

    def _answer(self, request: http11.Request) -> None:
        ws = self._ws
        try:
            result = ws._server.handler.on_http(request)
        except Exception:
            log.exception("on_http failed for %s %s", request.method, request.path)
            result = http11.INTERNAL_ERROR
        if inspect.isawaitable(result):
            ws._transport.pause_reading()
            self._task = asyncio.ensure_future(self._finish(request, result))
            return
        self._respond(request, _checked(request, result))

    async def _finish(self, request: http11.Request, pending: Awaitable[http11.Response]) -> None:
        timeout_s = self._ws._server.limits.request_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                response = await pending
        except TimeoutError:
            self._ws._server.stats.answered(HTTPStatus.SERVICE_UNAVAILABLE)
            log.warning("%s %s took longer than %g s: answered 503", request.method, request.path, timeout_s)
            body = http11.error_body(HTTPStatus.SERVICE_UNAVAILABLE, f"no answer within {timeout_s:g} s; retry")
            response = http11.Response(HTTPStatus.SERVICE_UNAVAILABLE, body, headers=_RETRY_SOON)
        except Exception:
            log.exception("on_http failed for %s %s", request.method, request.path)
            response = http11.INTERNAL_ERROR
        self._task = None
        ws = self._ws
        if not ws._is_http:
            return
        self._respond(request, _checked(request, response))
        self.writable()

    def writable(self) -> None:
        """The client reads again (or never stopped): answer what waits, then read more."""
        ws = self._ws
        if ws._is_http and self._task is None and not ws._paused_at:
            # First: an upgrade among the queued requests hands the socket on reading; an
            # answer that fills the buffer, or one awaited, pauses it again.
            ws._transport.resume_reading()
        self._serve_queued()
        self._continue()

    def _respond(self, request: http11.Request, response: http11.Response) -> None:
        ws = self._ws
        server = ws._server
        # Once the parser has stopped (after an upgrade request such as h2c, or a request beyond
        # the pipelining limit), the last answer closes; so does any answer past the lifetime.
        last = self._reader.stopped and not self._queued
        keep = (
            request.keep_alive
            and not last
            and not server.closing
            and server.now - self.opened < server.limits.http_lifetime_s
        )
        ws._write(
            http11.http_response(
                response.status,
                response.body,
                content_type=response.content_type,
                headers=response.headers,
                close=not keep,
                head=request.method == http11.HEAD,
            )
        )
        self.since = server.now  # the idle deadline of a kept-alive connection
        if not keep and ws._is_http:
            ws._linger()
