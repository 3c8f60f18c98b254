# Declarations of the compiled connection that later Cython modules cimport (the socket glue in
# _send.pyx reads a connection's state and frames replies at C speed).
cimport cython

from sohbet.ws._frames cimport Frame, FrameParser, Utf8Validator


@cython.final
cdef class TextReceived:
    cdef readonly bytes data


@cython.final
cdef class BinaryReceived:
    cdef readonly bytes data


cdef object message_event(int opcode, bytes payload)


@cython.final
cdef class Connection:
    cdef readonly bint client
    cdef public Py_ssize_t max_message_bytes
    cdef public Py_ssize_t max_frames_per_window
    cdef public Py_ssize_t compress_min_bytes
    # Whether messages may still be sent: open, or closing with our close frame not yet taken.
    cdef public bint can_send
    cdef public int state
    # Why the connection closed: the code and reason of whichever side closed first.
    cdef public int close_code
    cdef public object close_reason  # a str, or what close() was given (a StrEnum, say), as the twin keeps it
    cdef public Py_ssize_t messages_received
    cdef FrameParser _parser
    cdef object _inflater
    cdef readonly object _deflater  # read by the fan-out loop: who needs a frame of its own
    cdef list _out  # frames queued for take_output(), made when something is queued
    # A close frame decided while reading: it goes out after the replies to what came before it.
    cdef bytes _close_out
    # The frame limit's sliding window: this slot's frames, the sum of the older slots, and the
    # ring of their counts (made at the first frame, so an idle connection holds no list).
    cdef Py_ssize_t _frames_in_window
    cdef Py_ssize_t _frames_recent
    cdef readonly list _slots
    cdef Py_ssize_t _slot
    # The message being reassembled: its opcode, whether compressed, its bytes and their size.
    cdef int _msg_opcode
    cdef bint _msg_compressed
    cdef bytearray _buf  # a fragmented message's bytes so far
    cdef Py_ssize_t _size
    cdef Utf8Validator _utf8
    # Masking keys of the client role, drawn 1024 at a time.
    cdef bytes _masks
    cdef Py_ssize_t _mask_pos

    cpdef list feed(self, object data)
    cpdef bytes frame_text(self, object data)
    cpdef bytes take_output(self)
    cdef int _handle_frames(self, list received, list events) except -1
    cdef int _handle_frame(self, Frame frame, list events) except -1
    cdef int _assemble(self, Frame frame, list events) except -1
    cdef int _fail(self, object code, str reason, list events) except -1
    cdef object _mask(self)
    cdef bytes _frame(self, int opcode, object payload, bint compress)
    cdef bytes _close_frame(self, object code, object reason)
    cdef int _queue(self, bytes frame) except -1
