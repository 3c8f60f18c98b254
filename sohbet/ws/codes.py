"""The numbers of the WebSocket wire: opcodes and close codes, each defined here and nowhere else.

Layer: base. Imports only the standard library, so every layer (and `sohbet.errors`) may use
these names. The compiled core mirrors them as a `cdef enum` in `_frames.pxd`, and a test holds
the two to the same values.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["FIRST_APPLICATION_CLOSE_CODE", "MAX_CONTROL_PAYLOAD", "CloseCode", "Opcode"]

#: Control frames carry at most 125 bytes (RFC 6455 §5.5).
MAX_CONTROL_PAYLOAD: Final = 125
#: Close codes from here to 4999 are the application's own (RFC 6455 §7.4.2).
FIRST_APPLICATION_CLOSE_CODE: Final = 4000


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes: RFC 6455 §7.4.1 and sohbet's application range (docs/protocol.md).

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
