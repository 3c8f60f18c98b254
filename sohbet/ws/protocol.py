"""The sans-I/O WebSocket connection: bytes in, events out, bytes to send queued.

Layer: ws (sans-I/O). Picks the implementation the way `frames.py` picks the frame core: the
pure-Python twin (`_protocol_py.py`) describes the behaviour, and is what runs under
SOHBET_NO_EXTENSIONS=1.
"""

from __future__ import annotations

from sohbet.ws._protocol_py import (
    CLOSED,
    CLOSING,
    OPEN,
    WINDOW_SLOTS,
    BinaryReceived,
    Connection,
    Event,
    TextReceived,
)

__all__ = ["CLOSED", "CLOSING", "OPEN", "WINDOW_SLOTS", "BinaryReceived", "Connection", "Event", "TextReceived"]
