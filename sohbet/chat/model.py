"""The chat model: messages and conversations as the service, the stores and the wire see them.

Layer: domain. Imports only the standard library and `sohbet.chat.ids`.

Plain NamedTuples: a stored message is built for every row a store reads and every message a
batch commits, so it must cost a tuple, not a dataclass (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from sohbet.chat.ids import ConversationId, MessageId, UserId

__all__ = [
    "DIRECT_MEMBERS",
    "MEMBERS_IN_OBJECT",
    "Conversation",
    "ConversationKind",
    "ConversationPage",
    "NewMessage",
    "StoredMessage",
]

#: A conversation object lists at most this many members; `conversation:members` pages the rest.
MEMBERS_IN_OBJECT: Final = 100
#: Two distinct members make a direct conversation; more make a group.
DIRECT_MEMBERS: Final = 2


class ConversationKind(enum.StrEnum):
    """A conversation's `kind` on the wire and in storage."""

    DIRECT = "direct"  # exactly two members, unique per pair
    GROUP = "group"  # three or more, with a title


class NewMessage(NamedTuple):
    """A `chat:send` accepted for storage, before it has an id and a seq."""

    conversation_id: ConversationId
    sender_id: UserId
    client_id: str
    content: str


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
