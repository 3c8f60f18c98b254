"""The chat envelope (docs/protocol.md, "Messages"): JSON in, validated requests out; replies
and events encoded.

Layer: domain. Imports orjson, the standard library and the chat domain's ids and model.

Every message type and every object the protocol defines has its one place here: the `type`
names (`RequestType`, `EventType`), the request validators, and the outbound objects (a message,
a conversation, `hello`). Every check raises `MessageRejected` with the protocol's error code, in
the protocol's order: `bad_request` (malformed, wrong type, missing field) before `too_large`.
Membership and rate limits are the service's (they need state); this module only needs the bytes.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import orjson

from sohbet.chat.ids import MAX_ID, MAX_USER_ID_CHARS, ConversationId, UserId, is_user_id
from sohbet.chat.model import Conversation, StoredMessage, maker
from sohbet.errors import ErrorCode, MessageRejected
from sohbet.ws.codes import FIRST_APPLICATION_CLOSE_CODE, CloseCode

__all__ = [
    "APP_EVENT_PREFIX",
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "AppEvent",
    "CreateRequest",
    "DisconnectRequest",
    "Envelope",
    "EventType",
    "HistoryRequest",
    "ListRequest",
    "MemberRequest",
    "MembersRequest",
    "OnlineQuery",
    "PresenceQuery",
    "ReadRequest",
    "RequestType",
    "SendRequest",
    "SyncRequest",
    "conversation_object",
    "decode",
    "encode",
    "encode_app",
    "format_time",
    "message_object",
]

#: The protocol version `hello` announces, and the subprotocol that names it.
PROTOCOL_VERSION: Final = 1
SUBPROTOCOL: Final = "sohbet.v1"
MAX_REF_CHARS: Final = 64
MAX_CLIENT_ID_CHARS: Final = 128
MAX_TITLE_CHARS: Final = 200
#: What the type of an application's event starts with: nothing it publishes can pass for a chat event.
APP_EVENT_PREFIX: Final = "app:"
MAX_APP_TYPE_CHARS: Final = 64
#: A close frame's reason fits in a control frame's 125 bytes, after the 2-byte code (RFC 6455 §5.5).
MAX_CLOSE_REASON_BYTES: Final = 123
_MAX_ID_DIGITS: Final = len(str(MAX_ID))


class RequestType(enum.StrEnum):
    """The `type` of a client's request (docs/protocol.md, "Client → server")."""

    SEND = "chat:send"
    TYPING = "chat:typing"
    READ = "chat:read"
    HISTORY = "chat:history"
    SYNC = "sync"
    CREATE = "conversation:create"
    LIST = "conversation:list"
    MEMBERS = "conversation:members"
    LEAVE = "conversation:leave"
    PRESENCE = "presence:query"
    REFRESH = "auth:refresh"


class EventType(enum.StrEnum):
    """The `type` of what the server sends: replies to requests, and events."""

    HELLO = "hello"
    ERROR = "error"
    ACK = "chat:ack"
    MESSAGE = "chat:message"
    TYPING = "chat:typing"
    READ = "chat:read"
    HISTORY = "chat:history"
    SYNC_DONE = "sync:done"
    CREATED = "conversation:created"
    LIST = "conversation:list"
    MEMBERS = "conversation:members"
    LEFT = "conversation:left"
    MEMBER_ADDED = "conversation:member_added"
    MEMBER_REMOVED = "conversation:member_removed"
    PRESENCE = "presence:state"
    ONLINE = "user:online"
    OFFLINE = "user:offline"
    REFRESHED = "auth:refreshed"


class Envelope(NamedTuple):
    """One client message: its type (any string: an unknown one is the service's to refuse),
    its payload, and the ref its reply carries."""

    type: str
    payload: dict[str, Any]
    ref: str | None


_make_envelope: Final[Callable[[tuple[str, dict[str, Any], str | None]], Envelope]] = maker(Envelope)


def _bad(message: str) -> MessageRejected:
    return MessageRejected(ErrorCode.BAD_REQUEST, message)


def decode(data: bytes) -> Envelope:
    """Parse one client message.

    Raises:
        MessageRejected: `bad_request`: not JSON, not an object, a type that is not a string, a
            payload that is not an object, a `ref` that is not a string of 1-64 characters.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _bad("message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _bad("message must be a JSON object")
    ref = obj.get("ref")
    if ref is not None and not (isinstance(ref, str) and 1 <= len(ref) <= MAX_REF_CHARS):
        raise _bad("ref must be a string of 1-64 characters")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise MessageRejected(ErrorCode.BAD_REQUEST, "type must be a string", ref=ref)
    payload = obj.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise MessageRejected(ErrorCode.BAD_REQUEST, "payload must be a JSON object", ref=ref)
    return _make_envelope((kind, payload, ref))


def encode(kind: EventType, payload: dict[str, Any], ref: str | None = None) -> bytes:
    """Encode one server message; `ref` only on the reply to a request."""
    if ref is None:
        return orjson.dumps({"type": kind, "payload": payload})
    return orjson.dumps({"type": kind, "payload": payload, "ref": ref})


def encode_app(kind: str, payload: dict[str, Any]) -> bytes:
    """Encode an application's event (`app:*`, from the HTTP API); it never carries a `ref`.

    Raises:
        MessageRejected: `bad_request` for a payload no JSON writer takes back: nested deeper
            than orjson writes (it reads deeper than it writes), or holding lone surrogates.
    """
    try:
        return orjson.dumps({"type": kind, "payload": payload})
    except orjson.JSONEncodeError as exc:
        raise _bad(f"payload cannot be sent on: {exc}") from None


def _format_time(ms: int) -> str:
    """RFC 3339 UTC with milliseconds: `2026-11-25T17:52:00.123Z`."""
    return f"{_format_second(ms // 1000)}.{ms % 1000:03d}Z"


#: `_format_time`, remembered: a batch's messages share their time, so a hit (one C call) saves
#: a Python call and an f-string per message. Typed here: `lru_cache` erases the signature.
format_time: Final[Callable[[int], str]] = functools.lru_cache(maxsize=1024)(_format_time)


@functools.lru_cache(maxsize=256)
def _format_second(second: int) -> str:
    """The part of `format_time` before the milliseconds, remembered: a batch's messages share
    their time, a history page's mostly their second, and `strftime` costs ~2 µs a message."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def message_object(m: StoredMessage) -> dict[str, Any]:
    """The wire form of a message (docs/protocol.md: "A message")."""
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "sender_id": m.sender_id,
        "content": m.content,
        "client_id": m.client_id,
        "created_at": format_time(m.created_at_ms),
    }


def conversation_object(c: Conversation, with_unread: bool = False) -> dict[str, Any]:
    """The wire form of a conversation (docs/protocol.md: "A conversation"), with `unread` in
    a `conversation:list`."""
    obj: dict[str, Any] = {
        "id": c.id,
        "kind": c.kind,
        "title": c.title,
        "member_count": c.member_count,
        "members": c.members,
        "last_seq": c.last_seq,
    }
    if with_unread:
        obj["unread"] = c.unread
    return obj


# --- field readers ---------------------------------------------------------------------------


def _int(payload: dict[str, Any], key: str, *, low: int, high: int, default: int | None = None) -> int:
    value = payload.get(key)
    if value is None:
        if default is not None:
            return default
        raise _bad(f"{key} is required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{key} must be an integer")
    if not low <= value <= high:
        raise _bad(f"{key} of {value} is outside {low}-{high}")
    return value


def _id(payload: dict[str, Any], key: str) -> int:
    """An id or a seq a request names: 0 to 2^53 - 1 (docs/protocol.md, "Messages"). Nothing
    stored has 0 (ids and seqs count from 1), yet 0 is well-formed: it names nothing, so it gets
    what any id that is not the asker's gets (`forbidden`, an empty page), never `bad_request`."""
    return _int(payload, key, low=0, high=MAX_ID - 1)


def _conversation_id(payload: dict[str, Any]) -> ConversationId:
    return ConversationId(_id(payload, "conversation_id"))


def _text(payload: dict[str, Any], key: str, high: int, *, required: bool = True) -> str | None:
    value = payload.get(key)
    if value is None:
        if required:
            raise _bad(f"{key} is required")
        return None
    if not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    if not 1 <= len(value) <= high:
        raise _bad(f"{key} must be 1-{high} characters")
    if "\x00" in value:
        raise _bad(f"{key} must not contain U+0000")  # no database keeps it in text
    return value


def _user_ids(payload: dict[str, Any], key: str, high: int) -> list[UserId]:
    value = payload.get(key)
    if not isinstance(value, list):
        raise _bad(f"{key} must be a list of user ids")
    for user in value:
        if not is_user_id(user):
            raise _bad(f"{key} must hold user ids: strings of 1-{MAX_USER_ID_CHARS} characters, without U+0000")
    if len(value) > high:  # after the type checks: bad_request comes before too_large
        raise MessageRejected(ErrorCode.TOO_LARGE, f"{key} lists {len(value)} users; at most {high}")
    return [UserId(u) for u in value]


def _cursor(payload: dict[str, Any]) -> str | None:
    return _text(payload, "cursor", 512, required=False)


# --- requests --------------------------------------------------------------------------------


class SendRequest(NamedTuple):
    conversation_id: ConversationId
    content: str
    client_id: str

    @classmethod
    def parse(cls, payload: dict[str, Any], max_chars: int) -> SendRequest:
        """Validate `chat:send` (bad_request first, then too_large)."""
        conversation_id = _conversation_id(payload)
        client_id = _text(payload, "client_id", MAX_CLIENT_ID_CHARS)
        content = payload.get("content")
        if not isinstance(content, str):
            raise _bad("content must be a string")
        if not content:
            raise _bad("content must not be empty")
        if "\x00" in content:
            raise _bad("content must not contain U+0000")
        if len(content) > max_chars:
            raise MessageRejected(ErrorCode.TOO_LARGE, f"content of {len(content)} characters exceeds {max_chars}")
        assert client_id is not None  # required
        return _make_send_request((conversation_id, content, client_id))


_make_send_request: Final[Callable[[tuple[ConversationId, str, str]], SendRequest]] = maker(SendRequest)


class ReadRequest(NamedTuple):
    conversation_id: ConversationId
    seq: int

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> ReadRequest:
        """Validate `chat:read`."""
        return cls(_conversation_id(payload), _id(payload, "seq"))


class HistoryRequest(NamedTuple):
    conversation_id: ConversationId
    before_seq: int | None
    limit: int

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> HistoryRequest:
        """Validate `chat:history` (limit 1-100, default 50)."""
        before = payload.get("before_seq")
        return cls(
            _conversation_id(payload),
            None if before is None else _id(payload, "before_seq"),
            _int(payload, "limit", low=1, high=100, default=50),
        )


class SyncRequest(NamedTuple):
    cursors: dict[ConversationId, int]

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> SyncRequest:
        """Validate `sync`: cursors map conversation ids, written as strings, to seqs."""
        raw = payload.get("cursors", {})
        if not isinstance(raw, dict):
            raise _bad("cursors must be an object")
        cursors: dict[ConversationId, int] = {}
        for key, seq in raw.items():
            # isascii: isdigit alone accepts digits such as "²" and "٣" that are not ids. "0" is
            # one (as in `_id`): it names no conversation, so `sync:done` lists it as forbidden.
            if not (key.isascii() and key.isdigit() and len(key) <= _MAX_ID_DIGITS and int(key) < MAX_ID):
                raise _bad(f"cursor key {key[:20]!r} is not a conversation id")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_ID:
                raise _bad(f"cursor for {key} must be a seq (an integer of 0 or more)")
            cursors[ConversationId(int(key))] = seq
        return cls(cursors)


class CreateRequest(NamedTuple):
    members: list[UserId]
    title: str | None

    @classmethod
    def parse(cls, payload: dict[str, Any], max_members: int) -> CreateRequest:
        """Validate `conversation:create` (the creator is added by the caller)."""
        title = _text(payload, "title", MAX_TITLE_CHARS, required=False)
        return cls(_user_ids(payload, "members", max_members), title)


class ListRequest(NamedTuple):
    cursor: str | None
    limit: int

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> ListRequest:
        """Validate `conversation:list` (limit 1-100, default 50)."""
        return cls(_cursor(payload), _int(payload, "limit", low=1, high=100, default=50))


class MembersRequest(NamedTuple):
    conversation_id: ConversationId
    cursor: str | None
    limit: int

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> MembersRequest:
        """Validate `conversation:members` (limit 1-1000, default 100)."""
        # The cursor is the last user id of the previous page: anything else is not one we made.
        cursor = _text(payload, "cursor", MAX_USER_ID_CHARS, required=False)
        return cls(_conversation_id(payload), cursor, _int(payload, "limit", low=1, high=1000, default=100))


class PresenceQuery(NamedTuple):
    user_ids: list[UserId]

    @classmethod
    def parse(cls, payload: dict[str, Any], max_users: int) -> PresenceQuery:
        """Validate `presence:query`."""
        return cls(_user_ids(payload, "user_ids", max_users))


class AppEvent(NamedTuple):
    """An application's event for `POST /api/publish` and `POST /api/broadcast`."""

    user_ids: list[UserId]
    type: str
    payload: dict[str, Any]

    @classmethod
    def parse(cls, body: dict[str, Any], max_users: int, *, to_users: bool) -> AppEvent:
        """Validate a publish (*to_users*: `user_ids` required) or a broadcast body.

        The type must start with `app:`, so no application event can pass for a chat event.
        """
        kind = _text(body, "type", MAX_APP_TYPE_CHARS)
        assert kind is not None  # required
        if not kind.startswith(APP_EVENT_PREFIX) or len(kind) == len(APP_EVENT_PREFIX):
            raise _bad(f"type must start with {APP_EVENT_PREFIX!r} and name the event, e.g. 'app:notice'")
        if not kind.isprintable():
            raise _bad("type must be printable")
        payload = body.get("payload")
        if payload is None:
            payload = {}  # left out or null: an empty object, as in a client's envelope
        if not isinstance(payload, dict):
            raise _bad("payload must be a JSON object")
        users = list(dict.fromkeys(_user_ids(body, "user_ids", max_users))) if to_users else []
        return cls(users, kind, payload)


class OnlineQuery(NamedTuple):
    """The query of `GET /api/presence`: who is online, a page at a time."""

    cursor: UserId | None
    limit: int

    @classmethod
    def parse(cls, query: dict[str, Any]) -> OnlineQuery:
        """Validate a page (limit 1-1000, default 100); the cursor is the last user id of the page before."""
        cursor = _text(query, "cursor", MAX_USER_ID_CHARS, required=False)
        return cls(None if cursor is None else UserId(cursor), _int(query, "limit", low=1, high=1000, default=100))


class MemberRequest(NamedTuple):
    """The body of `POST /api/conversations/{id}/members`."""

    user_id: UserId

    @classmethod
    def parse(cls, body: dict[str, Any]) -> MemberRequest:
        """Validate the user to add."""
        user = body.get("user_id")
        if not is_user_id(user):
            raise _bad(f"user_id must be a user id: a string of 1-{MAX_USER_ID_CHARS} characters, without U+0000")
        return cls(UserId(user))


class DisconnectRequest(NamedTuple):
    """The body of `POST /api/users/{user_id}/disconnect`: the close code and reason to send."""

    code: int
    reason: str

    @classmethod
    def parse(cls, body: dict[str, Any], default_code: int) -> DisconnectRequest:
        """Validate the close: 1000 or an application code (4000-4999, RFC 6455 §7.4.2), and a
        reason that fits in the close frame."""
        code = _int(body, "code", low=1000, high=4999, default=default_code)
        if code != CloseCode.NORMAL and code < FIRST_APPLICATION_CLOSE_CODE:
            raise _bad(f"code {code} is not 1000 nor an application close code (4000-4999)")
        reason = body.get("reason")
        if reason is None:
            reason = ""  # left out or null: none, as a null code is the default one
        if not isinstance(reason, str):
            raise _bad("reason must be a string")
        if len(reason.encode()) > MAX_CLOSE_REASON_BYTES:
            raise _bad(f"reason must be at most {MAX_CLOSE_REASON_BYTES} bytes of UTF-8")
        return cls(code, reason)


def conversation_of(payload: dict[str, Any]) -> ConversationId:
    """Validate a payload that names only a conversation (`chat:typing`, `conversation:leave`)."""
    return _conversation_id(payload)


def token_of(payload: dict[str, Any]) -> str:
    """Validate `auth:refresh`."""
    token = _text(payload, "token", 8192)
    assert token is not None  # required
    return token
