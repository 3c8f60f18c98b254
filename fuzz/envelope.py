"""Fuzz target: the chat envelope decoder and request validation (`sohbet.chat.wire`), with the
conversation-list cursor (`sohbet.store.decode_cursor`) that a `conversation:list` carries.

Property: `decode` and every request validator either return a request within the protocol's
bounds (ids and seqs in range, strings of allowed lengths without U+0000, lists within their
caps) or raise `MessageRejected` with `bad_request` or `too_large`, never another exception; the
`error` reply to each refusal encodes; a cursor is refused only with `InvalidCursor`. Two modes:
the fuzzer's bytes as the message, and a JSON message built from them (types, field names and
values near every bound), so the validators are reached past `decode`.

Input: a mode byte, then the message bytes (raw mode) or the choices that build the message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from _harness import Reader, instrumented, main

with instrumented(__name__):
    from sohbet.chat import wire
    from sohbet.chat.ids import MAX_ID, MAX_USER_ID_CHARS, is_user_id
    from sohbet.errors import ErrorCode, MessageRejected
    from sohbet.store import NO_SEQ, InvalidCursor, decode_cursor

_MAX_CHARS = 4000  # the validators' caps, as the service passes them (small, so they are reached)
_MAX_MEMBERS = 8
_MAX_USERS = 8
_CODES = frozenset((ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE))
_FIELDS = (
    "conversation_id",
    "content",
    "client_id",
    "seq",
    "before_seq",
    "limit",
    "cursors",
    "members",
    "title",
    "cursor",
    "user_ids",
    "token",
)
_TYPES = (*(t.value for t in wire.RequestType), "", "chat:Send", "x" * 65)
_INTS = (0, 1, -1, 2, 50, 99, 100, 101, 1000, 1001, MAX_ID - 1, MAX_ID, -MAX_ID, 2**62, 2**63, 2**64, 10**30)
_LENGTHS = (0, 1, 2, 63, 64, 65, 127, 128, 129, 199, 200, 201, 511, 512, 513, _MAX_CHARS, _MAX_CHARS + 1)
_PIECES = ("a", "é", "\x00", "𝄞", "1", "²", ".", " ", '"', "\\", "\ud800", "٣")
_KEYS = ("1", "0", "42", "²", "٣", "-1", " 1", "1.5", "", "9007199254740991", "9007199254740992", "0042", "1e3")
_CURSORS = ("0.0", "1.1", "².²", "99999999999999999999999.1", f"{NO_SEQ}.{NO_SEQ}", f"{NO_SEQ + 1}.1", "1.", ".1", "1")


def _string(r: Reader) -> str:
    choice = r.byte() % 4
    if choice == 0:
        return r.pick(_CURSORS + _KEYS)
    if choice == 1:
        return r.take(r.byte() % 32).decode("utf-8", "replace")
    piece = r.pick(_PIECES)
    return (piece * r.pick(_LENGTHS))[: r.pick(_LENGTHS) or None]


def _value(r: Reader, depth: int) -> Any:
    kind = r.byte() % 10 if depth < 4 else r.byte() % 6  # noqa: PLR2004  # nesting depth, then scalars only
    if kind == 0:
        return None
    if kind == 1:
        return r.flag()
    if kind == 2:  # noqa: PLR2004
        return r.pick(_INTS) + r.byte() % 3 - 1
    if kind == 3:  # noqa: PLR2004
        return r.pick((0.0, 1.0, 1.5, -0.0, 1e300, 50.0))
    if kind in (4, 5):
        return _string(r)
    if kind in (6, 7):
        return [_value(r, depth + 1) for _ in range(r.byte() % 12)]
    if kind == 8:  # noqa: PLR2004  # an object keyed like `sync`'s cursors
        return {r.pick(_KEYS) if r.flag() else _string(r): _value(r, depth + 1) for _ in range(r.byte() % 6)}
    return _payload(r, depth + 1)


def _payload(r: Reader, depth: int) -> dict[str, Any]:
    return {r.pick(_FIELDS): _value(r, depth) for _ in range(r.byte() % 8)}


def built_message(r: Reader) -> bytes:
    """A JSON message from the reader's choices: an envelope with a payload of protocol fields."""
    envelope: dict[str, Any] = {}
    for _ in range(r.byte() % 5):
        key = r.pick(("type", "payload", "ref", "type", "payload", "extra"))
        envelope[key] = (
            r.pick(_TYPES) if key == "type" and r.flag() else _payload(r, 1) if key == "payload" else _value(r, 1)
        )
    return json.dumps(envelope, ensure_ascii=r.flag()).encode("utf-8", "surrogatepass")


def _text_ok(value: object, high: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= high and "\x00" not in value and _utf8(value)


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_ok(value: object) -> bool:
    """An id or a seq as a request may name it: 0 (which names nothing) to 2^53 - 1."""
    return type(value) is int and 0 <= value < MAX_ID


def _users_ok(users: list[Any], high: int) -> bool:
    return len(users) <= high and all(is_user_id(u) and _utf8(u) for u in users)


def _check_cursor(cursor: str) -> None:
    try:
        found = decode_cursor(cursor)
    except InvalidCursor:
        return
    assert all(0 <= n <= NO_SEQ for n in found), found


def _check_send(p: dict[str, Any]) -> None:
    req = wire.SendRequest.parse(p, _MAX_CHARS)
    assert _id_ok(req.conversation_id) and _text_ok(req.content, _MAX_CHARS), req
    assert _text_ok(req.client_id, wire.MAX_CLIENT_ID_CHARS), req


def _check_read(p: dict[str, Any]) -> None:
    req = wire.ReadRequest.parse(p)
    assert _id_ok(req.conversation_id) and _id_ok(req.seq), req


def _check_history(p: dict[str, Any]) -> None:
    req = wire.HistoryRequest.parse(p)
    assert _id_ok(req.conversation_id) and (req.before_seq is None or _id_ok(req.before_seq)), req
    assert type(req.limit) is int and 1 <= req.limit <= 100, req  # noqa: PLR2004  # the protocol's page size


def _check_sync(p: dict[str, Any]) -> None:
    req = wire.SyncRequest.parse(p)
    assert all(_id_ok(c) and _id_ok(s) for c, s in req.cursors.items()), req


def _check_create(p: dict[str, Any]) -> None:
    req = wire.CreateRequest.parse(p, _MAX_MEMBERS)
    assert _users_ok(req.members, _MAX_MEMBERS), req
    assert req.title is None or _text_ok(req.title, wire.MAX_TITLE_CHARS), req


def _check_list(p: dict[str, Any]) -> None:
    req = wire.ListRequest.parse(p)
    assert type(req.limit) is int and 1 <= req.limit <= 100, req  # noqa: PLR2004  # the protocol's page size
    if req.cursor is not None:
        assert _text_ok(req.cursor, 512), req  # the cursor's cap
        _check_cursor(req.cursor)


def _check_members(p: dict[str, Any]) -> None:
    req = wire.MembersRequest.parse(p)
    assert _id_ok(req.conversation_id) and 1 <= req.limit <= 1000, req  # noqa: PLR2004  # the page size
    assert req.cursor is None or _text_ok(req.cursor, MAX_USER_ID_CHARS), req


def _check_presence(p: dict[str, Any]) -> None:
    assert _users_ok(wire.PresenceQuery.parse(p, _MAX_USERS).user_ids, _MAX_USERS)


def _check_conversation(p: dict[str, Any]) -> None:
    assert _id_ok(wire.conversation_of(p))


def _check_token(p: dict[str, Any]) -> None:
    assert _text_ok(wire.token_of(p), 8192)  # the token's cap


_VALIDATORS: tuple[Callable[[dict[str, Any]], None], ...] = (
    _check_send,
    _check_read,
    _check_history,
    _check_sync,
    _check_create,
    _check_list,
    _check_members,
    _check_presence,
    _check_conversation,
    _check_token,
)


def _refused(exc: MessageRejected, ref: str | None) -> None:
    """A refusal must carry a protocol code and encode as the `error` reply the service sends."""
    assert exc.code in _CODES, exc.code
    wire.encode(wire.EventType.ERROR, {"code": exc.code, "message": str(exc)}, exc.ref or ref)


def TestOneInput(data: bytes) -> None:  # noqa: N802  # the name atheris and libFuzzer look for
    r = Reader(data)
    message = built_message(r) if r.flag() else r.rest()
    try:
        envelope = wire.decode(message)
    except MessageRejected as exc:
        _refused(exc, None)
        return
    assert isinstance(envelope.type, str) and isinstance(envelope.payload, dict), envelope
    ref = envelope.ref
    assert ref is None or (isinstance(ref, str) and 1 <= len(ref) <= wire.MAX_REF_CHARS), envelope
    for validate in _VALIDATORS:
        try:
            validate(envelope.payload)
        except MessageRejected as exc:
            _refused(exc, envelope.ref)


if __name__ == "__main__":
    main(TestOneInput)
