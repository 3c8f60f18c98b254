"""permessage-deflate (RFC 7692): negotiating it in the handshake, and the codec per connection.

Layer: ws (sans-I/O). Imports the standard library (zlib), `sohbet.errors` and `sohbet.ws.config`,
`sohbet.ws.codes`.

Inflating is where a small frame could become a huge message, so the output is bounded as it
is produced: a compressed message can never grow past the message limit in memory.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from typing import Final

from sohbet.errors import ProtocolViolation
from sohbet.ws.codes import CloseCode
from sohbet.ws.config import MAX_WINDOW_BITS, MIN_WINDOW_BITS, CompressionConfig

__all__ = ["DeflateParams", "Deflater", "Inflater", "negotiate", "parse_extensions"]

_RFC_MIN_BITS: Final = 8  # the smallest window RFC 7692 lets a peer ask for
_TAIL: Final = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1: removed by the sender, restored here
_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What both sides agreed on for one connection."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    #: Window of the server's compressor (and so of the client's decompressor), in bits.
    server_max_window_bits: int = MAX_WINDOW_BITS
    #: Window of the client's compressor (and so of the server's decompressor), in bits.
    client_max_window_bits: int = MAX_WINDOW_BITS


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TCHAR for c in text)


def parse_extensions(header: str) -> list[tuple[str, list[tuple[str, str | None]]]] | None:
    """Parse a `Sec-WebSocket-Extensions` value (RFC 6455 §9.1) into `(name, [(param, value)])`.

    Returns None when the header is malformed, so the caller can ignore it as a whole.
    """
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for item in header.split(","):
        parts = [p.strip() for p in item.split(";")]
        if not _is_token(parts[0]):
            return None
        params: list[tuple[str, str | None]] = []
        for part in parts[1:]:
            name, eq, value = (s.strip() for s in part.partition("="))
            if eq and len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]  # a quoted-string, whose content must still be a token
            if not _is_token(name) or (eq and not _is_token(value)):
                return None
            params.append((name.lower(), value if eq else None))
        offers.append((parts[0].lower(), params))
    return offers


def _window_bits(value: str | None) -> int | None:
    # RFC 7692 §7.1.2.1: one or two digits, no leading zero, 8 to 15.
    if (
        value is None
        or not value.isdigit()
        or value.startswith("0")
        or not _RFC_MIN_BITS <= int(value) <= MAX_WINDOW_BITS
    ):
        return None
    return int(value)


def _accept_offer(params: list[tuple[str, str | None]], config: CompressionConfig) -> DeflateParams | None:
    """Accept one permessage-deflate offer, or return None to decline it (RFC 7692 §7.1)."""
    seen: dict[str, str | None] = {}
    for name, value in params:
        if name in seen:
            return None  # a repeated parameter makes the offer invalid (§7)
        seen[name] = value
    server_bits = config.window_bits
    client_bits = MAX_WINDOW_BITS
    for name, value in seen.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            bits = _window_bits(value)
            # zlib cannot compress with an 8-bit window, so an offer demanding one is declined.
            if bits is None or bits < MIN_WINDOW_BITS:
                return None
            server_bits = min(server_bits, bits)
        elif name == "client_max_window_bits":
            if value is not None:
                bits = _window_bits(value)
                if bits is None:
                    return None
                client_bits = bits
            # The client lets us bound its window: take our own, smaller one when we can.
            client_bits = min(client_bits, config.window_bits)
        else:
            return None  # unknown parameter (§7)
    return DeflateParams(
        server_no_context_takeover=config.server_no_context_takeover or "server_no_context_takeover" in seen,
        client_no_context_takeover="client_no_context_takeover" in seen,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )


def negotiate(header: str | None, config: CompressionConfig) -> tuple[DeflateParams, str] | None:
    """Pick the first acceptable permessage-deflate offer; return it and the response value.

    Returns None when compression is off, nothing was offered, or no offer is acceptable; the
    connection then runs uncompressed, which every client must accept.
    """
    if not config.enabled or not header:
        return None
    offers = parse_extensions(header)
    for name, params in offers or ():
        if name != "permessage-deflate":
            continue
        accepted = _accept_offer(params, config)
        if accepted is None:
            continue
        names = {n for n, _ in params}
        response = ["permessage-deflate"]
        if accepted.server_no_context_takeover:
            response.append("server_no_context_takeover")
        if accepted.client_no_context_takeover:
            response.append("client_no_context_takeover")
        if "server_max_window_bits" in names:
            response.append(f"server_max_window_bits={accepted.server_max_window_bits}")
        if "client_max_window_bits" in names:
            response.append(f"client_max_window_bits={accepted.client_max_window_bits}")
        return accepted, "; ".join(response)
    return None


class Inflater:
    """Decompress the messages of one direction, never producing more than a limit allows."""

    __slots__ = ("_obj", "_reset", "_wbits")

    def __init__(self, window_bits: int, no_context_takeover: bool) -> None:
        self._wbits = -window_bits
        self._reset = no_context_takeover
        self._obj: zlib._Decompress | None = None

    def inflate(self, data: bytes, final: bool, limit: int) -> bytes:
        """Inflate the next frame of a message; *limit* is the room the message has left.

        A sender may end a message with a final (BFINAL) deflate block instead of a sync flush
        (RFC 7692 §7.2.3.4); its stream is then over, and the next message starts a new one.

        Raises:
            ProtocolViolation: 1009 when the output would exceed *limit*; 1007 when the data
                is not a valid deflate stream, or continues past a final block.
        """
        obj = self._obj
        if obj is None:
            obj = self._obj = zlib.decompressobj(self._wbits)
        # One byte over the limit tells that it was crossed; zlib takes at most a Py_ssize_t.
        room = min(limit + 1, sys.maxsize)
        try:
            if obj.eof:
                if data:
                    raise ProtocolViolation(
                        CloseCode.INVALID_DATA, "compressed data continues after a final deflate block"
                    )
                out = b""
            else:
                out = obj.decompress(data, room)
                if obj.eof and obj.unused_data:
                    raise ProtocolViolation(
                        CloseCode.INVALID_DATA, "compressed data continues after a final deflate block"
                    )
                if final and not obj.eof and len(out) <= limit and not obj.unconsumed_tail:
                    out += obj.decompress(_TAIL, room - len(out))
        except zlib.error as exc:
            raise ProtocolViolation(CloseCode.INVALID_DATA, f"invalid compressed data: {exc}") from None
        if len(out) > limit or obj.unconsumed_tail:
            raise ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, f"message inflates beyond limit of {limit} more bytes")
        if final and (self._reset or obj.eof):
            self._obj = None  # a fresh window for the next message
        return out


class Deflater:
    """Compress whole messages of one direction (RFC 7692 §7.2.1)."""

    __slots__ = ("_level", "_mem_level", "_obj", "_reset", "_wbits")

    def __init__(self, window_bits: int, no_context_takeover: bool, level: int = 6, mem_level: int = 8) -> None:
        self._wbits = -window_bits
        self._reset = no_context_takeover
        self._level = level
        self._mem_level = mem_level
        self._obj: zlib._Compress | None = None

    def deflate(self, data: bytes) -> bytes:
        """Return the compressed payload of one message, without the 4-byte sync tail."""
        if self._obj is None:
            self._obj = zlib.compressobj(self._level, zlib.DEFLATED, self._wbits, self._mem_level)
        obj = self._obj
        # A full flush forgets the window, so with no context takeover each message stands
        # alone; a sync flush keeps it for the next message.
        out = obj.compress(data) + obj.flush(zlib.Z_FULL_FLUSH if self._reset else zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_TAIL) else out
