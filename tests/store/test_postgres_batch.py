"""The group-commit statement on Postgres: its plan, its locks, its answers under races.

A group commit's cost must grow with the batch, not with the tables: the plan is generic (made
once, from whatever statistics the database had then, an empty database's included), so it may
reach each table only through an index, and never join two batch-sized lists row by row. Its
locks are taken in one order by every writer (server processes on one database), so no two wait
on each other; and a removal that commits while a batch waits for its locks is obeyed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage
from sohbet.errors import StoreError, StoreUnavailable
from sohbet.store import postgres
from sohbet.store.postgres import PostgresStore

from ..chatkit import open_store
from ..conftest import pg_admin

Run = Callable[[Coroutine[Any, Any, Any]], Any]
TABLES = ("messages", "members", "conversations")
#: Deadlocks Postgres has broken in this database so far (read outside a transaction).
DEADLOCKS = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"


def test_the_batch_statement_reaches_every_table_by_index_in_a_generic_plan(run: Run, postgres_database: str) -> None:
    async def main() -> None:
        store = PostgresStore(postgres_database)
        await store.migrate()

        async def explain(con: Any) -> list[str]:  # on a connection of the store's own for appends
            await con.execute("PREPARE batch(jsonb, text[], bigint) AS " + postgres._APPEND)
            try:
                rows = await con.fetch(
                    """EXPLAIN (VERBOSE, COSTS OFF) EXECUTE batch('[[1, "a", "x"], [2, "b", "y"]]', '{p,q}', 0)"""
                )
            finally:
                await con.execute("DEALLOCATE batch")
            return [row[0].strip() for row in rows]

        try:
            lines = await store._run(explain, appends=True)
        finally:
            await store.close()
        plan = "\n".join(lines)
        # Generic: made for any batch, not for these two rows.
        assert "Function Call: jsonb_array_elements($1), unnest($2)" in plan, plan
        scans = [line for line in lines if any(f" on public.{table}" in line for table in TABLES)]
        assert {table for table in TABLES for scan in scans if f" on public.{table}" in scan} == set(TABLES)
        for scan in scans:
            assert scan.startswith(("->  Index Scan", "->  Index Only Scan", "->  Insert on", "->  Update on")), plan
        # No scan of a whole table, and no list of the batch compared against another row by row.
        for step in ("Seq Scan", "Hash Join", "Merge Join", "Join Filter"):
            assert step not in plan, plan

    run(main())


def msg(cid: ConversationId, sender: str, client_id: str) -> NewMessage:
    return NewMessage(cid, UserId(sender), client_id, "x")


async def waiting_for_locks(con: asyncpg.Connection, count: int) -> None:
    """Until *count* sessions of this database wait for a lock (the race is set up, not hoped
    for). *con* must not be in a transaction: it would see the same activity throughout."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    for _ in range(500):
        if await con.fetchval(query) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} sessions never waited for a lock")


def test_writers_that_meet_on_a_pair_and_a_conversation_do_not_deadlock(run: Run, postgres_database: str) -> None:
    """Two server processes on one database: Y's batch waits for conversation 2; X's batch
    stores a pair in conversation 1 that Y's also holds, then needs conversation 2. Had X
    inserted before taking every lock, Y (granted conversation 2 first) would wait for X's
    insert of the pair while X waits for Y's conversation: a deadlock, which Postgres breaks
    after a second by failing one batch."""

    async def main() -> None:
        x = await open_store(postgres_database)
        y = PostgresStore(postgres_database)
        holder, watcher = await asyncpg.connect(postgres_database), await asyncpg.connect(postgres_database)
        try:
            c1 = (await x.create_conversation([UserId("a"), UserId("b")], "one", "group", 0))[0].id
            c2 = (await x.create_conversation([UserId("a"), UserId("b")], "two", "group", 0))[0].id
            before = await watcher.fetchval(DEADLOCKS)
            hold = holder.transaction()
            await hold.start()
            await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c2)
            second = asyncio.ensure_future(y.append([msg(c2, "a", "P")], 1))
            await waiting_for_locks(watcher, 1)
            first = asyncio.ensure_future(
                x.append([msg(c1, "a", "P"), msg(c1, "a", "P2"), msg(c1, "a", "P3"), msg(c2, "b", "R")], 1)
            )
            await waiting_for_locks(watcher, 2)
            await hold.commit()
            theirs, ours = await second, await first
            assert theirs[0] is not None and theirs[0].is_new and theirs[0].conversation_id == c2
            assert [(s.conversation_id, s.seq, s.is_new) for s in ours if s is not None] == [
                (c2, theirs[0].seq, False),  # the pair Y stored first: the original, as a repeat
                (c1, 1, True),
                (c1, 2, True),
                (c2, theirs[0].seq + 1, True),
            ]
            assert await watcher.fetchval(DEADLOCKS) == before
        finally:
            await watcher.close()
            await holder.close()
            await x.close()
            await y.close()

    run(main())


def test_a_removal_committed_while_a_batch_waits_stores_nothing_of_the_removed(
    run: Run, postgres_database: str
) -> None:
    """The batch's snapshot predates the removal; the membership row it locks does not."""

    async def main() -> None:
        store = await open_store(postgres_database)
        remover, watcher = await asyncpg.connect(postgres_database), await asyncpg.connect(postgres_database)
        try:
            group = (await store.create_conversation([UserId("a"), UserId("b")], "g", "group", 0))[0].id
            removal = remover.transaction()
            await removal.start()
            await remover.fetch(postgres._REMOVE_MEMBER, group, "b")
            pending = asyncio.ensure_future(store.append([msg(group, "b", "late"), msg(group, "a", "on time")], 1))
            await waiting_for_locks(watcher, 1)
            await removal.commit()
            late, on_time = await pending
            assert late is None
            assert on_time is not None and on_time.seq == 1  # the refused one burnt no seq
            assert await store.find_message(UserId("b"), "late") is None
        finally:
            await watcher.close()
            await remover.close()
            await store.close()

    run(main())


def test_batches_holding_the_same_pairs_in_opposite_orders_do_not_deadlock(run: Run, postgres_database: str) -> None:
    """One user sends client_ids Q then P to one conversation, and P then Q to another, and the
    two land in batches committed at once. Inserted in batch order, each batch would wait on the
    unique index for the pair the other inserted first. A trigger holds the second insert of each
    (in batch order) on an advisory lock until both batches are under way, so they interleave
    that way whenever the order is the batch's."""

    async def main() -> None:
        store = await open_store(postgres_database)
        watcher = await asyncpg.connect(postgres_database)
        try:
            c1 = (await store.create_conversation([UserId("a"), UserId("b")], "one", "group", 0))[0].id
            c2 = (await store.create_conversation([UserId("a"), UserId("c")], "two", "group", 0))[0].id
            await watcher.execute(
                "CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$; "
                "CREATE TRIGGER test_hold BEFORE INSERT ON messages FOR EACH ROW WHEN "
                f"((NEW.client_id = 'P' AND NEW.conversation_id = {c1}) "
                f"OR (NEW.client_id = 'Q' AND NEW.conversation_id = {c2})) EXECUTE FUNCTION test_hold()"
            )
            before = await watcher.fetchval(DEADLOCKS)
            await watcher.execute("SELECT pg_advisory_lock(4242)")
            one = asyncio.ensure_future(store.append([msg(c1, "a", "Q"), msg(c1, "a", "P")], 1))
            two = asyncio.ensure_future(store.append([msg(c2, "a", "P"), msg(c2, "a", "Q")], 1))
            await waiting_for_locks(watcher, 2)
            await watcher.execute("SELECT pg_advisory_unlock(4242)")
            results = [*await one, *await two]
            assert await watcher.fetchval(DEADLOCKS) == before
            new = sorted(s.client_id for s in results if s is not None and s.is_new)
            assert new == ["P", "Q"]  # each pair stored once, the other batch answered with it
        finally:
            await watcher.execute("DROP TRIGGER IF EXISTS test_hold ON messages; DROP FUNCTION IF EXISTS test_hold()")
            await watcher.close()
            await store.close()

    run(main())


def test_a_deadlock_with_a_writer_outside_the_order_is_retried_and_stores_once(
    run: Run, postgres_database: str
) -> None:
    """Another program locks conversation 2, then 1; the batch holds 1 and waits for 2. Postgres
    ends the cycle by failing the batch's statement, which is tried again, whole."""

    async def main() -> None:
        store = await open_store(postgres_database)
        other, watcher = await asyncpg.connect(postgres_database), await asyncpg.connect(postgres_database)
        try:
            c1 = (await store.create_conversation([UserId("a"), UserId("b")], "one", "group", 0))[0].id
            c2 = (await store.create_conversation([UserId("a"), UserId("b")], "two", "group", 0))[0].id
            before = await watcher.fetchval(DEADLOCKS)
            outside = other.transaction()
            await outside.start()
            await other.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c2)
            pending = asyncio.ensure_future(store.append([msg(c1, "a", "p"), msg(c2, "a", "q")], 1))
            await waiting_for_locks(watcher, 1)  # the batch holds 1, waits for 2
            await other.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", c1)  # the cycle
            await outside.commit()
            stored = await pending
            assert await watcher.fetchval(DEADLOCKS) == before + 1
            assert [(s.conversation_id, s.seq, s.is_new) for s in stored if s is not None] == [
                (c1, 1, True),
                (c2, 1, True),
            ]
            assert await store.last_seqs([c1, c2]) == {c1: 1, c2: 1}  # no seq burnt by the failed try
        finally:
            await watcher.close()
            await other.close()
            await store.close()

    run(main())


def test_a_batch_takes_the_membership_row_before_the_conversation_so_a_removal_waits(
    run: Run, postgres_database: str
) -> None:
    """A removal deletes the member row, then updates the conversation; a batch locking the
    conversation first, then the member row, would close a circle with it."""

    async def main() -> None:
        store = await open_store(postgres_database)
        holder = await asyncpg.connect(postgres_database)
        remover = await asyncpg.connect(postgres_database)
        watcher = await asyncpg.connect(postgres_database)
        try:
            group = (await store.create_conversation([UserId("a"), UserId("u")], "g", "group", 0))[0].id
            before = await watcher.fetchval(DEADLOCKS)
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", group)
            pending = asyncio.ensure_future(store.append([msg(group, "u", "m")], 1))
            await waiting_for_locks(watcher, 1)
            removal = asyncio.ensure_future(remover.fetch(postgres._REMOVE_MEMBER, group, "u"))
            await waiting_for_locks(watcher, 2)
            await held.commit()
            (sent,) = await pending
            assert (await removal)[0][0] == 1
            assert await watcher.fetchval(DEADLOCKS) == before
            assert sent is not None and sent.seq == 1  # locked while u was a member: stored, then u left
        finally:
            await watcher.close()
            await remover.close()
            await holder.close()
            await store.close()

    run(main())


def test_batches_use_at_most_four_connections(run: Run, postgres_database: str) -> None:
    async def main() -> None:
        setup = await open_store(postgres_database)
        watcher = await asyncpg.connect(postgres_database)
        store = PostgresStore(postgres_database, pool_size=16)
        try:
            groups = [(await setup.create_conversation([UserId("a")], f"g{i}", "group", 0))[0].id for i in range(10)]
            count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            before = await watcher.fetchval(count)
            await asyncio.gather(*(store.append([msg(g, "a", f"m{g}")], 1) for g in groups))
            assert await watcher.fetchval(count) - before == 4  # ten batches at once, four sessions
        finally:
            await store.close()
            await watcher.close()
            await setup.close()

    run(main())


@contextlib.asynccontextmanager
async def store_and_watcher(url: str) -> AsyncIterator[tuple[PostgresStore, asyncpg.Connection, ConversationId]]:
    """A migrated store with a group of one member, and a connection of the test's own to watch
    the database's sessions from."""
    store = PostgresStore(url)
    watcher = await asyncpg.connect(url)
    try:
        await store.migrate()
        yield store, watcher, (await store.create_conversation([UserId("a")], "g", "group", 0))[0].id
    finally:
        await store.close()
        await watcher.close()


def test_a_batch_connection_its_server_ended_while_kept_is_replaced(run: Run, postgres_database: str) -> None:
    """Batches keep their connection for the next one; a kept connection whose backend Postgres
    ended meanwhile (an administrator, a restart) is not used: the next batch is stored."""

    async def main() -> None:
        async with store_and_watcher(postgres_database) as (store, watcher, group):
            assert [m.seq for m in await store.append([msg(group, "a", "first")], 1)] == [1]
            kept = [con for con, _ in store._held]
            assert len(kept) == 1  # kept, not given back to the pool
            ended = await watcher.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert ended >= 1
            for _ in range(100):  # until the client has read the end of its connection
                if not postgres._open(kept[0]):
                    break
                await asyncio.sleep(0.02)
            assert not postgres._open(kept[0])
            assert [m.seq for m in await store.append([msg(group, "a", "second")], 2)] == [2]

    run(main())


BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


async def backends_become(watcher: asyncpg.Connection, count: int) -> None:
    """Until this database has *count* other sessions (a backend ends a moment after its client)."""
    for _ in range(150):
        if await watcher.fetchval(BACKENDS) == count:
            return
        await asyncio.sleep(0.02)
    assert await watcher.fetchval(BACKENDS) == count


def test_a_kept_batch_connection_unused_for_long_is_closed(
    run: Run, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the pool closes its idle connections, a server that stops sending gives its batch
    connections back (here after 0.2 s instead of 300), and the next batch opens a fresh one."""
    monkeypatch.setattr(postgres, "_KEPT_S", 0.2)

    async def main() -> None:
        async with store_and_watcher(postgres_database) as (store, watcher, group):
            await store.append([msg(group, "a", "idle-1")], 1)
            assert len(store._held) == 1
            others = await watcher.fetchval(BACKENDS) - 1  # the other pool's idle session stays
            await backends_become(watcher, others)
            assert store._held == []
            assert [m.seq for m in await store.append([msg(group, "a", "idle-2")], 2)] == [2]

    run(main())


def test_a_close_cancelled_by_its_callers_deadline_leaves_no_session_open(run: Run, postgres_database: str) -> None:
    async def main() -> None:
        watcher = await asyncpg.connect(postgres_database)
        store = PostgresStore(postgres_database)
        try:
            await store.migrate()
            group = (await store.create_conversation([UserId("a")], "g", "group", 0))[0].id
            await asyncio.gather(*(store.append([msg(group, "a", f"cancelled-{i}")], 1) for i in range(4)))
            assert store._held
            closing = asyncio.ensure_future(store.close())
            await asyncio.sleep(0)  # it waits on its first step: the deadline ends it there
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            await backends_become(watcher, 0)
        finally:
            await watcher.close()

    run(main())


def test_batches_run_on_their_own_sessions_with_one_generic_plan(run: Run, postgres_database: str) -> None:
    async def main() -> None:
        store = await open_store(postgres_database)
        try:
            group = (await store.create_conversation([UserId("a"), UserId("b")], "g", "group", 0))[0].id
            for i in range(3):
                await store.append([msg(group, "a", f"m{i}")], 1)
            plans = "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1"
            assert [
                tuple(r) for r in await store._run(lambda con: con.fetch(plans, postgres._APPEND), appends=True)
            ] == [(3, 0)]
            assert await store._run(lambda con: con.fetch(plans, postgres._APPEND)) == []  # not on the others'
        finally:
            await store.close()

    run(main())


def test_a_violation_other_than_a_pair_stored_meanwhile_is_not_retried(run: Run, postgres_database: str) -> None:
    """Only a pair another writer stored first is a race worth retrying; a seq taken twice is a
    numbering fault, reported at once rather than hidden behind retries."""

    async def main() -> None:
        store = await open_store(postgres_database)
        admin = await asyncpg.connect(postgres_database)
        try:
            group = (await store.create_conversation([UserId("a"), UserId("b")], "g", "group", 0))[0].id
            await store.append([msg(group, "a", "first")], 1)
            await admin.execute("UPDATE conversations SET last_seq = 0 WHERE id = $1", group)  # the fault
            with pytest.raises(StoreError, match="messages_conversation_id_seq_key") as raised:
                await store.append([msg(group, "a", "second")], 1)
            assert not isinstance(raised.value, StoreUnavailable)  # a fault, not storage down
        finally:
            await admin.close()
            await store.close()

    run(main())


def test_a_pair_stored_by_another_writer_before_a_removal_is_a_repeat_not_a_refusal(
    run: Run, postgres_database: str
) -> None:
    """X's snapshot predates W's commit of P; the removal of P's sender commits before X locks the
    sender's membership row. P is stored: X must answer it as the repeat it is (the contract, and
    SQLite), not refuse it."""

    async def main() -> None:
        x = await open_store(postgres_database)
        w = PostgresStore(postgres_database)  # another server process on the same database
        holder, watcher = await asyncpg.connect(postgres_database), await asyncpg.connect(postgres_database)
        try:
            users = [UserId("s"), UserId("t")]
            a = (await x.create_conversation(users, "a", "group", 0))[0].id
            b = (await x.create_conversation(users, "b", "group", 0))[0].id
            held = holder.transaction()
            await held.start()  # t's membership row in b, held: X waits there, its snapshot taken
            await holder.execute("SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = 't' FOR UPDATE", b)
            pending = asyncio.ensure_future(x.append([msg(b, "t", "Q"), msg(a, "s", "P")], 1))
            await waiting_for_locks(watcher, 1)
            (stored,) = await w.append([msg(a, "s", "P")], 2)
            assert stored is not None and stored.is_new
            assert await w.remove_member(a, UserId("s"))
            await held.rollback()
            q, p = await pending
            assert q is not None and q.is_new
            assert p is not None and not p.is_new and (p.id, p.seq) == (stored.id, stored.seq)
        finally:
            await watcher.close()
            await holder.close()
            await w.close()
            await x.close()

    run(main())


def test_batches_keep_read_committed_on_a_database_whose_default_is_stricter(run: Run, postgres_database: str) -> None:
    """Under REPEATABLE READ, a batch that waited for a conversation another writer updated would
    fail to serialize; the statement relies on reading the row as its committer left it."""
    name = f"{postgres_database.rsplit('/', 1)[1]}_rr"
    url = f"{postgres_database.rsplit('/', 1)[0]}/{name}"

    async def main() -> None:
        await pg_admin(f'CREATE DATABASE "{name}"')
        try:
            await pg_admin(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'")
            store = await open_store(url)
            other, watcher = await asyncpg.connect(url), await asyncpg.connect(url)
            try:
                group = (await store.create_conversation([UserId("a"), UserId("b")], "g", "group", 0))[0].id
                await store.append([msg(group, "a", "warm")], 0)  # the batch pool's session is open
                writer = other.transaction()
                await writer.start()
                await other.execute("UPDATE conversations SET last_activity_ms = 7 WHERE id = $1", group)
                pending = asyncio.ensure_future(store.append([msg(group, "b", "after")], 1))
                await waiting_for_locks(watcher, 1)
                await writer.commit()
                (stored,) = await pending
                assert stored is not None and stored.is_new and stored.seq == 2
            finally:
                await watcher.close()
                await other.close()
                await store.close()
        finally:
            await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    run(main())
