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
from collections.abc import Awaitable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from sohbet.errors import InvalidHandshake
from sohbet.ws import http11

if TYPE_CHECKING:
    from sohbet.ws.server import WebSocket

__all__ = ["HttpPhase"]

log = logging.getLogger("sohbet.server")


_LAST_STATUS: Final = 599  # the status codes HTTP defines are 100-599 (RFC 9110 §15)


def _checked(request: http11.Request, result: object) -> http11.Response:
    if isinstance(result, http11.Response) and HTTPStatus.CONTINUE <= result.status <= _LAST_STATUS:
        return result
    log.error("on_http returned %r for %s %s, not a Response", result, request.method, request.path)
    return http11.INTERNAL_ERROR


class HttpPhase:
    """The requests of one socket before it upgrades (or of a plain-HTTP socket, all its life)."""

    __slots__ = ("_queued", "_reader", "_task", "_ws", "since")

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._reader = http11.RequestReader(ws._server.limits)
        self._queued: list[http11.Request] = []
        self._task: asyncio.Task[None] | None = None
        #: When the socket opened, or answered its last request: the start of its idle deadline.
        self.since = ws._server.now

    @property
    def is_answering(self) -> bool:
        """Whether an async answer is being awaited (the socket is not reading meanwhile)."""
        return self._task is not None

    def cancel(self) -> None:
        """The socket is gone: stop waiting for an answer nobody can receive."""
        if self._task is not None:
            self._task.cancel()

    def received(self, data: bytes) -> None:
        """Bytes from the peer: read the requests they complete and answer what can be answered."""
        try:
            requests = self._reader.feed(data)
        except InvalidHandshake as exc:
            self._ws._refuse(exc)
            return
        self._queued.extend(requests)
        self._serve_queued()

    def _serve_queued(self) -> None:
        """Answer queued requests in order; an async answer holds the rest until it is sent."""
        ws = self._ws
        server = ws._server
        while self._queued and self._task is None and ws._is_http:
            request = self._queued.pop(0)
            if not request.is_upgrade:  # "Upgrade: h2c" and friends are plain HTTP to us
                self._answer(request)
            elif server.closing:
                ws._refuse(InvalidHandshake(HTTPStatus.SERVICE_UNAVAILABLE, "server is shutting down"))
            elif request.path not in server.websocket.paths:
                ws._refuse(InvalidHandshake(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {request.path}"))
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
        try:
            response = await pending
        except Exception:
            log.exception("on_http failed for %s %s", request.method, request.path)
            response = http11.INTERNAL_ERROR
        self._task = None
        ws = self._ws
        if not ws._is_http:
            return
        self._respond(request, _checked(request, response))
        if ws._is_http:
            ws._transport.resume_reading()
            self._serve_queued()

    def _respond(self, request: http11.Request, response: http11.Response) -> None:
        ws = self._ws
        # After an upgrade request (h2c, say) the parser has stopped: answer it, then hang up.
        keep = request.keep_alive and not ws._server.closing and not self._reader.upgraded
        ws._write(
            http11.http_response(
                response.status,
                response.body,
                content_type=response.content_type,
                headers=response.headers,
                close=not keep,
            )
        )
        self.since = ws._server.now  # the idle deadline of a kept-alive connection
        if not keep and ws._is_http:
            ws._hang_up()
