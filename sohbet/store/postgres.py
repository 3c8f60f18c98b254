"""The production store: PostgreSQL through an asyncpg pool.

Layer: storage. Imports asyncpg, orjson, the chat domain's ids and model and the store interface. SQL
lives here as constants with `$n` parameters only.

Group commit: `append` writes a whole batch in one statement (`_APPEND`: one round trip and an
implicit transaction), whatever the batch size: it finds repeats, checks membership under a lock
on the membership row, locks the conversations, inserts and advances their `last_seq`. Seqs are
allocated under `SELECT ... FOR UPDATE` on the conversation rows; every lock is taken in an order
all writers share, and all of them before the first insert, so two writers cannot deadlock; a
second server process writing to the same database waits its turn and can never produce a gap
or a duplicate. If another process inserts the same `(sender_id, client_id)` between our check
and our insert, the unique index stops it, the statement fails as a whole and the batch is
retried: a seq is never burnt. The statement runs on a small pool of its own, whose sessions
keep its plan (`_APPEND_SETTINGS`), and a batch keeps its connection for the next (`_run_held`).

Outages: a call fails with `StoreUnavailable` at once when Postgres is stopped (connections are
refused) or killed (they break), and within `timeout_s` (default `TIMEOUT_S`) when it hangs and
nothing answers: each trip to the database, from asking the pool for a connection to the last
row, has that deadline (`migrate` aside). A connection whose call timed out, was cancelled or
broke is dropped, never reused or waited on, and the pool opens a fresh one on demand: when
Postgres is back, the same store works again with no restart of the process. A batch is one
statement, so it is stored whole or not at all; if the connection dies during its commit, the
caller cannot know which (`StoreUnavailable`, and a retry with the same client_id finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import (
    MEMBERS_IN_OBJECT,
    Conversation,
    ConversationKind,
    ConversationPage,
    NewMessage,
    StoredMessage,
    make_stored_message,
)
from sohbet.errors import StoreError, StoreUnavailable
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

__all__ = ["TIMEOUT_S", "PostgresStore"]

log = logging.getLogger("sohbet.store")

T = TypeVar("T")

#: The longest one store call may take, from asking the pool for a connection to the last row,
#: and the longest a connection attempt may take. A hung server (a frozen process or host, a
#: network that silently drops packets) takes TCP connections and queries and never answers:
#: only a deadline ends the wait. Healthy calls take milliseconds: the largest group commit
#: (10,000 messages of 100 bytes, the `max_batch` ceiling) took 0.17 s on the 2-core test
#: machine (512: 10 ms), and history and sync reads are bounded pages. Five seconds is over 25
#: times that: short enough that a sender hears `unavailable` (and retries) while still looking
#: at the screen, long enough that a busy server (a checkpoint stalling commits for a second or
#: two) is not declared down.
TIMEOUT_S: Final = 5.0
#: How often a lost instance lock is asked for again (one connection attempt each time).
RELOCK_INTERVAL_S: Final = 2.0

_MIGRATION_LOCK: Final = 0x50_68_62_74  # advisory lock key: one migrator at a time across processes
#: Session advisory lock key held by a serving process (advisory locks are per database).
_INSTANCE_LOCK: Final = 0x50_68_62_73
_TRY_INSTANCE_LOCK: Final = "SELECT pg_try_advisory_lock($1), current_database()"
#: The same key, shared by the instances of a cluster: it and the exclusive one exclude each other.
_TRY_SHARED_LOCK: Final = "SELECT pg_try_advisory_lock_shared($1), current_database()"
_MIGRATIONS: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
)
_APPLIED: Final = "SELECT version FROM schema_migrations"
_RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (version) VALUES ($1)"

_MESSAGE_COLUMNS: Final = "id, conversation_id, seq, sender_id, content, client_id, created_at_ms"
_FIND_ONE: Final = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender_id = $1 AND client_id = $2"
_FIND_PAIRS: Final = (
    "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.content, m.client_id, m.created_at_ms, false AS is_new "
    "FROM unnest($1::text[], $2::text[]) AS k(sender, client) "
    "JOIN messages m ON m.sender_id = k.sender AND m.client_id = k.client"
)
# Group commit in one statement, so one round trip and an implicit transaction per batch:
# earlier messages with the same (sender_id, client_id) are returned, not stored again; a sender
# who is not a member stores nothing; the first of each repeated pair in the batch is numbered
# after the conversation's last_seq. Locks, in an order every writer shares, so that none can
# wait on another in a circle: first each sender's membership row (FOR KEY SHARE: a removal
# committed while we waited is seen, and its sender stores nothing; taken in batch order, which
# is safe while two batches' KEY SHARE locks never conflict and a removal deletes one member row
# per statement: a statement deleting several would have to take them in a shared order too),
# then the conversation rows in id order (FOR UPDATE; a row waited for is read as its committer
# left it), then the inserts in (sender_id, client_id) order, after every lock is held (a repeated
# pair waits on the unique index for the transaction that inserted it first). A concurrent insert
# of the same pair makes the INSERT fail on the unique index; the caller retries.
# Every table is reached by index, row by row (`_APPEND_SETTINGS`): the work grows with the batch,
# never with the tables, and no step joins two batch-sized lists.
# The batch arrives as two parameters zipped by position: a JSON array of [conversation, sender,
# client_id] arrays (`_batch_json`) and the contents as text[]. Not as four arrays: asyncpg
# checks every element of an array parameter against `collections.abc` in Python, which cost
# the server 1.8 µs a message more than orjson writing the batch. Not all of it as JSON: a
# content full of control characters is six times its size escaped, and Postgres takes that
# long to read it back (a batch of 512 such 4,000-character contents took 4x as long to store).
# `jsonb`, parsed once: each `->>` of a `json` value parses its element again.
_APPEND: Final = """
WITH input AS (
    SELECT (e->>0)::bigint AS conv, e->>1 AS sender, e->>2 AS client, content, idx
    FROM ROWS FROM (jsonb_array_elements($1::jsonb), unnest($2::text[])) WITH ORDINALITY AS t(e, content, idx)
), existing AS (
    SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.content, m.client_id, m.created_at_ms
    FROM (SELECT DISTINCT sender, client FROM input) k
    JOIN messages m ON m.sender_id = k.sender AND m.client_id = k.client
), firsts AS (
    SELECT DISTINCT ON (i.sender, i.client) i.conv, i.sender, i.client, i.content, i.idx FROM input i
    CROSS JOIN LATERAL (
        SELECT 1 FROM members mb WHERE mb.conversation_id = i.conv AND mb.user_id = i.sender FOR KEY SHARE
    ) mb
    WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = i.sender AND m.client_id = i.client)
    ORDER BY i.sender, i.client, i.idx
), numbered AS (
    SELECT f.conv, f.sender, f.client, f.content,
        c.last_seq + row_number() OVER (PARTITION BY f.conv ORDER BY f.idx) AS seq
    FROM (SELECT * FROM firsts ORDER BY conv, idx) f
    CROSS JOIN LATERAL (SELECT last_seq FROM conversations WHERE id = f.conv FOR UPDATE) c
), inserted AS (
    INSERT INTO messages (conversation_id, seq, sender_id, client_id, content, created_at_ms)
    SELECT conv, seq, sender, client, content, $3 FROM numbered ORDER BY sender, client
    RETURNING id, conversation_id, seq, sender_id, content, client_id, created_at_ms
), advanced AS (
    UPDATE conversations c SET last_seq = n.top, last_activity_ms = $3
    FROM (SELECT conv, max(seq) AS top FROM numbered GROUP BY conv) n WHERE c.id = n.conv
    RETURNING c.id
)
SELECT *, true AS is_new FROM inserted
UNION ALL
SELECT *, false AS is_new FROM existing
"""
#: The sessions that run `_APPEND` (a pool of their own). Planning it cost ~0.25 ms a run, more
#: than running it for a small batch, so each connection keeps one generic plan (made again only
#: when ANALYZE or a schema change invalidates it); and since that plan may be made from stale
#: statistics (a new database's empty tables), it may use only index lookups in nested loops,
#: which cost the same at any table size.
_APPEND_SETTINGS: Final = {
    # The statement relies on READ COMMITTED (a row waited for is read as its committer left
    # it): under a stricter database default, contended batches would fail to serialize.
    "default_transaction_isolation": "read committed",
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}
_FIND_DIRECT: Final = "SELECT id FROM conversations WHERE direct_key = $1"
_INSERT_CONVERSATION: Final = (
    "INSERT INTO conversations (kind, title, direct_key, member_count, created_at_ms, last_activity_ms) "
    "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (direct_key) DO NOTHING RETURNING id"
)
_INSERT_MEMBERS: Final = (
    "INSERT INTO members (conversation_id, user_id, joined_at_ms) "
    "SELECT $1, u, $3 FROM unnest($2::text[]) AS u ON CONFLICT DO NOTHING RETURNING user_id"
)
_RECOUNT_MEMBERS: Final = (
    "UPDATE conversations SET member_count = (SELECT count(*) FROM members WHERE conversation_id = $1) WHERE id = $1"
)
_CONVERSATIONS: Final = (
    "SELECT c.id, c.kind, c.title, c.member_count, c.last_seq, "
    "ARRAY(SELECT user_id FROM members WHERE conversation_id = c.id ORDER BY user_id LIMIT $2) AS first, "
    "CASE WHEN $3::text IS NULL THEN 0 ELSE (SELECT count(*) FROM (SELECT 1 FROM messages x JOIN members m "
    "ON m.conversation_id = x.conversation_id AND m.user_id = $3 "
    "WHERE x.conversation_id = c.id AND x.seq > m.read_seq AND x.sender_id <> $3 LIMIT $4) capped) END AS unread "
    "FROM conversations c WHERE c.id = ANY($1::bigint[])"
)
_LIST: Final = (
    "SELECT c.id, c.last_activity_ms FROM members m JOIN conversations c ON c.id = m.conversation_id "
    "WHERE m.user_id = $1 AND (c.last_activity_ms, c.id) < ($2, $3) "
    "ORDER BY c.last_activity_ms DESC, c.id DESC LIMIT $4"
)
_CONVERSATION_IDS: Final = "SELECT conversation_id FROM members WHERE user_id = $1"
_MEMBERS: Final = "SELECT user_id FROM members WHERE conversation_id = $1"
_MEMBERS_OF: Final = "SELECT conversation_id, user_id FROM members WHERE conversation_id = ANY($1::bigint[])"
_MEMBERS_PAGE: Final = (
    "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3"
)
_ADD_MEMBER: Final = (
    "WITH added AS (INSERT INTO members (conversation_id, user_id, joined_at_ms) VALUES ($1, $2, $3) "
    "ON CONFLICT DO NOTHING RETURNING 1) "
    "UPDATE conversations SET member_count = member_count + (SELECT count(*) FROM added) WHERE id = $1 "
    "RETURNING (SELECT count(*) FROM added)"
)
_REMOVE_MEMBER: Final = (
    "WITH removed AS (DELETE FROM members WHERE conversation_id = $1 AND user_id = $2 RETURNING 1) "
    "UPDATE conversations SET member_count = member_count - (SELECT count(*) FROM removed) WHERE id = $1 "
    "RETURNING (SELECT count(*) FROM removed)"
)
_MEMBERSHIP_CHANGES: Final = (
    "SELECT id, conversation_id, user_id, joined FROM membership_log WHERE id > $1 ORDER BY id LIMIT $2"
)
_MEMBERSHIP_LOG_END: Final = "SELECT coalesce(max(id), 0) FROM membership_log"
_PRUNE_MEMBERSHIP_LOG: Final = (
    "WITH gone AS (DELETE FROM membership_log WHERE at < now() - make_interval(secs => $1) RETURNING 1) "
    "SELECT count(*) FROM gone"
)
_HISTORY: Final = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
)
_BETWEEN: Final = (
    "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.content, m.client_id, m.created_at_ms "
    "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS s(conv, lo, hi, n) "
    "JOIN messages m ON m.conversation_id = s.conv AND m.seq > s.lo AND m.seq <= s.hi ORDER BY s.n, m.seq"
)
_LAST_SEQS: Final = "SELECT id, last_seq FROM conversations WHERE id = ANY($1::bigint[])"
_MARK_READ: Final = (
    "UPDATE members m SET read_seq = LEAST($3, c.last_seq) FROM conversations c "
    "WHERE c.id = m.conversation_id AND m.conversation_id = $1 AND m.user_id = $2 "
    "AND m.read_seq < LEAST($3, c.last_seq) RETURNING m.read_seq"
)

_RETRIES: Final = 5
#: Seconds a batch's connection may stay kept unused before it is closed: asyncpg's own default
#: for an idle pool connection (`max_inactive_connection_lifetime`).
_KEPT_S: Final = 300.0
#: Connections of the pool that runs `_APPEND`: its only caller, the writer, keeps at most
#: `StoreConfig.write_depth` (2) transactions in flight.
_APPEND_POOL_SIZE: Final = 4
#: The unique index whose violation means another writer stored one of our pairs first (any
#: other violation is a bug to report, not a race to retry).
_PAIR_KEY: Final = "messages_sender_id_client_id_key"
# Everything asyncpg raises when the server or the connection goes away; none of it leaves this
# module except as StoreUnavailable (a connection killed mid-query raises InternalClientError).
_DRIVER_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def _keep_session(con: Any) -> None:
    """Skip asyncpg's reset round trip on every release: this store never changes session
    state (no SET, no LISTEN, only transaction-scoped locks), so there is nothing to reset."""


def _open(con: Any) -> bool:
    """Whether a kept pool connection still has an open connection: asyncpg detaches it from one
    that closed (and takes its slot back), after which even asking raises."""
    try:
        return not con.is_closed()
    except asyncpg.InterfaceError:
        return False


# Rows are read by position, not by name (~50 ns a column), for every message a batch stores
# or a sync replays: a row that holds a message's fields in order is the message (`_results`).
#: Positions in a row of `_APPEND` or `_FIND_PAIRS`: `_MESSAGE_COLUMNS`, then `is_new`.
_CONVERSATION, _SENDER, _CLIENT, _IS_NEW = 1, 3, 5, 7


def _message(row: Any, is_new: bool = True) -> StoredMessage:
    """A row of `_MESSAGE_COLUMNS` (`StoredMessage`'s fields but `is_new`, in its order)."""
    return make_stored_message((*row, is_new))


class PostgresStore:
    """`MessageStore` on PostgreSQL (see `sohbet.store.MessageStore` for the contract)."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        timeout_s: float = TIMEOUT_S,
        relock_interval_s: float = RELOCK_INTERVAL_S,
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._relock_interval_s = relock_interval_s
        self._pool: asyncpg.Pool | None = None
        self._append_pool: asyncpg.Pool | None = None
        #: Connections of the appends' pool kept between batches (`_run_held`), at most the
        #: writer's transactions in flight, each with when it was kept (`time.monotonic`).
        self._held: list[tuple[Any, float]] = []
        self._sweeping: asyncio.TimerHandle | None = None  # `_close_idle`, while any is kept
        self._acquiring = 0  # batches waiting for a connection of the appends' pool
        self._opening = asyncio.Lock()
        self._lock_con: asyncpg.Connection | None = None
        self._lock_query = _TRY_INSTANCE_LOCK
        self._relocking: asyncio.Task[None] | None = None

    def _close_idle(self) -> None:
        """Close the kept connections unused for `_KEPT_S`, as the pool closes its idle ones: an
        idle server gives its backends back, and a connection that a firewall dropped while it
        waited is not the next batch's (its statement would wait out the deadline)."""
        self._sweeping = None
        stale = time.monotonic() - _KEPT_S
        held, self._held = self._held, []
        for con, kept_at in held:
            if kept_at < stale:
                con.terminate()  # its slot goes back to the pool, which opens a fresh one when asked
            else:
                self._held.append((con, kept_at))
        if self._held:
            self._sweeping = asyncio.get_running_loop().call_later(_KEPT_S / 4, self._close_idle)

    async def _get_pool(self, *, appends: bool = False) -> asyncpg.Pool:
        """The pool of every call, or with *appends* the one that runs `_APPEND` (its own
        settings, `_APPEND_SETTINGS`)."""
        pool = self._append_pool if appends else self._pool
        if pool is not None:
            return pool
        async with self._opening:  # concurrent first calls share one pool instead of each leaking one
            pool = self._append_pool if appends else self._pool
            if pool is not None:
                return pool
            # Opens no connection (min_size=0), so it cannot fail for want of a server; `_run`
            # maps driver errors all the same.
            pool = await asyncpg.create_pool(
                self._dsn,
                # No floor: asyncpg would keep reconnecting in the background through an
                # outage, logging a traceback each time. Connections open on demand (a few ms)
                # and idle ones stay open for reuse.
                min_size=0,
                max_size=min(self._pool_size, _APPEND_POOL_SIZE) if appends else self._pool_size,
                reset=_keep_session,
                timeout=self._timeout_s,  # connecting; the call's deadline bounds it too
                # Also bounds asyncpg's own cancel request after a timeout (which `_run`
                # makes moot by dropping the connection at once).
                command_timeout=self._timeout_s,
                server_settings={
                    # asyncpg prepares statements once; a generic plan made while the tables
                    # were small stays when they grow (measured: 5x slower group commits).
                    # Plan each run, except the batch statement, made for a generic plan.
                    "plan_cache_mode": "force_custom_plan",
                    **(_APPEND_SETTINGS if appends else {}),
                    # The server's side of the deadline: a statement whose caller gave up
                    # and hung up does not run on for nothing.
                    "statement_timeout": str(round(self._timeout_s * 1000)),
                },
            )
            if appends:
                self._append_pool = pool
            else:
                self._pool = pool
        return pool

    async def _run(self, work: Callable[[Any], Awaitable[T]], *, appends: bool = False) -> T:
        """Run *work* on a pooled connection (of the appends' pool with *appends*) within the
        deadline; driver errors become `StoreUnavailable`.

        A connection that timed out, was cancelled or broke is terminated rather than released
        as it is: whether its server is alive, and what it is doing, is unknown, and asyncpg's
        way (a cancel request, then a rollback) waits on a server that may never answer. An
        error the server sent (a unique violation, a statement timeout) leaves it usable.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                if appends:
                    return await self._run_held(work)
                pool = await self._get_pool()
                async with pool.acquire() as con:
                    try:
                        return await work(con)
                    except BaseException as exc:
                        if not isinstance(exc, asyncpg.PostgresError):
                            con.terminate()  # release then hands the pool an empty slot at once
                        raise
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _run_held(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """`_run` on a connection of the appends' pool that is kept for the next batch, not
        given back: asyncpg's acquire and release cost ~100,000 instructions a batch (a task
        per release), as much as storing 20 of its messages, and a third of a one-message
        batch's cost. It goes back when another batch waits for a connection (more batches in
        flight than the pool holds) and when the store closes, and is closed once unused for
        `_KEPT_S` (`_close_idle`). A connection that broke, timed out or was cancelled goes back
        terminated, and one whose server ended it while it was kept is found closed: either way
        the pool opens a fresh one when asked."""
        pool = await self._get_pool(appends=True)
        con = self._held.pop()[0] if self._held else None
        if con is not None and not _open(con):
            await pool.release(con)  # if the pool has not taken it back already
            con = None
        if con is None:
            self._acquiring += 1
            try:
                con = await pool.acquire()
            finally:
                self._acquiring -= 1
        try:
            result = await work(con)
        except BaseException as exc:
            if not isinstance(exc, asyncpg.PostgresError):
                con.terminate()
                await pool.release(con)
                raise
            await self._keep(pool, con)  # the server refused the statement: the connection is fine
            raise
        await self._keep(pool, con)
        return result

    async def _keep(self, pool: asyncpg.Pool, con: Any) -> None:
        if self._append_pool is pool and not self._acquiring:
            self._held.append((con, time.monotonic()))
            if self._sweeping is None:
                self._sweeping = asyncio.get_running_loop().call_later(_KEPT_S / 4, self._close_idle)
        else:
            # Another batch waits for a connection (more in flight than the pool holds), or the
            # store is closing and its pool waits for every connection.
            await pool.release(con)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """What the caller is told of a driver error (a timeout's own message is empty)."""
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"postgres did not answer within {self._timeout_s} s")
        return StoreUnavailable(f"postgres: {exc}")

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        return list(await self._run(lambda con: con.fetch(query, *args)))

    async def _connect(self, *, command_timeout_s: float | None) -> asyncpg.Connection:
        """A connection of its own, outside the pool (the instance lock, migrations)."""
        try:
            return await asyncpg.connect(self._dsn, timeout=self._timeout_s, command_timeout=command_timeout_s)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _hang_up(self, con: asyncpg.Connection) -> None:
        """Close *con* politely if its server answers in time, else drop it."""
        with contextlib.suppress(*_DRIVER_ERRORS):  # on failure, close has dropped it already
            await con.close(timeout=self._timeout_s)

    async def migrate(self) -> None:  # see MessageStore
        # Its own connection, without the deadline of other calls: a migration may rewrite a large
        # table for minutes, or wait for another process's migration. It runs at startup, before
        # the port opens, where an operator sees a hang; only connecting is bounded.
        con = await self._connect(command_timeout_s=None)
        try:
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(_MIGRATIONS)
                applied = {r["version"] for r in await con.fetch(_APPLIED)}
                for version, script in migrations("postgres"):
                    if version not in applied:
                        await con.execute(script)
                        await con.execute(_RECORD_MIGRATION, version)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            await self._hang_up(con)

    async def ping(self) -> None:  # see MessageStore
        await self._fetch("SELECT 1")

    async def lock_instance(self, *, shared: bool = False) -> None:  # see MessageStore
        # A session-level lock on a connection of its own, outside the pool: it is held as long
        # as that connection lives, and Postgres releases it when the process dies.
        self._lock_query = _TRY_SHARED_LOCK if shared else _TRY_INSTANCE_LOCK
        con, database = await self._try_lock()
        if con is None:
            raise InstanceLocked(f"PostgreSQL database {database!r} {INSTANCE_LOCKED}")
        self._hold_lock(con)

    async def _try_lock(self) -> tuple[asyncpg.Connection | None, str]:
        """Connect and try the instance lock: the connection that now holds it (or None if
        another session does), and the database's name."""
        con = None
        try:
            async with asyncio.timeout(self._timeout_s):  # one deadline for connecting and asking
                con = await self._connect(command_timeout_s=self._timeout_s)
                row = await con.fetchrow(self._lock_query, _INSTANCE_LOCK)
        except BaseException as exc:  # cancelled too (`close` during a retry): no connection may leak
            if con is not None:
                con.terminate()
            if isinstance(exc, _DRIVER_ERRORS):
                raise self._unavailable(exc) from exc
            raise
        assert row is not None  # a SELECT without FROM returns one row
        held, database = row
        if held:
            return con, database
        await self._hang_up(con)
        return None, database

    def _hold_lock(self, con: asyncpg.Connection) -> None:
        self._lock_con = con
        con.add_termination_listener(self._lock_lost)

    def _lock_lost(self, con: asyncpg.Connection | PoolConnectionProxy) -> None:
        """Take the lock again when its connection ends (Postgres restarted, or the connection
        broke), rather than serve unprotected until this process restarts.

        Another server may have started and taken it meanwhile: nothing this one can do undoes
        that (both serve, and memberships go stale), and stopping would turn a database restart
        into an outage of both; so it says so once, keeps serving, and keeps asking.
        """
        if con is not self._lock_con:
            return  # `close` let it go
        self._lock_con = None
        log.warning("lost the instance lock with its connection (did postgres restart?); taking it again")
        self._relocking = asyncio.ensure_future(self._relock())

    async def _relock(self) -> None:
        told = False
        while True:
            await asyncio.sleep(self._relock_interval_s)
            try:
                con, database = await self._try_lock()
            except StoreUnavailable:
                continue  # still down; no line per try
            if con is not None:
                self._relocking = None
                self._hold_lock(con)
                log.warning("took the instance lock again")
                return
            log.debug("the instance lock is still held by another session")
            if not told:
                told = True
                log.error(
                    "another session holds the instance lock of PostgreSQL database %r: another sohbet-server "
                    "started while the lock was lost (stop one: each would keep stale memberships), or this "
                    "server's old session, which postgres has not ended yet; trying again every %s s",
                    database, self._relock_interval_s,
                )  # fmt: skip

    async def close(self) -> None:  # see MessageStore
        if self._relocking is not None:
            self._relocking.cancel()
            await asyncio.gather(self._relocking, return_exceptions=True)
            self._relocking = None
        pools = [p for p in (self._pool, self._append_pool) if p is not None]
        append_pool, held, self._held = self._append_pool, [con for con, _ in self._held], []
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        self._pool = self._append_pool = None
        con, self._lock_con = self._lock_con, None  # first: its end is no loss to repair
        try:
            # Waits for calls in flight (each within its deadline), then says goodbye to each
            # connection, the lock's last (the lock outlives every write); a hung server gets
            # one deadline for all of it, and what is left is dropped.
            async with asyncio.timeout(self._timeout_s):
                if append_pool is not None:
                    for kept in held:
                        await append_pool.release(kept)
                for pool in pools:
                    await pool.close()
                if con is not None:
                    await con.close()
        except BaseException as exc:
            # A driver error, or cancelled (a shutdown's own deadline): everything is let go of
            # now, kept connections too, since nothing will refer to them once this returns.
            for pool in pools:
                pool.terminate()
            if con is not None:
                con.terminate()
            if not isinstance(exc, _DRIVER_ERRORS):
                raise

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:  # see MessageStore
        args = (_batch_json(batch), [m.content for m in batch], now_ms)

        async def write(con: Any) -> list[Any] | None:
            for _ in range(_RETRIES):
                try:
                    rows = list(await con.fetch(_APPEND, *args))
                except asyncpg.UniqueViolationError as exc:
                    if exc.constraint_name != _PAIR_KEY:
                        # A fault, not an outage: the writer reports it and stores the batch's
                        # messages one by one, so one bad conversation fails only its own.
                        raise StoreError(f"postgres: {exc}") from exc
                    continue  # another process stored one of our pairs first: see it next time
                except asyncpg.DeadlockDetectedError:
                    continue  # a writer outside this order (another program); Postgres chose us
                if len(rows) == len(batch):
                    return rows  # a row per message: every pair answered (the usual batch)
                refused = {(m.sender_id, m.client_id) for m in batch} - {(r["sender_id"], r["client_id"]) for r in rows}
                if refused:
                    # Refused because the sender's membership row was gone when locked: another
                    # writer may have stored the pair after our snapshot, before the removal. A
                    # new statement sees it, and it is answered as the repeat it is.
                    senders, clients = zip(*refused, strict=True)
                    rows += await con.fetch(_FIND_PAIRS, list(senders), list(clients))
                return rows
            return None

        rows = await self._run(write, appends=True)
        if rows is None:
            raise StoreUnavailable(f"batch kept conflicting with concurrent writers after {_RETRIES} tries")
        return _results(batch, rows)

    async def find_message(self, sender: UserId, client_id: str) -> StoredMessage | None:  # see MessageStore
        rows = await self._fetch(_FIND_ONE, sender, client_id)
        return _message(rows[0], is_new=False) if rows else None

    async def create_conversation(  # see MessageStore
        self, members: list[UserId], title: str | None, kind: ConversationKind, now_ms: int
    ) -> tuple[Conversation, list[UserId]]:
        unique = sorted(set(members))
        key = direct_key(unique[0], unique[1]) if kind == ConversationKind.DIRECT else None
        title = title if kind == ConversationKind.GROUP else None

        async def create(con: Any) -> tuple[ConversationId, list[UserId]]:
            async with con.transaction():
                row = await con.fetchrow(_INSERT_CONVERSATION, kind, title, key, len(unique), now_ms)
                if row is None:  # the direct conversation of this pair exists (maybe made just now)
                    cid = ConversationId(await con.fetchval(_FIND_DIRECT, key))
                    # Asked again after one side left: the pair rejoins its one direct conversation.
                    rows = await con.fetch(_INSERT_MEMBERS, cid, unique, now_ms)
                    await con.execute(_RECOUNT_MEMBERS, cid)
                    return cid, sorted(UserId(r["user_id"]) for r in rows)
                cid = ConversationId(row["id"])
                await con.execute(_INSERT_MEMBERS, cid, unique, now_ms)
                return cid, unique

        cid, joined = await self._run(create)
        found = await self.conversation(cid)
        if found is None:
            raise StoreError(f"conversation {cid} vanished after it was created")
        return found, joined

    async def _conversations(self, ids: list[int], for_user: UserId | None) -> dict[int, Conversation]:
        rows = await self._fetch(_CONVERSATIONS, ids, MEMBERS_IN_OBJECT, for_user, UNREAD_CAP)
        return {
            r["id"]: Conversation(
                ConversationId(r["id"]),
                ConversationKind(r["kind"]),
                r["title"],
                r["member_count"],
                [UserId(u) for u in r["first"]],
                r["last_seq"],
                r["unread"],
            )
            for r in rows
        }

    async def conversation(  # see MessageStore
        self, conversation_id: ConversationId, for_user: UserId | None = None
    ) -> Conversation | None:
        return (await self._conversations([conversation_id], for_user)).get(conversation_id)

    async def list_conversations(self, user: UserId, cursor: str | None, limit: int) -> ConversationPage:
        activity, after_id = decode_cursor(cursor)
        rows = await self._fetch(_LIST, user, activity, after_id, limit + 1)
        page = rows[:limit]
        found = await self._conversations([r["id"] for r in page], user)
        conversations = [found[r["id"]] for r in page if r["id"] in found]
        last = page[-1] if len(rows) > limit else None
        return ConversationPage(conversations, encode_cursor(last["last_activity_ms"], last["id"]) if last else None)

    async def conversation_ids(self, user: UserId) -> list[ConversationId]:
        return [ConversationId(r["conversation_id"]) for r in await self._fetch(_CONVERSATION_IDS, user)]

    async def members(self, conversation_id: ConversationId) -> list[UserId]:
        return [UserId(r["user_id"]) for r in await self._fetch(_MEMBERS, conversation_id)]

    async def members_of(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, list[UserId]]:
        found: dict[ConversationId, list[UserId]] = {}
        for r in await self._fetch(_MEMBERS_OF, conversation_ids):
            found.setdefault(ConversationId(r["conversation_id"]), []).append(UserId(r["user_id"]))
        return found

    async def members_page(  # see MessageStore
        self, conversation_id: ConversationId, cursor: str | None, limit: int
    ) -> tuple[list[UserId], str | None]:
        rows = await self._fetch(_MEMBERS_PAGE, conversation_id, cursor or "", limit + 1)
        return members_page_of([UserId(r["user_id"]) for r in rows], limit)

    async def add_member(self, conversation_id: ConversationId, user: UserId, now_ms: int) -> bool:
        rows = await self._fetch(_ADD_MEMBER, conversation_id, user, now_ms)
        return bool(rows and rows[0][0])

    async def remove_member(self, conversation_id: ConversationId, user: UserId) -> bool:
        rows = await self._fetch(_REMOVE_MEMBER, conversation_id, user)
        return bool(rows and rows[0][0])

    async def history(  # see MessageStore
        self, conversation_id: ConversationId, before_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        rows = await self._fetch(_HISTORY, conversation_id, history_end(before_seq), limit + 1)
        return history_page_of([_message(r) for r in rows], limit)

    async def messages_between(self, spans: Sequence[Span]) -> list[StoredMessage]:  # see MessageStore
        columns = list(zip(*spans, strict=True)) or [(), (), ()]
        return [_message(r) for r in await self._fetch(_BETWEEN, *(list(c) for c in columns))]

    async def last_seqs(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, int]:
        rows = await self._fetch(_LAST_SEQS, conversation_ids)
        return {ConversationId(r["id"]): r["last_seq"] for r in rows}

    async def membership_changes(self, after_id: int, limit: int) -> list[MembershipChange]:  # see MessageStore
        rows = await self._fetch(_MEMBERSHIP_CHANGES, after_id, limit)
        return [MembershipChange(r[0], ConversationId(r[1]), UserId(r[2]), r[3]) for r in rows]

    async def membership_log_end(self) -> int:  # see MessageStore
        rows = await self._fetch(_MEMBERSHIP_LOG_END)
        return int(rows[0][0])

    async def prune_membership_log(self, older_than_s: float) -> int:  # see MessageStore
        rows = await self._fetch(_PRUNE_MEMBERSHIP_LOG, older_than_s)
        return int(rows[0][0])

    async def mark_read(self, conversation_id: ConversationId, user: UserId, seq: int) -> int | None:
        rows = await self._fetch(_MARK_READ, conversation_id, user, seq)
        return rows[0]["read_seq"] if rows else None


def _batch_json(batch: list[NewMessage]) -> str:
    """`_APPEND`'s first parameter: each message as [conversation, sender, client_id]."""
    return orjson.dumps([(m.conversation_id, m.sender_id, m.client_id) for m in batch]).decode()


def _results(batch: list[NewMessage], rows: list[Any]) -> list[StoredMessage | None]:
    """One result per input: the stored message for the first of each pair, as a repeat for later
    ones; None for a sender who is not a member. Of a pair stored now, the statement stored the
    first message whose sender is a member: those before it were refused."""
    found = {(r[_SENDER], r[_CLIENT]): r for r in rows}
    results: list[StoredMessage | None] = []
    seen: set[tuple[str, str]] = set()
    for m in batch:
        key = (m.sender_id, m.client_id)
        row = found.get(key)
        first = row is not None and row[_IS_NEW] and key not in seen
        if row is None or (first and row[_CONVERSATION] != m.conversation_id):
            results.append(None)
            continue
        results.append(make_stored_message(row) if first else _message(row[:_IS_NEW], is_new=False))
        seen.add(key)
    return results
