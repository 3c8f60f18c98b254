"""Events a `protocol.Connection` reports that are rare enough to be plain frozen dataclasses.

Layer: ws (sans-I/O). Imports only the standard library.

The per-message events, `TextReceived` and `BinaryReceived`, sit on the hot path and live with
the connection implementations (`sohbet.ws.protocol` exports them); everything here happens at
most a few times per connection or per ping interval.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClosedByPeer", "ConnectionFailed", "PingReceived", "PongReceived"]


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged (RFC 6455 §5.5.2): answer with `Connection.pong(data)` when you reach
    this event, so the pong keeps its place among your replies."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a ping, or sent an unsolicited pong as a heartbeat (§5.5.3)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ClosedByPeer:
    """The peer's close frame arrived: the close handshake is complete (§7.1.2).

    If we had not sent a close frame yet, the connection has queued one echoing the peer's code;
    either way nothing more will be sent or reported, and the transport can be closed.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The peer broke the protocol or a limit (§7.1.7): a close frame with `code` is queued.

    No more events follow; input is ignored from here on, and the transport should be closed
    once the close frame is out (or the peer hangs up).
    """

    code: int
    reason: str
