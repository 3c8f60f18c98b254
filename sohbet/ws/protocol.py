"""The sans-I/O WebSocket connection: bytes in, events out, bytes to send queued.

Layer: ws (sans-I/O). Picks the implementation with the frame core (`frames.IMPLEMENTATION`, so
SOHBET_NO_EXTENSIONS=1 selects both twins): the compiled `_protocol.pyx`, or its pure-Python
twin `_protocol_py.py`, which describes the behaviour both have.
"""

from __future__ import annotations

from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived, PongReceived
from sohbet.ws.frames import IMPLEMENTATION

if IMPLEMENTATION == "cython":
    from sohbet.ws._protocol import CLOSED, CLOSING, OPEN, WINDOW_SLOTS, BinaryReceived, Connection, TextReceived
else:
    from sohbet.ws._protocol_py import (  # the same classes to mypy: _protocol.pyi re-exports them
        CLOSED,
        CLOSING,
        OPEN,
        WINDOW_SLOTS,
        BinaryReceived,
        Connection,
        TextReceived,
    )

#: What `Connection.feed` reports, made of the implementation's own message events.
Event = TextReceived | BinaryReceived | PingReceived | PongReceived | ClosedByPeer | ConnectionFailed

__all__ = ["CLOSED", "CLOSING", "OPEN", "WINDOW_SLOTS", "BinaryReceived", "Connection", "Event", "TextReceived"]
