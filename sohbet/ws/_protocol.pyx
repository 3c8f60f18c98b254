# cython: auto_pickle=False
"""The sans-I/O WebSocket connection, compiled: bytes in, events out, bytes to send queued.

Layer: ws (sans-I/O). Its pure-Python twin is `_protocol_py.py`, which says what every method
does; `sohbet.ws.protocol` picks this one unless SOHBET_NO_EXTENSIONS=1, and the differential
tests run both through the same cases (tests/ws/test_protocol.py).

Why compiled: with the frame core compiled, the twin's per-message steps (checking the frame,
making the event, framing the reply, the queue) were about a fifth of an echo's user-space
instructions, and all of its interpreted part after the socket glue. Here the common case, one
whole uncompressed message per read, reads the frame's fields in C and makes its event without
a Python call; what is rare (fragments, compression, control frames, failures) follows the twin
line by line.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE

from sohbet.ws._frames cimport OP_BINARY, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, frame_bytes

from sohbet.errors import InvalidState, ProtocolViolation
from sohbet.ws._frames import build_close, build_frame, parse_close
from sohbet.ws.codes import CloseCode
from sohbet.ws.deflate import Deflater, Inflater
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived, PongReceived

cdef enum:
    _OPEN = 1
    _CLOSING = 2  # we sent a close frame and wait for the peer's
    _CLOSED = 3  # the close handshake is over, or the connection failed
    _MASK_POOL_BYTES = 4096  # one os.urandom call masks 1024 client frames
    _WINDOW_SLOTS = 10  # the frame limit's window, in calls to new_window()
    _POLICY_VIOLATION = 1008  # CloseCode.POLICY_VIOLATION (a test holds them equal)

OPEN = _OPEN
CLOSING = _CLOSING
CLOSED = _CLOSED
WINDOW_SLOTS = _WINDOW_SLOTS
POLICY_VIOLATION = _POLICY_VIOLATION


cdef class TextReceived:
    """A complete text message; `data` is its UTF-8 bytes, already validated."""

    def __init__(self, bytes data not None):
        self.data = data

    @property
    def text(self):
        """The message as `str` (decoded on demand: JSON parsers take the bytes directly)."""
        return self.data.decode("utf-8")

    def __eq__(self, other):
        return type(other) is type(self) and (<TextReceived>other).data == self.data

    __hash__ = None

    def __repr__(self):
        return f"TextReceived({self.data!r})"


cdef class BinaryReceived:
    """A complete binary message."""

    def __init__(self, bytes data not None):
        self.data = data

    def __eq__(self, other):
        return type(other) is type(self) and (<BinaryReceived>other).data == self.data

    __hash__ = None

    def __repr__(self):
        return f"BinaryReceived({self.data!r})"


cdef object message_event(int opcode, bytes payload):
    """The event of a whole message, made without a Python call (`__new__` skips `__init__`)."""
    cdef TextReceived text
    cdef BinaryReceived binary
    if opcode == OP_TEXT:
        text = TextReceived.__new__(TextReceived)
        text.data = payload
        return text
    binary = BinaryReceived.__new__(BinaryReceived)
    binary.data = payload
    return binary


cdef class Connection:
    """One WebSocket connection after the opening handshake, in either role: see the twin,
    `sohbet.ws._protocol_py.Connection`, for what each method does."""

    def __init__(
        self,
        *,
        bint client=False,
        max_message_bytes=64 * 1024,
        max_fragments=0,
        max_frames_per_window=0,
        deflate=None,
        compression_level=6,
        compression_mem_level=8,
        compress_min_bytes=32,
    ):
        self.client = client
        self.max_message_bytes = max_message_bytes
        self.max_frames_per_window = max_frames_per_window
        self.compress_min_bytes = compress_min_bytes
        self._parser = FrameParser(
            client=client,
            max_frame_bytes=max(max_message_bytes, 125),
            allow_rsv1=deflate is not None,
            max_message_bytes=max_message_bytes,
            max_fragments=max_fragments,
        )
        if deflate is not None:
            ours, theirs = ("client", "server") if client else ("server", "client")
            self._deflater = Deflater(
                getattr(deflate, f"{ours}_max_window_bits"),
                getattr(deflate, f"{ours}_no_context_takeover"),
                compression_level,
                compression_mem_level,
            )
            self._inflater = Inflater(
                getattr(deflate, f"{theirs}_max_window_bits"), getattr(deflate, f"{theirs}_no_context_takeover")
            )
        self._close_out = b""
        self.can_send = True
        self.state = _OPEN
        self.close_code = 0
        self.close_reason = ""
        self._masks = b""

    @property
    def compresses(self):
        """Whether outgoing messages may be compressed (permessage-deflate was negotiated)."""
        return self._deflater is not None

    @property
    def is_mid_message(self):
        """Whether a fragmented message has started and not finished."""
        return self._parser._msg_opcode != 0

    def new_window(self):
        """Start the next slot of the frame limit's sliding window."""
        cdef list slots = self._slots
        cdef Py_ssize_t i
        if slots is None:
            if not self._frames_in_window:
                return
            slots = self._slots = [0] * (_WINDOW_SLOTS - 1)
        i = self._slot
        self._frames_recent += self._frames_in_window - <Py_ssize_t>slots[i]
        slots[i] = self._frames_in_window
        self._slot = (i + 1) % (_WINDOW_SLOTS - 1)
        self._frames_in_window = 0

    cpdef list feed(self, object data):
        """Consume bytes from the peer; return the events they complete, in order."""
        cdef list received
        cdef list events
        cdef Frame frame
        if self.state == _CLOSED:
            return []
        try:
            if PyBytes_CheckExact(data):
                received = self._parser.feed_raw(
                    <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)
                )
            else:
                received = self._parser.feed(data)
        except ProtocolViolation as exc:
            events = []
            self._handle_frames(exc.frames, events)
            if self.state != _CLOSED:
                self._fail(exc.close_code, str(exc), events)
            return events
        if self.max_frames_per_window:
            self._frames_in_window += len(received)
            if self._frames_recent + self._frames_in_window > self.max_frames_per_window:
                events = []
                self._fail(_POLICY_VIOLATION, f"more than {self.max_frames_per_window} frames in a window", events)
                return events
        if len(received) == 1:
            # The common case: one whole, uncompressed message per read.
            frame = <Frame>received[0]
            if (frame.fin and not frame.rsv1 and (frame.opcode == OP_TEXT or frame.opcode == OP_BINARY)
                    and self.state == _OPEN):
                self.messages_received += 1
                return [message_event(frame.opcode, frame.payload)]
        events = []
        self._handle_frames(received, events)
        return events

    cdef int _handle_frames(self, list received, list events) except -1:
        cdef Frame frame
        for item in received:
            frame = <Frame>item
            try:
                if not self._handle_frame(frame, events):
                    return 0
            except ProtocolViolation as exc:
                self._fail(exc.close_code, str(exc), events)
                return 0
        return 0

    cdef int _handle_frame(self, Frame frame, list events) except -1:
        """Act on one frame; return 0 once the connection is closed, else 1."""
        cdef int opcode = frame.opcode
        if opcode <= OP_BINARY:
            if self.state == _CLOSING:
                return 1
            if frame.fin and opcode != OP_CONTINUATION and not frame.rsv1:
                self.messages_received += 1
                events.append(message_event(opcode, frame.payload))
                return 1
            self._assemble(frame, events)
        elif opcode == OP_PING:
            events.append(PingReceived(frame.payload))
        elif opcode == OP_PONG:
            events.append(PongReceived(frame.payload))
        else:
            code, reason = parse_close(frame.payload)
            if self.state == _OPEN:
                self._close_out = self._close_frame(code, "")
                self.close_code, self.close_reason = code, reason
            else:
                self.can_send = False
            self.state = _CLOSED
            events.append(ClosedByPeer(code, reason))
            return 0
        return 1

    cdef int _assemble(self, Frame frame, list events) except -1:
        cdef bytearray buf
        if frame.opcode:
            self._msg_opcode = frame.opcode
            self._msg_compressed = frame.rsv1
            self._size = 0
            self._buf = None if frame.fin else bytearray()  # one buffer, whatever the fragments
            if frame.rsv1 and frame.opcode == OP_TEXT:
                self._utf8 = Utf8Validator()
        data = frame.payload
        if self._msg_compressed:
            data = self._inflater.inflate(data, frame.fin, self.max_message_bytes - self._size)
            if self._utf8 is not None:
                self._utf8.feed(data)  # fail at the first bad byte of inflated text
        buf = self._buf
        if buf is None:  # a whole message in one frame (a compressed one): no buffer
            payload = data
        else:
            buf += data
            self._size += len(data)
            if not frame.fin:
                return 0
            payload = bytes(buf)
            self._buf = None
        if self._utf8 is not None:
            self._utf8.finish()
            self._utf8 = None
        self.messages_received += 1
        events.append(message_event(self._msg_opcode, bytes(payload)))
        return 0

    cdef int _fail(self, object code, str reason, list events) except -1:
        cdef int c = int(code)
        if self.state == _OPEN:
            self._close_out = self._close_frame(c, reason)
            self.close_code, self.close_reason = c, reason
        else:
            self.can_send = False
        self.state = _CLOSED
        events.append(ConnectionFailed(c, reason))
        return 0

    cdef object _mask(self):
        if not self.client:
            return None
        if self._mask_pos >= len(self._masks):
            self._masks = os.urandom(_MASK_POOL_BYTES)
            self._mask_pos = 0
        key = self._masks[self._mask_pos : self._mask_pos + 4]
        self._mask_pos += 4
        return key

    cdef bytes _frame(self, int opcode, object payload, bint compress):
        if compress and self._deflater is not None:
            raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
            if len(raw) >= self.compress_min_bytes:
                return build_frame(opcode, self._deflater.deflate(raw), rsv1=True, mask=self._mask())
            payload = raw
        return build_frame(opcode, payload, mask=self._mask())

    cdef bytes _close_frame(self, object code, object reason):
        return build_close(code, reason, mask=self._mask())

    cpdef bytes frame_text(self, object data):
        """Return a text message as frame bytes (compressed if negotiated), without queueing it.

        Raises:
            InvalidState: `can_send` is false.
        """
        if not self.can_send:
            raise InvalidState("cannot send on a connection that is closing or closed")
        if self._deflater is None and not self.client:
            if PyBytes_CheckExact(data):  # the common case: a server's frame of bytes, built in C
                return frame_bytes(
                    OP_TEXT, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), True, False, NULL
                )
            return build_frame(OP_TEXT, data)
        return self._frame(OP_TEXT, data, True)

    def frame_binary(self, data):
        """Return a binary message as frame bytes, without queueing it.

        Raises:
            InvalidState: `can_send` is false.
        """
        if not self.can_send:
            raise InvalidState("cannot send on a connection that is closing or closed")
        return self._frame(OP_BINARY, data, True)

    def send_text(self, data):
        """Queue a text message (`str`, or bytes the caller promises are UTF-8)."""
        self._queue(self.frame_text(data))

    def send_binary(self, data):
        """Queue a binary message."""
        self._queue(self.frame_binary(data))

    def ping(self, data=b""):
        """Queue a ping; ignored once the connection is closing."""
        if self.state == _OPEN:
            self._queue(self._frame(OP_PING, data, False))

    def frame_pong(self, data):
        """Return the pong answering a ping's *data* (§5.5.3), without queueing it; b"" once closed."""
        return self._frame(OP_PONG, data, False) if self.can_send else b""

    def pong(self, data):
        """Queue the pong answering a ping's *data*; ignored once closed."""
        frame = self.frame_pong(data)
        if frame:
            self._queue(frame)

    def close(self, code=CloseCode.NORMAL, reason=""):
        """Start the close handshake (§7.1.2); does nothing if it has already started.

        Raises:
            ValueError: *code* may not be sent on the wire.
        """
        if self.state != _OPEN:
            return
        self._queue(self._close_frame(code, reason))
        self.state = _CLOSING
        self.can_send = False
        self.close_code, self.close_reason = int(code), reason

    cpdef bytes take_output(self):
        """Return (and forget) everything queued for the peer, as one buffer; a close frame last."""
        cdef list out = self._out
        cdef bytes close_out
        if self._close_out:
            close_out = self._close_out
            self._close_out = b""
            self.can_send = False
            if out is None:
                return close_out
            out.append(close_out)
        if out is None:
            return b""
        self._out = None
        return out[0] if len(out) == 1 else b"".join(out)

    cdef int _queue(self, bytes frame) except -1:
        if self._out is None:
            self._out = [frame]
        else:
            self._out.append(frame)
        return 0
