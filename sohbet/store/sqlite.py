"""The embedded store: the standard library's sqlite3 on one dedicated thread.

Layer: storage. Imports sqlite3, the chat domain's ids and model and the store interface. One
thread owns the connection, so every call is serialised without locks in
Python; the event loop awaits it. WAL mode lets readers run beside the writer, and
`synchronous=FULL` makes a commit survive a killed process before anything is acked. Seqs are
allocated inside `BEGIN IMMEDIATE` transactions, so a second process on the same file stays
gapless too.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import (
    MEMBERS_IN_OBJECT,
    Conversation,
    ConversationKind,
    ConversationPage,
    NewMessage,
    StoredMessage,
)
from sohbet.errors import StoreUnavailable
from sohbet.store import (
    INSTANCE_LOCKED,
    UNREAD_CAP,
    InstanceLocked,
    MembershipChange,
    Span,
    decode_cursor,
    direct_key,
    encode_cursor,
    history_end,
    history_page_of,
    members_page_of,
    migrations,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

#: The database holds every message: its owner's alone. SQLite gives its -wal and -shm files the
#: mode of the database file, so creating that one private makes all three private.
_FILE_MODE: Final = 0o600

_MIGRATIONS: Final = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER)"
_APPLIED: Final = "SELECT version FROM schema_migrations"
_RECORD_MIGRATION: Final = (
    "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, strftime('%s','now') * 1000)"
)
_FIND_SENT: Final = (
    "SELECT id, conversation_id, seq, sender_id, content, client_id, created_at_ms FROM messages "
    "WHERE sender_id = ? AND client_id = ?"
)
_LAST_SEQ: Final = "SELECT last_seq FROM conversations WHERE id = ?"
# Lists of ids go in as one JSON array (json_each): one statement, however many conversations.
_LAST_SEQS: Final = "SELECT id, last_seq FROM conversations WHERE id IN (SELECT value FROM json_each(?))"
_IS_MEMBER: Final = "SELECT 1 FROM members WHERE conversation_id = ? AND user_id = ?"
_INSERT_MESSAGE: Final = (
    "INSERT INTO messages (conversation_id, seq, sender_id, client_id, content, created_at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
)
_ADVANCE: Final = "UPDATE conversations SET last_seq = ?, last_activity_ms = ? WHERE id = ?"
_FIND_DIRECT: Final = "SELECT id FROM conversations WHERE direct_key = ?"
_INSERT_CONVERSATION: Final = (
    "INSERT INTO conversations (kind, title, direct_key, member_count, created_at_ms, last_activity_ms) "
    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
)
_INSERT_MEMBER: Final = "INSERT OR IGNORE INTO members (conversation_id, user_id, joined_at_ms) VALUES (?, ?, ?)"
_CONVERSATION: Final = "SELECT id, kind, title, member_count, last_seq FROM conversations WHERE id = ?"
_FIRST_MEMBERS: Final = "SELECT user_id FROM members WHERE conversation_id = ? ORDER BY user_id LIMIT ?"
_UNREAD: Final = (
    "SELECT count(*) FROM (SELECT 1 FROM messages x JOIN members m "
    "ON m.conversation_id = x.conversation_id AND m.user_id = ? "
    "WHERE x.conversation_id = ? AND x.seq > m.read_seq AND x.sender_id <> m.user_id LIMIT ?)"
)
_LIST: Final = (
    "SELECT c.id, c.last_activity_ms FROM members m JOIN conversations c ON c.id = m.conversation_id "
    "WHERE m.user_id = ? AND (c.last_activity_ms < ? OR (c.last_activity_ms = ? AND c.id < ?)) "
    "ORDER BY c.last_activity_ms DESC, c.id DESC LIMIT ?"
)
_CONVERSATION_IDS: Final = "SELECT conversation_id FROM members WHERE user_id = ?"
_MEMBERS: Final = "SELECT user_id FROM members WHERE conversation_id = ?"
_MEMBERS_OF: Final = (
    "SELECT conversation_id, user_id FROM members WHERE conversation_id IN (SELECT value FROM json_each(?))"
)
_MEMBERS_PAGE: Final = "SELECT user_id FROM members WHERE conversation_id = ? AND user_id > ? ORDER BY user_id LIMIT ?"
_COUNT_MEMBERS: Final = "UPDATE conversations SET member_count = member_count + ? WHERE id = ?"
_RECOUNT_MEMBERS: Final = (
    "UPDATE conversations SET member_count = (SELECT count(*) FROM members WHERE conversation_id = ?) WHERE id = ?"
)
_DELETE_MEMBER: Final = "DELETE FROM members WHERE conversation_id = ? AND user_id = ?"
_MEMBERSHIP_CHANGES: Final = (
    "SELECT id, conversation_id, user_id, joined FROM membership_log WHERE id > ? ORDER BY id LIMIT ?"
)
_MEMBERSHIP_LOG_END: Final = "SELECT coalesce(max(id), 0) FROM membership_log"
_PRUNE_MEMBERSHIP_LOG: Final = (
    "DELETE FROM membership_log WHERE at_ms < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ?"
)
_HISTORY: Final = (
    "SELECT id, conversation_id, seq, sender_id, content, client_id, created_at_ms FROM messages "
    "WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
)
_BETWEEN: Final = (
    "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.content, m.client_id, m.created_at_ms "
    "FROM json_each(?) s JOIN messages m ON m.conversation_id = json_extract(s.value, '$[0]') "
    "AND m.seq > json_extract(s.value, '$[1]') AND m.seq <= json_extract(s.value, '$[2]') ORDER BY s.key, m.seq"
)
_READ_POSITION: Final = (
    "SELECT m.read_seq, c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id "
    "WHERE m.conversation_id = ? AND m.user_id = ?"
)
_MARK_READ: Final = "UPDATE members SET read_seq = ? WHERE conversation_id = ? AND user_id = ? AND read_seq < ?"


class SqliteStore:
    """`MessageStore` on an SQLite file (see `sohbet.store.MessageStore` for the contract)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sohbet-sqlite")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    def _open_file(self) -> int:
        """Open the database file, creating it private (an empty file is an empty database)."""
        return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self._call, fn, *args))
        except (sqlite3.Error, OSError) as exc:  # OSError: the file cannot be created
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is None:
            os.close(self._open_file())
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db
        try:
            return fn(self._db, *args)
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    async def migrate(self) -> None:  # see MessageStore
        await self._run(_migrate)

    async def ping(self) -> None:  # see MessageStore
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def lock_instance(self, *, shared: bool = False) -> None:  # see MessageStore
        # flock, on a descriptor of our own: SQLite's own locks are fcntl record locks, which
        # flock does not touch, and closing SQLite's descriptors cannot release this one.
        try:
            fd = self._open_file()
        except OSError as exc:
            raise StoreUnavailable(f"sqlite: cannot open {self._path}: {exc}") from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InstanceLocked(f"SQLite database {self._path} {INSTANCE_LOCKED}") from None
        self._lock_fd = fd

    async def close(self) -> None:  # see MessageStore
        def close(db: sqlite3.Connection) -> None:
            db.close()

        if self._db is not None:
            await self._run(close)
            self._db = None
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # after the connection: the lock outlives every write
            self._lock_fd = None

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        return await self._run(_append, batch, now_ms)

    async def find_message(self, sender: UserId, client_id: str) -> StoredMessage | None:  # see MessageStore
        def find(db: sqlite3.Connection) -> StoredMessage | None:
            row = db.execute(_FIND_SENT, (sender, client_id)).fetchone()
            return None if row is None else _message(row, is_new=False)

        return await self._run(find)

    async def create_conversation(  # see MessageStore
        self, members: list[UserId], title: str | None, kind: ConversationKind, now_ms: int
    ) -> tuple[Conversation, list[UserId]]:
        return await self._run(_create, members, title, kind, now_ms)

    async def conversation(  # see MessageStore
        self, conversation_id: ConversationId, for_user: UserId | None = None
    ) -> Conversation | None:
        return await self._run(_conversation, conversation_id, for_user)

    async def list_conversations(self, user: UserId, cursor: str | None, limit: int) -> ConversationPage:
        return await self._run(_list, user, cursor, limit)

    async def conversation_ids(self, user: UserId) -> list[ConversationId]:
        return await self._run(lambda db: [ConversationId(r[0]) for r in db.execute(_CONVERSATION_IDS, (user,))])

    async def members(self, conversation_id: ConversationId) -> list[UserId]:
        return await self._run(lambda db: [UserId(r[0]) for r in db.execute(_MEMBERS, (conversation_id,))])

    async def members_of(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, list[UserId]]:
        def members_of(db: sqlite3.Connection) -> dict[ConversationId, list[UserId]]:
            found: dict[ConversationId, list[UserId]] = {}
            for cid, user in db.execute(_MEMBERS_OF, (json.dumps(conversation_ids),)):
                found.setdefault(ConversationId(cid), []).append(UserId(user))
            return found

        return await self._run(members_of)

    async def members_page(  # see MessageStore
        self, conversation_id: ConversationId, cursor: str | None, limit: int
    ) -> tuple[list[UserId], str | None]:
        def page(db: sqlite3.Connection) -> tuple[list[UserId], str | None]:
            rows = [UserId(r[0]) for r in db.execute(_MEMBERS_PAGE, (conversation_id, cursor or "", limit + 1))]
            return members_page_of(rows, limit)

        return await self._run(page)

    async def add_member(self, conversation_id: ConversationId, user: UserId, now_ms: int) -> bool:
        return await self._run(_add_member, conversation_id, user, now_ms)

    async def remove_member(self, conversation_id: ConversationId, user: UserId) -> bool:
        return await self._run(_remove_member, conversation_id, user)

    async def history(  # see MessageStore
        self, conversation_id: ConversationId, before_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        def history(db: sqlite3.Connection) -> tuple[list[StoredMessage], bool]:
            rows = db.execute(_HISTORY, (conversation_id, history_end(before_seq), limit + 1)).fetchall()
            return history_page_of([_message(r) for r in rows], limit)

        return await self._run(history)

    async def messages_between(self, spans: Sequence[Span]) -> list[StoredMessage]:  # see MessageStore
        return await self._run(lambda db: [_message(r) for r in db.execute(_BETWEEN, (json.dumps(spans),))])

    async def last_seqs(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, int]:
        def seqs(db: sqlite3.Connection) -> dict[ConversationId, int]:
            return {ConversationId(cid): seq for cid, seq in db.execute(_LAST_SEQS, (json.dumps(conversation_ids),))}

        return await self._run(seqs)

    async def membership_changes(self, after_id: int, limit: int) -> list[MembershipChange]:  # see MessageStore
        def changes(db: sqlite3.Connection) -> list[MembershipChange]:
            rows = db.execute(_MEMBERSHIP_CHANGES, (after_id, limit))
            return [MembershipChange(r[0], ConversationId(r[1]), UserId(r[2]), bool(r[3])) for r in rows]

        return await self._run(changes)

    async def membership_log_end(self) -> int:  # see MessageStore
        return await self._run(lambda db: int(db.execute(_MEMBERSHIP_LOG_END).fetchone()[0]))

    async def prune_membership_log(self, older_than_s: float) -> int:  # see MessageStore
        def prune(db: sqlite3.Connection) -> int:
            with db:
                return db.execute(_PRUNE_MEMBERSHIP_LOG, (int(older_than_s * 1000),)).rowcount

        return await self._run(prune)

    async def mark_read(self, conversation_id: ConversationId, user: UserId, seq: int) -> int | None:
        return await self._run(_mark_read, conversation_id, user, seq)


def _message(row: tuple[Any, ...], is_new: bool = True) -> StoredMessage:
    return StoredMessage(row[0], ConversationId(row[1]), row[2], UserId(row[3]), row[4], row[5], row[6], is_new)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")  # one migrator at a time, even across processes
    db.execute(_MIGRATIONS)
    applied = {row[0] for row in db.execute(_APPLIED)}
    for version, script in migrations("sqlite"):
        if version in applied:
            continue
        for statement in _statements(script):
            db.execute(statement)
        db.execute(_RECORD_MIGRATION, (version,))
    db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """The statements of a script, one by one (`executescript` would commit the migration's
    transaction; a split on `;` would cut a trigger's body apart)."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending)
            pending = ""
    if pending.strip() and not all(x.strip().startswith("--") for x in pending.splitlines() if x.strip()):
        found.append(pending)
    return found


def _append(db: sqlite3.Connection, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
    db.execute("BEGIN IMMEDIATE")
    results: list[StoredMessage | None] = []
    seen: dict[tuple[str, str], StoredMessage] = {}
    members: dict[tuple[int, str], bool] = {}
    last: dict[int, int] = {}
    for item in batch:
        key = (item.sender_id, item.client_id)
        earlier = seen.get(key)
        if earlier is None:
            row = db.execute(_FIND_SENT, key).fetchone()
            if row is not None:
                earlier = seen[key] = _message(row)
        if earlier is not None:
            results.append(earlier._replace(is_new=False))
            continue
        cid = item.conversation_id
        membership = (cid, item.sender_id)
        if membership not in members:
            members[membership] = db.execute(_IS_MEMBER, membership).fetchone() is not None
        if not members[membership]:
            results.append(None)  # not a member when this transaction runs: nothing stored
            continue
        if cid not in last:
            last[cid] = db.execute(_LAST_SEQ, (cid,)).fetchone()[0]
        seq = last[cid] = last[cid] + 1
        (message_id,) = db.execute(
            _INSERT_MESSAGE, (cid, seq, item.sender_id, item.client_id, item.content, now_ms)
        ).fetchone()
        stored = StoredMessage(message_id, cid, seq, item.sender_id, item.content, item.client_id, now_ms)
        seen[key] = stored
        results.append(stored)
    for conversation, newest in last.items():
        db.execute(_ADVANCE, (newest, now_ms, conversation))
    db.execute("COMMIT")
    return results


def _create(
    db: sqlite3.Connection, members: list[UserId], title: str | None, kind: ConversationKind, now_ms: int
) -> tuple[Conversation, list[UserId]]:
    unique = sorted(set(members))
    key = direct_key(unique[0], unique[1]) if kind == ConversationKind.DIRECT else None
    db.execute("BEGIN IMMEDIATE")
    if key is not None:
        row = db.execute(_FIND_DIRECT, (key,)).fetchone()
        if row is not None:
            # Asked again after one side left: the pair rejoins its one direct conversation.
            joined = [user for user in unique if db.execute(_INSERT_MEMBER, (row[0], user, now_ms)).rowcount == 1]
            db.execute(_RECOUNT_MEMBERS, (row[0], row[0]))
            db.execute("COMMIT")
            found = _conversation(db, ConversationId(row[0]), None)
            assert found is not None  # just read inside the same thread
            return found, joined
    (cid,) = db.execute(
        _INSERT_CONVERSATION,
        (kind, title if kind == ConversationKind.GROUP else None, key, len(unique), now_ms, now_ms),
    ).fetchone()
    db.executemany(_INSERT_MEMBER, [(cid, user, now_ms) for user in unique])
    db.execute("COMMIT")
    created = _conversation(db, ConversationId(cid), None)
    assert created is not None
    return created, unique


def _conversation(db: sqlite3.Connection, cid: ConversationId, for_user: UserId | None) -> Conversation | None:
    row = db.execute(_CONVERSATION, (cid,)).fetchone()
    if row is None:
        return None
    first = [UserId(r[0]) for r in db.execute(_FIRST_MEMBERS, (cid, MEMBERS_IN_OBJECT))]
    unread = db.execute(_UNREAD, (for_user, cid, UNREAD_CAP)).fetchone()[0] if for_user is not None else 0
    return Conversation(ConversationId(row[0]), ConversationKind(row[1]), row[2], row[3], first, row[4], unread)


def _list(db: sqlite3.Connection, user: UserId, cursor: str | None, limit: int) -> ConversationPage:
    activity, after_id = decode_cursor(cursor)
    rows = db.execute(_LIST, (user, activity, activity, after_id, limit + 1)).fetchall()
    conversations = []
    for cid, _ in rows[:limit]:
        found = _conversation(db, ConversationId(cid), user)
        if found is not None:
            conversations.append(found)
    next_cursor = encode_cursor(rows[limit - 1][1], rows[limit - 1][0]) if len(rows) > limit else None
    return ConversationPage(conversations, next_cursor)


def _add_member(db: sqlite3.Connection, cid: ConversationId, user: UserId, now_ms: int) -> bool:
    db.execute("BEGIN IMMEDIATE")
    added = db.execute(_INSERT_MEMBER, (cid, user, now_ms)).rowcount == 1
    if added:
        db.execute(_COUNT_MEMBERS, (1, cid))
    db.execute("COMMIT")
    return added


def _remove_member(db: sqlite3.Connection, cid: ConversationId, user: UserId) -> bool:
    db.execute("BEGIN IMMEDIATE")
    removed = db.execute(_DELETE_MEMBER, (cid, user)).rowcount == 1
    if removed:
        db.execute(_COUNT_MEMBERS, (-1, cid))
    db.execute("COMMIT")
    return removed


def _mark_read(db: sqlite3.Connection, cid: ConversationId, user: UserId, seq: int) -> int | None:
    db.execute("BEGIN IMMEDIATE")
    row = db.execute(_READ_POSITION, (cid, user)).fetchone()
    moved = None
    if row is not None:
        target = min(seq, row[1])  # clamped to the last seq
        if target > row[0] and db.execute(_MARK_READ, (target, cid, user, target)).rowcount == 1:
            moved = target
    db.execute("COMMIT")
    return moved
