"""Writing to many sockets at once: the fan-out loop, compiled, with a direct `send()`.

Layer: ws-transport (it writes to sockets; nothing of chat). Its pure-Python twin is
`_send_py.py`; `sohbet.ws.server` picks this one unless SOHBET_NO_EXTENSIONS=1.

Why it exists: a fan-out to 10,000 members spends about a fifth of the server's CPU outside
the kernel, in the interpreted loop and uvloop's write path (a buffer list, a `uv_try_write`,
`write(2)` through the VFS). Here each recipient costs a few attribute reads, one check that
uvloop holds nothing unsent for it, and one `send(2)`; whatever the kernel does not take goes
to the transport, which then keeps the order and the flow control as before.

Why the direct `send()` is safe: it is made only while the socket is an open WebSocket (its
`_phase`), and uvloop closes a socket's descriptor only after the protocol's `connection_lost`
has returned, which moves the phase on first; and only when the transport's buffer is empty, so
no byte it holds can be overtaken. (A socket whose peer has hung up may still be written to until
then, as the transport would have: the kernel drops it.) The fast path does not ask the
connection whether it may still send: it stops only inside its own data_received (where `_batch`
is set) or when `WebSocket.close` moves the phase on, and both are checked.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno

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


def write_now(int fd, object transport, bytes data not None) -> int:
    """Write *data* to a socket: straight to the kernel while the transport holds nothing.

    Args:
        fd: the socket's descriptor, or -1 to use the transport alone.
        transport: the socket's transport; it takes what the kernel does not.
        data: the bytes.

    Returns:
        The bytes the transport now holds for it (0: all went out).
    """
    cdef Py_ssize_t sent = 0
    if fd >= 0 and not transport.get_write_buffer_size():
        sent = send_some(fd, data)
        if sent == PyBytes_GET_SIZE(data):
            return 0
    transport.write(data[sent:] if sent else data)
    return transport.get_write_buffer_size()


def broadcast(object connections, bytes frame not None, object text, object skip) -> tuple:
    """Write one unmasked text *frame* to every open WebSocket in *connections* but *skip*.

    Connections with compression get their own frame of *text*; a connection whose
    data_received is running (its `_batch` is set) gets it appended there, behind the replies
    it is gathering.

    Returns:
        (recipients, recipients whose bytes are counted where they were written).
    """
    cdef Py_ssize_t sent = 0, apart = 0, size = PyBytes_GET_SIZE(frame), got, fd
    cdef object limit = None
    for ws in connections:
        if ws is skip:
            continue
        fd = ws._fd
        # The common case in four attribute reads: an open WebSocket without compression (its
        # `_fd` is -1 otherwise), not inside its own data_received, its transport empty. Its
        # connection cannot have stopped sending: that happens only inside data_received or
        # when the phase moves on.
        if fd >= 0 and ws._phase == _PHASE_WS and ws._batch is None:
            transport = ws._transport
            if not transport.get_write_buffer_size():
                sent += 1
                got = send_some(<int>fd, frame)
                if got == size:
                    continue
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
            ws._write(conn.frame_text(text))
            continue
        batch = ws._batch
        if batch is not None:
            apart += 1
            batch.append(frame)
            continue
        transport = ws._transport
        transport.write(frame)
        if ws._paused_at:
            if limit is None:
                limit = ws._server.limits.max_buffered_bytes
            if transport.get_write_buffer_size() > limit:
                ws._over_limit()
    return sent, apart
