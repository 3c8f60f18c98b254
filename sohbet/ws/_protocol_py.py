"""The sans-I/O WebSocket connection, pure Python: the twin of the compiled `_protocol.pyx`.

Layer: ws (sans-I/O). Imports the ws modules only. No I/O, no clock, no asyncio: bytes go in
through `feed`, events come out, and the bytes to send wait in `take_output()`. `protocol.py`
picks the compiled connection unless SOHBET_NO_EXTENSIONS=1; this one is for the differential
tests and for debugging, and is the reference the compiled one must behave exactly like.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from sohbet.errors import InvalidState, ProtocolViolation
from sohbet.ws import frames
from sohbet.ws.codes import CloseCode, Opcode
from sohbet.ws.deflate import DeflateParams, Deflater, Inflater
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived, PongReceived

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["CLOSED", "CLOSING", "OPEN", "WINDOW_SLOTS", "BinaryReceived", "Connection", "Event", "TextReceived"]

OPEN: Final = 1
CLOSING: Final = 2  # we sent a close frame and wait for the peer's
CLOSED: Final = 3  # the close handshake is over, or the connection failed

# Opcodes as plain ints: the per-message paths below compare against them (docs/architecture.md).
_CONTINUATION: Final = int(Opcode.CONTINUATION)
_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_PING: Final = int(Opcode.PING)
_PONG: Final = int(Opcode.PONG)
_DATA: Final = frozenset((_TEXT, _BINARY))

_MASK_POOL_BYTES: Final = 4096  # one os.urandom call masks 1024 client frames
WINDOW_SLOTS: Final = 10  # the frame limit's window, in calls to new_window()


class TextReceived:
    """A complete text message; `data` is its UTF-8 bytes, already validated."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def text(self) -> str:
        """The message as `str` (decoded on demand: JSON parsers take the bytes directly)."""
        return self.data.decode("utf-8")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]  # mutable-style value object, like the compiled one

    def __repr__(self) -> str:
        return f"TextReceived({self.data!r})"


class BinaryReceived:
    """A complete binary message."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]  # mutable-style value object, like the compiled one

    def __repr__(self) -> str:
        return f"BinaryReceived({self.data!r})"


Event = TextReceived | BinaryReceived | PingReceived | PongReceived | ClosedByPeer | ConnectionFailed


class Connection:
    """One WebSocket connection after the opening handshake, in either role.

    It reassembles fragmented messages, inflates compressed ones within the message limit,
    answers pings, runs the close handshake both ways, and turns every violation into a close
    frame with the RFC's code and a `ConnectionFailed` event. Once it has sent a close frame,
    messages the peer sent before reading it are dropped: only control frames are reported.
    """

    __slots__ = (
        "_buf",
        "_close_out",
        "_deflater",
        "_frames_in_window",
        "_frames_recent",
        "_inflater",
        "_mask_pos",
        "_masks",
        "_msg_compressed",
        "_msg_opcode",
        "_out",
        "_parser",
        "_size",
        "_slot",
        "_slots",
        "_utf8",
        "can_send",
        "client",
        "close_code",
        "close_reason",
        "compress_min_bytes",
        "max_frames_per_window",
        "max_message_bytes",
        "messages_received",
        "state",
    )

    def __init__(
        self,
        *,
        client: bool = False,
        max_message_bytes: int = 64 * 1024,
        max_fragments: int = 0,
        max_frames_per_window: int = 0,
        deflate: DeflateParams | None = None,
        compression_level: int = 6,
        compression_mem_level: int = 8,
        compress_min_bytes: int = 32,
    ) -> None:
        """Configure the connection.

        Args:
            client: act as the client: mask outgoing frames, expect unmasked ones.
            max_message_bytes: largest message after reassembly and inflating (1009).
            max_fragments: most frames per message (1009); 0: no limit.
            max_frames_per_window: most frames between two `new_window()` calls (1008); 0: no
                limit. The caller owns the clock and decides how long a window lasts.
            deflate: negotiated permessage-deflate parameters, or None.
            compression_level: zlib level of outgoing messages.
            compression_mem_level: zlib memLevel of the compressor.
            compress_min_bytes: smaller outgoing messages are sent uncompressed (RFC 7692
                lets each message choose), since deflate would only make them bigger.
        """
        self.client = client
        self.max_message_bytes = max_message_bytes
        self.max_frames_per_window = max_frames_per_window
        self.compress_min_bytes = compress_min_bytes
        self._parser = frames.FrameParser(
            client=client,
            max_frame_bytes=max(max_message_bytes, 125),
            allow_rsv1=deflate is not None,
            max_message_bytes=max_message_bytes,
            max_fragments=max_fragments,
        )
        self._inflater: Inflater | None = None
        self._deflater: Deflater | None = None
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
        self._out: list[bytes] | None = None  # made when something is queued (`_queue`)
        # A close frame this connection decided to send while reading (an echo of the peer's, or
        # a failure): it goes out after anything the caller sends in answer to the messages
        # that came before it, so replies to those are not lost behind it.
        self._close_out = b""
        #: Whether messages may still be sent: open, or closing with our close frame not yet
        #: taken (so an answer to the last messages read still goes out before it).
        self.can_send = True
        self.state = OPEN
        #: Why the connection closed: the code and reason of whichever side closed first.
        self.close_code = 0
        self.close_reason = ""
        self.messages_received = 0
        # The frame limit counts a sliding window of WINDOW_SLOTS slots: the frames of the
        # current slot, and the sum of the slots before it, whose counts wait in _slots, a ring
        # (a list of small ints, made at the first frame: an idle connection's footprint is
        # what a server has most of, and its ring is all zeros).
        self._frames_in_window = 0
        self._frames_recent = 0
        self._slots: list[int] | None = None
        self._slot = 0
        # The message being reassembled: its opcode, whether compressed, its bytes and their size.
        self._msg_opcode = 0
        self._msg_compressed = False
        self._buf: bytearray | None = None  # made at a fragmented message's first frame
        self._size = 0
        self._utf8: frames.Utf8Validator | None = None
        self._masks = b""
        self._mask_pos = 0

    @property
    def compresses(self) -> bool:
        """Whether outgoing messages may be compressed (permessage-deflate was negotiated)."""
        return self._deflater is not None

    @property
    def is_mid_message(self) -> bool:
        """Whether a fragmented message has started and not finished."""
        return self._parser.is_mid_message

    def new_window(self) -> None:
        """Start the next slot of the frame limit's sliding window (the caller owns the clock:
        the server calls this every second, so the limit counts any 10 consecutive seconds)."""
        slots = self._slots
        if slots is None:
            if not self._frames_in_window:
                return  # nothing counted yet: every slot is still zero
            slots = self._slots = [0] * (WINDOW_SLOTS - 1)
        i = self._slot
        self._frames_recent += self._frames_in_window - slots[i]  # the oldest slot slides out
        slots[i] = self._frames_in_window
        self._slot = (i + 1) % (WINDOW_SLOTS - 1)
        self._frames_in_window = 0

    def feed(self, data: Buffer) -> list[Event]:
        """Consume bytes from the peer; return the events they complete, in order."""
        if self.state == CLOSED:
            return []
        events: list[Event] = []
        try:
            received = self._parser.feed(data)
        except ProtocolViolation as exc:
            self._handle_frames(exc.frames, events)  # type: ignore[arg-type]  # the parser puts Frames there
            if self.state != CLOSED:
                self._fail(exc.close_code, str(exc), events)
            return events
        if self.max_frames_per_window:
            self._frames_in_window += len(received)
            if self._frames_recent + self._frames_in_window > self.max_frames_per_window:
                self._fail(
                    CloseCode.POLICY_VIOLATION, f"more than {self.max_frames_per_window} frames in a window", events
                )
                return events
        if len(received) == 1:
            # The common case, inlined: one whole, uncompressed message per read.
            frame = received[0]
            opcode = frame.opcode
            if frame.fin and not frame.rsv1 and opcode in _DATA and self.state == OPEN:
                self.messages_received += 1
                events.append(TextReceived(frame.payload) if opcode == _TEXT else BinaryReceived(frame.payload))
                return events
        self._handle_frames(received, events)
        return events

    def _handle_frames(self, received: list[frames.Frame], events: list[Event]) -> None:
        for frame in received:
            try:
                if not self._handle_frame(frame, events):
                    return
            except ProtocolViolation as exc:
                self._fail(exc.close_code, str(exc), events)
                return

    def _handle_frame(self, frame: frames.Frame, events: list[Event]) -> bool:
        """Act on one frame; return False once the connection is closed."""
        opcode = frame.opcode
        if opcode <= _BINARY:
            if self.state == CLOSING:
                # We sent a close frame: what the peer sent before reading it is not served
                # (nor reassembled, nor inflated); only its close frame still matters.
                return True
            if frame.fin and opcode != _CONTINUATION and not frame.rsv1:
                # One whole uncompressed message: the payload is the message, no copy.
                self.messages_received += 1
                events.append(TextReceived(frame.payload) if opcode == _TEXT else BinaryReceived(frame.payload))
                return True
            self._assemble(frame, events)
        elif opcode == _PING:
            # Not answered here: the caller answers in event order (pong(), or frame_pong()), so
            # a pong never overtakes replies to the messages that came before its ping.
            events.append(PingReceived(frame.payload))
        elif opcode == _PONG:
            events.append(PongReceived(frame.payload))
        else:
            code, reason = frames.parse_close(frame.payload)
            if self.state == OPEN:
                # Echo the peer's code (§5.5.1); a close without a code is answered without one.
                self._close_out = self._close_frame(code, "")
                self.close_code, self.close_reason = code, reason
            else:
                self.can_send = False
            self.state = CLOSED
            events.append(ClosedByPeer(code, reason))
            return False
        return True

    def _assemble(self, frame: frames.Frame, events: list[Event]) -> None:
        if frame.opcode:
            self._msg_opcode = frame.opcode
            self._msg_compressed = frame.rsv1
            self._size = 0
            # The fragments go into one buffer as they come, not a list of them: its memory is
            # the message's bytes, whatever the count of (even empty) fragments a peer sends.
            self._buf = None if frame.fin else bytearray()
            if frame.rsv1 and frame.opcode == _TEXT:
                self._utf8 = frames.Utf8Validator()
        data = frame.payload
        if self._msg_compressed:
            assert self._inflater is not None  # rsv1 is only accepted when deflate was negotiated
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
                return
            payload = bytes(buf)
            self._buf = None
        if self._utf8 is not None:
            self._utf8.finish()
            self._utf8 = None
        self.messages_received += 1
        events.append(TextReceived(payload) if self._msg_opcode == _TEXT else BinaryReceived(payload))

    def _fail(self, code: int, reason: str, events: list[Event]) -> None:
        code = int(code)  # callers name codes with CloseCode; what is reported is a plain int
        if self.state == OPEN:
            self._close_out = self._close_frame(code, reason)
            self.close_code, self.close_reason = code, reason
        else:
            self.can_send = False  # we closed first: our code stands
        self.state = CLOSED
        events.append(ConnectionFailed(code, reason))

    def _mask(self) -> bytes | None:
        if not self.client:
            return None
        if self._mask_pos >= len(self._masks):
            self._masks = os.urandom(_MASK_POOL_BYTES)
            self._mask_pos = 0
        key = self._masks[self._mask_pos : self._mask_pos + 4]
        self._mask_pos += 4
        return key

    def _frame(self, opcode: int, payload: Buffer | str, compress: bool) -> bytes:
        if compress and self._deflater is not None:
            raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
            if len(raw) >= self.compress_min_bytes:
                return frames.build_frame(opcode, self._deflater.deflate(raw), rsv1=True, mask=self._mask())
            payload = raw
        return frames.build_frame(opcode, payload, mask=self._mask())

    def _close_frame(self, code: int, reason: str) -> bytes:
        return frames.build_close(code, reason, mask=self._mask())

    def frame_text(self, data: Buffer | str) -> bytes:
        """Return a text message as frame bytes (compressed if negotiated), without queueing it.

        For callers that write straight to the transport, such as a broadcast.

        Raises:
            InvalidState: `can_send` is false.
        """
        if not self.can_send:
            raise InvalidState("cannot send on a connection that is closing or closed")
        if self._deflater is None and not self.client:
            return frames.build_frame(_TEXT, data)  # the common case, without the general path
        return self._frame(_TEXT, data, True)

    def frame_binary(self, data: Buffer) -> bytes:
        """Return a binary message as frame bytes, without queueing it.

        Raises:
            InvalidState: `can_send` is false.
        """
        if not self.can_send:
            raise InvalidState("cannot send on a connection that is closing or closed")
        return self._frame(_BINARY, data, True)

    def send_text(self, data: Buffer | str) -> None:
        """Queue a text message (`str`, or bytes the caller promises are UTF-8)."""
        self._queue(self.frame_text(data))

    def send_binary(self, data: Buffer) -> None:
        """Queue a binary message."""
        self._queue(self.frame_binary(data))

    def ping(self, data: Buffer = b"") -> None:
        """Queue a ping; ignored once the connection is closing."""
        if self.state == OPEN:
            self._queue(self._frame(_PING, data, False))

    def frame_pong(self, data: Buffer) -> bytes:
        """Return the pong answering a ping's *data* (§5.5.3), without queueing it; b"" once closed."""
        return self._frame(_PONG, data, False) if self.can_send else b""

    def pong(self, data: Buffer) -> None:
        """Queue the pong answering a ping's *data*; ignored once closed."""
        frame = self.frame_pong(data)
        if frame:
            self._queue(frame)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the close handshake (§7.1.2); does nothing if it has already started.

        Raises:
            ValueError: *code* may not be sent on the wire.
        """
        if self.state != OPEN:
            return
        self._queue(self._close_frame(code, reason))
        self.state = CLOSING
        self.can_send = False
        self.close_code, self.close_reason = int(code), reason

    def take_output(self) -> bytes:
        """Return (and forget) everything queued for the peer, as one buffer; a close frame last."""
        out = self._out
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

    def _queue(self, frame: bytes) -> None:
        out = self._out
        if out is None:
            self._out = [frame]
        else:
            out.append(frame)
