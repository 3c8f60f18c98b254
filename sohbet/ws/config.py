"""The WebSocket server's configuration: limits on what a peer controls, handshake, compression.

Layer: ws (sans-I/O). Imports only the standard library, `sohbet.errors` and `sohbet.ws.codes`,
so the WebSocket layer can be used without anything of chat. `__post_init__` validates and
raises `ConfigError`, so a bad setting stops the process at startup, never later.
`sohbet.config` composes these sections with the chat server's own into one `Config`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Final

from sohbet.errors import ConfigError
from sohbet.ws.addresses import IPNetwork
from sohbet.ws.codes import MAX_CONTROL_PAYLOAD

__all__ = [
    "HTTP_LIFETIME_S",
    "MAX_PIPELINED_REQUESTS",
    "MAX_WINDOW_BITS",
    "MIN_WINDOW_BITS",
    "CompressionConfig",
    "Limits",
    "WebSocketConfig",
    "require",
    "require_at_least",
    "require_within",
]

#: The LZ77 windows permessage-deflate can use, as powers of two: RFC 7692 allows 8-15, but zlib
#: cannot make raw deflate streams with an 8-bit window (it silently uses 9).
MIN_WINDOW_BITS: Final = 9
MAX_WINDOW_BITS: Final = 15

#: The largest count a connection's limits may be: the compiled connection and frame core keep
#: them in C (`Py_ssize_t`), and no larger limit means anything different from "none".
MAX_COUNT: Final = sys.maxsize

#: Requests one connection may have read but not yet answered. Pipelining clients send a few;
#: more in one read is an amplification attempt (each answer costs far more than its request).
MAX_PIPELINED_REQUESTS: Final = 32
#: Seconds a connection may stay plain HTTP (not upgraded), however often it is answered.
HTTP_LIFETIME_S: Final = 60.0


def require(ok: bool, message: str) -> None:
    """Raise `ConfigError` with *message* unless *ok*: the one way a config section refuses."""
    if not ok:
        raise ConfigError(message)


def require_at_least(name: str, value: float, low: float) -> None:
    """Raise `ConfigError` unless *value* is at least *low*."""
    require(value >= low, f"{name} of {value} is below {low}")


def require_within(name: str, value: float, low: float, high: float) -> None:
    """Raise `ConfigError` unless *value* is within *low*-*high*."""
    require(low <= value <= high, f"{name} of {value} is outside {low}-{high}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on everything a peer controls, and the timeouts that free what it holds.

    Defaults are the chat server's (docs/protocol.md, "Limits"); the echo server raises the size
    limits for conformance runs. A value of 0 disables a count or a rate limit.
    """

    #: Largest message after reassembly and after inflating (1009 above it).
    max_message_bytes: int = 64 * 1024
    #: Most frames in one message (1009 above it); 0: no limit.
    max_fragments: int = 64
    #: Seconds a fragmented message may take to finish (1008 after it).
    message_timeout_s: float = 30.0
    #: Seconds to send a complete upgrade request before the connection is dropped; also the
    #: idle limit of a kept-alive plain-HTTP connection between its requests.
    handshake_timeout_s: float = 5.0
    #: Seconds a connection may stay plain HTTP in all: answers reset the idle limit, not this.
    http_lifetime_s: float = HTTP_LIFETIME_S
    #: Requests read but not yet answered per connection; a request beyond them is not read, and
    #: the connection closes once the ones before it are answered.
    max_pipelined_requests: int = MAX_PIPELINED_REQUESTS
    #: Seconds to wait for the peer's close frame (or for it to hang up) after ours.
    close_timeout_s: float = 5.0
    #: Seconds, after a WebSocket is over, to keep reading and discarding what the peer still
    #: sends, so closing does not reset a connection with unread input, and with it the close
    #: frame the peer has not read yet (a lingering close); 0: hang up at once.
    linger_s: float = 2.0
    #: ... and the most bytes read and discarded meanwhile, before hanging up regardless; 0: no
    #: count, only the time.
    linger_bytes: int = 1024 * 1024
    #: Longest request line or single header line (431 above it).
    max_line_bytes: int = 8 * 1024
    #: All header bytes of a request (431 above it).
    max_header_bytes: int = 16 * 1024
    #: Most header fields in a request (431 above it).
    max_headers: int = 64
    #: Largest HTTP request body (413 above it: from `Content-Length` before it is read, or
    #: counted as a chunked body arrives).
    max_body_bytes: int = 1024 * 1024
    #: Seconds the application may take to answer one HTTP request (503 after it).
    request_timeout_s: float = 30.0
    #: Seconds of silence from the peer before the server pings it; 0: never ping.
    ping_interval_s: float = 20.0
    #: Seconds to wait for any sign of life after a ping (1011 after it).
    pong_timeout_s: float = 20.0
    #: Outgoing bytes a connection may leave unread before it is closed with 4008.
    max_buffered_bytes: int = 1024 * 1024
    #: Outgoing bytes above which a connection counts as not draining ...
    buffer_high_water_bytes: int = 64 * 1024
    #: ... and the seconds it may stay above them before it is closed with 4008.
    slow_consumer_s: float = 10.0
    #: Inbound frames per connection per 10 s (1008 above it); 0: no limit.
    max_frames_per_10s: int = 120
    #: Open sockets per server, plain HTTP and WebSocket together: a socket accepted beyond them
    #: gets a 503 to its first request and is closed; 0: no limit.
    max_connections: int = 0
    #: New WebSocket connections per second from one client address (429 above it), in bursts
    #: of `address_burst`; 0: no limit (the library's default; the chat server's is 20).
    address_rate_per_s: float = 0.0
    address_burst: int = 20
    #: Open WebSocket connections per client address (429 above it); 0: no limit (the chat
    #: server's default is 200).
    max_connections_per_address: int = 0
    #: Peers whose `X-Forwarded-For` names the client (docs/protocol.md, "Limits").
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        require_at_least("max_message_bytes", self.max_message_bytes, MAX_CONTROL_PAYLOAD)
        for name in (
            "max_fragments",
            "max_frames_per_10s",
            "max_connections",
            "linger_bytes",
            "address_rate_per_s",
            "max_connections_per_address",
        ):
            require(getattr(self, name) >= 0, f"{name} of {getattr(self, name)} is negative")
        for name in ("max_message_bytes", "max_fragments", "max_frames_per_10s"):
            require(getattr(self, name) <= MAX_COUNT, f"{name} of {getattr(self, name)} is over {MAX_COUNT}")
        for name in (
            "message_timeout_s",
            "handshake_timeout_s",
            "http_lifetime_s",
            "close_timeout_s",
            "pong_timeout_s",
            "slow_consumer_s",
            "request_timeout_s",
        ):
            require(getattr(self, name) > 0, f"{name} of {getattr(self, name)} is not positive")
        require(self.max_pipelined_requests >= 1, f"max_pipelined_requests of {self.max_pipelined_requests} is below 1")
        require(self.ping_interval_s >= 0, f"ping_interval_s of {self.ping_interval_s} is negative")
        require(self.linger_s >= 0, f"linger_s of {self.linger_s} is negative")
        require_at_least("max_line_bytes", self.max_line_bytes, 256)
        require(
            self.max_header_bytes >= self.max_line_bytes,
            f"max_header_bytes of {self.max_header_bytes} is below max_line_bytes of {self.max_line_bytes}",
        )
        require_at_least("max_headers", self.max_headers, 8)
        require(self.address_burst >= 1, f"address_burst of {self.address_burst} is below 1")
        require(self.max_body_bytes >= 0, f"max_body_bytes of {self.max_body_bytes} is negative")
        require(
            self.max_buffered_bytes >= self.buffer_high_water_bytes > 0,
            f"buffer_high_water_bytes of {self.buffer_high_water_bytes} must be positive and at most "
            f"max_buffered_bytes of {self.max_buffered_bytes}",
        )


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """permessage-deflate (RFC 7692) as this server offers it.

    Compression costs memory per connection (a deflate window each way) and opens
    decompression-bomb and CRIME-style risks, so the chat server keeps it off unless asked.
    """

    enabled: bool = False
    #: Largest LZ77 window, as a power of two, for our compressor and (when the client lets us
    #: choose) for the client's: 12 bits is 4 KiB each way instead of 32 KiB.
    window_bits: int = 12
    #: zlib compression level, 1 (fast) to 9 (small).
    level: int = 6
    #: zlib memLevel for our compressor, 1-9: lower saves memory per connection.
    mem_level: int = 5
    #: Reset our compressor after every message, so it keeps no window between messages.
    server_no_context_takeover: bool = False

    def __post_init__(self) -> None:
        require_within("window_bits", self.window_bits, MIN_WINDOW_BITS, MAX_WINDOW_BITS)
        require_within("level", self.level, 1, 9)  # zlib's levels
        require_within("mem_level", self.mem_level, 1, 9)  # zlib's memLevels


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """What the opening handshake accepts (RFC 6455 §4.2)."""

    #: Request paths that serve WebSocket upgrades; other paths are plain HTTP.
    paths: frozenset[str] = frozenset({"/", "/ws"})
    #: Exact `Origin` values allowed; empty: any origin (and requests without one).
    allowed_origins: frozenset[str] = frozenset()
    #: Subprotocols in order of preference; the first one the client also offers is selected.
    subprotocols: tuple[str, ...] = ()
    compression: CompressionConfig = field(default_factory=CompressionConfig)
