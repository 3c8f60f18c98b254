"""Wire constants of RFC 6455 and the frame core, compiled or pure Python.

Layer: core. Imports only the standard library and `sohbet._frames*`.

The compiled module is the one that runs. `SOHBET_NO_EXTENSIONS=1` selects the pure-Python twin
for debugging and differential tests; this is the one place the core reads the environment,
because the choice has to be made before anything imports a frame function.
"""

from __future__ import annotations

import enum
import os
from typing import Final

if os.environ.get("SOHBET_NO_EXTENSIONS") == "1":
    from sohbet.ws import _frames_py as _impl
else:
    from sohbet.ws import _frames as _impl  # type: ignore[no-redef]  # same API, see _frames.pyi

__all__ = [
    "IMPLEMENTATION",
    "MAX_CONTROL_PAYLOAD",
    "CloseCode",
    "Frame",
    "FrameParser",
    "Opcode",
    "Utf8Validator",
    "accept_key",
    "apply_mask",
    "build_close",
    "build_frame",
    "is_valid_close_code",
    "is_valid_utf8",
    "parse_close",
]

#: "cython" or "python": which implementation of the frame core this process runs.
IMPLEMENTATION: Final = "python" if _impl.__name__.endswith("_py") else "cython"

#: Control frames carry at most 125 bytes (RFC 6455 §5.5).
MAX_CONTROL_PAYLOAD: Final = 125

Frame = _impl.Frame
FrameParser = _impl.FrameParser
Utf8Validator = _impl.Utf8Validator
accept_key = _impl.accept_key
apply_mask = _impl.apply_mask
build_close = _impl.build_close
build_frame = _impl.build_frame
is_valid_close_code = _impl.is_valid_close_code
parse_close = _impl.parse_close
is_valid_utf8 = _impl.is_valid_utf8


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes: RFC 6455 §7.4.1 and sohbet's application range (PROTOCOL.md).

    4000-4499 tell the client it may reconnect once it has fixed the cause; 4500-4999 that it
    must not reconnect.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire: a close frame without a code
    ABNORMAL = 1006  # never on the wire: the TCP connection dropped without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008
    DISCONNECTED_BY_APP = 4501
