"""Postgres goes away and comes back while the store is in use: stopped, killed, frozen.

Each test runs on a private cluster of its own (`private_postgres`), never the shared server.
What a user relies on: while storage is down every call fails with `StoreUnavailable` (the
service answers `unavailable`, and the client retries with the same client_id) within a bounded
time, not a hang; a batch is stored whole or not at all; and when Postgres is back the same
store object works again, with no restart of the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage, StoredMessage
from sohbet.errors import StoreUnavailable
from sohbet.store import InstanceLocked
from sohbet.store.postgres import _INSTANCE_LOCK, _MIGRATION_LOCK, PostgresStore

from ..pgcluster import PrivatePostgres

Run = Callable[[Coroutine[Any, Any, Any]], Any]
A, B = UserId("alice"), UserId("bob")
GROUP = ConversationId(1)
#: A deadline far above anything measured, for tests that show a failure does not wait for it.
LONG_TIMEOUT_S = 30.0
#: A short deadline, for tests that wait for it to pass.
SHORT_TIMEOUT_S = 1.0
#: How long a failure that needs no deadline may take on a loaded 2-core machine (measured: ms).
FAST_S = 2.0
#: What a failure that waits for the deadline may take beyond it (measured: a few ms).
SLACK_S = 1.5


async def open_store(cluster: PrivatePostgres, timeout_s: float, **options: Any) -> PostgresStore:
    """A migrated store on *cluster* holding the instance lock, as a server does, with a group of
    alice and bob, and connections in its pool."""
    store = PostgresStore(cluster.url, timeout_s=timeout_s, **options)
    await store.lock_instance()
    await store.migrate()
    await store.create_conversation([A, B], "g", "group", 1000)
    await asyncio.gather(*(store.ping() for _ in range(4)))  # several pooled connections to break
    return store


def every_call(store: PostgresStore, tag: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """One of each store call the service makes while serving (all but the lifecycle ones)."""
    return {
        "ping": store.ping,
        "append": lambda: store.append([NewMessage(GROUP, A, f"{tag}-1", "hi")], 2000),
        "find_message": lambda: store.find_message(A, f"{tag}-1"),
        "create_conversation": lambda: store.create_conversation([A, UserId(f"u-{tag}")], None, "direct", 2000),
        "conversation": lambda: store.conversation(GROUP, A),
        "list_conversations": lambda: store.list_conversations(A, None, 10),
        "conversation_ids": lambda: store.conversation_ids(A),
        "members": lambda: store.members(GROUP),
        "members_of": lambda: store.members_of([GROUP]),
        "members_page": lambda: store.members_page(GROUP, None, 10),
        "add_member": lambda: store.add_member(GROUP, UserId(f"v-{tag}"), 2000),
        "remove_member": lambda: store.remove_member(GROUP, UserId(f"v-{tag}")),
        "history": lambda: store.history(GROUP, None, 10),
        "messages_between": lambda: store.messages_between([(GROUP, 0, 1)]),
        "last_seqs": lambda: store.last_seqs([GROUP]),
        "mark_read": lambda: store.mark_read(GROUP, B, 1),
    }


async def failures(store: PostgresStore, tag: str) -> dict[str, float]:
    """Run every call at once; each must fail with StoreUnavailable. How long each took to fail
    (more calls than pooled connections: some of them wait for one)."""

    async def failure(call: Callable[[], Awaitable[object]]) -> float:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        return time.monotonic() - started

    calls = every_call(store, tag)
    return dict(zip(calls, await asyncio.gather(*map(failure, calls.values())), strict=True))


async def successes(store: PostgresStore, tag: str) -> None:
    """Run every call; each must succeed."""
    for call in every_call(store, tag).values():
        await call()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """An outage is reported in words: no log line carries a traceback (asyncpg's pool would log
    one per reconnect attempt if it kept a floor of connections)."""
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_stopped_server_fails_every_call_at_once_and_the_same_store_works_when_it_is_back(
    run: Run, private_postgres: PrivatePostgres, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        store = await open_store(private_postgres, LONG_TIMEOUT_S)
        try:
            await asyncio.to_thread(private_postgres.stop, mode)  # type: ignore[arg-type]  # a StopMode
            took = await failures(store, "down")
            assert max(took.values()) < FAST_S, took  # refused or broken: no deadline to wait for
            await failures(store, "still-down")  # the pool keeps no dead connection around
            await asyncio.to_thread(private_postgres.start)
            await successes(store, "back")  # the very first call after the restart already works
        finally:
            await store.close()

    run(main())
    no_tracebacks(caplog)


def test_a_frozen_server_fails_every_call_within_the_deadline_and_the_store_recovers_when_it_thaws(
    run: Run, private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        # Two connections for sixteen calls: the deadline counts the wait for one as well.
        store = await open_store(private_postgres, SHORT_TIMEOUT_S, pool_size=2)
        try:
            private_postgres.pause()  # connections stay open; nothing answers on them
            took = await failures(store, "frozen")
            assert max(took.values()) < SHORT_TIMEOUT_S + SLACK_S, took
            private_postgres.resume()
            await successes(store, "thawed")
        finally:
            await store.close()

    run(main())
    no_tracebacks(caplog)


def test_connecting_to_a_frozen_server_is_bounded_and_so_is_closing(
    run: Run, private_postgres: PrivatePostgres
) -> None:
    async def main() -> None:
        private_postgres.pause()  # the kernel still accepts the TCP connection; no startup reply
        store = PostgresStore(private_postgres.url, timeout_s=SHORT_TIMEOUT_S)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"postgres did not answer within {SHORT_TIMEOUT_S} s"):
            await store.lock_instance()
        with pytest.raises(StoreUnavailable, match=f"postgres did not answer within {SHORT_TIMEOUT_S} s"):
            await store.migrate()
        with pytest.raises(StoreUnavailable, match=f"postgres did not answer within {SHORT_TIMEOUT_S} s"):
            await store.ping()
        assert time.monotonic() - started < 3 * (SHORT_TIMEOUT_S + SLACK_S)
        private_postgres.resume()
        await store.migrate()
        await store.lock_instance()
        await asyncio.gather(*(store.ping() for _ in range(4)))
        private_postgres.pause()
        started = time.monotonic()
        await store.close()  # a server shutting down during an outage still shuts down
        assert time.monotonic() - started < SHORT_TIMEOUT_S + SLACK_S

    run(main())


def test_a_callers_own_deadline_is_kept_while_the_server_is_frozen(run: Run, private_postgres: PrivatePostgres) -> None:
    async def main() -> None:
        store = await open_store(private_postgres, LONG_TIMEOUT_S)
        try:
            private_postgres.pause()
            for _ in range(3):  # /readyz: a short deadline of its own, every second
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await store.ping()
                # Cancelled, the call hangs up at once instead of waiting on the server to
                # answer a cancel request or a rollback.
                assert time.monotonic() - started < FAST_S
            private_postgres.resume()
            await successes(store, "thawed")
        finally:
            await store.close()

    run(main())


async def wait_for_backend(watcher: asyncpg.Connection, condition: str) -> None:
    """Wait until some backend of the database is in the state *condition* describes."""
    query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {condition}"
    async with asyncio.timeout(20):
        while not await watcher.fetchval(query):
            await asyncio.sleep(0.01)  # polls a server state that has no event to await


def batch(tag: str, n: int = 50) -> list[NewMessage]:
    return [NewMessage(GROUP, A if i % 2 else B, f"{tag}-{i}", f"message {i}") for i in range(n)]


async def stored_seqs(url: str, client_ids: list[str]) -> tuple[list[int], int]:
    """The seqs stored for *client_ids*, and the group's `last_seq`, read afresh."""
    con = await asyncpg.connect(url, timeout=10)
    try:
        rows = await con.fetch("SELECT seq FROM messages WHERE client_id = ANY($1::text[]) ORDER BY seq", client_ids)
        last: int = await con.fetchval("SELECT last_seq FROM conversations WHERE id = $1", GROUP)
        return [r["seq"] for r in rows], last
    finally:
        await con.close()


async def append_cut_off(store: PostgresStore, cluster: PrivatePostgres, sent: list[NewMessage], waits: str) -> None:
    """Start appending *sent*, wait until its backend *waits* as described, then kill Postgres
    (`pg_ctl stop -m immediate`: every server process dies at once); the append must fail."""
    watcher = await asyncpg.connect(cluster.url, timeout=10)
    appending = asyncio.ensure_future(store.append(sent, 3000))
    try:
        await wait_for_backend(watcher, waits)
        await asyncio.to_thread(cluster.stop, "immediate")
        with pytest.raises(StoreUnavailable):
            await appending
    finally:
        watcher.terminate()
        appending.cancel()


def check_retry(first: list[StoredMessage | None], again: list[StoredMessage | None], *, was_stored: bool) -> None:
    """A retry with the same client_ids stores what was not, and finds what was: seqs 1..n."""
    assert [m.seq if m else None for m in first] == list(range(1, len(first) + 1))
    assert all(m is not None and m.is_new is not was_stored for m in first)
    assert all(m is not None and not m.is_new for m in again)


def test_a_batch_cut_off_before_its_commit_is_absent_after_the_restart_and_a_retry_stores_it_whole(
    run: Run, private_postgres: PrivatePostgres
) -> None:
    sent = batch("pre")

    async def main() -> None:
        store = await open_store(private_postgres, LONG_TIMEOUT_S)
        holder = await asyncpg.connect(private_postgres.url, timeout=10)
        try:
            # Another session locks the group's row, so the append is caught in the middle of its
            # statement (it locks that row before inserting) when Postgres dies.
            await holder.execute("BEGIN; SELECT 1 FROM conversations WHERE id = 1 FOR UPDATE")
            await append_cut_off(store, private_postgres, sent, "wait_event_type = 'Lock'")
            await asyncio.to_thread(private_postgres.start)
            assert await stored_seqs(private_postgres.url, [m.client_id for m in sent]) == ([], 0)
            first = await store.append(sent, 4000)  # the client's retry, same client_ids
            check_retry(first, await store.append(sent, 5000), was_stored=False)
        finally:
            holder.terminate()
            await store.close()

    run(main())


def test_a_batch_cut_off_during_its_commit_is_whole_after_the_restart_and_a_retry_finds_it(
    run: Run, private_postgres: PrivatePostgres
) -> None:
    sent = batch("commit")
    url = private_postgres.url

    async def admin(*statements: str) -> None:
        con = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements:
                await con.execute(statement)
        finally:
            await con.close()

    async def require_standby(name: str) -> PostgresStore:
        """Make commits wait for a synchronous standby called *name* ('' for none), and return a
        store whose connections were made once the setting is in force."""
        await admin(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'", "SELECT pg_reload_conf()")
        probe = "SELECT current_setting('synchronous_standby_names')"
        async with asyncio.timeout(20):
            while True:  # the reload reaches the postmaster, hence new backends, a moment later
                con = await asyncpg.connect(url, timeout=10)
                try:
                    if await con.fetchval(probe) == name:
                        return PostgresStore(url, timeout_s=LONG_TIMEOUT_S)
                finally:
                    await con.close()

    async def main() -> None:
        setup = await open_store(private_postgres, LONG_TIMEOUT_S)
        await setup.close()
        # No standby will ever answer: the commit is written to the WAL, then waits for it.
        store = await require_standby("nobody")
        try:
            await append_cut_off(store, private_postgres, sent, "wait_event = 'SyncRep'")
            await asyncio.to_thread(private_postgres.start)  # crash recovery replays the commit
            await (await require_standby("")).close()
            seqs, last = await stored_seqs(url, [m.client_id for m in sent])
            assert seqs == list(range(1, len(sent) + 1)) and last == len(sent)  # all of it, once
            first = await store.append(sent, 4000)  # the client's retry finds every message
            check_retry(first, await store.append(sent, 5000), was_stored=True)
        finally:
            await store.close()

    run(main())


@pytest.mark.parametrize("outage", ["fast", "immediate", "pause"])
def test_senders_that_retry_through_an_outage_store_each_message_once_without_gaps(
    run: Run, private_postgres: PrivatePostgres, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    senders, size, batches_after = 8, 5, 3
    conversations = [ConversationId(c) for c in range(1, 5)]

    async def main() -> None:
        store = await open_store(private_postgres, SHORT_TIMEOUT_S)
        for _ in conversations[1:]:
            await store.create_conversation([A, B], "g", "group", 1000)
        acked: list[StoredMessage] = []
        failed: set[int] = set()
        everyone_failed, warmed_up, recovered = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def sender(n: int) -> None:
            batch_no, after = 0, 0
            while after < batches_after:  # sends until it has stored a few batches after the outage
                sent = [
                    NewMessage(conversations[(n + i) % len(conversations)], A, f"s{n}-b{batch_no}-m{i}", "x")
                    for i in range(size)
                ]
                while True:  # what a client does on `unavailable`: the same client_ids again
                    try:
                        stored = await store.append(sent, 2000 + batch_no)
                    except StoreUnavailable:
                        failed.add(n)
                        if len(failed) == senders:
                            everyone_failed.set()
                        await asyncio.sleep(0.02)  # a client's retry delay
                        continue
                    assert len(stored) == size and all(stored)
                    acked.extend(m for m in stored if m is not None)
                    if len(acked) >= senders * size * 2:
                        warmed_up.set()
                    break
                batch_no += 1
                after += recovered.is_set()

        async def outage_and_recovery() -> None:
            async with asyncio.timeout(30):
                await warmed_up.wait()
            if outage == "pause":
                private_postgres.pause()
            else:
                await asyncio.to_thread(private_postgres.stop, outage)  # type: ignore[arg-type]  # a StopMode
            async with asyncio.timeout(30):
                await everyone_failed.wait()
            if outage == "pause":
                private_postgres.resume()
            else:
                await asyncio.to_thread(private_postgres.start)
            recovered.set()

        try:
            await asyncio.gather(outage_and_recovery(), *(sender(n) for n in range(senders)))
            con = await asyncpg.connect(private_postgres.url, timeout=10)
            try:
                rows = await con.fetch("SELECT conversation_id, seq, client_id FROM messages ORDER BY 1, 2")
                last = dict(await con.fetch("SELECT id, last_seq FROM conversations"))
            finally:
                await con.close()
        finally:
            await store.close()
        assert len(rows) == len({r["client_id"] for r in rows})  # each message once
        for c in conversations:
            seqs = [r["seq"] for r in rows if r["conversation_id"] == c]
            assert seqs == list(range(1, last[c] + 1))  # no gap, no repeat
        # Every message stored was acked, once retried if need be, as it is in the database.
        assert sorted((m.conversation_id, m.seq, m.client_id) for m in acked) == sorted(tuple(r) for r in rows)

    run(main())
    no_tracebacks(caplog)


ADVISORY_LOCKS = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"


def test_the_instance_lock_is_taken_again_when_postgres_is_back(
    run: Run, private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "sohbet.store")
    url = private_postgres.url

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    async def main() -> None:
        store = PostgresStore(url, timeout_s=SHORT_TIMEOUT_S, relock_interval_s=0.05)
        await store.lock_instance()
        try:
            await asyncio.to_thread(private_postgres.stop, "fast")
            await asyncio.to_thread(private_postgres.start)
            watcher = await asyncpg.connect(url, timeout=10)
            try:
                async with asyncio.timeout(20):
                    while not await watcher.fetch(ADVISORY_LOCKS):
                        await asyncio.sleep(0.01)  # polls a server state that has no event to await
            finally:
                await watcher.close()
            with pytest.raises(InstanceLocked):  # a second server is refused again
                await PostgresStore(url, timeout_s=SHORT_TIMEOUT_S).lock_instance()
            await asyncio.to_thread(private_postgres.stop, "immediate")
            async with asyncio.timeout(20):
                while len(said()) < 3:
                    await asyncio.sleep(0.01)  # polls the log, which has no event to await
        finally:
            started = time.monotonic()
            await store.close()  # shutting down while it tries to take the lock again
            assert time.monotonic() - started < FAST_S
        await asyncio.to_thread(private_postgres.start)
        again = PostgresStore(url)
        await again.lock_instance()  # close let go of it
        await again.close()

    run(main())
    lost = "lost the instance lock with its connection (did postgres restart?); taking it again"
    assert said() == [lost, "took the instance lock again", lost]
    no_tracebacks(caplog)


def test_a_migration_waits_past_the_deadline_for_another_and_one_cut_off_is_unavailable(
    run: Run, private_postgres: PrivatePostgres
) -> None:
    url = private_postgres.url
    waiting = "wait_event_type = 'Lock' AND wait_event = 'advisory'"

    async def main() -> None:
        store = PostgresStore(url, timeout_s=0.2)
        other = await asyncpg.connect(url, timeout=10)
        watcher = await asyncpg.connect(url, timeout=10)
        try:
            await other.execute("BEGIN")
            await other.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)  # another migrates
            migrating = asyncio.ensure_future(store.migrate())
            # A migration may take minutes: the deadline of the other calls does not cut it short.
            await wait_for_backend(watcher, f"{waiting} AND now() - query_start > interval '0.5 s'")
            assert not migrating.done()
            await other.execute("COMMIT")
            await migrating
            await other.execute("BEGIN")
            await other.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            migrating = asyncio.ensure_future(store.migrate())
            await wait_for_backend(watcher, waiting)
            await watcher.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {waiting}")
            with pytest.raises(StoreUnavailable):
                await migrating
            await other.execute("COMMIT")
            await store.migrate()
        finally:
            other.terminate()
            watcher.terminate()
            await store.close()

    run(main())


def test_a_lock_taken_by_another_session_meanwhile_is_reported_once_and_asked_for_until_free(
    run: Run, private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "sohbet.store")
    url = private_postgres.url

    def tries() -> int:
        return sum(r.getMessage().startswith("the instance lock is still held") for r in caplog.records)

    async def main() -> None:
        store = PostgresStore(url, timeout_s=SHORT_TIMEOUT_S, relock_interval_s=0.5)
        await store.lock_instance()
        other = await asyncpg.connect(url, timeout=10)
        try:
            # The lock's connection breaks (not the whole server), and another session takes the
            # lock first: a second server started while this one was unprotected.
            (pid,) = await other.fetchrow(ADVISORY_LOCKS)
            await other.execute("SELECT pg_terminate_backend($1)", pid)
            await other.execute("SELECT pg_advisory_lock($1)", _INSTANCE_LOCK)  # granted once that backend is gone
            async with asyncio.timeout(20):
                while tries() < 2:
                    await asyncio.sleep(0.01)  # polls the log, which has no event to await
            await store.ping()  # it keeps serving meanwhile
            await other.close()  # the other one stops
            async with asyncio.timeout(20):
                while not any(r.getMessage() == "took the instance lock again" for r in caplog.records):
                    await asyncio.sleep(0.01)  # polls the log, which has no event to await
            with pytest.raises(InstanceLocked):
                await PostgresStore(url, timeout_s=SHORT_TIMEOUT_S).lock_instance()
        finally:
            other.terminate()
            await store.close()

    run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("another session holds the instance lock of PostgreSQL database")
    no_tracebacks(caplog)


def test_an_instance_lock_the_database_refuses_is_unavailable_and_leaves_no_connection(
    run: Run, private_postgres: PrivatePostgres
) -> None:
    url = private_postgres.url
    count = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'locked_out'"

    async def main() -> None:
        admin = await asyncpg.connect(url, timeout=10)
        try:
            await admin.execute("CREATE ROLE locked_out LOGIN")
            await admin.execute("REVOKE EXECUTE ON FUNCTION pg_try_advisory_lock(bigint) FROM PUBLIC")
            store = PostgresStore(url.replace("postgres@", "locked_out@"), timeout_s=SHORT_TIMEOUT_S)
            with pytest.raises(StoreUnavailable, match="permission denied") as caught:
                await store.lock_instance()
            await store.close()
            async with asyncio.timeout(20):
                while await admin.fetchval(count):
                    await asyncio.sleep(0.01)  # polls a server state that has no event to await
            # Closed by the store, not by the garbage collector: the traceback still holds it.
            assert caught.tb is not None
        finally:
            await admin.close()

    run(main())
