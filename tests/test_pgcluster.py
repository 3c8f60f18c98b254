"""The private cluster of the outage tests acts on itself alone, and does what it says.

Pausing must freeze this cluster's every process (or the outage tests would test nothing) and
no other: the shared server keeps answering while the private one is frozen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from .conftest import POSTGRES_URL
from .pgcluster import PrivatePostgres, _descendants, _start_time, _stat

Run = Callable[[Coroutine[Any, Any, Any]], Any]


async def answers(url: str) -> bool:
    try:
        con = await asyncpg.connect(url, timeout=1)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    try:
        return bool(await con.fetchval("SELECT 1", timeout=1))
    except TimeoutError:
        return False
    finally:
        con.terminate()


def state(pid: int) -> str:
    fields = _stat(pid)
    assert fields is not None
    return fields[0]


def test_pause_freezes_every_process_of_the_cluster_and_nothing_else(
    private_postgres: PrivatePostgres, postgres_database: str
) -> None:
    cluster = private_postgres
    assert cluster.is_running and asyncio.run(answers(cluster.url))
    postmaster = cluster.postmaster_pid()
    assert postmaster is not None
    cluster.pause()
    try:
        frozen = [postmaster, *_descendants(postmaster)]
        assert len(frozen) > 1 and {state(pid) for pid in frozen} == {"T"}  # T: stopped by a signal
        assert not asyncio.run(answers(cluster.url))
        assert asyncio.run(answers(POSTGRES_URL))  # the shared server: untouched
    finally:
        cluster.resume()
    assert {state(pid) for pid in frozen} <= {"S", "R", "D"}
    assert asyncio.run(answers(cluster.url))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stop_start_and_destroy(private_postgres: PrivatePostgres, mode: str) -> None:
    cluster = private_postgres
    cluster.pause()
    cluster.stop(mode)  # type: ignore[arg-type]  # a StopMode; a paused cluster is thawed first
    assert not cluster.is_running and not asyncio.run(answers(cluster.url))
    cluster.start()
    assert cluster.is_running and asyncio.run(answers(cluster.url))
    postmaster = cluster.postmaster_pid()
    cluster.destroy()
    assert postmaster is not None and _start_time(postmaster) is None  # gone (or a zombie left to init)
    assert not Path(cluster.root).exists()
