"""The sans-I/O connection: byte vectors in, events and bytes out (RFC 6455 §5, §7; RFC 7692).

Every test runs against both implementations: the compiled `_protocol.pyx` and its pure-Python
twin `_protocol_py.py` (the fixture below rebinds this module's names to one, then the other).
"""

from __future__ import annotations

import importlib
import itertools
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sohbet.errors import InvalidState
from sohbet.ws import _protocol_py, codes, frames, protocol
from sohbet.ws.deflate import DeflateParams, Deflater, Inflater
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived, PongReceived
from sohbet.ws.frames import FrameParser, build_close, build_frame
from sohbet.ws.protocol import CLOSED, CLOSING, OPEN, BinaryReceived, Connection, TextReceived

from ..conftest import load_compiled_core

KEY = b"\x37\xfa\x21\x3d"
IMPLEMENTED = ("Connection", "TextReceived", "BinaryReceived")


@pytest.fixture(scope="module", params=["cython", "python"], autouse=True)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the module's tests against one implementation: its classes under this module's names."""
    if request.param == "python":
        module = _protocol_py
    else:
        load_compiled_core()  # fails in CI when nothing is built
        module = importlib.import_module("sohbet.ws._protocol")
    saved = {name: globals()[name] for name in IMPLEMENTED}
    globals().update({name: getattr(module, name) for name in IMPLEMENTED})
    yield request.param
    globals().update(saved)


def test_both_implementations_agree_on_the_constants() -> None:
    compiled = importlib.import_module("sohbet.ws._protocol")
    for name in ("OPEN", "CLOSING", "CLOSED", "WINDOW_SLOTS"):
        assert getattr(compiled, name) == getattr(_protocol_py, name) == getattr(protocol, name)
    assert compiled.POLICY_VIOLATION == codes.CloseCode.POLICY_VIOLATION


def test_no_extensions_selects_the_python_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOHBET_NO_EXTENSIONS", "1")
    try:
        importlib.reload(frames)
        twin = importlib.reload(protocol)
        assert twin.Connection is _protocol_py.Connection and twin.TextReceived is _protocol_py.TextReceived
    finally:
        monkeypatch.delenv("SOHBET_NO_EXTENSIONS")
        importlib.reload(frames)
        importlib.reload(protocol)
    assert protocol.Connection is not _protocol_py.Connection


def test_whole_messages_are_counted_on_every_path() -> None:
    conn = Connection(deflate=DEFLATE)
    conn.feed(cf(1, "one"))  # one message in a read: the fast path
    conn.feed(cf(2, b"two") + cf(1, "three"))  # several in a read
    conn.feed(cf(1, "fo", fin=False) + cf(0, "ur"))  # fragments
    conn.feed(cf(1, compressed(b"five"), rsv1=True))  # compressed
    assert conn.messages_received == 5


def test_a_message_of_many_tiny_fragments_holds_its_bytes_not_its_fragments() -> None:
    """A peer allowed unlimited fragments (max_fragments=0, as the echo server is) sends a
    message one byte a frame, or none: what the connection keeps grows with the message's bytes,
    not with its frames (a list of them held ~50 bytes a frame: ~2 GB in 15 s of empty ones)."""
    conn = Connection(max_fragments=0, max_message_bytes=1 << 20)
    conn.feed(cf(1, "a", fin=False))
    one_byte, empty = cf(0, "b", fin=False), cf(0, "", fin=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            conn.feed((one_byte + empty) * 10_000)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 400_000  # 100,001 bytes of message (a list of 200,000 fragments: over 5 MB)
    assert conn.feed(cf(0, "c")) == expected([("text", b"a" + b"b" * 100_000 + b"c")])


def test_any_buffer_in_any_form_gives_the_same_frames() -> None:
    wire = cf(1, "hello") + cf(2, b"\x00\x01")
    want = expected([("text", b"hello"), ("binary", b"\x00\x01")])
    assert Connection().feed(bytearray(wire)) == Connection().feed(memoryview(wire)) == want
    for data in (b"caf\xc3\xa9", "café", bytearray(b"caf\xc3\xa9"), memoryview(b"caf\xc3\xa9")):
        assert Connection().frame_text(data) == build_frame(1, "café")
    assert Connection().frame_binary(bytearray(b"\x00")) == build_frame(2, b"\x00")


def test_a_close_reason_is_kept_as_given() -> None:
    class Reason(str):
        pass

    conn = Connection()
    conn.close(4000, Reason("bye"))
    assert (conn.state, conn.close_code, conn.close_reason) == (CLOSING, 4000, "bye")
    assert conn.take_output() == build_close(4000, "bye")


def expected(events: list[object]) -> list[object]:
    """Events as this implementation makes them: ("text", b"..") and ("binary", b"..") become its
    message events (built at collection time, the parameters cannot know which runs)."""
    kinds = {"text": TextReceived, "binary": BinaryReceived}
    return [kinds[e[0]](e[1]) if isinstance(e, tuple) else e for e in events]


def cf(opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame, masked as RFC 6455 §5.3 requires."""
    return build_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=KEY)


def server_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    return [(f.opcode, f.rsv1, f.payload) for f in FrameParser(client=True, allow_rsv1=True).feed(data)]


@pytest.mark.parametrize(
    ("wire", "events"),
    [
        (b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", [("text", b"Hello")]),
        (cf(2, b"\x00\xff"), [("binary", b"\x00\xff")]),
        (cf(1, "Hel", fin=False) + cf(0, "lo"), [("text", b"Hello")]),
        (cf(1, "Hel", fin=False) + cf(9, "p") + cf(0, "lo"), [PingReceived(b"p"), ("text", b"Hello")]),
        (cf(10, "beat"), [PongReceived(b"beat")]),
        (cf(2, b"a", fin=False) + cf(0, b"b", fin=False) + cf(0, b"c"), [("binary", b"abc")]),
        (cf(1, ""), [("text", b"")]),
    ],
    ids=["rfc-masked-text", "binary", "fragmented", "ping-between-fragments", "pong", "three-fragments", "empty"],
)
def test_messages(wire: bytes, events: list[object]) -> None:
    conn = Connection()
    assert conn.feed(wire) == expected(events)
    assert conn.take_output() == b""
    assert conn.messages_received == sum(isinstance(e, tuple) for e in events)


def test_message_events_compare_by_type_and_data() -> None:
    assert TextReceived(b"x") != BinaryReceived(b"x")
    assert TextReceived("κ".encode()).text == "κ"
    assert repr(BinaryReceived(b"x")) == "BinaryReceived(b'x')"
    assert repr(TextReceived(b"x")) == "TextReceived(b'x')"


def test_a_ping_is_answered_in_event_order() -> None:
    conn = Connection()
    [ping] = conn.feed(cf(9, "hi"))
    assert ping == PingReceived(b"hi")
    assert conn.take_output() == b""  # not answered behind the caller's back ...
    assert conn.frame_pong(b"hi") == b"\x8a\x02hi"  # ... but when the caller reaches the event
    conn.pong(b"hi")
    assert conn.take_output() == b"\x8a\x02hi"


def test_peer_close_is_echoed_and_ends_the_connection() -> None:
    conn = Connection()
    events = conn.feed(cf(8, b"\x03\xe9bye") + cf(1, "ignored"))
    assert events == [ClosedByPeer(1001, "bye")]
    assert conn.take_output() == b"\x88\x02\x03\xe9"  # the code echoed (§5.5.1)
    assert conn.state == CLOSED
    assert (conn.close_code, conn.close_reason) == (1001, "bye")
    assert conn.feed(cf(1, "late")) == []
    with pytest.raises(InvalidState):
        conn.frame_text("too late")


def test_empty_close_is_answered_with_an_empty_close() -> None:
    conn = Connection()
    assert conn.feed(cf(8)) == [ClosedByPeer(1005, "")]
    assert conn.take_output() == b"\x88\x00"


def test_our_close_then_the_peers_reply() -> None:
    conn = Connection()
    conn.close(4008, "too slow")
    assert conn.state == CLOSING
    assert conn.take_output() == b"\x88\x0a\x0f\xa8too slow"
    assert conn.feed(cf(1, "still arriving")) == []  # sent before the peer read our close: dropped
    assert conn.feed(cf(8, b"\x03\xe8")) == [ClosedByPeer(1000, "")]
    assert conn.take_output() == b""  # the handshake is complete: nothing more to send
    assert conn.state == CLOSED
    assert (conn.close_code, conn.close_reason) == (4008, "too slow")  # we closed first
    conn.close()  # closing twice does nothing
    assert conn.take_output() == b""


@pytest.mark.parametrize(
    ("wire", "pings"),
    [
        (cf(1, "one read, one message"), []),
        (cf(2, b"\x00") + cf(1, "two messages"), []),
        (cf(1, "begun", fin=False) + cf(0, " and finished"), []),
        (cf(1, "with a ping", fin=False) + cf(9, "p") + cf(0, " inside"), [PingReceived(b"p")]),
        (cf(1, zlib.compress(b"compressed")[2:-4], rsv1=True), []),
    ],
    ids=["whole", "several", "fragmented", "ping-between-fragments", "compressed"],
)
def test_messages_after_our_close_are_dropped_and_control_frames_are_not(
    wire: bytes, pings: list[PingReceived]
) -> None:
    conn = Connection(deflate=DeflateParams())
    conn.close(4001, "token expired")
    conn.take_output()
    events = conn.feed(wire + cf(10, "beat") + cf(8, b"\x0f\xa1"))
    assert events == [*pings, PongReceived(b"beat"), ClosedByPeer(4001, "")]
    assert conn.frame_pong(b"p") == b""  # nothing is sent after our close frame
    assert (conn.state, conn.close_code) == (CLOSED, 4001)


def test_a_message_begun_before_our_close_is_not_delivered_after_it() -> None:
    conn = Connection()
    assert conn.feed(cf(1, "begun", fin=False)) == []
    conn.close(1001)
    assert conn.feed(cf(0, " and finished")) == []
    assert conn.feed(cf(8, b"\x03\xe9")) == [ClosedByPeer(1001, "")]


def test_replies_to_messages_before_a_close_go_out_before_it() -> None:
    conn = Connection()
    events = conn.feed(cf(1, "question") + cf(8, b"\x03\xe8"))
    assert events == [TextReceived(b"question"), ClosedByPeer(1000, "")]
    assert conn.can_send  # the close frame has not been taken yet
    conn.send_text("answer")
    assert conn.take_output() == b"\x81\x06answer\x88\x02\x03\xe8"
    assert not conn.can_send


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (cf(1, "ok") + b"\x83\x80" + KEY, 1002),
        (b"\x81\x05Hello", 1002),
        (cf(8, b"\x03"), 1002),
        (cf(8, b"\x03\xed"), 1002),
        (cf(8, b"\x03\xe8\xff"), 1007),
        (cf(1, b"\xce\xba\xff"), 1007),
        (cf(0, "x"), 1002),
    ],
    ids=["bad-opcode", "unmasked", "close-1-byte", "close-code-1005", "close-reason-utf8", "text-utf8", "orphan-cont"],
)
def test_violations_fail_with_a_close_frame(wire: bytes, code: int) -> None:
    conn = Connection()
    events = conn.feed(wire)
    failed = events[-1]
    assert isinstance(failed, ConnectionFailed)
    assert failed.code == code
    out = server_frames(conn.take_output())
    assert out[-1][0] == 8
    assert int.from_bytes(out[-1][2][:2], "big") == code
    assert conn.state == CLOSED
    assert conn.feed(cf(1, "after")) == []


def test_message_size_limit_counts_all_fragments() -> None:
    conn = Connection(max_message_bytes=200)
    events = conn.feed(cf(2, b"a" * 150, fin=False) + cf(0, b"a" * 100))
    assert events == [ConnectionFailed(1009, "message of 250 bytes exceeds limit of 200")]


def test_fragment_limit() -> None:
    conn = Connection(max_fragments=2)
    events = conn.feed(cf(1, "a", fin=False) + cf(0, "b", fin=False) + cf(0, "c"))
    assert events == [ConnectionFailed(1009, "message of more than 2 fragments")]


def test_frame_rate_limit_slides() -> None:
    conn = Connection(max_frames_per_window=3)
    assert len(conn.feed(cf(1, "1") + cf(1, "2"))) == 2
    for _ in range(9):
        conn.new_window()  # nine slots later the first two frames still count ...
    assert len(conn.feed(cf(1, "3"))) == 1
    conn.new_window()  # ... and in the tenth they have slid out of the window
    assert len(conn.feed(cf(1, "4") + cf(1, "5"))) == 2
    events = conn.feed(cf(1, "6") + cf(1, "7"))
    assert events == [ConnectionFailed(1008, "more than 3 frames in a window")]
    assert server_frames(conn.take_output())[-1][2][:2] == b"\x03\xf0"


def test_violation_after_ping_keeps_the_ping_event() -> None:
    conn = Connection()
    events = conn.feed(cf(9, "p") + b"\x83\x80" + KEY)
    assert events[0] == PingReceived(b"p")
    assert isinstance(events[1], ConnectionFailed)


DEFLATE = DeflateParams(server_max_window_bits=15, client_max_window_bits=15)


def compressed(text: bytes, deflater: Deflater | None = None) -> bytes:
    return (deflater or Deflater(15, False)).deflate(text)


def test_compressed_message_is_inflated() -> None:
    conn = Connection(deflate=DEFLATE)
    assert conn.feed(cf(1, compressed(b"hello " * 20), rsv1=True)) == [TextReceived(b"hello " * 20)]
    binary = bytes(range(256)) * 2  # not UTF-8: a binary message is not checked as text
    assert conn.feed(cf(2, compressed(binary), rsv1=True)) == [BinaryReceived(binary)]


def test_compressed_message_across_fragments_with_context_takeover() -> None:
    conn = Connection(deflate=DEFLATE)
    peer = Deflater(15, False)
    for _ in range(3):
        payload = compressed(b"repeat me " * 30, peer)
        wire = cf(1, payload[:5], fin=False, rsv1=True) + cf(0, payload[5:])
        assert conn.feed(wire) == [TextReceived(b"repeat me " * 30)]


def test_compressed_bomb_fails_with_1009() -> None:
    conn = Connection(deflate=DEFLATE, max_message_bytes=64 * 1024)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = (bomb.compress(bytes(10 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH))[:-4]
    [event] = conn.feed(cf(2, payload, rsv1=True))
    assert isinstance(event, ConnectionFailed)
    assert event.code == 1009


def test_compressed_text_must_inflate_to_utf8() -> None:
    conn = Connection(deflate=DEFLATE)
    [event] = conn.feed(cf(1, compressed(b"ok \xff"), rsv1=True))
    assert isinstance(event, ConnectionFailed)
    assert event.code == 1007


def test_rsv1_without_negotiation_fails() -> None:
    [event] = Connection().feed(cf(1, compressed(b"x"), rsv1=True))
    assert isinstance(event, ConnectionFailed)
    assert event.code == 1002


def test_outgoing_compression() -> None:
    conn = Connection(deflate=DEFLATE, compress_min_bytes=32)
    assert conn.compresses
    [(opcode, rsv1, payload)] = server_frames(conn.frame_text("a" * 200))
    assert (opcode, rsv1) == (1, True)
    assert Inflater(15, False).inflate(payload, True, 1000) == b"a" * 200
    assert server_frames(conn.frame_text("tiny")) == [(1, False, b"tiny")]  # smaller than compressing
    assert not Connection().compresses


def test_client_role_masks_and_reads_unmasked() -> None:
    conn = Connection(client=True)
    conn.send_text("hi")
    conn.send_binary(b"\x01")
    conn.ping(b"are you there")
    out = conn.take_output()
    assert [(f.opcode, f.payload) for f in FrameParser().feed(out)] == [(1, b"hi"), (2, b"\x01"), (9, b"are you there")]
    assert conn.feed(b"\x81\x02ok") == [TextReceived(b"ok")]
    masks = {conn.frame_text("x")[2:6] for _ in range(50)}
    assert len(masks) > 40  # a fresh random key per frame (§5.3)


def test_client_role_uses_the_client_side_of_deflate() -> None:
    params = DeflateParams(client_no_context_takeover=True, server_max_window_bits=10, client_max_window_bits=9)
    conn = Connection(client=True, deflate=params)
    frame = conn.frame_text("z" * 100)
    [parsed] = FrameParser(allow_rsv1=True).feed(frame)
    assert Inflater(9, True).inflate(parsed.payload, True, 1000) == b"z" * 100


def test_sends_are_refused_once_closed() -> None:
    conn = Connection()
    conn.close()
    conn.take_output()
    with pytest.raises(InvalidState):
        conn.send_text("x")
    with pytest.raises(InvalidState):
        conn.send_binary(b"x")
    conn.ping()
    assert conn.frame_pong(b"") == b""
    conn.pong(b"")
    assert conn.take_output() == b""
    assert conn.state == CLOSING


def test_is_mid_message_and_message_count() -> None:
    conn = Connection()
    assert conn.state == OPEN
    conn.feed(cf(1, "a", fin=False))
    assert conn.is_mid_message
    conn.feed(cf(0, "b"))
    assert not conn.is_mid_message
    assert conn.messages_received == 1


def test_garbage_after_the_peers_close_is_ignored() -> None:
    conn = Connection()
    assert conn.feed(cf(8, b"\x03\xe8") + b"\x83\x80" + KEY) == [ClosedByPeer(1000, "")]
    assert conn.take_output() == b"\x88\x02\x03\xe8"


def test_violation_while_closing_sends_no_second_close() -> None:
    conn = Connection()
    conn.close(1001)
    conn.take_output()
    [event] = conn.feed(b"\x83\x80" + KEY)
    assert isinstance(event, ConnectionFailed)
    assert conn.take_output() == b""
    assert conn.state == CLOSED


def test_a_violation_while_closing_keeps_our_close_code() -> None:
    conn = Connection()
    conn.close(1001, "going away")
    conn.take_output()
    conn.feed(cf(1, b"\xff"))  # invalid UTF-8 from a peer that has not seen our close yet
    assert (conn.close_code, conn.close_reason) == (1001, "going away")


@st.composite
def client_streams(draw: st.DrawFn) -> list[bytes]:
    """Frames a client may send: whole and fragmented messages, pings between fragments."""
    frames: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            frames.append(cf(9, draw(st.binary(max_size=20))))
            continue
        text = draw(st.text(max_size=30)).encode()
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        for i, piece in enumerate(pieces):
            frames.append(cf(1 if i == 0 else 0, piece, fin=i == len(pieces) - 1))
            if i < len(pieces) - 1 and draw(st.booleans()):
                frames.append(cf(9, b"p"))
    if draw(st.booleans()):
        frames.append(cf(8, b"\x03\xe8"))
    return frames


@given(frames=client_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_the_same_events_whatever_the_chunking(frames: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frames)
    whole = Connection().feed(wire)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    chunked = Connection()
    events = [e for a, b in itertools.pairwise(points) for e in chunked.feed(wire[a:b])]
    assert events == whole


def test_an_idle_connection_keeps_no_window_yet_counts_from_its_first_frame() -> None:
    conn = Connection(max_frames_per_window=3)
    for _ in range(20):
        conn.new_window()  # idle: nothing counted, nothing kept per connection
    assert conn._slots is None
    assert len(conn.feed(cf(1, "1") + cf(1, "2") + cf(1, "3"))) == 3
    conn.new_window()  # the three frames now wait in the window's earlier slots
    events = conn.feed(cf(1, "4"))
    assert events == [ConnectionFailed(1008, "more than 3 frames in a window")]
