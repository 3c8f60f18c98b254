"""One client socket on the server: HTTP until it upgrades, then a WebSocket, then gone.

Layer: ws-transport. Imports asyncio and the sans-I/O ws modules; nothing of chat.

`WebSocket` is the asyncio Protocol of one socket: it feeds bytes to the sans-I/O `Connection`,
calls the application's `Handler` with what arrived, writes what the connection queued, and
keeps the per-socket deadlines that the server's once-a-second sweep checks (handshake, ping,
pong, close, slow consumer, unfinished message). Its HTTP phase lives in `http_phase.py`.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from sohbet.errors import InvalidHandshake
from sohbet.ws import handshake, http11
from sohbet.ws.addresses import OVER_LIMIT_ANSWERED, Swamped, client_address, is_trusted
from sohbet.ws.codes import CloseCode
from sohbet.ws.frames import IMPLEMENTATION
from sohbet.ws.http_phase import HttpPhase, too_many
from sohbet.ws.protocol import OPEN, Connection

if IMPLEMENTATION == "cython":  # one switch for both compiled modules (SOHBET_NO_EXTENSIONS)
    from sohbet.ws import _send as sending
else:
    from sohbet.ws import _send_py as sending  # type: ignore[no-redef]  # the same API, see _send.pyi

if TYPE_CHECKING:
    from sohbet.ws.server import Server

__all__ = ["PHASE_CLOSED", "PHASE_CLOSING", "PHASE_HTTP", "PHASE_LINGERING", "PHASE_WS", "WebSocket", "sending"]

log = logging.getLogger("sohbet.server")

# Phases of a socket: HTTP requests, then (after a 101) WebSocket, then closing, then (the
# WebSocket over, our side of TCP shut) reading and discarding what the peer still sends, then gone.
PHASE_HTTP: Final = 0
PHASE_WS: Final = 1
PHASE_CLOSING: Final = 2
PHASE_LINGERING: Final = 3
PHASE_CLOSED: Final = 4

_ACCEPTED: Final = "accepted"  # the label of an upgrade that succeeded
_HOST_PORT: Final = 2  # a peer address is (host, port) for IPv4, (host, port, flow, scope) for IPv6


def _direct_fd(transport: Any) -> int:
    """The descriptor to `send()` to directly, or -1: a plain TCP socket only (never under TLS,
    whose bytes only the transport can produce; never a transport without a socket)."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return -1
    fd = fileno()
    return fd if isinstance(fd, int) else -1


class WebSocket(sending.SocketCore, asyncio.Protocol):
    """One client socket: HTTP until it upgrades, then a WebSocket connection.

    What every message goes through (reading, `send_text`, the write, and the state they read)
    is `sending.SocketCore`, compiled; this class is the rest.

    Attributes:
        id: a number unique within the server.
        data: what `Handler.accept` returned for this connection (None once it is gone).
        subprotocol: the subprotocol selected in the handshake, or None.
        remote: the peer's address as the socket reports it.
    """

    __slots__ = (
        "_close_at",
        "_counted",
        "_drain",
        "_http",
        "_linger_left",
        "_mid_count",
        "_mid_since",
        "_ping_at",
        "client",
        "data",
        "id",
        "subprotocol",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport = None
        self._conn = None
        self._phase = PHASE_HTTP
        self._batch = None
        self._drain: asyncio.Future[None] | None = None
        self._fd = -1  # the socket's descriptor while writes may go straight to it (see `_send`)
        # Not yet seen empty (`_send.SocketCore._drained`); it matters only once `_fd` is set,
        # after the upgrade's 101 went to the transport, so the first direct write asks it.
        self._drained = False
        self._last_rx = server.now
        self._ping_at = 0.0
        self._paused_at = 0.0
        self._close_at = 0.0
        self._mid_since = 0.0
        self._mid_count = -1
        self._linger_left = 0
        self.id = next(server._ids)
        self.data: object = None
        self.subprotocol: str | None = None
        #: The client's address: the peer's, or behind a trusted proxy the one it forwarded
        #: (known once an upgrade is asked for).
        self.client: str | None = None
        self._counted = False  # counted among its client address's open connections
        # Bytes read and written: a slot of its own, the cheapest count on the per-read and
        # per-write paths; the server adds them up when it is asked (and when the socket ends).
        self._rx = 0
        self._tx = 0
        self._http: HttpPhase | None = HttpPhase(self)  # until the upgrade

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # asyncio's contract
        self._transport = transport
        server = self._server
        transport.set_write_buffer_limits(high=server.limits.buffer_high_water_bytes)
        limits = server.limits
        http = self._http
        assert http is not None  # every socket starts as HTTP
        if limits.max_connections and len(server._sockets) >= limits.max_connections:
            if len(server._sockets) >= limits.max_connections + OVER_LIMIT_ANSWERED:
                self._drop()
                return
            http.over_capacity = True  # counted here, at accept: plain HTTP sockets too
        peer = self._peer_host()
        if not is_trusted(peer, limits.trusted_proxies):
            # A client's own socket, HTTP or not, counts toward its address from the start to
            # its end (lingering too), also one over the limit that is only answered 429. A
            # proxy's sockets carry many clients (and HTTP ones several, one after another):
            # their WebSockets are counted at the upgrade, by the address the proxy forwards.
            try:
                http.over_address = server.addresses.accepted(peer)
            except Swamped:
                self._drop()
                return
            self.client = peer
            self._counted = True
        server._sockets[self.id] = self

    def _drop(self) -> None:
        """Close a socket at accept, unanswered: past every limit and the refusals it answers."""
        self._server.stats.dropped += 1
        self._phase = PHASE_CLOSED
        self._transport.abort()

    def eof_received(self) -> bool:  # asyncio's contract
        return False  # the peer hung up its side: close ours too

    def connection_lost(self, exc: Exception | None) -> None:  # asyncio's contract
        server = self._server
        self._fd = -1  # the transport closes the descriptor once this returns
        server._sockets.pop(self.id, None)
        stats = server.stats
        stats.bytes_received += self._rx
        stats.bytes_sent += self._tx
        self._rx = self._tx = 0
        self._uncount()
        if self._http is not None:
            self._http.cancel()
        if server.connections.pop(self.id, None) is not None:
            # Gone before a close handshake finished: report the close we started, if we did.
            conn = self._conn
            if conn is not None and conn.state != OPEN:
                self._report_close(conn.close_code, conn.close_reason)
            else:
                self._report_close(int(CloseCode.ABNORMAL), "")
        self._phase = PHASE_CLOSED
        self._conn = None
        self._http = None
        # The handler's data (a chat session) usually refers back to this socket: dropping it
        # here frees the pair, and the transport they hold, as soon as the last outside
        # reference goes, not at the next full garbage collection (minutes, on a busy server).
        self.data = None
        self._release_drain()

    def pause_writing(self) -> None:  # asyncio's contract
        self._paused_at = self._server.now
        if self._phase == PHASE_HTTP:
            self._transport.pause_reading()  # no more requests until the answers are read

    def resume_writing(self) -> None:  # asyncio's contract
        self._paused_at = 0.0
        self._release_drain()
        if self._phase == PHASE_HTTP and self._http is not None:
            self._http.writable()

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
        if not self._paused_at or self._transport is None or self._phase >= PHASE_LINGERING:
            return
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await self._drain

    @property
    def address(self) -> str:
        """Who is connected, for the log: the client's address once known (see `client`), else
        the peer's `host:port`."""
        if self.client is not None:
            return self.client
        remote = self.remote
        if isinstance(remote, tuple) and len(remote) >= _HOST_PORT:
            return f"{remote[0]}:{remote[1]}"
        return str(remote)

    @property
    def remote(self) -> object:
        """The peer's address as the socket reports it. Asked of the transport, not kept: a
        tuple per connection is memory that idle connections add up."""
        return None if self._transport is None else self._transport.get_extra_info("peername")

    def _peer_host(self) -> str:
        remote = self.remote
        return str(remote[0]) if isinstance(remote, tuple) and remote else str(remote)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            assert self.client is not None  # set before it was counted
            self._server.addresses.release(self.client)

    # -- sending ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether messages can still be sent."""
        return self._phase == PHASE_WS

    @property
    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return int(self._transport.get_write_buffer_size()) if self._transport is not None else 0

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the close handshake; the socket closes when the peer answers or time runs out."""
        conn = self._conn
        if self._phase != PHASE_WS or conn is None:
            return
        self._phase = PHASE_CLOSING  # first: writing the close frame may find the buffer over its limit
        self._close_at = self._server.now + self._server.limits.close_timeout_s
        conn.close(code, reason)
        self._write(conn.take_output())

    def _too_slow(self) -> None:
        self._server.stats.slow_consumers += 1
        log.info("connection %d closed: %d bytes unread", self.id, self.buffered_bytes)
        self.close(CloseCode.SLOW_CONSUMER, "too slow: messages were not read")

    def _over_limit(self) -> None:
        """More unread bytes than allowed: 4008 for a WebSocket, a plain hang-up otherwise."""
        if self._phase == PHASE_WS:
            self._too_slow()
        elif self._phase == PHASE_HTTP:
            log.info("connection %d dropped: %d response bytes unread", self.id, self.buffered_bytes)
            self._phase = PHASE_CLOSED
            self._transport.abort()

    # -- closing ---------------------------------------------------------------------------

    def _ended(self, code: int, reason: str) -> None:
        """The close handshake finished, or the connection failed: report it, then linger.

        Our close frame, if any, is already written. The server closes TCP first (RFC 6455
        §7.1.1), but not at once: see `_linger`.
        """
        self._phase = PHASE_CLOSED  # before on_close: sends from it are dropped
        if self._server.connections.pop(self.id, None) is not None:
            self._report_close(code, reason)
        self._linger()

    def _linger(self) -> None:
        """Shut our side of TCP, then read and discard until the peer hangs up or a bound is hit.

        Closing a socket with unread input makes the kernel reset the connection, and a peer
        still sending (the rest of a message over the limit, a flood, pipelined requests beyond
        the limit, a body we refused) then reads ECONNRESET instead of the close frame or the
        last HTTP answer that says why. So, like nginx's lingering close: the FIN goes out once
        the buffered bytes have drained, and what the peer still sends is read and dropped for
        at most `linger_s` (the sweep's granularity added) or `linger_bytes`. The socket stays
        in `Server._sockets` meanwhile, but not in `connections`: the WebSocket is over and
        `on_close` has run. A server shutting down does not linger: it hangs up.
        """
        self._http = None
        server = self._server
        limits = server.limits
        transport = self._transport
        if not limits.linger_s or server.closing or not transport.can_write_eof():
            self._hang_up()
            return
        self._phase = PHASE_LINGERING
        self._conn = None  # the WebSocket is over: what still arrives is not parsed
        self._linger_left = limits.linger_bytes
        self._close_at = server.now + limits.linger_s
        transport.write_eof()  # after the buffered bytes: our close frame or last answer among them
        transport.resume_reading()  # an HTTP socket may have paused it; eof_received then closes

    def _discard(self, n: int) -> None:
        """*n* bytes arrived after the WebSocket ended: dropped; while lingering, counted against
        `linger_bytes` (once hung up, a transport still reading is not hung up again)."""
        if self._phase == PHASE_LINGERING and self._linger_left:
            self._linger_left -= n
            if self._linger_left <= 0:
                self._hang_up()

    def _report_close(self, code: int, reason: str) -> None:
        self._server.stats.closed(code)
        try:
            self._server.handler.on_close(self, code, reason)
        except Exception:
            log.exception("on_close failed on connection %d", self.id)

    # -- HTTP and the opening handshake ----------------------------------------------------

    @property
    def _is_http(self) -> bool:
        return self._phase == PHASE_HTTP

    def _hang_up(self) -> None:
        """Close after the last response; the sweep aborts it if the peer never reads it."""
        self._phase = PHASE_CLOSED
        self._close_at = self._server.now + self._server.limits.close_timeout_s
        self._transport.close()

    def _refuse(self, exc: InvalidHandshake, *, upgrade: bool) -> None:
        """Answer with the error's status and JSON body, then hang up; no request follows.

        *upgrade*: whether it refuses a WebSocket upgrade (counted as a handshake) or a plain
        request the application never saw.
        """
        stats = self._server.stats
        status = exc.http_status
        if upgrade:
            stats.handshake(str(status))
            unlogged = self._server.refusals_logged.take(self._server.now)
            if unlogged is not None:
                fields: dict[str, object] = {"conn": self.id, "addr": self.address, "status": status}
                fields["reason"] = str(exc)
                if unlogged:
                    fields["unlogged"] = unlogged  # refusals since the last line that were not logged
                log.info("refused upgrade", extra=fields)
        else:
            stats.answered(status)
            log.debug("refused request", extra={"conn": self.id, "status": status, "reason": str(exc)})
        answer = http11.error_response(status, str(exc), exc.headers)
        self._tx += len(answer)
        self._transport.write(answer)
        self._linger()

    def _upgrade(self, request: http11.Request, rest: bytes) -> None:
        server = self._server
        limits = server.limits
        try:
            upgrade = handshake.validate_upgrade(request, server.websocket)
            # After the checks of the request itself (400, 426, 403), before the application's
            # (401, which costs a signature check): an address over its limits pays for nothing.
            http = self._http
            refused: tuple[str, int] | None
            if http is not None and http.over_address is not None:
                refused = http.over_address
            elif self._counted:  # a client's own socket, counted since it was accepted: only the rate
                assert self.client is not None  # set with _counted
                refused = server.addresses.paced(self.client, server.now)
            else:  # through a trusted proxy: the client it names, counted from now on
                forwarded = request.header("x-forwarded-for")
                self.client = client_address(self._peer_host(), forwarded, limits.trusted_proxies)
                refused = server.addresses.admit(self.client, server.now)
            if refused is not None:
                raise too_many(refused)
            data = server.handler.accept(request, upgrade)
        except InvalidHandshake as exc:
            self._refuse(exc, upgrade=True)
            return
        except Exception:
            log.exception("accept failed on connection %d", self.id)
            self._refuse(InvalidHandshake(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error"), upgrade=True)
            return
        http = self._http
        if http is not None and http.over_capacity:  # last of the checks, as the protocol orders them
            self._refuse(http.at_capacity(), upgrade=True)
            return
        compression = server.websocket.compression
        self._conn = Connection(
            max_message_bytes=limits.max_message_bytes,
            max_fragments=limits.max_fragments,
            max_frames_per_window=limits.max_frames_per_10s,
            deflate=upgrade.deflate,
            compression_level=compression.level,
            compression_mem_level=compression.mem_level,
        )
        self._http = None
        # Each compressed message gets a frame of its own, written by the transport; a plain
        # one may go straight to the kernel (see `_send`).
        self._fd = -1 if upgrade.deflate else _direct_fd(self._transport)
        self.data = data
        self.subprotocol = upgrade.subprotocol
        self._phase = PHASE_WS
        self._last_rx = server.now
        server.connections[self.id] = self
        if not self._counted:
            assert self.client is not None  # found at the address check above
            server.addresses.opened(self.client)
            self._counted = True
        server.stats.handshake(_ACCEPTED)
        switching = handshake.switching_protocols(upgrade)
        self._tx += len(switching)
        self._transport.write(switching)
        try:
            server.handler.on_open(self)
        except Exception:
            log.exception("on_open failed on connection %d", self.id)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if rest and self._phase == PHASE_WS:
            self.data_received(rest)

    # -- the once-a-second sweep -----------------------------------------------------------

    def _sweep(self, now: float) -> None:
        limits = self._server.limits
        phase = self._phase
        if phase == PHASE_HTTP:
            http = self._http
            if http is not None and http.expired(now):
                late = http.timed_out(now)
                if late is not None:
                    self._refuse(late, upgrade=False)  # a request under way: say why it ends
                    return
                self._phase = PHASE_CLOSED
                self._transport.abort()  # idle, or plain HTTP for too long: drop, say nothing
        elif phase == PHASE_WS:
            conn = self._conn
            assert conn is not None  # set with _WS
            if self._paused_at and now - self._paused_at >= limits.slow_consumer_s:
                self._too_slow()
            elif conn.is_mid_message:
                if self._mid_count != conn.messages_received:
                    self._mid_count = conn.messages_received
                    self._mid_since = now
                elif now - self._mid_since >= limits.message_timeout_s:
                    self.close(
                        CloseCode.POLICY_VIOLATION, f"message not finished within {limits.message_timeout_s:g} s"
                    )
                    return
            if limits.ping_interval_s and self._phase == PHASE_WS:
                if self._ping_at and self._last_rx >= self._ping_at:
                    self._ping_at = 0.0  # the peer spoke since our ping: it is alive
                if self._ping_at:
                    if now - self._ping_at >= limits.pong_timeout_s:
                        self.close(CloseCode.INTERNAL_ERROR, "no pong in time")
                elif now - self._last_rx >= limits.ping_interval_s:
                    conn.ping()
                    self._write(conn.take_output())
                    self._ping_at = now
        elif phase == PHASE_LINGERING:
            if now >= self._close_at:
                self._hang_up()  # it lingered long enough; the close frame gets close_timeout_s more
        elif self._close_at and now >= self._close_at:
            self._transport.abort()
