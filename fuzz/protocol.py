"""Fuzz target: the sans-I/O WebSocket connection (`sohbet.ws.protocol.Connection.feed`), in the
server and the client role, with and without permessage-deflate, on arbitrary bytes in
arbitrary chunks, driven as the server drives it (echo each message, answer each ping); the
compiled connection (`_protocol.pyx`) against its pure-Python twin.

Property: no exception escapes; events are only the documented ones; a failure carries 1002,
1007, 1008 or 1009, a peer's close a valid code (or 1005), and nothing is reported after either;
messages are within the size limit and text is UTF-8; and everything the connection writes is
valid for the peer: its frames parse in the other role, the echoed messages (inflated when
compressed) and the pongs come back exactly, and one close frame, if any, comes last with the
code the events announced. Both implementations, driven alike, report the same events, states
and close codes after every chunk and write the same bytes (the same frames, for the client role,
whose masking keys are random). The compiled module is not coverage-instrumented (it is C); the
twin is, and the compiled one follows it branch for branch, so the twin's coverage steers both.

Input: two bytes of options, an actions byte, the chunking (`Reader.chunking`), then the stream.
"""

from __future__ import annotations

from typing import Any

from _harness import Reader, chunks, instrumented, main

with instrumented(__name__):
    from sohbet.errors import ProtocolViolation
    from sohbet.ws import _frames, _protocol, _protocol_py
    from sohbet.ws.codes import MAX_CONTROL_PAYLOAD, CloseCode, Opcode
    from sohbet.ws.deflate import DeflateParams, Inflater
    from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived, PongReceived

_MESSAGE_LIMITS = (64 * 1024, 125, 1000, 1 << 20)  # the first is the default
_FRAGMENT_LIMITS = (0, 1, 3, 64)
_FRAME_WINDOWS = (0, 2, 5, 120)
_FAILURES = frozenset((CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.POLICY_VIOLATION, 1009))
_ENDINGS = (ClosedByPeer, ConnectionFailed)
_MESSAGES = frozenset(("TextReceived", "BinaryReceived"))


def connection_options(bits: int) -> dict[str, Any]:
    """Connection's keyword arguments, from two bytes: role, limits and the deflate parameters."""
    client = bool(bits & 1)
    params = None
    if bits & 2:
        ours, theirs = 9 + (bits >> 8) % 7, 8 + (bits >> 11) % 8  # zlib compresses with 9-15 only
        params = DeflateParams(
            server_no_context_takeover=bool(bits & 4),
            client_no_context_takeover=bool(bits & 8),
            server_max_window_bits=theirs if client else ours,
            client_max_window_bits=ours if client else theirs,
        )
    return {
        "client": client,
        "deflate": params,
        "max_message_bytes": _MESSAGE_LIMITS[bits >> 4 & 3],
        "max_fragments": _FRAGMENT_LIMITS[bits >> 6 & 3],
        "max_frames_per_window": _FRAME_WINDOWS[bits >> 14 & 3],
        "compress_min_bytes": 0 if bits & 0x2000 else 32,
    }


class _Peer:
    """The other side: reads what the connection writes, in the opposite role."""

    def __init__(self, options: dict[str, Any]) -> None:
        params: DeflateParams | None = options["deflate"]
        # Room for a compressed echo of the largest message, which deflate can make a bit larger.
        self.parser = _frames.FrameParser(
            client=not options["client"], allow_rsv1=params is not None, max_frame_bytes=1 << 22
        )
        self.inflater = None
        if params is not None:
            side = "client" if options["client"] else "server"  # the connection's own compressor
            self.inflater = Inflater(
                getattr(params, f"{side}_max_window_bits"), getattr(params, f"{side}_no_context_takeover")
            )
        self.messages: list[tuple[int, bytes]] = []
        self.pongs: list[bytes] = []
        self.close: tuple[int, str] | None = None
        self._parts: list[bytes] = []
        self._opcode = self._rsv1 = 0

    def read(self, data: bytes) -> None:
        for frame in self.parser.feed(data):  # a ProtocolViolation here fails the input: we wrote it
            assert self.close is None, "a frame after our close frame"
            if frame.opcode == Opcode.CLOSE:
                self.close = _frames.parse_close(frame.payload)
            elif frame.opcode == Opcode.PONG:
                self.pongs.append(frame.payload)
            elif frame.opcode == Opcode.PING:
                raise AssertionError("the connection pinged on its own")
            else:
                if frame.opcode:
                    self._opcode, self._rsv1, self._parts = frame.opcode, frame.rsv1, []
                data = frame.payload
                if self._rsv1:
                    assert self.inflater is not None
                    data = self.inflater.inflate(data, frame.fin, 1 << 24)
                self._parts.append(data)
                if frame.fin:
                    self.messages.append((self._opcode, b"".join(self._parts)))


def TestOneInput(data: bytes) -> None:  # noqa: N802  # the name atheris and libFuzzer look for
    r = Reader(data)
    options = connection_options(r.uint(2))
    actions = r.byte()
    sizes = r.chunking()
    stream = r.rest()
    twin = drive(_protocol_py, options, actions, sizes, stream)
    compiled = drive(_protocol, options, actions, sizes, stream)
    assert twin == compiled, (twin, compiled)


def drive(protocol: Any, options: dict[str, Any], actions: int, sizes: list[int], stream: bytes) -> list[Any]:
    """Run one implementation through the input, checking the property; return what it did."""
    conn = protocol.Connection(**options)
    peer = _Peer(options)
    transcript: list[Any] = []
    sent: list[tuple[int, bytes]] = []
    pinged: list[bytes] = []
    ended: Any = None
    we_closed = False
    for k, piece in enumerate(chunks(stream, sizes)):
        action = actions >> (k % 4 * 2) & 3
        if action == 1:
            conn.new_window()
        elif action == 2 and conn.state == protocol.OPEN and k:  # noqa: PLR2004
            conn.close(CloseCode.GOING_AWAY, "bye")
            we_closed = True
        try:
            events = conn.feed(piece)
        except ProtocolViolation as exc:  # pragma: no cover  # the property: this never happens
            raise AssertionError(f"feed raised {exc!r}") from exc
        if ended is not None:
            assert events == [], (ended, events)
        for event in events:
            assert ended is None, ("an event after the end", ended, event)
            if isinstance(event, protocol.TextReceived | protocol.BinaryReceived):
                assert len(event.data) <= options["max_message_bytes"]
                is_text = isinstance(event, protocol.TextReceived)
                if is_text:
                    event.data.decode("utf-8")
                if conn.can_send:
                    conn.send_text(event.data) if is_text else conn.send_binary(event.data)
                    sent.append((Opcode.TEXT if is_text else Opcode.BINARY, event.data))
            elif isinstance(event, PingReceived):
                assert len(event.data) <= MAX_CONTROL_PAYLOAD, event
                if conn.can_send:
                    pinged.append(event.data)
                conn.pong(event.data)
            elif isinstance(event, PongReceived):
                pass
            elif isinstance(event, ConnectionFailed):
                assert event.code in _FAILURES, event
                ended = event
            else:
                assert isinstance(event, ClosedByPeer), event
                assert event.code == CloseCode.NO_STATUS or _frames.is_valid_close_code(event.code), event
                ended = event
        if ended is not None:
            assert conn.state == protocol.CLOSED
        out = conn.take_output()
        peer.read(out)
        state = (
            conn.state,
            conn.can_send,
            conn.close_code,
            conn.close_reason,
            conn.is_mid_message,
            conn.messages_received,
        )
        transcript.append((_named(events), state, None if options["client"] else out))
    transcript.append((peer.messages, peer.pongs, peer.close))
    assert peer.messages == sent, (peer.messages, sent)
    assert peer.pongs == pinged, (peer.pongs, pinged)
    if we_closed:
        assert peer.close == (CloseCode.GOING_AWAY, "bye"), peer.close
    elif isinstance(ended, ConnectionFailed):
        assert peer.close is not None and peer.close[0] == ended.code, (peer.close, ended)
    elif isinstance(ended, ClosedByPeer):
        assert peer.close == (ended.code, ""), (peer.close, ended)  # the echo of the peer's code
    else:
        assert peer.close is None, peer.close
    return transcript


def _named(events: list[Any]) -> list[Any]:
    """Events comparable across the implementations: each has its own message event classes."""
    return [(type(e).__name__, e.data) if type(e).__name__ in _MESSAGES else e for e in events]


if __name__ == "__main__":
    main(TestOneInput)
