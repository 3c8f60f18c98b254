"""Postgres CPU (all backends of a fresh database) and client CPU a message of PostgresStore.append.

Batches of 64, each message in its own direct conversation.
"""

import os
import sys
import time

import asyncpg
import uvloop

from sohbet.chat.ids import UserId
from sohbet.chat.model import NewMessage
from sohbet.store.postgres import PostgresStore


def cpu(pids):
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                f = stat.read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return t / os.sysconf("SC_CLK_TCK")


async def main(n):
    name = f"pgc_{os.getpid()}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:5432/{name}")
        await store.migrate()
        cids = [
            (await store.create_conversation([UserId(f"u{i}"), UserId(f"r{i}")], None, "direct", 1000))[0].id
            for i in range(64)
        ]
        for k in range(50):
            await store.append([NewMessage(cids[i], UserId(f"u{i}"), f"w{k}-{i}", "hello there") for i in range(64)], 1)
        pids = [r[0] for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)]
        c0, p0 = time.process_time(), cpu(pids)
        for k in range(n):
            await store.append(
                [NewMessage(cids[i], UserId(f"u{i}"), f"c{k}-{i}", "hello there") for i in range(64)], 2000 + k
            )
        c1, p1 = time.process_time(), cpu(pids)
        print(f"client {(c1 - c0) / n / 64 * 1e6:.2f} postgres {(p1 - p0) / n / 64 * 1e6:.2f} us/message")
        await store.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


uvloop.run(main(int(sys.argv[1])))
