"""The chaos checker (tests/chaoskit.py) in CI: a cluster of three instances on a private
Postgres and a private Redis, six users chatting through kill -9s, Redis restarts, Postgres
freezes and dropped connections; afterwards nothing acked is lost or doubled, seqs are dense,
every member's view is storage, live streams are in order, and the outsider saw nothing.

`benchmarks/chaos.py` runs the same checker for longer, on demand."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ..chaoskit import run_chaos
from ..pgcluster import PrivatePostgres

#: Seconds of faults per run: each server-side fault comes about twice.
NEMESIS_S = 22.0


@pytest.mark.parametrize("seed", [1, 2])
def test_the_cluster_survives_the_nemesis(tmp_path: Path, private_postgres: PrivatePostgres, seed: int) -> None:
    # Every wait inside is bounded; this bounds their sum too (a normal run takes about 30 s).
    report = asyncio.run(asyncio.wait_for(run_chaos(NEMESIS_S, seed, workdir=tmp_path, postgres=private_postgres), 300))
    print(report.summary())
    print("\n".join(report.timeline))
    assert report.ok, report.summary() + f"\nlogs in {tmp_path}"
    # The run did what it says: the faults happened and the clients lived through them.
    assert report.kills and report.redis_restarts and report.pg_pauses and report.client_drops, report.summary()
    assert report.reconnects and report.acked == report.stored == report.sent, report.summary()
