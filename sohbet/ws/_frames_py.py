"""Pure-Python twin of the compiled `_frames` module: same names, same behaviour, same errors.

Layer: ws (sans-I/O). Imports `sohbet.errors` and `sohbet.ws.codes` only; no I/O, no asyncio.
It exists for differential tests (every input must give the same result here and in
`_frames.pyx`) and for debugging; the server never runs it unless `SOHBET_NO_EXTENSIONS=1` asks
for it.
"""

from __future__ import annotations

import binascii
import hashlib
import operator
from typing import TYPE_CHECKING, Final

from sohbet.errors import ProtocolViolation
from sohbet.ws.codes import MAX_CONTROL_PAYLOAD, CloseCode, Opcode

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "Frame",
    "FrameParser",
    "Utf8Validator",
    "accept_key",
    "apply_mask",
    "build_close",
    "build_frame",
    "is_valid_close_code",
    "is_valid_utf8",
    "parse_close",
]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_KNOWN_OPCODES: Final = frozenset(Opcode)
# The frame header (RFC 6455 §5.2), named as `_frames.pxd` names them.
_FIN_BIT: Final = 0x80
_RSV1_BIT: Final = 0x40
_MASK_BIT: Final = 0x80
_MAX_LEN_7: Final = 125
_LEN_16: Final = 126
_LEN_64: Final = 127
_MAX_LEN_16: Final = 0xFFFF
_MAX_OPCODE: Final = 0xF  # four bits
_MIN_HEADER: Final = 2  # the two bytes that say how long the rest of the header is
_KEY_BYTES: Final = 4
# Close codes allowed on the wire besides the standard ones: the IANA registry's and the
# applications' own (RFC 6455 §7.4.2).
_LAST_STANDARD_CODE: Final = 1014
_REGISTERED_CODES: Final = range(3000, 4999 + 1)
# UTF-8 (Unicode Table 3-7): bytes below 0x80 are ASCII; continuation bytes are 10xxxxxx.
_ASCII_END: Final = 0x80
_CONTINUATION_MASK: Final = 0xC0
_CONTINUATION: Final = 0x80
_REASON_BYTES: Final = MAX_CONTROL_PAYLOAD - 2  # a close payload is the 2-byte code and the reason
_SSIZE_MAX: Final = 2**63 - 1
_REPR_BYTES: Final = 32  # of a payload, in a Frame's repr


def _index(value: object) -> int:
    """An integer argument, clamped to the C Py_ssize_t range like the compiled module's."""
    return max(-_SSIZE_MAX - 1, min(_SSIZE_MAX, operator.index(value)))  # type: ignore[arg-type]  # TypeError is the point


def _view(data: Buffer) -> bytes:
    """Read any contiguous buffer, refusing what the compiled module's PyBUF_SIMPLE refuses."""
    view = memoryview(data)
    if not view.contiguous:
        raise BufferError("buffer is not contiguous")
    return view.tobytes()


def _close_code_ok(code: int) -> bool:
    # 1004, 1005, 1006 and 1015 are reserved for local use (RFC 6455 §7.4.1).
    return (
        CloseCode.NORMAL <= code <= CloseCode.UNSUPPORTED_DATA
        or CloseCode.INVALID_DATA <= code <= _LAST_STANDARD_CODE
        or code in _REGISTERED_CODES
    )


def _mask_key(mask: Buffer) -> bytes:
    key = bytes(memoryview(mask))
    if len(key) != _KEY_BYTES:
        raise ValueError(f"masking key must be {_KEY_BYTES} bytes, got {len(key)}")
    return key


def _xor(data: Buffer, key: bytes, offset: int = 0) -> bytes:
    """XOR with the key stream starting at byte *offset*; one big-int XOR does the whole run."""
    raw = _view(data)
    n = len(raw)
    if not n:
        return b""
    rotated = key[offset % 4 :] + key[: offset % 4]
    stream = (rotated * (n // 4 + 1))[:n]
    return (int.from_bytes(raw, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def apply_mask(data: Buffer, mask: Buffer) -> bytes:
    """Return *data* XOR-ed with the 4-byte masking key *mask* (RFC 6455 §5.3).

    Args:
        data: any contiguous buffer.
        mask: the 4-byte masking key, as any buffer.

    Returns:
        The masked (or, applied again, unmasked) bytes.

    Raises:
        ValueError: *mask* is not 4 bytes long.
    """
    key = _mask_key(mask)
    return _xor(data, key)


def accept_key(key: str | bytes) -> str:
    """Return the `Sec-WebSocket-Accept` value for a client's key (RFC 6455 §4.2.2).

    Args:
        key: the `Sec-WebSocket-Key` header value, as `str` or ASCII `bytes`.

    Returns:
        base64(SHA-1(key + GUID)).
    """
    raw = key.encode("ascii") if isinstance(key, str) else key
    return binascii.b2a_base64(hashlib.sha1(raw + _GUID).digest(), newline=False).decode("ascii")


def _frame_bytes(opcode: int, payload: bytes, fin: bool, rsv1: bool, key: bytes | None) -> bytes:
    n = len(payload)
    head = bytearray([(_FIN_BIT if fin else 0) | (_RSV1_BIT if rsv1 else 0) | opcode])
    mbit = _MASK_BIT if key is not None else 0
    if n <= _MAX_LEN_7:
        head.append(mbit | n)
    elif n <= _MAX_LEN_16:
        head.append(mbit | _LEN_16)
        head += n.to_bytes(2, "big")
    else:
        head.append(mbit | _LEN_64)
        head += n.to_bytes(8, "big")
    if key is None:
        return bytes(head) + payload
    return bytes(head) + key + _xor(payload, key)


def build_frame(
    opcode: int,
    payload: Buffer | str,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: Buffer | None = None,
) -> bytes:
    """Build a frame: unmasked when *mask* is None (server role), masked otherwise (client role).

    Args:
        opcode: one of the RFC 6455 §5.2 opcodes.
        payload: any contiguous buffer, or `str`, sent as UTF-8.
        fin: whether this is the final fragment of its message.
        rsv1: the per-message-compressed bit (RFC 7692 §6): first frame of a data message only.
        mask: the 4-byte masking key of a client frame.

    Returns:
        The frame, header and payload in one `bytes`.

    Raises:
        ValueError: unknown opcode; a control frame over 125 bytes, fragmented or with rsv1;
            rsv1 on a continuation frame; a bad key.
    """
    op = _index(opcode)
    if op not in _KNOWN_OPCODES:
        raise ValueError(f"unknown opcode {op:#x}")
    if rsv1 and not Opcode.TEXT <= op <= Opcode.BINARY:
        raise ValueError(f"rsv1 cannot be set on a frame with opcode {op:#x}")
    key = None if mask is None else _mask_key(mask)
    data = payload.encode("utf-8") if isinstance(payload, str) else _view(payload)
    if op >= Opcode.CLOSE:
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"control frame payload of {len(data)} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        if not fin:
            raise ValueError(f"control frame with opcode {op:#x} cannot be fragmented")
    return _frame_bytes(op, data, bool(fin), bool(rsv1), key)


def is_valid_close_code(code: int) -> bool:
    """Return whether *code* may appear in a close frame on the wire (RFC 6455 §7.4)."""
    return _close_code_ok(_index(code))


def parse_close(payload: Buffer) -> tuple[int, str]:
    """Parse a close frame's payload (RFC 6455 §5.5.1).

    Args:
        payload: the payload, as any buffer.

    Returns:
        `(code, reason)`; an empty payload means no status: `(1005, "")`.

    Raises:
        ProtocolViolation: 1002 for a 1-byte payload or a bad code; 1007 for a non-UTF-8 reason.
    """
    data = bytes(memoryview(payload))
    if not data:
        return int(CloseCode.NO_STATUS), ""  # a plain int, as the compiled core returns it
    if len(data) == 1:
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "close frame payload of 1 byte")
    code = int.from_bytes(data[:2], "big")
    if not _close_code_ok(code):
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    if not is_valid_utf8(data[2:]):
        raise ProtocolViolation(CloseCode.INVALID_DATA, f"close reason of {len(data) - 2} bytes is not valid UTF-8")
    return code, data[2:].decode("utf-8")


def build_close(code: int = CloseCode.NORMAL, reason: str = "", *, mask: Buffer | None = None) -> bytes:
    """Build a close frame (RFC 6455 §5.5.1); a reason over 123 bytes is cut at a character.

    Args:
        code: the close code; 1005 builds a close frame with an empty payload.
        reason: a short explanation, sent as UTF-8.
        mask: the 4-byte masking key of a client frame.

    Returns:
        The whole close frame.

    Raises:
        ValueError: *code* may not be sent on the wire.
        TypeError: *reason* is not a `str`.
    """
    c = _index(code)
    if not isinstance(reason, str):
        raise TypeError(f"close reason must be str, not {type(reason).__name__}")
    if c == CloseCode.NO_STATUS:
        body = b""
    else:
        if not _close_code_ok(c):
            raise ValueError(f"close code {c} may not be sent")
        raw = reason.encode("utf-8")
        cut = min(len(raw), _REASON_BYTES)
        while 0 < cut < len(raw) and raw[cut] & _CONTINUATION_MASK == _CONTINUATION:
            cut -= 1
        body = c.to_bytes(2, "big") + raw[:cut]
    return _frame_bytes(Opcode.CLOSE, body, True, False, None if mask is None else _mask_key(mask))


# Lead byte -> (continuation bytes owed, bounds of the first continuation byte): Unicode
# Table 3-7. Bytes missing from the table (80-C1, F5-FF) can never start a character.
_LEADS: Final[dict[int, tuple[int, int, int]]] = {
    **{b: (1, 0x80, 0xBF) for b in range(0xC2, 0xE0)},
    0xE0: (2, 0xA0, 0xBF),
    **{b: (2, 0x80, 0xBF) for b in range(0xE1, 0xF0)},
    0xED: (2, 0x80, 0x9F),
    0xF0: (3, 0x90, 0xBF),
    **{b: (3, 0x80, 0xBF) for b in range(0xF1, 0xF4)},
    0xF4: (3, 0x80, 0x8F),
}


class _Utf8State:
    __slots__ = ("hi", "lo", "need")

    def __init__(self) -> None:
        self.need = 0
        self.lo = 0x80
        self.hi = 0xBF

    def scan(self, data: bytes) -> int:
        """Advance over *data*; return the index of the first invalid byte, or -1."""
        need, lo, hi = self.need, self.lo, self.hi
        for i, b in enumerate(data):
            if need == 0:
                if b < _ASCII_END:
                    continue
                lead = _LEADS.get(b)
                if lead is None:
                    return i
                need, lo, hi = lead
            else:
                if not lo <= b <= hi:
                    return i
                need, lo, hi = need - 1, 0x80, 0xBF
        self.need, self.lo, self.hi = need, lo, hi
        return -1


def is_valid_utf8(data: Buffer) -> bool:
    """Return whether *data* (any contiguous buffer) is complete, well-formed UTF-8."""
    st = _Utf8State()
    return st.scan(_view(data)) < 0 and st.need == 0


class Frame:
    """One WebSocket frame, payload already unmasked; read-only."""

    __slots__ = ("_fin", "_opcode", "_payload", "_rsv1")

    def __init__(self, opcode: int, payload: Buffer = b"", *, fin: bool = True, rsv1: bool = False) -> None:
        op = _index(opcode)
        if not 0 <= op <= _MAX_OPCODE:
            raise ValueError(f"opcode {op} is outside 0-{_MAX_OPCODE}")
        self._opcode = op
        self._payload = bytes(memoryview(payload))
        self._fin = bool(fin)
        self._rsv1 = bool(rsv1)

    @property
    def opcode(self) -> int:
        return self._opcode

    @property
    def payload(self) -> bytes:
        return self._payload

    @property
    def fin(self) -> bool:
        return self._fin

    @property
    def rsv1(self) -> bool:
        return self._rsv1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.opcode, self.fin, self.rsv1, self.payload) == (
            other.opcode,
            other.fin,
            other.rsv1,
            other.payload,
        )

    __hash__ = None  # type: ignore[assignment]  # compared by value but never a dict key, like the compiled one

    def __repr__(self) -> str:
        more = "..." if len(self.payload) > _REPR_BYTES else ""
        return f"Frame(opcode={self.opcode}, payload={self.payload[:32]!r}{more}, fin={self.fin}, rsv1={self.rsv1})"


class Utf8Validator:
    """Incremental UTF-8 check that fails at the first bad byte (RFC 6455 §8.1)."""

    __slots__ = ("_st",)

    def __init__(self) -> None:
        self._st = _Utf8State()

    def feed(self, data: Buffer) -> None:
        """Check the next piece of the message.

        Raises:
            ProtocolViolation: 1007 at the first invalid byte; the validator is then reset.
        """
        bad = self._st.scan(_view(data))
        if bad >= 0:
            self._st = _Utf8State()
            raise ProtocolViolation(CloseCode.INVALID_DATA, f"invalid UTF-8 at byte {bad} of a chunk")

    def finish(self) -> None:
        """End the message: its last character must be complete. Resets for the next message.

        Raises:
            ProtocolViolation: 1007 when the message stops inside a multi-byte character.
        """
        need = self._st.need
        self._st = _Utf8State()
        if need:
            raise ProtocolViolation(CloseCode.INVALID_DATA, f"text ends {need} byte(s) short of a complete character")

    @property
    def is_complete(self) -> bool:
        """Whether the bytes so far end on a character boundary."""
        return self._st.need == 0


def _header_size(b1: int) -> int:
    ln = b1 & 0x7F
    size = _MIN_HEADER + (0 if ln < _LEN_16 else 2 if ln == _LEN_16 else 8)
    return size + (_KEY_BYTES if b1 & _MASK_BIT else 0)


def _limit(value: object, name: str, minimum: int) -> int:
    v = _index(value)
    if v < minimum:
        raise ValueError(f"{name} of {v} is below {minimum}")
    return v


class FrameParser:
    """Turn bytes, split anywhere, into frames; enforce the frame rules of RFC 6455 §5.

    After a violation the parser is dead: every later `feed` raises again.
    """

    def __init__(
        self,
        *,
        client: bool = False,
        max_frame_bytes: int = 1 << 20,
        allow_rsv1: bool = False,
        max_message_bytes: int = 0,
        max_fragments: int = 0,
        validate_utf8: bool = True,
    ) -> None:
        """Configure the parser; see the compiled twin for the meaning of each limit.

        Raises:
            ValueError: a limit below its minimum.
        """
        self.max_frame_bytes = _limit(max_frame_bytes, "max_frame_bytes", MAX_CONTROL_PAYLOAD)
        self.max_message_bytes = _limit(max_message_bytes, "max_message_bytes", 0)
        self.max_fragments = _limit(max_fragments, "max_fragments", 0)
        self.client = bool(client)
        self.allow_rsv1 = bool(allow_rsv1)
        self.validate_utf8 = bool(validate_utf8)
        self._hdr = bytearray()
        self._in_payload = False
        self._fin = self._rsv1 = self._masked = self._check_text = False
        self._opcode = 0
        self._key = b""
        self._payload = bytearray()
        self._len = 0
        self._msg_opcode = 0
        self._msg_rsv1 = False
        self._msg_bytes = 0
        self._msg_fragments = 0
        self._utf8 = _Utf8State()
        self._failure: tuple[int, str] | None = None

    @property
    def is_mid_message(self) -> bool:
        """Whether a data message has begun and not ended (fragments, or a frame in flight)."""
        return self._msg_opcode != 0

    def feed(self, data: Buffer) -> list[Frame]:
        """Consume the next bytes off the wire; return the frames they complete.

        Args:
            data: any contiguous buffer.

        Returns:
            The frames completed by *data*, in order.

        Raises:
            ProtocolViolation: with the RFC's close code; its `frames` holds the frames that were
                complete before the violation.
        """
        if self._failure is not None:
            raise ProtocolViolation(*self._failure)
        buf = _view(data)
        frames: list[Frame] = []
        i, n = 0, len(buf)
        try:
            while i < n:
                if not self._in_payload:
                    if len(self._hdr) < _MIN_HEADER:
                        take = min(_MIN_HEADER - len(self._hdr), n - i)
                        self._hdr += buf[i : i + take]
                        i += take
                        if len(self._hdr) < _MIN_HEADER:
                            break
                    hlen = _header_size(self._hdr[1])
                    take = min(hlen - len(self._hdr), n - i)
                    self._hdr += buf[i : i + take]
                    i += take
                    if len(self._hdr) < hlen:
                        break
                    header, self._hdr = bytes(self._hdr), bytearray()
                    self._start_frame(header)
                take = min(self._len - len(self._payload), n - i)
                if take:
                    chunk = buf[i : i + take]
                    if self._masked:
                        chunk = _xor(chunk, self._key, len(self._payload))
                    if self._check_text:
                        bad = self._utf8.scan(chunk)
                        if bad >= 0:
                            raise ProtocolViolation(
                                CloseCode.INVALID_DATA,
                                f"invalid UTF-8 at byte {len(self._payload) + bad} of a text frame",
                            )
                    self._payload += chunk
                    i += take
                if len(self._payload) == self._len:
                    frames.append(self._finish_frame())
        except ProtocolViolation as exc:
            exc.frames = list(frames)
            self._die(exc.close_code, str(exc))
            raise
        except MemoryError:  # pragma: no cover  # runs in a child process (test_running_out_of_memory...)
            self._die(CloseCode.MESSAGE_TOO_BIG, f"no memory to buffer a frame of {self._len} bytes")
            raise ProtocolViolation(
                CloseCode.MESSAGE_TOO_BIG, f"no memory to buffer a frame of {self._len} bytes", list(frames)
            ) from None
        return frames

    def _die(self, code: int, message: str) -> None:
        self._failure = (code, message)
        self._payload = bytearray()

    def _start_frame(self, h: bytes) -> None:
        b0, b1 = h[0], h[1]
        opcode = b0 & 0x0F
        fin = bool(b0 & _FIN_BIT)
        rsv1 = bool(b0 & _RSV1_BIT)
        masked = bool(b1 & _MASK_BIT)
        length = b1 & 0x7F
        off = 2
        if b0 & 0x30:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"reserved bits rsv2/rsv3 set ({b0 & 0x30:#04x})")
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode >= Opcode.CLOSE:
            if not fin:
                raise ProtocolViolation(
                    CloseCode.PROTOCOL_ERROR, f"control frame with opcode {opcode:#x} is fragmented"
                )
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(
                    CloseCode.PROTOCOL_ERROR, f"control frame payload of {length} bytes exceeds {MAX_CONTROL_PAYLOAD}"
                )
        if rsv1 and not (self.allow_rsv1 and Opcode.TEXT <= opcode <= Opcode.BINARY):
            raise ProtocolViolation(
                CloseCode.PROTOCOL_ERROR, f"reserved bit rsv1 set on a frame with opcode {opcode:#x}"
            )
        if masked == self.client:
            raise ProtocolViolation(
                CloseCode.PROTOCOL_ERROR,
                "frame from the server is masked" if self.client else "frame from the client is not masked",
            )
        if length == _LEN_16:
            length, off = int.from_bytes(h[2:4], "big"), 4
        elif length == _LEN_64:
            length, off = int.from_bytes(h[2:10], "big"), 10
            if length >> 63:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"64-bit payload length {length} has its top bit set")
        if opcode < Opcode.CLOSE:
            if opcode == Opcode.CONTINUATION:
                if self._msg_opcode == 0:
                    raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "continuation frame with no message to continue")
            elif self._msg_opcode != 0:
                raise ProtocolViolation(
                    CloseCode.PROTOCOL_ERROR, f"new message (opcode {opcode:#x}) before the fragmented one finished"
                )
            else:
                self._msg_opcode, self._msg_rsv1 = opcode, rsv1
                self._msg_bytes = self._msg_fragments = 0
        if length > self.max_frame_bytes:
            raise ProtocolViolation(
                CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds limit of {self.max_frame_bytes}"
            )
        if opcode < Opcode.CLOSE:
            self._msg_fragments += 1
            if self.max_fragments and self._msg_fragments > self.max_fragments:
                raise ProtocolViolation(
                    CloseCode.MESSAGE_TOO_BIG, f"message of more than {self.max_fragments} fragments"
                )
            if self.max_message_bytes and not self._msg_rsv1 and length > self.max_message_bytes - self._msg_bytes:
                raise ProtocolViolation(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"message of {self._msg_bytes + length} bytes exceeds limit of {self.max_message_bytes}",
                )
            self._msg_bytes += length
            self._check_text = self.validate_utf8 and self._msg_opcode == Opcode.TEXT and not self._msg_rsv1
        else:
            self._check_text = False
        self._key = h[off : off + 4] if masked else b""
        self._fin, self._rsv1, self._opcode, self._masked = fin, rsv1, opcode, masked
        self._len = length
        self._payload = bytearray()
        self._in_payload = True

    def _finish_frame(self) -> Frame:
        frame = Frame(self._opcode, self._payload, fin=self._fin, rsv1=self._rsv1)
        self._payload = bytearray()
        self._in_payload = False
        if self._opcode < Opcode.CLOSE and self._fin:
            if self._check_text and self._utf8.need:
                raise ProtocolViolation(
                    CloseCode.INVALID_DATA, f"text message ends {self._utf8.need} byte(s) short of a complete character"
                )
            self._msg_opcode = 0
            self._utf8 = _Utf8State()
        return frame
