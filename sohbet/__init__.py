"""sohbet: a real-time messaging server for chat apps, on a compiled WebSocket core."""

from __future__ import annotations

from sohbet.errors import ProtocolViolation, SohbetError
from sohbet.ws.frames import CloseCode, Frame, FrameParser, Opcode

__all__ = ["CloseCode", "Frame", "FrameParser", "Opcode", "ProtocolViolation", "SohbetError", "__version__"]

__version__ = "0.1.0"
