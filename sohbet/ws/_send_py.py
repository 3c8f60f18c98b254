"""The pure-Python twin of `_send.pyx` (same names, same results), for differential tests and
for SOHBET_NO_EXTENSIONS=1; `os.write` stands in for `send(2)`.

Layer: ws-transport (it writes to sockets); imports the sans-I/O ws modules, nothing of chat.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from sohbet.ws._protocol_py import BinaryReceived, Connection, TextReceived  # the twin pairs with the twin
from sohbet.ws.codes import CloseCode
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived

if TYPE_CHECKING:
    from sohbet.ws.http_phase import HttpPhase
    from sohbet.ws.server import Server

log = logging.getLogger("sohbet.server")  # the WebSocket's own logger: its lines, wherever they run

#: The phase this module takes for an open WebSocket (a test checks it is websocket.PHASE_WS).
PHASE_WS: Final = 1


def _send_some(fd: int, data: bytes) -> int:
    """Bytes of *data* the kernel took now (0 when it would block or the write failed)."""
    try:
        return os.write(fd, data)
    except OSError:  # would block, or the socket failed: the transport takes it all and reports
        return 0


def write_now(fd: int, transport: Any, data: bytes, drained: bool = False) -> int:
    """See `_send.write_now`."""
    sent = 0
    if fd >= 0 and (drained or not transport.get_write_buffer_size()):
        sent = _send_some(fd, data)
        if sent == len(data):
            return 0
    transport.write(data[sent:] if sent else data)
    return int(transport.get_write_buffer_size())


class SocketCore:
    """See `_send.SocketCore`: what each message of a server socket reads and does."""

    __slots__ = (
        "_batch", "_conn", "_drained", "_fd", "_last_rx", "_paused_at", "_phase", "_rx", "_server", "_transport", "_tx"
    )  # fmt: skip

    # Set by the subclass, `websocket.WebSocket`, as the compiled class's C fields are.
    _server: Server
    _transport: Any  # uvloop's transports are not asyncio.Transport subclasses
    _conn: Connection | None
    _phase: int
    _batch: list[bytes] | None
    _fd: int
    _drained: bool  # see `_send.SocketCore._drained`
    _last_rx: float
    _paused_at: float
    _rx: int
    _tx: int
    # The subclass's, which these paths read and call back into.
    id: int
    _http: HttpPhase | None

    if TYPE_CHECKING:

        def _discard(self, n: int) -> None: ...
        def _ended(self, code: int, reason: str) -> None: ...
        def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...
        def _over_limit(self) -> None: ...

    def data_received(self, data: bytes) -> None:  # asyncio's contract
        conn = self._conn
        self._rx += len(data)
        if conn is None:  # off the hot path: plain HTTP, or lingering after the close
            http = self._http
            if http is not None:
                http.received(data)
            else:
                self._discard(len(data))  # the WebSocket is over: dropped (and counted while lingering)
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
                if kind is TextReceived or kind is BinaryReceived:
                    # Once we have sent a close frame (a callback may have, for an earlier
                    # message of this read), messages are dropped: a closed session is not served.
                    if self._phase == PHASE_WS:
                        # Only a WebSocket (the subclass) is ever here; the event is narrowed by kind.
                        on_message(self, event.data, kind is TextReceived)  # type: ignore[arg-type,union-attr]
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
        finally:
            # Also when a BaseException escapes (the loop then ends the socket, and the replies
            # gathered so far are not written): sends until then must not gather here unsent.
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
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def send_text(self, data: str | bytes) -> None:
        """Send a text message (`str`, or bytes that are valid UTF-8); dropped once closing."""
        conn = self._conn
        if conn is None or not conn.can_send or self._phase != PHASE_WS:
            return
        self._write(conn.frame_text(data))

    def send_binary(self, data: bytes) -> None:
        """Send a binary message; dropped once closing."""
        conn = self._conn
        if conn is None or not conn.can_send or self._phase != PHASE_WS:
            return
        self._write(conn.frame_binary(data))

    def _write(self, data: bytes) -> None:
        """Write *data*: into the batch inside data_received, else to the socket at once."""
        batch = self._batch
        if batch is not None:
            batch.append(data)  # inside data_received: one write for everything at the end
            return
        self._tx += len(data)
        left = write_now(self._fd, self._transport, data, self._drained)
        self._drained = left == 0 and self._fd >= 0
        # Only a paused transport can be over the limit; checking then keeps this path cheap.
        if left and self._paused_at and left > self._server.limits.max_buffered_bytes:
            self._over_limit()


def broadcast(connections: Iterable[Any], frame: bytes, text: bytes | str, skip: Any) -> tuple[int, int]:
    """See `_send.broadcast`."""
    sent = apart = 0
    limit = None
    for ws in connections:
        if ws is skip:
            continue
        fd = ws._fd
        if fd >= 0 and ws._phase == PHASE_WS and ws._batch is None:
            transport = ws._transport
            if ws._drained or not transport.get_write_buffer_size():
                sent += 1
                got = _send_some(fd, frame)
                if got == len(frame):
                    ws._drained = True
                    continue
                ws._drained = False
                transport.write(frame[got:] if got else frame)
                if ws._paused_at and transport.get_write_buffer_size() > ws._server.limits.max_buffered_bytes:
                    ws._over_limit()
                continue
        conn = ws._conn
        if conn is None or ws._phase != PHASE_WS or not conn.can_send:
            continue
        sent += 1
        if conn._deflater is not None:
            apart += 1
            ws._write(conn.frame_text(text))
            continue
        batch = ws._batch
        if batch is not None:
            apart += 1
            batch.append(frame)
            continue
        transport = ws._transport
        transport.write(frame)  # no descriptor, or it holds bytes: `_drained` is False
        if ws._paused_at:
            if limit is None:
                limit = ws._server.limits.max_buffered_bytes
            if transport.get_write_buffer_size() > limit:
                ws._over_limit()
    return sent, apart
