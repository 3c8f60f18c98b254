# cython: language_level=3, binding=False
"""RFC 6455 byte work at C speed: masking, frame parsing and building, close payloads, UTF-8
validation and the handshake's accept key.

Layer: ws (sans-I/O, compiled). No I/O, no asyncio, no clock; imports only the standard library
and `sohbet.errors`; its wire constants are the `cdef enum` of `_frames.pxd`. Every public name
has a pure-Python twin in `_frames_py.py` with the same behaviour (same results, same exception
types), and the differential tests hold the two to it.

Buffers are read through raw pointers from `PyObject_GetBuffer` rather than typed memoryviews:
acquiring a memoryview costs more than masking 125 bytes. Every pointer access is preceded by a
length check in the same function; an AddressSanitizer build and the differential tests guard
them, since the debug build's bounds checks only cover memoryviews.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.number cimport PyNumber_Index
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from binascii import b2a_base64 as _b2a_base64
from hashlib import sha1 as _sha1

from sohbet.errors import ProtocolViolation

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


cdef extern from "Python.h":
    # Declared here with a PyObject* so NULL can be passed: saturate instead of raising.
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_Check(object o)
    bint PyUnicode_IS_ASCII(object o)


cdef bytes _GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
cdef uint64_t _HIGH_BITS = 0x8080808080808080ULL

# Frames up to this size get their payload allocated whole when the header arrives; larger ones
# grow chunk by chunk as bytes arrive, so a header alone never reserves a large buffer.
cdef Py_ssize_t _PREALLOC_BYTES = 64 * 1024


cdef bint close_code_ok(Py_ssize_t code) noexcept nogil:
    # Wire close codes (RFC 6455 §7.4.1, §7.4.2 and the IANA registry): 1004, 1005, 1006 and
    # 1015 are reserved for local use and must never appear in a close frame.
    return ((CLOSE_NORMAL <= code <= CLOSE_UNSUPPORTED_DATA) or (CLOSE_INVALID_DATA <= code <= LAST_STANDARD_CODE)
            or (FIRST_REGISTERED_CODE <= code <= LAST_REGISTERED_CODE))


cdef Py_ssize_t _index(object value) except? -1:
    """Return an integer argument as Py_ssize_t, saturating instead of overflowing.

    Floats are refused (TypeError) and huge values clamp to the Py_ssize_t range, where the
    callers' range checks turn them into ValueError, exactly like the twin.
    """
    return PyNumber_AsSsize_t(PyNumber_Index(value), NULL)


cdef extern from "_xor.h":
    void sohbet_xor_long(unsigned char* dst, const unsigned char* src, size_t n,
                         const unsigned char* key8) noexcept nogil


cdef void xor_mask(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                   const unsigned char* key, Py_ssize_t offset) noexcept nogil:
    """XOR *n* bytes with the masking key, starting at byte *offset* of the key stream.

    The caller has checked that *dst* and *src* hold *n* bytes. Short runs stay here, a word at
    a time, because a call would cost more than it saves; long ones go to the vectorised loop in
    _xor.h.
    """
    cdef unsigned char k[8]
    cdef uint64_t k64
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    cdef int j
    for j in range(8):
        k[j] = key[(offset + j) & 3]
    if n >= 256:
        sohbet_xor_long(dst, src, <size_t>n, k)
        return
    memcpy(&k64, k, 8)
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= k64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ k[i & 3]
        i += 1


cdef Py_ssize_t utf8_scan(Utf8State* st, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Advance *st* over *n* bytes; return the index of the first invalid byte, or -1.

    A hand-written form of Unicode Table 3-7 (well-formed byte sequences): each lead byte sets
    how many continuation bytes follow and the range the first of them must fall in, which is
    where overlongs (E0, F0), surrogates (ED) and code points above U+10FFFF (F4) are refused.
    Runs of ASCII are skipped eight bytes at a time.
    """
    cdef Py_ssize_t i = 0
    cdef int need = st.need
    cdef uint8_t lo = st.lo
    cdef uint8_t hi = st.hi
    cdef uint8_t b
    cdef uint64_t w
    while i < n:
        if need == 0:
            while i + 8 <= n:
                memcpy(&w, p + i, 8)
                if w & _HIGH_BITS:
                    break
                i += 8
            if i == n:
                break
            b = p[i]
            if b < 0x80:
                pass
            elif b < 0xC2:
                return i
            elif b < 0xE0:
                need = 1
                lo = 0x80
                hi = 0xBF
            elif b == 0xE0:
                need = 2
                lo = 0xA0
                hi = 0xBF
            elif b == 0xED:
                need = 2
                lo = 0x80
                hi = 0x9F
            elif b < 0xF0:
                need = 2
                lo = 0x80
                hi = 0xBF
            elif b == 0xF0:
                need = 3
                lo = 0x90
                hi = 0xBF
            elif b < 0xF4:
                need = 3
                lo = 0x80
                hi = 0xBF
            elif b == 0xF4:
                need = 3
                lo = 0x80
                hi = 0x8F
            else:
                return i
        else:
            b = p[i]
            if b < lo or b > hi:
                return i
            need -= 1
            lo = 0x80
            hi = 0xBF
        i += 1
    st.need = need
    st.lo = lo
    st.hi = hi
    return -1


cdef void utf8_reset(Utf8State* st) noexcept nogil:
    st.need = 0
    st.lo = 0x80
    st.hi = 0xBF


cdef bytes frame_bytes(int opcode, const unsigned char* data, Py_ssize_t n, bint fin, bint rsv1,
                       const unsigned char* key):
    """Build one frame (RFC 6455 §5.2) in a single allocation: header, then payload.

    The caller has validated *opcode* and the control-frame rules; *key* is NULL for an
    unmasked (server) frame or points at 4 bytes for a masked (client) frame.
    """
    cdef Py_ssize_t hlen = 2
    cdef int j
    if n > 0xFFFF:
        hlen = 10
    elif n > MAX_LEN_7:
        hlen = 4
    if key != NULL:
        hlen += 4
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + n)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    cdef unsigned char mbit = MASK_BIT if key != NULL else 0
    o[0] = (FIN_BIT if fin else 0) | (RSV1_BIT if rsv1 else 0) | opcode
    if n <= MAX_LEN_7:
        o[1] = mbit | <unsigned char>n
    elif n <= 0xFFFF:
        o[1] = mbit | LEN_16
        o[2] = <unsigned char>(n >> 8)
        o[3] = <unsigned char>n
    else:
        o[1] = mbit | LEN_64
        for j in range(8):
            o[2 + j] = <unsigned char>((<uint64_t>n) >> (56 - 8 * j))
    if key != NULL:
        memcpy(o + hlen - 4, key, 4)
        xor_mask(o + hlen, data, n, key, 0)
    elif n:
        memcpy(o + hlen, data, n)
    return out


cdef inline bint _opcode_known(Py_ssize_t opcode) noexcept nogil:
    return OP_CONTINUATION <= opcode <= OP_BINARY or OP_CLOSE <= opcode <= OP_PONG


cdef bytes _mask_key(object mask):
    """Return *mask* as 4 bytes, refusing anything else; a bad key is the caller's bug."""
    if not PyBytes_CheckExact(mask):
        mask = bytes(memoryview(mask))
    if PyBytes_GET_SIZE(mask) != 4:
        raise ValueError(f"masking key must be 4 bytes, got {PyBytes_GET_SIZE(mask)}")
    return <bytes>mask


def apply_mask(data, mask) -> bytes:
    """Return *data* XOR-ed with the 4-byte masking key *mask* (RFC 6455 §5.3).

    Args:
        data: any contiguous buffer; `bytes` takes a fast path with no buffer acquisition.
        mask: the 4-byte masking key, as any buffer.

    Returns:
        The masked (or, applied again, unmasked) bytes.

    Raises:
        ValueError: *mask* is not 4 bytes long.
    """
    cdef bytes key = _mask_key(mask)
    cdef bytes out
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(data))
        if PyBytes_GET_SIZE(data):
            xor_mask(<unsigned char*>PyBytes_AS_STRING(out),
                     <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                     <const unsigned char*>PyBytes_AS_STRING(key), 0)
        return out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        if view.len:
            xor_mask(<unsigned char*>PyBytes_AS_STRING(out), <const unsigned char*>view.buf,
                     view.len, <const unsigned char*>PyBytes_AS_STRING(key), 0)
    finally:
        PyBuffer_Release(&view)
    return out


def accept_key(key) -> str:
    """Return the `Sec-WebSocket-Accept` value for a client's key (RFC 6455 §4.2.2).

    Args:
        key: the `Sec-WebSocket-Key` header value, as `str` or ASCII `bytes`.

    Returns:
        base64(SHA-1(key + GUID)).
    """
    if isinstance(key, str):
        key = (<str>key).encode("ascii")
    return _b2a_base64(_sha1(key + _GUID).digest(), newline=False).decode("ascii")


def build_frame(opcode, payload, *, bint fin=True, bint rsv1=False, mask=None) -> bytes:
    """Build a frame: unmasked when *mask* is None (server role), masked otherwise (client role).

    Args:
        opcode: one of the RFC 6455 §5.2 opcodes.
        payload: any contiguous buffer, or `str`, sent as UTF-8 (ASCII text without a copy).
        fin: whether this is the final fragment of its message.
        rsv1: the per-message-compressed bit (RFC 7692 §6): first frame of a data message only.
        mask: the 4-byte masking key of a client frame.

    Returns:
        The frame, header and payload in one `bytes`.

    Raises:
        ValueError: unknown opcode; a control frame over 125 bytes, fragmented or with rsv1;
            rsv1 on a continuation frame; a bad key.
    """
    cdef Py_ssize_t op = _index(opcode)
    cdef const unsigned char* key = NULL
    cdef bytes key_bytes
    cdef Py_ssize_t n
    cdef const unsigned char* p
    cdef Py_buffer view
    if not _opcode_known(op):
        raise ValueError(f"unknown opcode {op:#x}")
    if rsv1 and not (OP_TEXT <= op <= OP_BINARY):
        raise ValueError(f"rsv1 cannot be set on a frame with opcode {op:#x}")
    if mask is not None:
        key_bytes = _mask_key(mask)
        key = <const unsigned char*>PyBytes_AS_STRING(key_bytes)
    if PyBytes_CheckExact(payload):
        p = <const unsigned char*>PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
    elif PyUnicode_Check(payload):
        if not PyUnicode_IS_ASCII(payload):
            # Encoding to a temporary keeps the str unchanged; PyUnicode_AsUTF8AndSize would
            # cache a UTF-8 copy inside it for the rest of its life.
            payload = (<str>payload).encode("utf-8")
            p = <const unsigned char*>PyBytes_AS_STRING(payload)
            n = PyBytes_GET_SIZE(payload)
        else:
            p = <const unsigned char*>PyUnicode_AsUTF8AndSize(payload, &n)  # the ASCII data itself
    else:
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            _check_control(<int>op, view.len, fin)
            return frame_bytes(<int>op, <const unsigned char*>view.buf, view.len, fin, rsv1, key)
        finally:
            PyBuffer_Release(&view)
    _check_control(<int>op, n, fin)
    return frame_bytes(<int>op, p, n, fin, rsv1, key)


cdef inline int _check_control(int opcode, Py_ssize_t n, bint fin) except -1:
    if opcode >= OP_CLOSE:
        if n > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"control frame payload of {n} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        if not fin:
            raise ValueError(f"control frame with opcode {opcode:#x} cannot be fragmented")
    return 0


def is_valid_close_code(code) -> bool:
    """Return whether *code* may appear in a close frame on the wire (RFC 6455 §7.4)."""
    cdef Py_ssize_t c = _index(code)
    return close_code_ok(c)


def parse_close(payload) -> tuple:
    """Parse a close frame's payload (RFC 6455 §5.5.1).

    Args:
        payload: the payload, as any contiguous buffer.

    Returns:
        `(code, reason)`; an empty payload means no status: `(1005, "")`.

    Raises:
        ProtocolViolation: 1002 for a 1-byte payload or a code not allowed on the wire;
            1007 when the reason is not UTF-8.
    """
    cdef bytes data = payload if PyBytes_CheckExact(payload) else bytes(memoryview(payload))
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef long code
    cdef Utf8State st
    if n == 0:
        return CLOSE_NO_STATUS, ""
    if n == 1:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "close frame payload of 1 byte")
    code = (p[0] << 8) | p[1]
    if not close_code_ok(code):
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    utf8_reset(&st)
    if utf8_scan(&st, p + 2, n - 2) >= 0 or st.need:
        raise ProtocolViolation(CLOSE_INVALID_DATA, f"close reason of {n - 2} bytes is not valid UTF-8")
    return code, data[2:].decode("utf-8")


def build_close(code=CLOSE_NORMAL, reason="", *, mask=None) -> bytes:
    """Build a close frame (RFC 6455 §5.5.1).

    Code 1005 builds a close frame with an empty payload. A reason longer than the 123 bytes a
    control frame leaves for it is cut at a character boundary rather than refused: a close must
    always be sendable, and the code carries the meaning.

    Args:
        code: the close code.
        reason: a short explanation, sent as UTF-8.
        mask: the 4-byte masking key of a client frame.

    Returns:
        The whole close frame.

    Raises:
        ValueError: *code* may not be sent on the wire.
        TypeError: *reason* is not a `str`.
    """
    cdef Py_ssize_t c = _index(code)
    cdef bytes body
    cdef bytes raw
    cdef Py_ssize_t cut
    cdef unsigned char* b
    if not isinstance(reason, str):
        raise TypeError(f"close reason must be str, not {type(reason).__name__}")
    if c == CLOSE_NO_STATUS:
        body = b""
    else:
        if not close_code_ok(c):
            raise ValueError(f"close code {c} may not be sent")
        raw = (<str>reason).encode("utf-8")
        cut = PyBytes_GET_SIZE(raw)
        if cut > 123:
            cut = 123
            # Step back over continuation bytes (10xxxxxx) to the start of the cut character.
            while cut > 0 and (<unsigned char>PyBytes_AS_STRING(raw)[cut] & 0xC0) == 0x80:
                cut -= 1
        body = PyBytes_FromStringAndSize(NULL, cut + 2)
        b = <unsigned char*>PyBytes_AS_STRING(body)
        b[0] = <unsigned char>(c >> 8)
        b[1] = <unsigned char>c
        memcpy(b + 2, PyBytes_AS_STRING(raw), cut)
    cdef const unsigned char* key = NULL
    cdef bytes key_bytes
    if mask is not None:
        key_bytes = _mask_key(mask)
        key = <const unsigned char*>PyBytes_AS_STRING(key_bytes)
    return frame_bytes(8, <const unsigned char*>PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body),
                       True, False, key)


def is_valid_utf8(data) -> bool:
    """Return whether *data* (any contiguous buffer) is complete, well-formed UTF-8."""
    cdef Utf8State st
    cdef Py_buffer view
    cdef bint ok
    utf8_reset(&st)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        ok = utf8_scan(&st, <const unsigned char*>view.buf, view.len) < 0 and st.need == 0
    finally:
        PyBuffer_Release(&view)
    return ok


cdef class Frame:
    """One WebSocket frame, payload already unmasked; read-only."""

    def __init__(self, opcode, payload=b"", *, bint fin=True, bint rsv1=False):
        cdef Py_ssize_t op = _index(opcode)
        if not 0 <= op <= 15:
            raise ValueError(f"opcode {op} is outside 0-15")
        self.opcode = <int>op
        self.payload = bytes(memoryview(payload))
        self.fin = fin
        self.rsv1 = rsv1

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        cdef Frame o = <Frame>other
        return (self.opcode == o.opcode and self.fin == o.fin and self.rsv1 == o.rsv1
                and self.payload == o.payload)

    __hash__ = None

    def __repr__(self):
        return (f"Frame(opcode={self.opcode}, payload={self.payload[:32]!r}"
                f"{'...' if len(self.payload) > 32 else ''}, fin={self.fin}, rsv1={self.rsv1})")


cdef class Utf8Validator:
    """Incremental UTF-8 check for a message that arrives in pieces.

    It fails at the first byte that cannot start or continue a well-formed sequence, not at the
    end of the message, so a server can close with 1007 as soon as bad text arrives
    (RFC 6455 §8.1).
    """

    def __cinit__(self):
        utf8_reset(&self._st)

    cdef int check(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t bad = utf8_scan(&self._st, p, n)
        if bad >= 0:
            utf8_reset(&self._st)
            raise ProtocolViolation(CLOSE_INVALID_DATA, f"invalid UTF-8 at byte {bad} of a chunk")
        return 0

    def feed(self, data) -> None:
        """Check the next piece of the message.

        Args:
            data: the next bytes, as any contiguous buffer.

        Raises:
            ProtocolViolation: 1007 at the first invalid byte; the validator is then reset.
        """
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            self.check(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.check(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def finish(self) -> None:
        """End the message: its last character must be complete. Resets for the next message.

        Raises:
            ProtocolViolation: 1007 when the message stops inside a multi-byte character.
        """
        cdef int need = self._st.need
        utf8_reset(&self._st)
        if need:
            raise ProtocolViolation(CLOSE_INVALID_DATA, f"text ends {need} byte(s) short of a complete character")

    @property
    def is_complete(self) -> bool:
        """Whether the bytes so far end on a character boundary."""
        return self._st.need == 0


cdef Py_ssize_t _limit(object value, str name, Py_ssize_t minimum) except -1:
    cdef Py_ssize_t v = _index(value)
    if v < minimum:
        raise ValueError(f"{name} of {v} is below {minimum}")
    return v


cdef class FrameParser:
    """Turn bytes, split anywhere, into frames; enforce the frame rules of RFC 6455 §5.

    A payload of up to 64 KiB is allocated once, when its header arrives (after the size limits
    have been checked against the header), and unmasked straight into place as its bytes come
    in, so it costs one copy however it is split. Larger payloads grow chunk by chunk, so a
    header alone never reserves a large buffer. Text payloads are checked for UTF-8 as they
    fill, so bad text fails at its first bad byte even mid-frame.

    After a violation the parser is dead: every later `feed` raises again.
    """

    def __init__(self, *, bint client=False, max_frame_bytes=1 << 20, bint allow_rsv1=False,
                 max_message_bytes=0, max_fragments=0, bint validate_utf8=True):
        """Configure the parser.

        Args:
            client: parse as the client: frames from the server must be unmasked.
            max_frame_bytes: largest payload of one frame (1009 above it); at least 125.
            allow_rsv1: permessage-deflate was negotiated, so rsv1 may mark a message compressed.
            max_message_bytes: largest sum of frame payloads of one uncompressed message; 0 is
                no limit. Compressed messages are bounded after inflating, by the caller.
            max_fragments: most frames in one message; 0 is no limit.
            validate_utf8: check uncompressed text messages as they arrive (1007).

        Raises:
            ValueError: a limit below its minimum.
        """
        self.max_frame_bytes = _limit(max_frame_bytes, "max_frame_bytes", MAX_CONTROL_PAYLOAD)
        self.max_message_bytes = _limit(max_message_bytes, "max_message_bytes", 0)
        self.max_fragments = _limit(max_fragments, "max_fragments", 0)
        self.client = client
        self.allow_rsv1 = allow_rsv1
        self.validate_utf8 = validate_utf8
        utf8_reset(&self._utf8)

    def feed(self, data) -> list:
        """Consume the next bytes off the wire; return the frames they complete.

        Args:
            data: any contiguous buffer; `bytes` takes a fast path with no buffer acquisition.

        Returns:
            The frames completed by *data*, in order (often none, or one).

        Raises:
            ProtocolViolation: with the RFC's close code; its `frames` holds the frames that were
                complete before the violation.
        """
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            return self.feed_raw(<const unsigned char*>PyBytes_AS_STRING(data),
                                 PyBytes_GET_SIZE(data))
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.feed_raw(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    @property
    def is_mid_message(self) -> bool:
        """Whether a data message has begun and not ended (fragments, or a frame in flight)."""
        return self._msg_opcode != 0

    cdef list feed_raw(self, const unsigned char* p, Py_ssize_t n):
        cdef list frames = []
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t hlen
        cdef Py_ssize_t take
        cdef Py_ssize_t bad
        cdef const unsigned char* h
        cdef unsigned char* dst
        cdef bytes chunk
        if self._failure is not None:
            raise ProtocolViolation(self._failure_code, self._failure)
        try:
            while i < n:
                if not self._in_payload:
                    if self._hdr_len == 0 and n - i >= 2 and n - i >= _header_size(p + i):
                        # The whole header is in this read: parse it in place.
                        h = p + i
                        i += _header_size(h)
                    else:
                        # Collect a header split across reads; 2 bytes tell its full size.
                        if self._hdr_len < 2:
                            take = min(2 - self._hdr_len, n - i)
                            memcpy(self._hdr + self._hdr_len, p + i, take)
                            self._hdr_len += take
                            i += take
                            if self._hdr_len < 2:
                                break
                        hlen = _header_size(self._hdr)
                        take = min(hlen - self._hdr_len, n - i)
                        memcpy(self._hdr + self._hdr_len, p + i, take)
                        self._hdr_len += take
                        i += take
                        if self._hdr_len < hlen:
                            break
                        self._hdr_len = 0
                        h = self._hdr
                    self._start_frame(h)
                take = min(self._len - self._pos, n - i)
                if take:
                    if self._chunks is None:
                        dst = <unsigned char*>PyBytes_AS_STRING(self._payload) + self._pos
                    else:
                        chunk = PyBytes_FromStringAndSize(NULL, take)
                        self._chunks.append(chunk)
                        dst = <unsigned char*>PyBytes_AS_STRING(chunk)
                    if self._masked:
                        xor_mask(dst, p + i, take, self._key, self._pos)
                    else:
                        memcpy(dst, p + i, take)
                    if self._check_text:
                        bad = utf8_scan(&self._utf8, dst, take)
                        if bad >= 0:
                            raise ProtocolViolation(
                                CLOSE_INVALID_DATA, f"invalid UTF-8 at byte {self._pos + bad} of a text frame")
                    self._pos += take
                    i += take
                if self._pos == self._len:
                    frames.append(self._finish_frame())
        except ProtocolViolation as exc:
            exc.frames = frames
            self._die(exc.close_code, str(exc))
            raise
        except MemoryError:
            # Buffering the peer's frame exhausted memory: for the peer, the frame was too big.
            self._die(CLOSE_MESSAGE_TOO_BIG, f"no memory to buffer a frame of {self._len} bytes")
            raise ProtocolViolation(self._failure_code, self._failure, frames) from None
        return frames

    cdef void _die(self, int code, str message):
        # Keep the code and message only: holding the exception would pin its traceback.
        self._failure_code = code
        self._failure = message
        self._payload = None
        self._chunks = None

    cdef int _start_frame(self, const unsigned char* h) except -1:
        """Validate a complete header and prepare to receive its payload (RFC 6455 §5.2)."""
        cdef unsigned char b0 = h[0]
        cdef unsigned char b1 = h[1]
        cdef int opcode = b0 & 0x0F
        cdef bint fin = (b0 & FIN_BIT) != 0
        cdef bint rsv1 = (b0 & RSV1_BIT) != 0
        cdef bint masked = (b1 & MASK_BIT) != 0
        cdef uint64_t length = b1 & 0x7F
        cdef int off = 2
        cdef int j
        if b0 & 0x30:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"reserved bits rsv2/rsv3 set ({b0 & 0x30:#04x})")
        if not _opcode_known(opcode):
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode >= OP_CLOSE:
            # Control frames are capped at 125 bytes and never fragmented (§5.5).
            if not fin:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"control frame with opcode {opcode:#x} is fragmented")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(
                    CLOSE_PROTOCOL_ERROR, f"control frame payload of {length} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        if rsv1 and not (self.allow_rsv1 and OP_TEXT <= opcode <= OP_BINARY):
            # rsv1 means "compressed" only where permessage-deflate was negotiated, and only on
            # the first frame of a data message (RFC 7692 §6).
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"reserved bit rsv1 set on a frame with opcode {opcode:#x}")
        if masked == self.client:
            raise ProtocolViolation(
                CLOSE_PROTOCOL_ERROR, "frame from the server is masked" if self.client
                else "frame from the client is not masked")
        if length == LEN_16:
            length = (<uint64_t>h[2] << 8) | h[3]
            off = 4
        elif length == LEN_64:
            length = 0
            for j in range(8):
                length = (length << 8) | h[2 + j]
            if length >> 63:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"64-bit payload length {length} has its top bit set")
            off = 10
        if opcode < OP_CLOSE:
            if opcode == OP_CONTINUATION:
                if self._msg_opcode == 0:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation frame with no message to continue")
            elif self._msg_opcode != 0:
                raise ProtocolViolation(
                    CLOSE_PROTOCOL_ERROR, f"new message (opcode {opcode:#x}) before the fragmented one finished")
            else:
                self._msg_opcode = opcode
                self._msg_rsv1 = rsv1
                self._msg_bytes = 0
                self._msg_fragments = 0
        # Size limits are checked from the header, before a byte of payload is buffered.
        if length > <uint64_t>self.max_frame_bytes:
            raise ProtocolViolation(
                CLOSE_MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds limit of {self.max_frame_bytes}")
        if opcode < OP_CLOSE:
            self._msg_fragments += 1
            if self.max_fragments and self._msg_fragments > self.max_fragments:
                raise ProtocolViolation(
                    CLOSE_MESSAGE_TOO_BIG, f"message of more than {self.max_fragments} fragments")
            # Compare before adding, so a huge declared length cannot wrap the running total.
            if (self.max_message_bytes and not self._msg_rsv1
                    and <Py_ssize_t>length > self.max_message_bytes - self._msg_bytes):
                raise ProtocolViolation(
                    CLOSE_MESSAGE_TOO_BIG, f"message of {self._msg_bytes + <object>length} bytes exceeds limit of "
                    f"{self.max_message_bytes}")
            self._msg_bytes += <Py_ssize_t>length
            self._check_text = (self.validate_utf8 and self._msg_opcode == OP_TEXT
                                and not self._msg_rsv1)
        else:
            self._check_text = False
        if masked:
            memcpy(self._key, h + off, 4)
        self._fin = fin
        self._rsv1 = rsv1
        self._opcode = opcode
        self._masked = masked
        self._len = <Py_ssize_t>length
        self._pos = 0
        if self._len <= _PREALLOC_BYTES:
            self._payload = PyBytes_FromStringAndSize(NULL, self._len)
            self._chunks = None
        else:
            self._payload = None
            self._chunks = []
        self._in_payload = True
        return 0

    cdef Frame _finish_frame(self):
        cdef Frame f = Frame.__new__(Frame)
        f.fin = self._fin
        f.rsv1 = self._rsv1
        f.opcode = self._opcode
        if self._chunks is None:
            f.payload = self._payload
        else:
            f.payload = b"".join(self._chunks)
        self._payload = None
        self._chunks = None
        self._in_payload = False
        if self._opcode < OP_CLOSE and self._fin:
            if self._check_text and self._utf8.need:
                raise ProtocolViolation(
                    CLOSE_INVALID_DATA, f"text message ends {self._utf8.need} byte(s) short of a complete character")
            self._msg_opcode = 0
            utf8_reset(&self._utf8)
        return f


cdef inline Py_ssize_t _header_size(const unsigned char* h) noexcept nogil:
    """Return the full header length that the first two header bytes announce (§5.2)."""
    cdef Py_ssize_t size = 2
    cdef unsigned char ln = h[1] & 0x7F
    if ln == LEN_16:
        size = 4
    elif ln == LEN_64:
        size = 10
    if h[1] & MASK_BIT:
        size += 4
    return size
