"""The server: asyncio/uvloop Protocols gluing sockets to the sans-I/O core.

Layer: transport. Everything above it (handshake, protocol, config) owns no socket; this module
owns every socket and every clock read. There is no Task per connection: one `WebSocket`
Protocol object per socket, and one timer per server that sweeps all connections once a second
for ping, pong, handshake, close and slow-consumer deadlines.

Applications subclass `Handler` and call `serve()`; the `WebSocket` they get in callbacks sends,
closes and carries their per-connection `data`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from sohbet.errors import InvalidHandshake
from sohbet.ws import handshake, http11
from sohbet.ws.config import Limits, WebSocketConfig
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived
from sohbet.ws.frames import IMPLEMENTATION, build_frame
from sohbet.ws.protocol import OPEN, BinaryReceived, Connection, TextReceived

__all__ = ["Handler", "Response", "Server", "WebSocket", "broadcast", "serve"]

log = logging.getLogger("sohbet.server")

_SWEEP_S: Final = 1.0  # also the frame limit's slot: its 10 s window (PROTOCOL.md) slides by one sweep

# Phases of a socket: HTTP requests, then (after a 101) WebSocket, then closing, then gone.
_HTTP: Final = 0
_WS: Final = 1
_CLOSING: Final = 2
_CLOSED: Final = 3


@dataclass(frozen=True, slots=True)
class Response:
    """A plain HTTP response from `Handler.on_http`."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class Handler:
    """The application's side of the server; override what you need. Callbacks must not block.

    Callbacks run on the event loop, one at a time per server, so they need no locks; slow work
    belongs in tasks they start.
    """

    def accept(self, request: http11.Request, upgrade: handshake.Upgrade) -> object:
        """Decide on an upgrade request that passed the protocol checks (400, 426, 403).

        Returns:
            Anything: it becomes the connection's `data` (an identity, say).

        Raises:
            InvalidHandshake: to refuse with its status (401 for a bad token, say).
        """
        return None

    def on_open(self, ws: WebSocket) -> None:
        """A connection is open: the 101 response is on its way."""

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
        """A whole message arrived; text is already validated UTF-8."""

    def on_close(self, ws: WebSocket, code: int, reason: str) -> None:
        """The connection is over (called once per opened connection); 1006: no close frame."""

    def on_http(self, request: http11.Request) -> Response | Awaitable[Response]:
        """Answer a plain HTTP request (anything that is not a WebSocket upgrade)."""
        return _NOT_FOUND


_NOT_FOUND: Final = Response(404, http11.error_body(404, "no such endpoint"))
_INTERNAL_ERROR: Final = Response(500, http11.error_body(500, "internal error"))


def _checked(request: http11.Request, result: object) -> Response:
    if isinstance(result, Response) and 100 <= result.status <= 599:
        return result
    log.error("on_http returned %r for %s %s, not a Response", result, request.method, request.path)
    return _INTERNAL_ERROR


class WebSocket(asyncio.Protocol):
    """One client socket: HTTP until it upgrades, then a WebSocket connection.

    Attributes:
        id: a number unique within the server.
        data: what `Handler.accept` returned for this connection.
        subprotocol: the subprotocol selected in the handshake, or None.
        remote: the peer's address as the socket reports it.
    """

    __slots__ = (
        "_batch",
        "_close_at",
        "_conn",
        "_drain",
        "_http_task",
        "_last_rx",
        "_mid_count",
        "_mid_since",
        "_opened_at",
        "_paused_at",
        "_phase",
        "_ping_at",
        "_queued",
        "_reader",
        "_server",
        "_transport",
        "data",
        "id",
        "remote",
        "subprotocol",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._reader: http11.RequestReader | None = http11.RequestReader(server.limits)
        self._conn: Connection | None = None
        self._phase = _HTTP
        self._batch: list[bytes] | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._queued: list[http11.Request] = []
        self._opened_at = server.now
        self._last_rx = server.now
        self._ping_at = 0.0
        self._paused_at = 0.0
        self._close_at = 0.0
        self._mid_since = 0.0
        self._mid_count = -1
        self.id = next(server._ids)
        self.data: object = None
        self.subprotocol: str | None = None
        self.remote: object = None  # the peer address as the socket reports it

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # asyncio's contract
        self._transport = transport
        self.remote = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(high=self._server.limits.buffer_high_water_bytes)
        self._server._sockets[self.id] = self

    def data_received(self, data: bytes) -> None:  # asyncio's contract
        conn = self._conn
        if conn is None:
            self._http_received(data)
            return
        server = self._server
        self._last_rx = server.now
        events = conn.feed(data)
        batch: list[bytes] = []
        self._batch = batch  # sends from the callbacks below gather here: one write at the end
        end: ClosedByPeer | ConnectionFailed | None = None
        broken = False
        on_message = server.handler.on_message
        try:
            for event in events:
                kind = type(event)
                if kind is TextReceived:
                    on_message(self, event.data, True)  # type: ignore[union-attr]  # narrowed by kind
                elif kind is BinaryReceived:
                    on_message(self, event.data, False)  # type: ignore[union-attr]  # narrowed by kind
                elif kind is PingReceived:
                    pong = conn.frame_pong(event.data)  # type: ignore[union-attr]  # narrowed by kind
                    if pong:
                        batch.append(pong)
                elif kind is ClosedByPeer or kind is ConnectionFailed:
                    end = event  # type: ignore[assignment]  # narrowed by kind
                    break
        except Exception:
            log.exception("handler failed on connection %d", self.id)
            broken = True
        self._batch = None
        out = conn.take_output()  # a close frame, if any: last, after the replies above
        if out:
            batch.append(out)
        if batch:
            self._write(batch[0] if len(batch) == 1 else b"".join(batch))
        if end is not None:
            # Report why it closed: the code of whichever side closed first.
            self._ended(conn.close_code, conn.close_reason)
        elif broken:
            self.close(1011, "internal error")

    def eof_received(self) -> bool:  # asyncio's contract
        return False  # the peer hung up its side: close ours too

    def connection_lost(self, exc: Exception | None) -> None:  # asyncio's contract
        server = self._server
        server._sockets.pop(self.id, None)
        if self._http_task is not None:
            self._http_task.cancel()
        if server.connections.pop(self.id, None) is not None:
            # Gone before a close handshake finished: report the close we started, if we did.
            conn = self._conn
            if conn is not None and conn.state != OPEN:
                self._report_close(conn.close_code, conn.close_reason)
            else:
                self._report_close(1006, "")
        self._phase = _CLOSED
        self._conn = None
        self._reader = None
        self._release_drain()

    def pause_writing(self) -> None:  # asyncio's contract
        self._paused_at = self._server.now
        if self._phase == _HTTP:
            self._transport.pause_reading()  # no more requests until the answers are read

    def resume_writing(self) -> None:  # asyncio's contract
        self._paused_at = 0.0
        self._release_drain()
        if self._phase == _HTTP and self._http_task is None:
            self._transport.resume_reading()

    def _release_drain(self) -> None:
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    async def drained(self) -> None:
        """Wait until the outgoing buffer is below its high-water mark (or the socket is gone).

        For long sends, such as a replay of missed messages, that should keep pace with the
        client rather than pile up in memory and end in a 4008.
        """
        if not self._paused_at or self._transport is None or self._phase == _CLOSED:
            return
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await self._drain

    # -- sending ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether messages can still be sent."""
        return self._phase == _WS

    @property
    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return int(self._transport.get_write_buffer_size()) if self._transport is not None else 0

    def send_text(self, data: str | bytes) -> None:
        """Send a text message (`str`, or bytes that are valid UTF-8); dropped once closing."""
        conn = self._conn
        if conn is None or not conn.can_send or self._phase != _WS:
            return
        self._write(conn.frame_text(data))

    def send_binary(self, data: bytes) -> None:
        """Send a binary message; dropped once closing."""
        conn = self._conn
        if conn is None or not conn.can_send or self._phase != _WS:
            return
        self._write(conn.frame_binary(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake; the socket closes when the peer answers or time runs out."""
        conn = self._conn
        if self._phase != _WS or conn is None:
            return
        self._phase = _CLOSING  # first: writing the close frame may find the buffer over its limit
        self._close_at = self._server.now + self._server.limits.close_timeout_s
        conn.close(code, reason)
        self._write(conn.take_output())

    def _write(self, data: bytes) -> None:
        batch = self._batch
        if batch is not None:
            batch.append(data)  # inside data_received: one write for everything at the end
            return
        transport = self._transport
        transport.write(data)
        # Only a paused transport can be over the limit; checking then keeps this path cheap.
        if self._paused_at and transport.get_write_buffer_size() > self._server.limits.max_buffered_bytes:
            self._over_limit()

    def _too_slow(self) -> None:
        log.info("connection %d closed: %d bytes unread", self.id, self.buffered_bytes)
        self.close(4008, "too slow: messages were not read")

    def _over_limit(self) -> None:
        """More unread bytes than allowed: 4008 for a WebSocket, a plain hang-up otherwise."""
        if self._phase == _WS:
            self._too_slow()
        elif self._phase == _HTTP:
            log.info("connection %d dropped: %d response bytes unread", self.id, self.buffered_bytes)
            self._phase = _CLOSED
            self._transport.abort()

    # -- closing ---------------------------------------------------------------------------

    def _ended(self, code: int, reason: str) -> None:
        """The close handshake finished, or the connection failed: report it, hang up.

        Our close frame, if any, is already written; closing the transport lets it drain first,
        and the sweep aborts a socket whose peer does not read it in time. The server closes
        TCP first (RFC 6455 §7.1.1).
        """
        self._phase = _CLOSED  # before on_close: sends from it are dropped
        if self._server.connections.pop(self.id, None) is not None:
            self._report_close(code, reason)
        self._hang_up()

    def _report_close(self, code: int, reason: str) -> None:
        try:
            self._server.handler.on_close(self, code, reason)
        except Exception:
            log.exception("on_close failed on connection %d", self.id)

    # -- HTTP and the opening handshake ----------------------------------------------------

    def _http_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        try:
            requests = reader.feed(data)
        except InvalidHandshake as exc:
            self._refuse(exc)
            return
        self._queued.extend(requests)
        self._serve_queued()

    def _serve_queued(self) -> None:
        """Answer queued requests in order; an async answer holds the rest until it is sent."""
        while self._queued and self._http_task is None and self._phase == _HTTP:
            request = self._queued.pop(0)
            if not request.is_upgrade:  # "Upgrade: h2c" and friends are plain HTTP to us
                self._answer_http(request)
            elif self._server.closing:
                self._refuse(InvalidHandshake(503, "server is shutting down"))
            elif request.path not in self._server.websocket.paths:
                self._refuse(InvalidHandshake(404, f"no WebSocket endpoint at {request.path}"))
            else:
                # The parser stops at an upgrade, so this is the last request; `rest` holds the
                # client's first frames, if it sent any without waiting for our 101.
                reader = self._reader
                self._upgrade(request, reader.rest if reader is not None and reader.upgraded else b"")

    def _answer_http(self, request: http11.Request) -> None:
        try:
            result = self._server.handler.on_http(request)
        except Exception:
            log.exception("on_http failed for %s %s", request.method, request.path)
            result = _INTERNAL_ERROR
        if inspect.isawaitable(result):
            self._transport.pause_reading()
            self._http_task = asyncio.ensure_future(self._finish_http(request, result))
            return
        self._send_response(request, _checked(request, result))

    async def _finish_http(self, request: http11.Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except Exception:
            log.exception("on_http failed for %s %s", request.method, request.path)
            response = _INTERNAL_ERROR
        self._http_task = None
        if self._phase != _HTTP:
            return
        self._send_response(request, _checked(request, response))
        if self._phase == _HTTP:
            self._transport.resume_reading()
            self._serve_queued()

    def _send_response(self, request: http11.Request, response: Response) -> None:
        reader = self._reader
        # After an upgrade request (h2c, say) the parser has stopped: answer it, then hang up.
        keep = request.keep_alive and not self._server.closing and not (reader is not None and reader.upgraded)
        self._write(
            http11.http_response(
                response.status,
                response.body,
                content_type=response.content_type,
                headers=response.headers,
                close=not keep,
            )
        )
        self._opened_at = self._server.now  # the idle deadline of a kept-alive connection
        if not keep and self._phase == _HTTP:
            self._hang_up()

    def _hang_up(self) -> None:
        """Close after the last response; the sweep aborts it if the peer never reads it."""
        self._phase = _CLOSED
        self._close_at = self._server.now + self._server.limits.close_timeout_s
        self._transport.close()

    def _refuse(self, exc: InvalidHandshake) -> None:
        log.debug("refused connection %d: %d %s", self.id, exc.http_status, exc)
        self._reader = None
        self._transport.write(http11.error_response(exc.http_status, str(exc), exc.headers))
        self._hang_up()

    def _upgrade(self, request: http11.Request, rest: bytes) -> None:
        server = self._server
        try:
            upgrade = handshake.validate_upgrade(request, server.websocket)
            data = server.handler.accept(request, upgrade)
            limit = server.limits.max_connections
            if limit and len(server.connections) >= limit:
                raise InvalidHandshake(503, f"server is at its limit of {limit} connections")
        except InvalidHandshake as exc:
            self._refuse(exc)
            return
        except Exception:
            log.exception("accept failed on connection %d", self.id)
            self._refuse(InvalidHandshake(500, "internal error"))
            return
        limits = server.limits
        compression = server.websocket.compression
        self._conn = Connection(
            max_message_bytes=limits.max_message_bytes,
            max_fragments=limits.max_fragments,
            max_frames_per_window=limits.max_frames_per_10s,
            deflate=upgrade.deflate,
            compression_level=compression.level,
            compression_mem_level=compression.mem_level,
        )
        self._reader = None
        self._queued = []
        self.data = data
        self.subprotocol = upgrade.subprotocol
        self._phase = _WS
        self._last_rx = server.now
        server.connections[self.id] = self
        self._transport.write(handshake.switching_protocols(upgrade))
        try:
            server.handler.on_open(self)
        except Exception:
            log.exception("on_open failed on connection %d", self.id)
            self.close(1011, "internal error")
            return
        if rest and self._phase == _WS:
            self.data_received(rest)

    # -- the once-a-second sweep -----------------------------------------------------------

    def _sweep(self, now: float) -> None:
        limits = self._server.limits
        phase = self._phase
        if phase == _HTTP:
            if self._http_task is None and now - self._opened_at >= limits.handshake_timeout_s:
                self._phase = _CLOSED
                self._transport.abort()  # no complete request in time: drop, say nothing
        elif phase == _WS:
            conn = self._conn
            assert conn is not None  # set with _WS
            if self._paused_at and now - self._paused_at >= limits.slow_consumer_s:
                self._too_slow()
            elif conn.is_mid_message:
                if self._mid_count != conn.messages_received:
                    self._mid_count = conn.messages_received
                    self._mid_since = now
                elif now - self._mid_since >= limits.message_timeout_s:
                    self.close(1008, f"message not finished within {limits.message_timeout_s:g} s")
                    return
            if limits.ping_interval_s and self._phase == _WS:
                if self._ping_at and self._last_rx >= self._ping_at:
                    self._ping_at = 0.0  # the peer spoke since our ping: it is alive
                if self._ping_at:
                    if now - self._ping_at >= limits.pong_timeout_s:
                        self.close(1011, "no pong in time")
                elif now - self._last_rx >= limits.ping_interval_s:
                    conn.ping()
                    self._write(conn.take_output())
                    self._ping_at = now
        elif self._close_at and now >= self._close_at:
            self._transport.abort()


class Server:
    """A listening server and its open connections."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits | None = None,
        websocket: WebSocketConfig | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.websocket = websocket or WebSocketConfig()
        #: Open WebSocket connections by id.
        self.connections: dict[int, WebSocket] = {}
        self._sockets: dict[int, WebSocket] = {}  # every socket, HTTP ones too
        self._ids = itertools.count(1)
        self._listener: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Set once shutdown begins: no new upgrades, HTTP answers close their connection.
        self.closing = False
        self.now = 0.0

    @property
    def port(self) -> int:
        """The port the server listens on (useful after binding port 0)."""
        assert self._listener is not None, "start() first"
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> None:
        """Listen on *host*:*port* and start the sweep timer."""
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        self._listener = await loop.create_server(lambda: WebSocket(self), host, port, backlog=backlog)
        self._timer = loop.call_later(_SWEEP_S, self._sweep)
        log.info("listening on %s:%d (frame core: %s)", host, self.port, IMPLEMENTATION)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = self.now = loop.time()
        rate_limited = self.limits.max_frames_per_10s > 0
        for ws in list(self._sockets.values()):
            if rate_limited and ws._conn is not None:
                ws._conn.new_window()
            try:
                ws._sweep(now)
            except Exception:
                log.exception("sweep failed on connection %d", ws.id)
                ws._transport.abort()
        self._timer = loop.call_later(_SWEEP_S, self._sweep)

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection with 1001, wait up to *timeout_s* for them."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for ws in list(self._sockets.values()):
            if ws._phase == _WS:
                ws.close(1001, "server shutting down")
            elif ws._phase == _HTTP and ws._http_task is None:
                ws._hang_up()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._sockets and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for ws in list(self._sockets.values()):
            ws._transport.abort()
        await asyncio.sleep(0)  # let connection_lost run for the aborted ones
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None:
            await self._listener.wait_closed()


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    limits: Limits | None = None,
    websocket: WebSocketConfig | None = None,
) -> Server:
    """Start a server for *handler* and return it once it listens."""
    server = Server(handler, limits=limits, websocket=websocket)
    await server.start(host, port)
    return server


def broadcast(connections: Iterable[WebSocket], data: bytes, *, skip: WebSocket | None = None) -> int:
    """Send one text message to many connections, framing it once; return how many got it.

    Connections with compression get their own compressed frame; all others share one `bytes`,
    written straight to their transport (the common case, kept to a few attribute reads: this
    loop runs once per recipient of every message).
    """
    frame = build_frame(1, data)
    limit = 0
    sent = 0
    for ws in connections:
        conn = ws._conn
        if ws is skip or conn is None or ws._phase != _WS or not conn.can_send:
            continue
        sent += 1
        if conn._deflater is not None:
            ws._write(conn.frame_text(data))
        elif ws._batch is not None:
            ws._batch.append(frame)
        else:
            transport = ws._transport
            transport.write(frame)
            if ws._paused_at:
                limit = limit or ws._server.limits.max_buffered_bytes
                if transport.get_write_buffer_size() > limit:
                    ws._over_limit()
    return sent
