"""Postgres out of reach: every store call says `StoreUnavailable`, never a driver exception.

The service answers `unavailable` (retry with the same client_id) only for that type; a raw
asyncpg or OSError would be an `internal`, which peer-triggerable paths must never produce.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage
from sohbet.errors import StoreUnavailable
from sohbet.store.postgres import PostgresStore

from ..chatkit import open_store
from ..conftest import pg_admin

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def test_a_server_that_does_not_answer_is_unavailable(run: Run) -> None:
    async def main() -> None:
        # Port 9 (discard) has no listener on loopback here: the connect is refused at once.
        store = PostgresStore("postgresql://postgres@127.0.0.1:9/none")
        with pytest.raises(StoreUnavailable, match="postgres"):
            await store.ping()
        with pytest.raises(StoreUnavailable, match="postgres"):
            await store.migrate()
        await store.close()  # never opened: nothing to close, and no error either

    run(main())


def test_a_database_gone_mid_run_is_unavailable_on_every_write(run: Run, postgres_database: str) -> None:
    name = postgres_database.rsplit("/", 1)[1]

    async def main() -> None:
        store = await open_store(postgres_database)
        try:
            await pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                await pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                with pytest.raises(StoreUnavailable):
                    await store.migrate()
                with pytest.raises(StoreUnavailable):
                    await store.create_conversation([UserId("a"), UserId("b")], None, "direct", 1000)
                with pytest.raises(StoreUnavailable):
                    await store.append([NewMessage(ConversationId(1), UserId("a"), "c1", "hi")], 1000)
            finally:
                await pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            created, joined = await store.create_conversation([UserId("a"), UserId("b")], None, "direct", 1000)
            assert joined == ["a", "b"] and created.members == ["a", "b"]  # back by itself, no restart
        finally:
            await store.close()

    run(main())


def test_concurrent_first_calls_share_one_pool_and_close_lets_go_of_all(run: Run, postgres_database: str) -> None:
    import asyncpg  # noqa: PLC0415  # the Postgres half only

    name = postgres_database.rsplit("/", 1)[1]
    count = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"

    async def main() -> None:
        watcher = await asyncpg.connect(postgres_database.rsplit("/", 1)[0] + "/postgres")
        try:
            before = await watcher.fetchval(count)
            store = PostgresStore(postgres_database)
            await store.migrate()
            group, _ = await store.create_conversation([UserId("a"), UserId("b")], "g", "group", 0)
            # Six first calls at once on each pool (batches have one of their own).
            await asyncio.gather(
                *(store.ping() for _ in range(6)),
                *(store.append([NewMessage(group.id, UserId("a"), f"c{i}", "x")], 0) for i in range(6)),
            )
            assert await watcher.fetchval(count) > before
            await store.close()
            for _ in range(50):  # backends end a moment after their client hangs up
                if await watcher.fetchval(count) == before:
                    break
                await asyncio.sleep(0.05)
            assert await watcher.fetchval(count) == before  # no pool was left behind, open
        finally:
            await watcher.close()

    run(main())
