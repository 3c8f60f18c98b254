"""The pure-Python twin of `_send.pyx` (same names, same results), for differential tests and
for SOHBET_NO_EXTENSIONS=1; `os.write` stands in for `send(2)`.

Layer: ws-transport (it writes to sockets); imports only the standard library, nothing of chat.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Final

#: The phase this module takes for an open WebSocket (a test checks it is websocket.PHASE_WS).
PHASE_WS: Final = 1


def _send_some(fd: int, data: bytes) -> int:
    """Bytes of *data* the kernel took now (0 when it would block or the write failed)."""
    try:
        return os.write(fd, data)
    except OSError:  # would block, or the socket failed: the transport takes it all and reports
        return 0


def write_now(fd: int, transport: Any, data: bytes) -> int:
    """See `_send.write_now`."""
    sent = 0
    if fd >= 0 and not transport.get_write_buffer_size():
        sent = _send_some(fd, data)
        if sent == len(data):
            return 0
    transport.write(data[sent:] if sent else data)
    return int(transport.get_write_buffer_size())


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
            if not transport.get_write_buffer_size():
                sent += 1
                got = _send_some(fd, frame)
                if got == len(frame):
                    continue
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
        transport.write(frame)
        if ws._paused_at:
            if limit is None:
                limit = ws._server.limits.max_buffered_bytes
            if transport.get_write_buffer_size() > limit:
                ws._over_limit()
    return sent, apart
