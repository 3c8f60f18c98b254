"""The identifiers of the chat domain, each a distinct type, and what a valid one is.

Layer: domain. Imports only the standard library.

Ids travel as JSON (docs/protocol.md, "Messages"): conversation and message ids are integers
below 2^53, so every client can hold them exactly; user ids are strings. `NewType`s keep a user
id from being passed where a conversation id belongs, at no cost at run time.
"""

from __future__ import annotations

from typing import Final, NewType, TypeGuard

__all__ = ["MAX_ID", "MAX_USER_ID_CHARS", "ConnId", "ConversationId", "MessageId", "UserId", "is_user_id"]

UserId = NewType("UserId", str)
ConversationId = NewType("ConversationId", int)
MessageId = NewType("MessageId", int)
#: A connection's number, unique within one server process (the `connection_id` of `hello`).
ConnId = NewType("ConnId", int)

#: Ids and seqs are below this: JSON integers every client can hold exactly.
MAX_ID: Final = 2**53
MAX_USER_ID_CHARS: Final = 128


def is_user_id(value: object) -> TypeGuard[str]:
    """Whether *value* can be a user id: 1-128 characters, without U+0000 (Postgres text cannot
    hold it, so it would fail a whole batch of writes) and without lone surrogates (JSON may
    carry "\ud800", which is no UTF-8: no encoder, no database, no log could write it)."""
    if not (isinstance(value, str) and 1 <= len(value) <= MAX_USER_ID_CHARS and "\x00" not in value):
        return False
    return value.isascii() or _is_utf8(value)


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
