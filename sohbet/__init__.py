"""sohbet: a real-time messaging server for chat apps, on a compiled WebSocket core.

Layer: entry (it only re-exports). The public library API, so imports stay short and stable:

    from sohbet import Handler, WebSocket, serve          # a WebSocket server of your own
    from sohbet import ChatClient                         # a client of sohbet-server
    from sohbet import FrameParser, build_frame, Opcode   # the RFC 6455 frame core

Each name is imported on first use (PEP 562), so importing one corner of the package (the frame
core in a fuzz target, say) does not load asyncio, uvloop or the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sohbet.client import ChatClient, ChatError, ConnectionClosed
    from sohbet.errors import ErrorCode, ProtocolViolation, SohbetError
    from sohbet.ws.config import CompressionConfig, Limits, WebSocketConfig
    from sohbet.ws.frames import (
        CloseCode,
        Frame,
        FrameParser,
        Opcode,
        accept_key,
        apply_mask,
        build_close,
        build_frame,
        parse_close,
    )
    from sohbet.ws.server import Handler, Response, Server, WebSocket, broadcast, serve

__all__ = [
    "ChatClient",
    "ChatError",
    "CloseCode",
    "CompressionConfig",
    "ConnectionClosed",
    "ErrorCode",
    "Frame",
    "FrameParser",
    "Handler",
    "Limits",
    "Opcode",
    "ProtocolViolation",
    "Response",
    "Server",
    "SohbetError",
    "WebSocket",
    "WebSocketConfig",
    "__version__",
    "accept_key",
    "apply_mask",
    "broadcast",
    "build_close",
    "build_frame",
    "parse_close",
    "serve",
]

__version__ = "0.1.0"

#: Where each public name lives.
_EXPORTS: Final = {
    **dict.fromkeys(["ChatClient", "ChatError", "ConnectionClosed"], "sohbet.client"),
    **dict.fromkeys(["ErrorCode", "ProtocolViolation", "SohbetError"], "sohbet.errors"),
    **dict.fromkeys(["CompressionConfig", "Limits", "WebSocketConfig"], "sohbet.ws.config"),
    **dict.fromkeys(
        [
            "CloseCode",
            "Frame",
            "FrameParser",
            "Opcode",
            "accept_key",
            "apply_mask",
            "build_close",
            "build_frame",
            "parse_close",
        ],
        "sohbet.ws.frames",
    ),
    **dict.fromkeys(["Handler", "Response", "Server", "WebSocket", "broadcast", "serve"], "sohbet.ws.server"),
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sohbet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
