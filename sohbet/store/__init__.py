"""The storage interface: what the chat service needs from a database, and nothing about which.

Layer: storage. Imports the chat domain's ids and model, `sohbet.errors` and the standard
library. Implementations: `sqlite.py` (embedded default) and `postgres.py` (production); one
contract test suite runs on both. Only the composition root (`sohbet.app`) picks one; the
service sees this module alone.

Every implementation must stay correct with a second server process writing to the same
database: per-conversation `seq` is allocated inside the transaction that inserts, under a lock
on the conversation row, and `(sender_id, client_id)` is enforced by a unique index.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Final, NamedTuple, Protocol, TypeAlias, TypeVar

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import Conversation, ConversationKind, ConversationPage, NewMessage, StoredMessage
from sohbet.errors import StoreError

__all__ = [
    "NO_SEQ",
    "UNREAD_CAP",
    "InstanceLocked",
    "InvalidCursor",
    "MembershipChange",
    "MessageStore",
    "Span",
    "decode_cursor",
    "direct_key",
    "encode_cursor",
    "history_end",
    "history_page_of",
    "members_page_of",
    "migrations",
]


#: Messages of one conversation after one seq, up to another (see `MessageStore.messages_between`).
Span: TypeAlias = tuple[ConversationId, int, int]


class MembershipChange(NamedTuple):
    """One logged change of membership: *user* joined (or left) *conversation*."""

    id: int
    conversation: ConversationId
    user: UserId
    joined: bool


class InvalidCursor(StoreError):
    """A pagination cursor this server did not make: the request is malformed."""


class InstanceLocked(StoreError):
    """Another server process holds the database (see `MessageStore.lock_instance`)."""


#: What a second server on the same database is told, after naming the database.
INSTANCE_LOCKED: Final = (
    "is already served by another sohbet-server (stop that one first, or run every instance with the same "
    "--redis-url): servers that do not tell each other of membership changes would keep stale ones "
    "(a member who left would still receive messages)"
)


NO_SEQ: Final = 2**62  # above every seq and timestamp: "no cursor" starts from the newest
_NO_CURSOR: Final = (NO_SEQ, NO_SEQ)
_MAX_CURSOR_CHARS: Final = 40  # two 64-bit numbers and a dot, with room to spare
#: `unread` counts at most this many: clients show "99+", and a long backlog is not scanned on
#: every `conversation:list` page.
UNREAD_CAP: Final = 100

T = TypeVar("T")


def migrations(dialect: str) -> list[tuple[int, str]]:
    """The numbered migration scripts of *dialect* (`sqlite`, `postgres`), in order: (version, SQL)."""
    folder = resources.files("sohbet.store") / "migrations" / dialect
    found = [(int(entry.name.split("_", 1)[0]), entry.read_text()) for entry in folder.iterdir()]
    return sorted(found)


def members_page_of(users: Sequence[UserId], limit: int) -> tuple[list[UserId], str | None]:
    """A members page from up to *limit* + 1 rows: the extra row only says that more follow."""
    return list(users[:limit]), (users[limit - 1] if len(users) > limit else None)


def history_end(before_seq: int | None) -> int:
    """The seq a history page ends below: *before_seq*, or above every seq when there is none.
    (Not `before_seq or NO_SEQ`: 0 is a `before_seq` too, below every message: an empty page.)"""
    return NO_SEQ if before_seq is None else before_seq


def history_page_of(newest_first: Sequence[T], limit: int) -> tuple[list[T], bool]:
    """A history page, ascending, from up to *limit* + 1 rows fetched newest first; and whether
    older messages exist (the extra row)."""
    return list(reversed(newest_first[:limit])), len(newest_first) > limit


def encode_cursor(activity_ms: int, conversation_id: int) -> str:
    """A conversation-list cursor: where the previous page ended."""
    return f"{activity_ms}.{conversation_id}"


def decode_cursor(cursor: str | None) -> tuple[int, int]:
    """Read a conversation-list cursor; None starts from the top.

    Raises:
        InvalidCursor: the cursor is not one this server made.
    """
    if cursor is None:
        return _NO_CURSOR
    activity, _, conversation = cursor.partition(".")
    # isascii: isdigit alone accepts "²", which int() refuses; the bound keeps both numbers
    # within what every database stores in a 64-bit integer.
    if len(cursor) <= _MAX_CURSOR_CHARS and all(p.isascii() and p.isdigit() for p in (activity, conversation)):
        found = int(activity), int(conversation)
        if max(found) <= NO_SEQ:
            return found
    raise InvalidCursor(f"cursor {cursor[:_MAX_CURSOR_CHARS]!r} is not valid")


def direct_key(a: UserId, b: UserId) -> str:
    """The key that makes a direct conversation unique per pair, whichever side asks."""
    first, second = sorted((a, b))
    return f"{len(first)}:{first}{second}"


class MessageStore(Protocol):
    """What the chat service asks of a database. Driver errors never leave an implementation:
    they become `StoreUnavailable` (nothing was written; the client may retry)."""

    async def migrate(self) -> None:
        """Apply the schema migrations that are missing (safe to run from several processes)."""

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""

    async def lock_instance(self, *, shared: bool = False) -> None:
        """Hold the database until `close`: for this process alone, since each server caches
        memberships and nothing tells a lone server of another's changes; or, *shared*, with
        the other instances of a cluster (they tell each other through Redis), which keeps a
        lone server out, and is kept out by one.

        Raises:
            InstanceLocked: another process holds it.
            StoreUnavailable: the database cannot be reached.
        """

    async def close(self) -> None:
        """Release connections and threads."""

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        """Store messages in one transaction (group commit), in order; one result per input.

        A repeated `(sender_id, client_id)` (earlier in the database or in the same batch) stores
        nothing and returns the original message with `is_new=False`. A message whose sender is
        not a member of its conversation when the transaction commits (a leave raced the send, or
        the conversation does not exist) is not stored: its result is None. Seqs within a
        conversation are consecutive, without gaps or duplicates, whatever runs concurrently.
        """
        ...

    async def find_message(self, sender: UserId, client_id: str) -> StoredMessage | None:
        """The message *sender* stored under *client_id*, if any (marked `is_new=False`)."""
        ...

    async def create_conversation(
        self, members: list[UserId], title: str | None, kind: ConversationKind, now_ms: int
    ) -> tuple[Conversation, list[UserId]]:
        """Create a conversation with deduplicated *members*; for a direct one, return the
        existing conversation of that pair instead, with whoever of the two had left it back in.

        Returns:
            The conversation, and the users who became members by this call: every member of a
            new conversation, the ones who rejoined an existing direct one, or nobody.
        """
        ...

    async def conversation(
        self, conversation_id: ConversationId, for_user: UserId | None = None
    ) -> Conversation | None:
        """One conversation (with `unread` for *for_user*), or None if it does not exist."""
        ...

    async def list_conversations(self, user: UserId, cursor: str | None, limit: int) -> ConversationPage:
        """The user's conversations, newest activity first, each with its unread count."""
        ...

    async def conversation_ids(self, user: UserId) -> list[ConversationId]:
        """Every conversation the user belongs to."""
        ...

    async def members(self, conversation_id: ConversationId) -> list[UserId]:
        """Every member (for the hub's cache; groups hold at most 10,000)."""
        ...

    async def members_of(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, list[UserId]]:
        """Every member of each conversation, in one round trip (a user coming online loads all
        their conversations at once); conversations without members are left out."""
        ...

    async def members_page(
        self, conversation_id: ConversationId, cursor: str | None, limit: int
    ) -> tuple[list[UserId], str | None]:
        """Members ordered by user id, after *cursor*; and the next cursor, or None at the end."""
        ...

    async def add_member(self, conversation_id: ConversationId, user: UserId, now_ms: int) -> bool:
        """Add a member; False if already one."""
        ...

    async def remove_member(self, conversation_id: ConversationId, user: UserId) -> bool:
        """Remove a member; False if not one."""
        ...

    async def history(
        self, conversation_id: ConversationId, before_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """The newest *limit* messages with seq < *before_seq*, ascending; and whether older exist."""
        ...

    async def messages_between(self, spans: Sequence[Span]) -> list[StoredMessage]:
        """The messages of each span `(conversation, after_seq, up_to_seq)`, those with
        `after_seq < seq <= up_to_seq`, span by span in the order given and ascending within
        each: what `sync` replays, in one statement. Seqs have no gaps, so a span's size is
        known before it is read."""
        ...

    async def last_seqs(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, int]:
        """The highest seq of each conversation."""
        ...

    async def membership_changes(self, after_id: int, limit: int) -> list[MembershipChange]:
        """Changes of membership logged after *after_id*, oldest first, at most *limit*: what a
        cluster instance reads to catch changes nobody told it of. Ids are given out at write
        time, so one may appear later than a greater one (its transaction committed later)."""
        ...

    async def membership_log_end(self) -> int:
        """The id of the last change logged (0: none): where a new reader starts."""
        ...

    async def prune_membership_log(self, older_than_s: float) -> int:
        """Forget logged changes older than *older_than_s* seconds; return how many."""
        ...

    async def mark_read(self, conversation_id: ConversationId, user: UserId, seq: int) -> int | None:
        """Move the member's read position forward to *seq* (clamped to the last seq); return
        the new position, or None if it did not move (or the user is not a member)."""
        ...
