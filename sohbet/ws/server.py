"""The server: a listening socket, its connections, and the application's `Handler`.

Layer: ws-transport. Imports asyncio and the sans-I/O ws modules; nothing of chat. The modules
below it (http11, handshake, protocol, config) own no socket; this one and its two halves of a
socket (`websocket.py`, `http_phase.py`) own every socket and every clock read. There is no Task
per connection: one `WebSocket` Protocol object per socket, and one timer per server that sweeps
all connections once a second for ping, pong, handshake, close and slow-consumer deadlines.

Applications subclass `Handler` and call `serve()`; the `WebSocket` they get in callbacks sends,
closes and carries their per-connection `data`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
from collections.abc import Awaitable, Iterable
from typing import Final

from sohbet.ws import handshake, http11, websocket
from sohbet.ws.addresses import AddressBook
from sohbet.ws.codes import CloseCode, Opcode
from sohbet.ws.config import Limits, WebSocketConfig
from sohbet.ws.frames import IMPLEMENTATION, build_frame
from sohbet.ws.http11 import NOT_FOUND, Response
from sohbet.ws.rates import Rate, Sampler
from sohbet.ws.websocket import PHASE_HTTP, PHASE_LINGERING, PHASE_WS, WebSocket

__all__ = ["REFUSALS_LOGGED", "Handler", "Response", "Server", "ServerStats", "WebSocket", "broadcast", "serve"]

log = logging.getLogger("sohbet.server")

_TEXT: Final = int(Opcode.TEXT)  # a plain int: the compiled build_frame takes it without a conversion
#: Refused upgrades logged at most: each one's text is the peer's doing, and the metrics count
#: them all (`sohbet_handshakes_total`).
REFUSALS_LOGGED: Final = Rate(per_s=10.0, burst=50)
_SWEEP_S: Final = 1.0  # also the frame limit's slot: its 10 s window (docs/protocol.md) slides by one sweep


#: The close codes counted under their own label; any other (a peer may send any valid code,
#: thousands of them) counts as "other", so the metrics' label set stays bounded.
COUNTED_CLOSE_CODES: Final = frozenset(CloseCode) - {CloseCode.NO_STATUS}


class ServerStats:
    """What the server counts, for the metrics endpoint: plain integers, incremented where the
    work already happens (per read, per write, per fan-out), never per frame with a lookup."""

    __slots__ = ("bytes_received", "bytes_sent", "closes", "dropped", "handshakes", "http_answered", "slow_consumers")

    def __init__(self) -> None:
        #: Bytes of the sockets that have ended, and of fan-outs; `Server.bytes_moved` adds the
        #: open sockets' own counts.
        self.bytes_received = 0
        self.bytes_sent = 0
        #: Upgrades: "accepted", or the status they were refused with.
        self.handshakes: dict[str, int] = {}
        #: Plain HTTP requests the server answered itself, by status: refused before the
        #: application saw them (431, 413, 400, 503), or not answered by it in time (503).
        self.http_answered: dict[int, int] = {}
        #: Closed WebSockets by close code (see `COUNTED_CLOSE_CODES`); 1006 when none was received.
        self.closes: dict[str, int] = {}
        #: Connections closed with 4008 for not reading.
        self.slow_consumers = 0
        #: Sockets closed at accept, unanswered: past a limit and `OVER_LIMIT_ANSWERED` more.
        self.dropped = 0

    def handshake(self, result: str) -> None:
        """Count an upgrade: "accepted", or the status it was refused with."""
        self.handshakes[result] = self.handshakes.get(result, 0) + 1

    def answered(self, status: int) -> None:
        """Count a plain request the server answered itself, with *status*."""
        self.http_answered[status] = self.http_answered.get(status, 0) + 1

    def closed(self, code: int) -> None:
        """Count a WebSocket that ended with *code*."""
        label = str(code) if code in COUNTED_CLOSE_CODES else "other"
        self.closes[label] = self.closes.get(label, 0) + 1


class Handler:
    """The application's side of the server; override what you need. Callbacks must not block.

    Callbacks run on the event loop, one at a time per server, so they need no locks; slow work
    belongs in tasks they start.
    """

    def accept(self, request: http11.Request, upgrade: handshake.Upgrade) -> object:
        """Decide on an upgrade request that passed the protocol checks (400, 426, 403).

        Returns:
            Anything: it becomes the connection's `data` (an identity, say), until the socket
            is gone (then None: what refers back to the socket must not keep it alive).

        Raises:
            InvalidHandshake: to refuse with its status (401 for a bad token, say).
        """
        return None

    def on_open(self, ws: WebSocket) -> None:
        """A connection is open: the 101 response is on its way."""

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
        """A whole message arrived; text is already validated UTF-8."""

    def on_close(self, ws: WebSocket, code: int, reason: str) -> None:
        """The connection is over (called once per opened connection); 1006: no close frame.
        `ws.data` is still set here, for the last time: take from it what outlives the socket."""

    def on_http(self, request: http11.Request) -> Response | Awaitable[Response]:
        """Answer a plain HTTP request (anything that is not a WebSocket upgrade)."""
        return NOT_FOUND

    def body_limit(self, head: http11.Request) -> int | None:
        """The most body bytes the request of *head* may carry, below `Limits.max_body_bytes`
        (None: that); asked before its body is read (see `http11.HeadCheck`)."""
        return None


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
        #: What the server counts, for the metrics endpoint.
        self.stats = ServerStats()
        limits = self.limits
        #: WebSocket connections per client address: new ones per second, open ones.
        self.addresses = AddressBook(
            Rate(limits.address_rate_per_s, limits.address_burst), limits.max_connections_per_address
        )
        #: Which refused upgrades are logged (see `REFUSALS_LOGGED`).
        self.refusals_logged = Sampler(REFUSALS_LOGGED)
        self.now = 0.0

    def bytes_moved(self) -> tuple[int, int]:
        """Bytes read and written so far: the sockets gone, and the open ones' own counts."""
        sockets = self._sockets.values()
        stats = self.stats
        return (
            stats.bytes_received + sum(ws._rx for ws in sockets),
            stats.bytes_sent + sum(ws._tx for ws in sockets),
        )

    @property
    def socket_count(self) -> int:
        """Open sockets: WebSocket, plain HTTP, and closed ones still lingering."""
        return len(self._sockets)

    @property
    def port(self) -> int:
        """The port the server listens on (useful after binding port 0)."""
        assert self._listener is not None, "start() first"
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> None:
        """Listen on *host*:*port* and start the sweep timer."""
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        sock = numeric_listener(host, port)
        if sock is None:
            self._listener = await loop.create_server(lambda: WebSocket(self), host, port, backlog=backlog)
        else:
            self._listener = await loop.create_server(lambda: WebSocket(self), sock=sock, backlog=backlog)
        self._timer = loop.call_later(_SWEEP_S, self._sweep)
        log.info("listening on %s:%d (frame core: %s)", host, self.port, IMPLEMENTATION)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = self.now = loop.time()
        self.addresses.forget(now)
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

    def stop_accepting(self) -> None:
        """Accept no new connection; an upgrade on a kept-alive socket is refused with 503, and
        HTTP answers close their connection."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection with 1001, wait up to *timeout_s* for them.

        Sockets lingering after their close (`WebSocket._linger`) are hung up at once.
        """
        self.stop_accepting()
        for ws in list(self._sockets.values()):
            if ws._phase == PHASE_WS:
                ws.close(CloseCode.GOING_AWAY, "server shutting down")
            elif ws._phase == PHASE_HTTP and ws._http is not None and not ws._http.is_answering:
                ws._hang_up()
            elif ws._phase == PHASE_LINGERING:
                ws._hang_up()  # its close frame is out; a server going away does not linger
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
    handed straight to the kernel while their transport holds nothing (see `_send`: this loop
    runs once per recipient of every message, compiled).
    """
    if not isinstance(connections, (list, tuple)):
        connections = list(connections)  # walked twice: a generator would be spent by the first
    if not connections or (len(connections) == 1 and connections[0] is skip):
        return 0  # nobody to frame it for: a message whose only connection is its sender's
    frame = build_frame(_TEXT, data)
    sent, apart = websocket.sending.broadcast(connections, frame, data, skip)
    if sent > apart:  # one count for the whole fan-out, not one per recipient
        connections[0]._server.stats.bytes_sent += (sent - apart) * len(frame)
    return sent


def numeric_listener(host: str, port: int) -> socket.socket | None:
    """A socket bound to *host*:*port* when *host* is an IP address (None for a name, which the
    loop resolves), for the loop to listen on.

    Why not let the loop bind it: uvloop resolves even a numeric host on libuv's thread pool,
    which starts four threads that stay. In a process with more than one thread the kernel
    counts a reference on the socket at every system call on a connection (`fdget`'s slow
    path, `fput`): ~2% of a fan-out's CPU (`benchmarks/README.md`, "Seventh pass").
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the loop's own listener
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
