# cython: auto_pickle=False
"""A server socket's per-message paths, compiled: reading a message, writing to one socket with a
direct `send()`, and the fan-out loop that writes one frame to many.

Layer: ws-transport (it writes to sockets; nothing of chat). Its pure-Python twin is
`_send_py.py`; `sohbet.ws.websocket` picks this one unless SOHBET_NO_EXTENSIONS=1.

`SocketCore` is the part of `websocket.WebSocket` that every message goes through: the state
those paths read, held in C fields, and `data_received`, `send_text`/`send_binary` and the
write. Everything rarer (HTTP, the upgrade, deadlines, closing) stays in `WebSocket`, in Python,
which subclasses it. Why: with the connection compiled, these paths were most of the rest of an
echo's interpreted work, and the fan-out loop read each recipient's state through Python
attribute lookups (`PyMember_GetOne` was 4.5% of a 10,000-member fan-out's CPU).

Why it exists: a fan-out to 10,000 members spends about a fifth of the server's CPU outside
the kernel, in the interpreted loop and uvloop's write path (a buffer list, a `uv_try_write`,
`write(2)` through the VFS). Here each recipient costs a few attribute reads, one check that
uvloop holds nothing unsent for it, and one `send(2)`; whatever the kernel does not take goes
to the transport, which then keeps the order and the flow control as before.

Why the direct `send()` is safe: it is made only while the socket is an open WebSocket (its
`_phase`), and uvloop closes a socket's descriptor only after the protocol's `connection_lost`
has returned, which moves the phase on first; and only when the transport's buffer is empty, so
no byte it holds can be overtaken: asked, or known (`SocketCore._drained`: nothing has been
handed to it since it was seen empty; after the upgrade's 101, this module's paths are the
only ones that write to a socket's transport). (A socket whose peer has hung up may still be written to until
then, as the transport would have: the kernel drops it.) The fast path does not ask the
connection whether it may still send: it stops only inside its own data_received (where `_batch`
is set) or when `WebSocket.close` moves the phase on, and both are checked.
"""

import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno

from sohbet.ws._protocol cimport BinaryReceived, Connection, TextReceived

from sohbet.ws.codes import CloseCode
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived

log = logging.getLogger("sohbet.server")  # the WebSocket's own logger: its lines, wherever they run

cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef enum:
    _PHASE_WS = 1  # sohbet.ws.websocket.PHASE_WS: a socket is written to only while it is an open WebSocket

#: The phase this module takes for an open WebSocket (a test checks it is websocket.PHASE_WS).
PHASE_WS = _PHASE_WS


cdef Py_ssize_t send_some(int fd, bytes data) noexcept:
    """Bytes of *data* the kernel took now (0 when it would block or the send failed: the
    transport then takes all of it and reports any error the way it always does).

    The GIL is kept: the send never blocks (MSG_DONTWAIT), and giving the GIL up and taking it
    back costs ~1,000 instructions (a mutex and a condition variable each way), more than this
    module's own work per recipient (callgrind, `benchmarks/echo_instructions.py`)."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef const char *buf = PyBytes_AS_STRING(data)
    cdef ssize_t n
    while True:
        n = send(fd, buf, <size_t>size, MSG_DONTWAIT | MSG_NOSIGNAL)
        if n >= 0:
            return n
        if errno != EINTR:
            return 0


cdef Py_ssize_t write_now_c(int fd, object transport, bytes data, bint drained) except -1:
    cdef Py_ssize_t sent = 0
    if fd >= 0 and (drained or not transport.get_write_buffer_size()):
        sent = send_some(fd, data)
        if sent == PyBytes_GET_SIZE(data):
            return 0
    transport.write(data[sent:] if sent else data)
    return transport.get_write_buffer_size()


def write_now(int fd, object transport, bytes data not None, bint drained=False) -> int:
    """Write *data* to a socket: straight to the kernel while the transport holds nothing.

    Args:
        fd: the socket's descriptor, or -1 to use the transport alone.
        transport: the socket's transport; it takes what the kernel does not.
        data: the bytes.
        drained: the transport is known to hold nothing (`SocketCore._drained`): not asked.

    Returns:
        The bytes the transport now holds for it (0: all went out).
    """
    return write_now_c(fd, transport, data, drained)


cdef class SocketCore:
    """What each message of a server socket reads and does; `websocket.WebSocket` is the rest.

    The twin, `_send_py.SocketCore`, has the same attributes and methods; the attributes are
    public so that `WebSocket`'s Python reads and sets them as before.
    """

    cdef public object _server
    cdef public object _transport  # uvloop's transports are not asyncio.Transport subclasses
    cdef public Connection _conn  # set at the upgrade; None while HTTP, lingering or gone
    cdef public int _phase
    # The replies of a data_received in progress: sends from its callbacks gather here, written
    # as one at its end (None outside it).
    cdef public list _batch
    # The socket's descriptor while writes may go straight to it (see `write_now`), else -1.
    cdef public int _fd
    # The transport was seen holding nothing, and nothing has been handed to it since: a direct
    # write need not ask it first. Asking (uvloop's `get_write_buffer_size`, a Python call) was
    # 3% of a 10,000-member fan-out's CPU. Each write here that leaves bytes to it clears it.
    cdef public bint _drained
    cdef public double _last_rx
    cdef public double _paused_at  # when the transport paused writing; 0.0 while it takes them
    # Bytes read and written: the server adds them up when asked and when the socket ends.
    cdef public Py_ssize_t _rx
    cdef public Py_ssize_t _tx

    def data_received(self, data):  # asyncio's contract
        cdef Connection conn = self._conn
        cdef list events, batch
        cdef bint broken = False
        cdef object end = None
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
        batch = []
        self._batch = batch  # sends from the callbacks below gather here: one write at the end
        on_message = server.handler.on_message
        try:
            for event in events:
                kind = type(event)
                if kind is TextReceived:
                    # Once we have sent a close frame (a callback may have, for an earlier
                    # message of this read), messages are dropped: a closed session is not served.
                    if self._phase == _PHASE_WS:
                        on_message(self, (<TextReceived>event).data, True)
                elif kind is BinaryReceived:
                    if self._phase == _PHASE_WS:
                        on_message(self, (<BinaryReceived>event).data, False)
                elif kind is PingReceived:
                    pong = conn.frame_pong(event.data)
                    if pong:
                        batch.append(pong)
                elif kind is ClosedByPeer or kind is ConnectionFailed:
                    end = event
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
            self._write_bytes(batch[0] if len(batch) == 1 else b"".join(batch))
        if end is not None:
            # Report why it closed: the code of whichever side closed first.
            self._ended(conn.close_code, conn.close_reason)
        elif broken:
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def send_text(self, data):
        """Send a text message (`str`, or bytes that are valid UTF-8); dropped once closing."""
        cdef Connection conn = self._conn
        if conn is None or not conn.can_send or self._phase != _PHASE_WS:
            return
        self._write_bytes(conn.frame_text(data))

    def send_binary(self, data):
        """Send a binary message; dropped once closing."""
        cdef Connection conn = self._conn
        if conn is None or not conn.can_send or self._phase != _PHASE_WS:
            return
        self._write_bytes(conn.frame_binary(data))

    def _write(self, data):
        """Write *data* (bytes, or any buffer): into the batch inside data_received, else to the
        socket at once. The paths of this class write through `_write_bytes` in C: overriding
        `_write` in a subclass changes only the writes of its Python callers."""
        self._write_bytes(data if PyBytes_CheckExact(data) else bytes(data))

    cdef int _write_bytes(self, bytes data) except -1:
        cdef list batch = self._batch
        cdef Py_ssize_t left
        if batch is not None:
            batch.append(data)  # inside data_received: one write for everything at the end
            return 0
        self._tx += PyBytes_GET_SIZE(data)
        left = write_now_c(self._fd, self._transport, data, self._drained)
        self._drained = left == 0 and self._fd >= 0
        # Only a paused transport can be over the limit; checking then keeps this path cheap.
        if left and self._paused_at and left > self._server.limits.max_buffered_bytes:
            self._over_limit()
        return 0


def broadcast(object connections, bytes frame not None, object text, object skip) -> tuple:
    """Write one unmasked text *frame* to every open WebSocket in *connections* but *skip*.

    Connections with compression get their own frame of *text*; a connection whose
    data_received is running (its `_batch` is set) gets it appended there, behind the replies
    it is gathering.

    Returns:
        (recipients, recipients whose bytes are counted where they were written).
    """
    cdef Py_ssize_t sent = 0, apart = 0, size = PyBytes_GET_SIZE(frame), got
    cdef object limit = None
    cdef SocketCore ws
    cdef Connection conn
    for item in connections:
        if item is skip:
            continue
        ws = <SocketCore?>item
        # The common case in C field reads: an open WebSocket without compression (its `_fd` is
        # -1 otherwise), not inside its own data_received, its transport empty. Its connection
        # cannot have stopped sending: that happens only inside data_received or when the phase
        # moves on.
        if ws._fd >= 0 and ws._phase == _PHASE_WS and ws._batch is None:
            transport = ws._transport
            if ws._drained or not transport.get_write_buffer_size():
                sent += 1
                got = send_some(ws._fd, frame)
                if got == size:
                    ws._drained = True
                    continue
                ws._drained = False
                transport.write(frame[got:] if got else frame)
                if ws._paused_at and transport.get_write_buffer_size() > ws._server.limits.max_buffered_bytes:
                    ws._over_limit()
                continue
        conn = ws._conn
        if conn is None or ws._phase != _PHASE_WS or not conn.can_send:
            continue
        sent += 1
        if conn._deflater is not None:
            apart += 1
            ws._write_bytes(conn.frame_text(text))
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
