"""Graceful shutdown of a `sohbet-server` process under load: `/readyz` says 503 first, what was
acked is all in storage afterwards, every client is closed with 1001, the process exits 0 within
`--shutdown-timeout`; and a second signal ends it at once.

Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from sohbet.app.cli import make_store
from sohbet.config import StoreConfig

from ..pgcluster import PrivatePostgres
from .test_processes import SECRET, server_process

WRITERS = 4
#: Each writer sends until its connection closes, up to this many: far more than the seconds of
#: the shutdown can take, so sends are in flight at every step of it.
PER_WRITER = 200_000
#: Sends a writer has unanswered at most: plenty in flight at every step of the shutdown.
IN_FLIGHT = 200


def token(user: str) -> str:
    import jwt  # noqa: PLC0415

    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def writer(
    port: int, user: str, conversation: int, started: asyncio.Event
) -> tuple[dict[str, Any], int | None, int, int]:
    """Send without waiting for acks until the connection closes; return what was acked
    (client_id -> message), the close code, how many were sent, and how many were answered
    `unavailable` (refused during the shutdown: nothing stored)."""
    acked: dict[str, Any] = {}
    sent = unavailable = 0
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token(user)}"}, max_queue=None
    ) as ws:
        await ws.recv()  # hello

        # At most IN_FLIGHT unanswered: a client that reads its answers, so that the server's
        # close frame is not stuck behind a backlog the client has not read (under coverage the
        # server is several times slower, and an unpaced flood filled its buffers).
        window = asyncio.Semaphore(IN_FLIGHT)

        async def send() -> None:
            nonlocal sent
            for i in range(PER_WRITER):
                await window.acquire()
                payload = {"conversation_id": conversation, "content": f"{user} {i}", "client_id": f"{user}-{i}"}
                await ws.send(orjson.dumps({"type": "chat:send", "payload": payload}).decode())
                sent += 1
                if i == 50:
                    started.set()
                if i % 50 == 0:
                    await asyncio.sleep(0.001)  # let acks in: the server keeps pace, nothing piles up

        sending = asyncio.ensure_future(send())
        try:
            async for raw in ws:
                event = orjson.loads(raw)
                if event["type"] == "chat:ack":
                    acked[event["payload"]["client_id"]] = event["payload"]["message"]
                    window.release()
                elif event["type"] == "error":
                    assert event["payload"]["code"] == "unavailable", event
                    unavailable += 1
                    window.release()
        except websockets.ConnectionClosed:
            pass
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
    return acked, ws.close_code, sent, unavailable


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_shutdown_under_load_loses_nothing_acked_and_closes_with_1001(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path}/sohbet.db" if backend == "sqlite" else request.getfixturevalue("postgres_database")
    args = ["--database-url", url, "--send-rate", "0", "--frame-rate", "0", "--max-requests-in-flight", "0"]
    args += ["--drain-delay", "1", "--shutdown-timeout", "8"]
    env = {"SOHBET_JWT_SECRET": SECRET, "SOHBET_API_KEY": "k" * 40}
    with server_process(*args, cwd=tmp_path, env=env) as (proc, port):

        async def main() -> tuple[list[tuple[dict[str, Any], int | None, int, int]], list[int], float]:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                body = {"members": [f"w{n}" for n in range(WRITERS)]}
                async with http.post(
                    "/api/conversations", json=body, headers={"Authorization": "Bearer " + "k" * 40}
                ) as r:
                    conversation = (await r.json())["conversation"]["id"]
                started = [asyncio.Event() for _ in range(WRITERS)]
                writers = [
                    asyncio.ensure_future(writer(port, f"w{n}", conversation, started[n])) for n in range(WRITERS)
                ]
                for event in started:
                    await event.wait()
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                # While it drains, the load balancer's probe sees 503 and the clients are still
                # served (the signal itself takes a moment to arrive: 200s until then).
                ready: list[int] = []
                alive: list[int] = []  # the liveness probe: the process is alive while it drains
                while not any(w.done() for w in writers) and ready.count(503) < 5:
                    try:
                        async with http.get("/readyz") as r:
                            ready.append(r.status)
                        async with http.get("/healthz") as r:
                            alive.append(r.status)
                    except aiohttp.ClientError:
                        break
                    await asyncio.sleep(0.05)
                results = await asyncio.gather(*writers)
            assert set(alive) == {200}, alive
            return results, ready, signalled

        results, ready, signalled = asyncio.run(main())
        assert proc.wait(timeout=15) == 0
        took = time.monotonic() - signalled
        log = proc.stdout.read() if proc.stdout else ""
    first = ready.index(503)  # seen while the writers were still connected and served
    assert set(ready[first:]) == {503}, ready
    assert took < 8 + 2, took  # the shutdown's limit, and the interpreter's own exit (coverage saves its data)
    assert [code for _, code, _, _ in results] == [1001] * WRITERS
    acked = {cid: m for found, _, _, _ in results for cid, m in found.items()}
    sent = sum(n for _, _, n, _ in results)
    assert acked, "nothing was acked before the shutdown"
    assert sent < WRITERS * PER_WRITER, "the load ended before the shutdown: it tested nothing"
    assert len(acked) < sent  # some were still in flight when the connections closed

    conversation = next(iter(acked.values()))["conversation_id"]

    async def stored() -> dict[str, Any]:
        store = make_store(StoreConfig(url=url))
        try:
            seen: dict[str, Any] = {}
            before = None
            while True:
                page, has_more = await store.history(conversation, before, 100)
                for m in page:
                    seen[m.client_id] = (m.id, m.seq)
                if not has_more:
                    return seen
                before = page[0].seq
        finally:
            await store.close()

    in_storage = asyncio.run(stored())
    for client_id, message in acked.items():  # every ack was a promise kept
        assert in_storage.get(client_id) == (message["id"], message["seq"]), client_id
    seqs = sorted(seq for _, seq in in_storage.values())
    assert seqs == list(range(1, len(seqs) + 1))  # nothing half-written: no gap, no duplicate
    # And nothing stored went untold: what was queued at the signal was committed and acked
    # before the connections closed (the others were refused, unavailable, and not stored).
    assert set(in_storage) == set(acked)
    assert "Traceback" not in log and "stopped" in log


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path), "--drain-delay", "30", "--shutdown-timeout", "60"]
    with server_process(*args, cwd=tmp_path, env={"SOHBET_JWT_SECRET": SECRET}) as (proc, port):

        async def probe() -> int:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
                return r.status

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while asyncio.run(probe()) != 503:  # the first signal was taken: it drains for 30 s
            assert time.monotonic() < deadline
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
        assert time.monotonic() - asked < 5
        out = proc.stdout.read() if proc.stdout else ""
    assert code == 128 + signal.SIGTERM
    assert "second SIGTERM: exiting at once" in out


def test_sigint_shuts_down_gracefully_too(tmp_path: Path) -> None:
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path, env={"SOHBET_JWT_SECRET": SECRET}) as (proc, _):
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        out = proc.stdout.read() if proc.stdout else ""
    assert "SIGINT: shutting down gracefully" in out and "stopped" in out


def test_a_shutdown_with_storage_frozen_still_exits_0_in_time(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    """The database hangs with a send in flight: the queue cannot be committed, and the
    shutdown still ends within its limit, saying so, without a traceback."""
    args = ["--database-url", private_postgres.url, "--shutdown-timeout", "2", "--send-rate", "0"]
    env = {"SOHBET_JWT_SECRET": SECRET, "SOHBET_API_KEY": "k" * 40}
    with server_process(*args, cwd=tmp_path, env=env) as (proc, port):

        async def main() -> int | None:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                body = {"members": ["alice", "bob", "carol"]}
                async with http.post(
                    "/api/conversations", json=body, headers={"Authorization": "Bearer " + "k" * 40}
                ) as r:
                    conversation = (await r.json())["conversation"]["id"]
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token('alice')}"}
            ) as ws:
                await ws.recv()  # hello
                private_postgres.pause()
                payload = {"conversation_id": conversation, "content": "stuck", "client_id": "s1"}
                await ws.send(orjson.dumps({"type": "chat:send", "payload": payload, "ref": "s"}).decode())
                await asyncio.sleep(0.2)  # the send is in the writer, waiting on the frozen database
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        assert orjson.loads(await ws.recv())["type"] != "chat:ack"  # never acked
                return closed.value.rcvd.code if closed.value.rcvd else None

        signalled = time.monotonic()
        assert asyncio.run(main()) == 1001
        assert proc.wait(timeout=15) == 0
        took = time.monotonic() - signalled
        out = proc.stdout.read() if proc.stdout else ""
    private_postgres.resume()
    assert took < 2 + 2.5, took  # the limit, the send's 0.2 s, and the interpreter's own exit
    assert "storage did not take the queued messages in time" in out
    assert "Traceback" not in out and "never retrieved" not in out


def test_sighup_without_a_jwks_file_is_taken_not_fatal(tmp_path: Path) -> None:
    """logrotate and service managers send SIGHUP; its default action would end the server."""
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path, env={"SOHBET_JWT_SECRET": SECRET}) as (proc, port):

        async def health() -> int:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
                return r.status

        proc.send_signal(signal.SIGHUP)
        assert asyncio.run(health()) == 200
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        out = proc.stdout.read() if proc.stdout else ""
    assert "SIGHUP: nothing to reload (no --jwks-file)" in out
