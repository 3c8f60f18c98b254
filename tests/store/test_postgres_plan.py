"""The batch statement's plan on Postgres: made once per connection, it must stay good at any size.

A group commit's cost must grow with the batch, not with the tables: the plan is generic (made
once, from whatever statistics the database had then, an empty database's included), so it may
reach each table only through an index, and never join two batch-sized lists row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from sohbet.store import postgres
from sohbet.store.postgres import PostgresStore

Run = Callable[[Coroutine[Any, Any, Any]], Any]
TABLES = ("messages", "members", "conversations")


def test_the_batch_statement_reaches_every_table_by_index_in_a_generic_plan(run: Run, postgres_database: str) -> None:
    async def main() -> None:
        store = PostgresStore(postgres_database)
        await store.migrate()

        async def explain(con: Any) -> list[str]:  # on a connection of the store's own for appends
            await con.execute("PREPARE batch(bigint[], text[], text[], text[], bigint) AS " + postgres._APPEND)
            try:
                rows = await con.fetch(
                    "EXPLAIN (VERBOSE, COSTS OFF) EXECUTE batch('{1,2,3}', '{a,b,c}', '{x,y,z}', '{p,q,r}', 0)"
                )
            finally:
                await con.execute("DEALLOCATE batch")
            return [row[0].strip() for row in rows]

        try:
            lines = await store._run(explain, appends=True)
        finally:
            await store.close()
        plan = "\n".join(lines)
        # Generic: made for any arrays, not for these three rows.
        assert "Function Call: unnest($1), unnest($2)" in plan, plan
        scans = [line for line in lines if any(f" on public.{table}" in line for table in TABLES)]
        assert {table for table in TABLES for scan in scans if f" on public.{table}" in scan} == set(TABLES)
        for scan in scans:
            assert scan.startswith(("->  Index Scan", "->  Index Only Scan", "->  Insert on", "->  Update on")), plan
        # No scan of a whole table, and no list of the batch compared against another row by row.
        for step in ("Seq Scan", "Hash Join", "Merge Join", "Join Filter"):
            assert step not in plan, plan

    run(main())
