# Declarations that later Cython modules cimport to reach the frame core at C speed.
from libc.stdint cimport uint8_t


# The wire numbers the core compares and raises with. C constants, so the hot loops pay nothing
# for the names; the opcodes, close codes and MAX_CONTROL_PAYLOAD mirror sohbet.ws.codes and
# sohbet.ws.frames, and a test holds them to the same values.
cdef enum:
    # Opcodes (RFC 6455 §5.2): OP_CLOSE and above are control frames.
    OP_CONTINUATION = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA
    # Close codes (§7.4.1).
    CLOSE_NORMAL = 1000
    CLOSE_PROTOCOL_ERROR = 1002
    CLOSE_UNSUPPORTED_DATA = 1003
    CLOSE_NO_STATUS = 1005
    CLOSE_INVALID_DATA = 1007
    CLOSE_MESSAGE_TOO_BIG = 1009
    # Besides the standard codes, the IANA registry's and the applications' own (§7.4.2).
    LAST_STANDARD_CODE = 1014
    FIRST_REGISTERED_CODE = 3000
    LAST_REGISTERED_CODE = 4999
    # Control frames carry at most this many bytes (§5.5).
    MAX_CONTROL_PAYLOAD = 125
    # The frame header (§5.2): bits of its first two bytes, and the 7-bit length's two markers.
    FIN_BIT = 0x80
    RSV1_BIT = 0x40
    MASK_BIT = 0x80
    MAX_LEN_7 = 125
    LEN_16 = 126
    LEN_64 = 127


cdef struct Utf8State:
    # Continuation bytes still owed by the current sequence (0 when between characters), and the
    # bounds the next byte must fall in: Unicode Table 3-7 narrows them after E0, ED, F0 and F4.
    int need
    uint8_t lo
    uint8_t hi


cdef void xor_mask(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                   const unsigned char* key, Py_ssize_t offset) noexcept nogil
cdef Py_ssize_t utf8_scan(Utf8State* st, const unsigned char* p, Py_ssize_t n) noexcept nogil
cdef void utf8_reset(Utf8State* st) noexcept nogil
cdef bint close_code_ok(Py_ssize_t code) noexcept nogil
cdef bytes frame_bytes(int opcode, const unsigned char* data, Py_ssize_t n, bint fin, bint rsv1,
                       const unsigned char* key)


cdef class Frame:
    cdef readonly bint fin
    cdef readonly bint rsv1
    cdef readonly int opcode
    cdef readonly bytes payload


cdef class Utf8Validator:
    cdef Utf8State _st
    cdef int check(self, const unsigned char* p, Py_ssize_t n) except -1


cdef class FrameParser:
    cdef readonly bint client
    cdef readonly bint allow_rsv1
    cdef readonly bint validate_utf8
    cdef readonly Py_ssize_t max_frame_bytes
    cdef readonly Py_ssize_t max_message_bytes
    cdef readonly Py_ssize_t max_fragments
    # Header bytes collected so far when a header arrives split across reads (at most 14).
    cdef unsigned char _hdr[14]
    cdef Py_ssize_t _hdr_len
    # The frame whose payload is arriving: its header fields, and its payload so far: either
    # preallocated whole (`_payload`, filled up to `_pos`) or, when large, a list of chunks.
    cdef bint _in_payload
    cdef bint _fin
    cdef bint _rsv1
    cdef int _opcode
    cdef bint _masked
    cdef unsigned char _key[4]
    cdef bytes _payload
    cdef list _chunks
    cdef Py_ssize_t _len
    cdef Py_ssize_t _pos
    cdef bint _check_text
    # The data message in progress: its opcode (0 when none), compression, wire bytes, fragments.
    cdef int _msg_opcode
    cdef bint _msg_rsv1
    cdef Py_ssize_t _msg_bytes
    cdef Py_ssize_t _msg_fragments
    cdef Utf8State _utf8
    # Set once the parser is dead: the close code and message every later feed raises with.
    cdef int _failure_code
    cdef str _failure

    cdef list feed_raw(self, const unsigned char* p, Py_ssize_t n)
    cdef void _die(self, int code, str message)
    cdef int _start_frame(self, const unsigned char* h) except -1
    cdef Frame _finish_frame(self)
