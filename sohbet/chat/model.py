"""The chat model: messages and conversations as the service, the stores and the wire see them.

Layer: domain. Imports only the standard library and `sohbet.chat.ids`.

Plain NamedTuples: a stored message is built for every row a store reads and every message a
batch commits, so it must cost a tuple, not a dataclass (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar

from sohbet.chat.ids import ConversationId, MessageId, UserId

__all__ = [
    "DIRECT_MEMBERS",
    "MEMBERS_IN_OBJECT",
    "Conversation",
    "ConversationKind",
    "ConversationPage",
    "NewMessage",
    "StoredMessage",
    "make_new_message",
    "make_stored_message",
    "maker",
]

_Record = TypeVar("_Record", bound=tuple[Any, ...])

#: A conversation object lists at most this many members; `conversation:members` pages the rest.
MEMBERS_IN_OBJECT: Final = 100
#: Two distinct members make a direct conversation; more make a group.
DIRECT_MEMBERS: Final = 2


class ConversationKind(enum.StrEnum):
    """A conversation's `kind` on the wire and in storage."""

    DIRECT = "direct"  # exactly two members, unique per pair
    GROUP = "group"  # three or more, with a title


def maker(cls: type[_Record]) -> Callable[[tuple[object, ...]], _Record]:
    """Make *cls* (a NamedTuple) from a tuple of all its fields in order, in C.

    A NamedTuple's own constructor is a Python function, ~80 ns more a call: paid per message
    where one is made per message (a decoded envelope, a send request, a new and a stored
    message). Nothing counts the fields at run time: annotate each maker with its fields'
    tuple, so that mypy checks every call.
    """
    return functools.partial(tuple.__new__, cls)


class NewMessage(NamedTuple):
    """A `chat:send` accepted for storage, before it has an id and a seq."""

    conversation_id: ConversationId
    sender_id: UserId
    client_id: str
    content: str


#: `NewMessage((conversation_id, sender_id, client_id, content))`, made in C (see `maker`).
make_new_message: Final[Callable[[tuple[ConversationId, UserId, str, str]], NewMessage]] = maker(NewMessage)


class StoredMessage(NamedTuple):
    """A message as committed: what `chat:ack`, `chat:message` and history carry."""

    id: MessageId
    conversation_id: ConversationId
    seq: int
    sender_id: UserId
    content: str
    client_id: str
    created_at_ms: int
    #: False when this is an earlier message returned for a repeated `(sender, client_id)`.
    is_new: bool = True


#: `StoredMessage((id, ..., created_at_ms, is_new))`, every field given, made in C (see `maker`);
#: a store passes its rows, whose fields only it knows.
make_stored_message: Final[Callable[[Any], StoredMessage]] = maker(StoredMessage)


class Conversation(NamedTuple):
    """A conversation as its members see it; `unread` only where a user asked for it."""

    id: ConversationId
    kind: ConversationKind
    title: str | None
    member_count: int
    members: list[UserId]  # the first MEMBERS_IN_OBJECT, ordered by user id
    last_seq: int
    unread: int = 0


class ConversationPage(NamedTuple):
    """One page of a user's conversations, and the cursor of the next (None at the end)."""

    conversations: list[Conversation]
    next_cursor: str | None
