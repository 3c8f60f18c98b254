"""The envelope and every request's validation: bad_request before too_large, with the value."""

from __future__ import annotations

import datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sohbet.chat import wire as m
from sohbet.chat.ids import MAX_ID
from sohbet.chat.model import StoredMessage
from sohbet.errors import MessageRejected

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class _Rejects:
    def __init__(self, code: str) -> None:
        self.code = code

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        assert isinstance(exc, MessageRejected), f"expected a {self.code} rejection, got {exc!r}"
        assert exc.code == self.code, (exc.code, str(exc))
        return True


@pytest.mark.parametrize(
    ("raw", "ref"),
    [
        (b"{", None),
        (b"[]", None),
        (b'{"ref": ""}', None),
        (b'{"ref": 5}', None),
        (b'{"type": 1, "ref": "a"}', "a"),
        (b'{"type": "x", "payload": [], "ref": "b"}', "b"),
    ],
    ids=["not-json", "not-object", "empty-ref", "number-ref", "type-not-string", "payload-not-object"],
)
def test_decode_rejects_with_the_ref_when_readable(raw: bytes, ref: str | None) -> None:
    with pytest.raises(MessageRejected) as info:
        m.decode(raw)
    assert (info.value.code, info.value.ref) == ("bad_request", ref)


def test_decode_and_encode() -> None:
    assert m.decode(b'{"type":"sync","payload":null,"ref":"r"}') == m.Envelope("sync", {}, "r")
    assert m.decode(b'{"type":"sync"}') == m.Envelope("sync", {}, None)
    envelope = m.decode(b'{"ref":"r","payload":{"a":1},"type":"t"}')  # made without its constructor
    assert type(envelope) is m.Envelope and (envelope.type, envelope.payload, envelope.ref) == ("t", {"a": 1}, "r")
    assert orjson.loads(m.encode("hello", {"a": 1})) == {"type": "hello", "payload": {"a": 1}}
    assert orjson.loads(m.encode("x", {}, "r")) == {"type": "x", "payload": {}, "ref": "r"}


def test_times_are_rfc3339_utc_milliseconds() -> None:
    assert m.format_time(1764093120123) == "2025-11-25T17:52:00.123Z"
    assert m.format_time(0) == "1970-01-01T00:00:00.000Z"


@given(st.lists(st.integers(min_value=0, max_value=253402300799000), min_size=1, max_size=20))
def test_times_match_the_calendar_whatever_came_before(times: list[int]) -> None:
    """Seconds are remembered between calls: each time still reads as its own."""
    for ms in [*times, *(t + 1 for t in times), *(t - t % 1000 + 999 for t in times)]:
        expected = EPOCH + datetime.timedelta(milliseconds=ms)
        assert m.format_time(ms) == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_message_object() -> None:
    stored = StoredMessage(7, m.ConversationId(3), 2, "alice", "hi", "c1", 1000)  # type: ignore[arg-type]
    assert m.message_object(stored) == {
        "id": 7, "conversation_id": 3, "seq": 2, "sender_id": "alice", "content": "hi", "client_id": "c1",
        "created_at": "1970-01-01T00:00:01.000Z",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"conversation_id": 1, "content": "x", "client_id": "c"}, None),
        ({"conversation_id": -1, "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": MAX_ID, "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": False, "content": "x", "client_id": "c"}, "bad_request"),  # not 0
        ({"conversation_id": 1.5, "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": 1.0, "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": 1, "content": None, "client_id": "c"}, "bad_request"),
        ({"conversation_id": 1, "content": "x", "client_id": ""}, "bad_request"),
        ({"conversation_id": 1, "content": "x", "client_id": 3}, "bad_request"),
        ({"conversation_id": 1, "content": "x" * 11, "client_id": "c"}, "too_large"),
        ({"conversation_id": 1, "content": "x" * 11, "client_id": 3}, "bad_request"),  # bad_request first
    ],
    ids=[
        "ok",
        "id-negative",
        "id-2^53",
        "id-false",
        "id-float",
        "id-integral-float",
        "no-content",
        "empty-client-id",
        "client-id-number",
        "too-long",
        "both",
    ],
)
def test_send_request(payload: dict[str, Any], code: str | None) -> None:
    if code is None:
        request = m.SendRequest.parse(payload, max_chars=10)
        assert type(request) is m.SendRequest  # made without its constructor: the fields by name
        assert (request.conversation_id, request.content, request.client_id) == (1, "x", "c")
    else:
        with _Rejects(code):
            m.SendRequest.parse(payload, max_chars=10)


def test_other_requests() -> None:
    assert m.ReadRequest.parse({"conversation_id": 1, "seq": 0}) == (1, 0)
    assert m.HistoryRequest.parse({"conversation_id": 1}) == (1, None, 50)
    assert m.HistoryRequest.parse({"conversation_id": 1, "before_seq": 9, "limit": 100}) == (1, 9, 100)
    assert m.SyncRequest.parse({}) == ({},)
    assert m.SyncRequest.parse({"cursors": {"12": 3}}) == ({12: 3},)
    assert m.CreateRequest.parse({"members": ["b"], "title": "t"}, 10) == (["b"], "t")
    assert m.CreateRequest.parse({"members": ["b"]}, 10) == (["b"], None)
    assert m.ListRequest.parse({}) == (None, 50)
    assert m.MembersRequest.parse({"conversation_id": 1, "cursor": "bob", "limit": 5}) == (1, "bob", 5)
    assert m.PresenceQuery.parse({"user_ids": ["a"]}, 500) == (["a"],)
    assert m.conversation_of({"conversation_id": 4}) == 4
    assert m.token_of({"token": "t"}) == "t"
    assert m.token_of({"token": "t" * 8192}) == "t" * 8192  # the longest token taken
    highest = str(MAX_ID - 1)  # as many digits as MAX_ID: the digit count alone cannot refuse it
    assert m.SyncRequest.parse({"cursors": {highest: 0}}) == ({MAX_ID - 1: 0},)


def test_zero_is_an_id_and_a_seq() -> None:
    """0 to 2^53 - 1 (PROTOCOL.md): 0 names nothing that exists, and the service answers it so
    (`forbidden`, an empty page); it is well-formed, and `before_seq: 0` is not "absent"."""
    assert m.SendRequest.parse({"conversation_id": 0, "content": "x", "client_id": "c"}, 10) == (0, "x", "c")
    assert m.ReadRequest.parse({"conversation_id": 0, "seq": 0}) == (0, 0)
    assert m.HistoryRequest.parse({"conversation_id": 0, "before_seq": 0}) == (0, 0, 50)
    assert m.SyncRequest.parse({"cursors": {"0": 0}}) == ({0: 0},)
    assert m.MembersRequest.parse({"conversation_id": 0}) == (0, None, 100)
    assert m.conversation_of({"conversation_id": 0}) == 0


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: m.HistoryRequest.parse({"conversation_id": 1, "limit": 101}), "bad_request"),
        (lambda: m.HistoryRequest.parse({"conversation_id": 1, "before_seq": -1}), "bad_request"),
        (lambda: m.HistoryRequest.parse({"conversation_id": 1, "before_seq": MAX_ID}), "bad_request"),
        (lambda: m.HistoryRequest.parse({"conversation_id": 1, "before_seq": False}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": []}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": {"abc": 1}}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": {"-1": 1}}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": {"": 1}}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": {str(MAX_ID): 1}}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": {"1": -1}}), "bad_request"),
        (lambda: m.SyncRequest.parse({"cursors": {"1": True}}), "bad_request"),
        (lambda: m.CreateRequest.parse({"members": "bob"}, 10), "bad_request"),
        (lambda: m.CreateRequest.parse({"members": ["b"] * 11}, 10), "too_large"),
        (lambda: m.CreateRequest.parse({"members": [None] * 11}, 10), "bad_request"),
        (lambda: m.CreateRequest.parse({"members": ["b"], "title": ""}, 10), "bad_request"),
        (lambda: m.CreateRequest.parse({"members": ["b"], "title": 5}, 10), "bad_request"),
        (lambda: m.ListRequest.parse({"cursor": 5}), "bad_request"),
        (lambda: m.PresenceQuery.parse({"user_ids": ["a"] * 3}, 2), "too_large"),
        (lambda: m.conversation_of({}), "bad_request"),
        (lambda: m.token_of({"token": ""}), "bad_request"),
        (lambda: m.token_of({}), "bad_request"),
        (lambda: m.token_of({"token": "t" * 8193}), "bad_request"),
        (lambda: m.SendRequest.parse({"conversation_id": 1, "content": "", "client_id": "c"}, 10), "bad_request"),
    ],
    ids=[
        "history-limit",
        "history-before-negative",
        "history-before-2^53",
        "history-before-false",
        "cursors-list",
        "cursor-key",
        "cursor-key-negative",
        "cursor-key-empty",
        "cursor-key-max-id",
        "cursor-negative",
        "cursor-bool",
        "members-string",
        "members-too-many",
        "members-wrong-type-first",
        "title-empty",
        "title-number",
        "cursor-number",
        "presence-too-many",
        "no-conversation",
        "empty-token",
        "no-token",
        "token-too-long",
        "empty-content",
    ],
)
def test_rejections(call: Any, code: str) -> None:
    with _Rejects(code):
        call()
