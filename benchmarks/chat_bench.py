"""Chat server benchmarks: persisted sends, fan-out, idle memory. Bounded, loopback only.

    python benchmarks/chat_bench.py send --database sqlite        # acked chat:send per second
    python benchmarks/chat_bench.py send --database postgres      # ... and pgbench in the same run
    python benchmarks/chat_bench.py fanout --members 1000         # one send to a group, vs picows
    python benchmarks/chat_bench.py idle --users 5000             # memory per connected user
    python benchmarks/chat_bench.py api --senders 16              # the HTTP API's sends against chat:send
    python benchmarks/chat_bench.py metrics --rounds 3            # sends with /metrics scraped, and without
    python benchmarks/chat_bench.py send --sohbet ../before        # another checkout's server
    python benchmarks/chat_bench.py send --instructions 50         # the server's instructions a send (callgrind)

The server under test runs as its own process pinned to CPU 0 (taskset); this script, the
clients, runs on CPU 1. The sohbet server is started with `fanout_server.py`, which is
`sohbet-server` plus a timer around each broadcast, so "handed to every transport" is measured
inside the server; its CPU time comes from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import orjson
import uvloop
from loadgen import free_port, wait_listening  # benchmarks/ is the script's directory
from loadgen import server_cpu_s as cpu_s
from loadgen import server_cpu_split_s as cpu_split_s
from loadgen import server_rss_kib as rss_kib

from sohbet.auth import issue_token
from sohbet.config import AuthConfig
from sohbet.ws import _frames

HERE = Path(__file__).resolve().parent
SECRET = "benchmark-secret-of-at-least-32-bytes!"
AUTH = AuthConfig(secret=SECRET)
PG_ADMIN = os.environ.get("SOHBET_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class Client(asyncio.Protocol):
    """A raw chat client: JSON text frames, replies matched by ref, events counted."""

    def __init__(self, token: str, on_event: Any = None) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.upgrade_request = (
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.transport: Any = None
        self.parser = _frames.FrameParser(client=True, max_frame_bytes=1 << 24)
        self.head = b""
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.on_event = on_event
        self.mask = os.urandom(4)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.upgrade_request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.head[:20]:
                self.ready.set_exception(RuntimeError(self.head[:200].decode(errors="replace")))
                return
            self.upgraded = True
            data, self.head = self.head[end + 4 :], b""
        for frame in self.parser.feed(data):
            if frame.opcode != 1:
                continue
            payload = frame.payload
            if not self.ready.done():
                self.ready.set_result(None)  # hello
                continue
            if b'"ref"' in payload:
                msg = orjson.loads(payload)
                waiter = self.waiting.pop(msg.get("ref"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg)
                    continue
            if self.on_event is not None:
                self.on_event(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost during handshake"))
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection lost before the reply"))

    def send_json(self, obj: dict[str, Any]) -> None:
        self.transport.write(_frames.build_frame(1, orjson.dumps(obj), mask=self.mask))

    async def request(self, kind: str, payload: dict[str, Any], ref: str) -> dict[str, Any]:
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[ref] = waiter
        self.send_json({"type": kind, "payload": payload, "ref": ref})
        return await waiter


async def connect(port: int, user: str, on_event: Any = None) -> Client:
    loop = asyncio.get_running_loop()
    token = issue_token(AUTH, user, 3600, time.time())
    _, client = await loop.create_connection(lambda: Client(token, on_event), "127.0.0.1", port)
    await asyncio.wait_for(client.ready, 30)
    return client


async def connect_many(port: int, users: list[str], on_event: Any = None, concurrency: int = 100) -> list[Client]:
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str) -> Client:
        async with sem:
            return await connect(port, user, on_event)

    return list(await asyncio.gather(*(one(u) for u in users)))


class Checkout(NamedTuple):
    """Where a server script comes from: a checkout's benchmarks/ folder and its Python."""

    benchmarks: Path
    python: Path


THIS = Checkout(HERE, Path(sys.executable))
#: The checkout whose sohbet server is measured: this one, or another (`--sohbet DIR`), to
#: compare a baseline with this tree in one run. Peers always come from this one.
MEASURED = [THIS]


class Server:
    """A server script of benchmarks/ in its own process, pinned to CPU 0."""

    def __init__(
        self,
        script: str,
        args: list[str],
        *,
        checkout: Checkout = THIS,
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        """*wrap*: a command the server runs under (valgrind), which starts it slower."""
        self.port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}, **(env or {})}
        command = ["taskset", "-c", "0", *(wrap or []), str(checkout.python), str(checkout.benchmarks / script),
                   "--port", str(self.port), *args]  # fmt: skip
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, timeout=300.0 if wrap else 30.0)
        #: The database it stores in, where a caller needs to look at it.
        self.database_url = ""

    def stop(self) -> list[str]:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode().splitlines()


def handoff_ms_median(lines: list[str]) -> float:
    """The median time a fan-out server took to hand one message to every socket, from its
    `delivered MS` lines (the first warms up: it counts only if alone)."""
    handed = [float(line.split()[1]) for line in lines if line.startswith("delivered")]
    return statistics.median(handed[1:] or handed)


#: Limits a load from one address (and one user's read loop) would hit, off through the
#: environment: a checkout older than a setting ignores its variable, where it would refuse an
#: unknown flag.
NO_ADDRESS_LIMITS = {
    "SOHBET_ADDRESS_RATE": "0",
    "SOHBET_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "SOHBET_QUERY_RATE": "0",
}
API_KEY = "benchmark-api-key-of-at-least-32-bytes!!"


def sohbet_server(
    database_url: str,
    data_dir: str,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
) -> Server:
    """`fanout_server.py`: sohbet-server, printing how long each fan-out took."""
    return Server("fanout_server.py", [
        "--database-url", database_url, "--jwt-secret", SECRET, "--send-rate", "0", "--frame-rate", "0",
        "--max-connections-per-user", "10", "--data-dir", data_dir, "--log-level", "warning", *(extra or []),
    ], checkout=MEASURED[0], env={**NO_ADDRESS_LIMITS, **(env or {})}, wrap=wrap)  # fmt: skip


async def fresh_postgres() -> str:
    name = f"sohbet_bench_{os.getpid()}"
    con = await asyncpg.connect(PG_ADMIN)
    await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await con.execute(f'CREATE DATABASE "{name}"')
    await con.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def drop_database(name: str) -> None:
    con = await asyncpg.connect(PG_ADMIN)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


@contextlib.contextmanager
def fresh_sohbet(
    database: str, extra: list[str] | None = None, env: dict[str, str] | None = None, wrap: list[str] | None = None
) -> Iterator[Server]:
    """`sohbet_server` on an empty database ("sqlite" in a temporary directory, or a new Postgres
    one), stopped on the way out."""
    with tempfile.TemporaryDirectory() as data_dir:
        url = f"sqlite:///{data_dir}/bench.db" if database == "sqlite" else asyncio.run(fresh_postgres())
        try:
            server = sohbet_server(url, data_dir, extra, env, wrap)
            server.database_url = url
            try:
                yield server
            finally:
                server.stop()
        finally:
            if database == "postgres":
                name = url.rsplit("/", 1)[1]
                asyncio.run(drop_database(name))


# --- chat:send throughput and latency ------------------------------------------------------------


async def senders(port: int, n: int) -> tuple[list[Client], list[int]]:
    owner = await connect(port, "owner")
    clients = await connect_many(port, [f"s{i}" for i in range(n)])
    conversations = []
    for i, client in enumerate(clients):  # each sender in its own direct conversation: minimal fan-out
        reply = await client.request("conversation:create", {"members": [f"r{i}"]}, f"c{i}")
        conversations.append(reply["payload"]["conversation"]["id"])
    owner.transport.close()
    return clients, conversations


async def closed_loop(clients: list[Client], conversations: list[int], duration: float) -> tuple[int, float]:
    deadline = time.perf_counter() + duration
    count = 0

    async def run(client: Client, cid: int, tag: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            ref = f"{tag}-{i}"
            reply = await client.request(
                "chat:send", {"conversation_id": cid, "content": "hello there", "client_id": ref}, ref
            )
            assert reply["type"] == "chat:ack", reply
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c, cid, i) for i, (c, cid) in enumerate(zip(clients, conversations, strict=True))))
    return count, time.perf_counter() - t0


async def paced(clients: list[Client], conversations: list[int], rate: float, duration: float) -> list[float]:
    """Each sender sends on its own schedule (an open loop) so the total is *rate*; ack latencies."""
    per_client = rate / len(clients)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def run(client: Client, cid: int, tag: int) -> None:
        pending: list[asyncio.Task[None]] = []
        i = 0
        start = time.perf_counter() + tag / rate  # spread the senders over one period

        async def one(ref: str) -> None:
            t = time.perf_counter()
            reply = await client.request(
                "chat:send", {"conversation_id": cid, "content": "hello there", "client_id": ref}, ref
            )
            assert reply["type"] == "chat:ack"
            latencies.append(time.perf_counter() - t)

        while True:
            at = start + i / per_client
            if at >= deadline:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            i += 1
            pending.append(asyncio.ensure_future(one(f"p{tag}-{i}")))
        await asyncio.gather(*pending)

    await asyncio.gather(*(run(c, cid, i) for i, (c, cid) in enumerate(zip(clients, conversations, strict=True))))
    return latencies


def pgbench(admin_url: str, clients: int, seconds: int) -> dict[str, float]:
    """pgbench with one single-row INSERT per transaction, in a database of its own: its tps, and
    the CPU that Postgres and pgbench itself spent per transaction."""
    if shutil.which("pgbench") is None:
        raise RuntimeError("pgbench is not installed")
    name = f"pgbench_{os.getpid()}"

    async def setup(sql: list[str], db: str) -> None:
        con = await asyncpg.connect(db)
        for statement in sql:
            await con.execute(statement)
        await con.close()

    asyncio.run(setup([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'], admin_url))
    db = admin_url.rsplit("/", 1)[0] + "/" + name
    asyncio.run(setup(["CREATE TABLE rows (id BIGSERIAL PRIMARY KEY, conversation BIGINT, body TEXT)"], db))
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO rows (conversation, body) VALUES (:client_id, 'hello there');\n")
    proc: subprocess.Popen[str] | None = None
    try:
        own0 = os.times()
        proc = subprocess.Popen(
            ["taskset", "-c", "1", "pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds),
             "-f", script.name, db],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Postgres's CPU over the middle of the run, while pgbench's backends live (an ended
        # backend's CPU is no longer in /proc).
        time.sleep(1.0)
        db0, t0 = postgres_cpu_s(), time.perf_counter()
        time.sleep(max(1.0, seconds - 2.0))
        db1, t1 = postgres_cpu_s(), time.perf_counter()
        out, err = proc.communicate(timeout=seconds + 60)
        own1 = os.times()
        pgbench_cpu = own1.children_user + own1.children_system - own0.children_user - own0.children_system
        if proc.returncode != 0:
            raise RuntimeError(err)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted: pgbench stops with us
            proc.kill()
            proc.wait()
        os.unlink(script.name)
        asyncio.run(setup([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], admin_url))
    for line in out.splitlines():
        if line.startswith("tps"):
            tps = float(line.split("=")[1].split()[0])
            return {
                "pgbench_insert_tps": tps,
                "pgbench_postgres_cpu_us_per_tx": (db1 - db0) / (t1 - t0) / tps * 1e6,
                "pgbench_client_cpu_us_per_tx": pgbench_cpu / (tps * seconds) * 1e6,
            }
    raise RuntimeError(out)


def postgres_cpu_s() -> float:
    """CPU seconds of every running postgres process (user + system)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/comm") as f:
                    if f.read().strip() != "postgres":
                        continue
                total += cpu_s(int(entry.name))
            except OSError:  # it ended meanwhile
                continue
    return total


async def commits(url: str) -> int:
    """Transactions committed in the database of *url* so far (Postgres's statistics, which a
    backend reports at most once a second: read them after a pause)."""
    con = await asyncpg.connect(url)
    try:
        return int(await con.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await con.close()


def server_flags(args: argparse.Namespace) -> list[str]:
    """The measured server's flags the command line asked for."""
    return ["--write-gather-ms", str(args.write_gather)] if args.write_gather is not None else []


def bench_send_at_rate(args: argparse.Namespace) -> dict[str, Any]:
    """An open loop at `--rate` sends a second, as a process of a cluster sees its users: what
    each message costs the server and Postgres, how many a transaction carries, and the ack
    latency. Unlike the closed loop, the batch size here is set by the arrival rate, not by how
    many senders wait."""
    with fresh_sohbet(args.database, server_flags(args)) as server:
        url = server.database_url

        async def main() -> dict[str, Any]:
            clients, conversations = await senders(server.port, args.senders)
            await paced(clients, conversations, args.rate, 1.0)  # warm-up
            gc.collect()
            gc.disable()  # see bench_send
            try:
                await asyncio.sleep(1.5)
                tx0 = await commits(url) if args.database == "postgres" else 0
                cpu0, db0 = cpu_s(server.proc.pid), postgres_cpu_s()
                latencies = sorted(await paced(clients, conversations, args.rate, args.duration))
                cpu1, db1 = cpu_s(server.proc.pid), postgres_cpu_s()
                await asyncio.sleep(1.5)
                tx1 = await commits(url) if args.database == "postgres" else 0
            finally:
                gc.enable()
            for c in clients:
                c.transport.close()
            count = len(latencies)
            if not count:
                raise RuntimeError("no send was acked")
            on_postgres = {
                "postgres_cpu_us_per_send": (db1 - db0) / count * 1e6,
                # Every transaction of the database: the writer's, and the first of this
                # script's two reads of the statistics (thousands against one).
                "messages_per_transaction": count / max(1, tx1 - tx0 - 1),
            }
            return {
                "database": args.database,
                "senders": args.senders,
                "rate": args.rate,
                "write_gather": args.write_gather,
                "acked": count,
                "server_cpu_us_per_send": (cpu1 - cpu0) / count * 1e6,
                **(on_postgres if args.database == "postgres" else {}),
                "ack_p50_ms": latencies[len(latencies) // 2] * 1000,
                "ack_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            }

        return uvloop.run(main())


def bench_send_instructions(args: argparse.Namespace) -> dict[str, Any]:
    """The instructions the server runs per persisted send, counted by valgrind's callgrind in user
    space (the kernel's work is not counted): unlike CPU time, the same for the same tree whatever
    else the machine runs, so two trees compare on a shared, noisy machine. Under valgrind the
    server runs ~50x slower, so every sender is waiting at each commit: batches are as large as
    the senders make them, in both trees."""
    with tempfile.TemporaryDirectory() as out_dir:
        out = Path(out_dir) / "callgrind.out"
        wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        with fresh_sohbet(args.database, server_flags(args), wrap=wrap) as server:
            control = ["callgrind_control"]

            async def main() -> int:
                clients, conversations = await senders(server.port, args.senders)
                await counted_loop(clients, conversations, 5)  # warm-up, not counted
                subprocess.run([*control, "--instr=on", str(server.proc.pid)], check=True, capture_output=True)
                subprocess.run([*control, "--zero", str(server.proc.pid)], check=True, capture_output=True)
                count = await counted_loop(clients, conversations, args.instructions)
                subprocess.run([*control, "--dump", str(server.proc.pid)], check=True, capture_output=True)
                for c in clients:
                    c.transport.close()
                return count

            count = uvloop.run(main())
        dumps = sorted(Path(out_dir).glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        counted = [int(line.split()[1]) for line in dumps[0].read_text().splitlines() if line.startswith("summary:")]
        if args.callgrind_out is not None:  # for callgrind_annotate
            shutil.copyfile(dumps[0], args.callgrind_out)
    return {
        "database": args.database,
        "senders": args.senders,
        "acked": count,
        "server_instructions_per_send": counted[0] / count,
    }


async def counted_loop(clients: list[Client], conversations: list[int], per_sender: int) -> int:
    """Each sender sends *per_sender* messages, each after the ack of the one before."""

    async def run(client: Client, cid: int, tag: int) -> None:
        for i in range(per_sender):
            ref = f"n{tag}-{i}"
            reply = await client.request(
                "chat:send", {"conversation_id": cid, "content": "hello there", "client_id": ref}, ref
            )
            assert reply["type"] == "chat:ack", reply

    await asyncio.gather(*(run(c, cid, i) for i, (c, cid) in enumerate(zip(clients, conversations, strict=True))))
    return per_sender * len(clients)


def bench_send(args: argparse.Namespace) -> dict[str, Any]:
    if args.instructions is not None:
        return bench_send_instructions(args)
    if args.rate is not None:
        return bench_send_at_rate(args)
    with fresh_sohbet(args.database, server_flags(args)) as server:

        async def main() -> dict[str, Any]:
            clients, conversations = await senders(server.port, args.senders)
            await closed_loop(clients, conversations, 1.0)  # warm-up
            cpu0, db0, own0 = cpu_s(server.proc.pid), postgres_cpu_s(), time.process_time()
            count, elapsed = await closed_loop(clients, conversations, args.duration)
            cpu1, db1, own1 = cpu_s(server.proc.pid), postgres_cpu_s(), time.process_time()
            rate = count / elapsed
            # The load generator holds every request of the open loop (~150,000 tasks); its own
            # garbage collector then pauses it for up to ~0.7 s, which showed as the server's ack
            # p99 (68-718 ms with it, 4-11 ms without). Collected first, then off while timing.
            gc.collect()
            gc.disable()
            try:
                latencies = sorted(await paced(clients, conversations, rate / 2, args.duration))
            finally:
                gc.enable()
            for c in clients:
                c.transport.close()
            return {
                "database": args.database,
                "senders": args.senders,
                "write_gather": args.write_gather,
                "acked_per_s": rate,
                "server_cpu_us_per_send": (cpu1 - cpu0) / count * 1e6,
                # The load generator shares the machine's two cores with the server and Postgres:
                # what it spends bounds how many acks per second the machine can show at all.
                "client_cpu_us_per_send": (own1 - own0) / count * 1e6,
                # Every postgres process's CPU (the machine's one server: sohbet's backends, the
                # WAL writer, checkpoints); backends that ended meanwhile are not counted.
                **({"postgres_cpu_us_per_send": (db1 - db0) / count * 1e6} if args.database == "postgres" else {}),
                "half_rate": rate / 2,
                "ack_p50_ms": latencies[len(latencies) // 2] * 1000,
                "ack_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
                "latency_samples": len(latencies),
            }

        result = uvloop.run(main())
    if args.database == "postgres":
        result.update(pgbench(PG_ADMIN, args.senders, int(args.duration)))
        result["ratio_vs_pgbench"] = result["acked_per_s"] / result["pgbench_insert_tps"]
    return result


# --- the HTTP API against the WebSocket, and the cost of scraping /metrics -------------------------


async def rest_closed_loop(port: int, conversations: list[int], duration: float, *, backend: bool) -> tuple[int, float]:
    """Each of len(*conversations*) clients POSTs sends on its own kept-alive connection, one at
    a time, as its sender (a user's token) or as the backend (the API key)."""
    import aiohttp  # noqa: PLC0415  # only this benchmark needs an HTTP client

    deadline = time.perf_counter() + duration
    count = 0
    run_id = os.urandom(4).hex()  # client_ids of another run would be answered as repeats
    connector = aiohttp.TCPConnector(limit=len(conversations), force_close=False)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:

        async def run(cid: int, tag: int) -> None:
            nonlocal count
            user = f"s{tag}"
            key = API_KEY if backend else issue_token(AUTH, user, 3600, time.time())
            headers = {"Authorization": f"Bearer {key}"}
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                body = {"content": "hello there", "client_id": f"h{run_id}-{tag}-{i}"}
                if backend:
                    body["sender_id"] = user
                async with http.post(f"/api/conversations/{cid}/messages", json=body, headers=headers) as r:
                    assert r.status == 201, await r.text()
                    await r.read()
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(run(cid, i) for i, cid in enumerate(conversations)))
        return count, time.perf_counter() - t0


def bench_api(args: argparse.Namespace) -> dict[str, Any]:
    """chat:send over the WebSocket and POST .../messages over HTTP (a user's token, and the API
    key), each by `--senders` clients in a closed loop, against one server, in turns."""
    with fresh_sohbet(args.database, env={"SOHBET_API_KEY": API_KEY}) as server:

        async def main() -> dict[str, Any]:
            clients, conversations = await senders(server.port, args.senders)
            result: dict[str, Any] = {"database": args.database, "senders": args.senders}
            await closed_loop(clients, conversations, 1.0)  # warm-up
            await rest_closed_loop(server.port, conversations, 1.0, backend=False)
            for name in ("websocket", "http_user", "http_backend"):
                cpu0 = cpu_s(server.proc.pid)
                if name == "websocket":
                    count, elapsed = await closed_loop(clients, conversations, args.duration)
                else:
                    count, elapsed = await rest_closed_loop(
                        server.port, conversations, args.duration, backend=name == "http_backend"
                    )
                cpu1 = cpu_s(server.proc.pid)
                result[f"{name}_acked_per_s"] = count / elapsed
                result[f"{name}_server_cpu_us_per_send"] = (cpu1 - cpu0) / count * 1e6
            for c in clients:
                c.transport.close()
            result["http_user_vs_websocket"] = result["http_user_acked_per_s"] / result["websocket_acked_per_s"]
            return result

        return uvloop.run(main())


async def scraping(port: int, every_s: float, stop: asyncio.Event) -> int:
    """GET /metrics every *every_s* until *stop*; how many scrapes."""
    import aiohttp  # noqa: PLC0415  # only this benchmark needs an HTTP client

    n = 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        while not stop.is_set():
            async with http.get("/metrics") as r:
                assert r.status == 200
                await r.read()
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    return n


async def roundtrips(clients: list[Client], duration: float) -> tuple[int, float]:
    """The chat server's echo: each client asks `presence:query {user_ids: []}` (answered from
    memory, nothing stored) and waits for the answer, in a closed loop."""
    deadline = time.perf_counter() + duration
    count = 0

    async def run(client: Client, tag: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            reply = await client.request("presence:query", {"user_ids": []}, f"e{tag}-{i}")
            assert reply["type"] == "presence:state", reply
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c, i) for i, c in enumerate(clients)))
    return count, time.perf_counter() - t0


def bench_metrics(args: argparse.Namespace) -> dict[str, Any]:
    """Round trips answered from memory (the chat server's echo) and chat:sends, each per
    second and in server CPU per operation, without and with /metrics scraped once a second,
    alternating `--rounds` times against one server."""
    with fresh_sohbet(args.database) as server:

        async def main() -> dict[str, Any]:
            clients, conversations = await senders(server.port, args.senders)
            await closed_loop(clients, conversations, 1.0)  # warm-up
            await roundtrips(clients, 1.0)
            runs: dict[str, list[tuple[float, float]]] = {}
            scrapes = 0
            for n in range(args.rounds):
                for load in ("echo", "send"):
                    # Unscraped first in one round, scraped first in the next (A B, B A), so a
                    # run's place in the order (storage warmed by the run before) is no bias.
                    for scraped in (False, True) if n % 2 == 0 else (True, False):
                        stop = asyncio.Event()
                        scraper = asyncio.ensure_future(scraping(server.port, 1.0, stop)) if scraped else None
                        cpu0 = cpu_s(server.proc.pid)
                        if load == "echo":
                            count, elapsed = await roundtrips(clients, args.duration)
                        else:
                            count, elapsed = await closed_loop(clients, conversations, args.duration)
                        cpu1 = cpu_s(server.proc.pid)
                        stop.set()
                        if scraper is not None:
                            scrapes += await scraper
                        name = f"{load}_{'scraped' if scraped else 'unscraped'}"
                        runs.setdefault(name, []).append((count / elapsed, (cpu1 - cpu0) / count * 1e6))
            for c in clients:
                c.transport.close()
            return {
                "database": args.database,
                "senders": args.senders,
                "scrapes": scrapes,
                **{f"{name}_per_s": [round(r, 1) for r, _ in found] for name, found in runs.items()},
                **{f"{name}_cpu_us": [round(c, 2) for _, c in found] for name, found in runs.items()},
            }

        return uvloop.run(main())


# --- fan-out ---------------------------------------------------------------------------------------


def bench_fanout(args: argparse.Namespace) -> dict[str, Any]:
    members = [f"m{i}" for i in range(args.members - 1)]
    results: dict[str, Any] = {"members": args.members, "messages": args.messages}
    with tempfile.TemporaryDirectory() as data_dir:
        # Listing 10,000 members in one conversation:create takes ~90 KB: over the default 64 KiB.
        server = sohbet_server(f"sqlite:///{data_dir}/bench.db", data_dir, ["--max-message-bytes", str(1 << 20)])
        try:
            results["sohbet"] = uvloop.run(fanout_clients(server.port, server.proc.pid, members, args.messages, True))
        finally:
            lines = server.stop()
        results["sohbet"]["server_handoff_ms_median"] = handoff_ms_median(lines)
    peer = Server("fanout_peer.py", [])
    try:
        results["picows"] = uvloop.run(fanout_clients(peer.port, peer.proc.pid, members, args.messages, False))
    finally:
        lines = peer.stop()
    results["picows"]["server_handoff_ms_median"] = handoff_ms_median(lines)
    for name in ("sohbet", "picows"):
        r = results[name]
        r["deliveries_per_s_server"] = (args.members - 1) / (r["server_handoff_ms_median"] / 1000)
    results["sohbet_vs_picows_cpu_per_delivery"] = (
        results["sohbet"]["server_cpu_us_per_delivery"] / results["picows"]["server_cpu_us_per_delivery"]
    )
    results["sohbet_vs_picows_cpu_per_delivery_beyond_storing"] = (
        results["sohbet"]["server_cpu_us_per_delivery_beyond_storing"] / results["picows"]["server_cpu_us_per_delivery"]
    )
    return results


async def fanout_clients(port: int, pid: int, members: list[str], messages: int, chat: bool) -> dict[str, Any]:
    received = 0
    done = asyncio.Event()
    target = 0

    def on_event(payload: bytes) -> None:
        nonlocal received
        if payload.startswith(b'{"type":"chat:message"') or not chat:
            received += 1
            if received >= target:
                done.set()

    clients = await connect_many(port, members, on_event)
    sender = await connect(port, "sender")
    cid = 0
    if chat:
        reply = await sender.request("conversation:create", {"members": members}, "create")
        cid = reply["payload"]["conversation"]["id"]
    times = []
    user0, sys0 = cpu_split_s(pid)
    for i in range(messages):
        received = 0
        target = len(members)
        done.clear()
        t0 = time.perf_counter()
        if chat:
            payload = {"conversation_id": cid, "content": f"to all {i}", "client_id": f"f{i}"}
            sender.send_json({"type": "chat:send", "ref": f"f{i}", "payload": payload})
        else:
            sender.send_json({"type": "broadcast", "payload": {"content": f"to all {i}"}})
        await asyncio.wait_for(done.wait(), 60)
        times.append(time.perf_counter() - t0)
    user1, sys1 = cpu_split_s(pid)
    deliveries = messages * len(members)
    cpu_us = (user1 + sys1 - user0 - sys0) * 1e6
    result = {
        "last_member_read_ms_median": statistics.median(times) * 1000,
        "server_cpu_us_per_delivery": cpu_us / deliveries,
        # Its own code's part and the kernel's (sending, and on loopback the receiver's side too).
        "server_user_us_per_delivery": (user1 - user0) / deliveries * 1e6,
        "server_sys_us_per_delivery": (sys1 - sys0) / deliveries * 1e6,
        "deliveries_per_s_end_to_end": deliveries / sum(times),
    }
    if chat:
        result.update(await storing_alone(sender, pid))
        # What each delivery cost beyond storing and acking its message, which the peer does not do.
        stored = messages * result["server_cpu_us_per_send_alone"]
        result["server_cpu_us_per_delivery_beyond_storing"] = (cpu_us - stored) / deliveries
    for c in [*clients, sender]:
        c.transport.close()
    return result


async def storing_alone(sender: Client, pid: int, sends: int = 1000) -> dict[str, float]:
    """The same sends to a conversation whose other member is offline, one at a time: the server's
    CPU and the ack's latency for receiving, storing and acking a message, with nobody to deliver
    it to (1,000 sends: at ~0.3 ms each, enough clock ticks for a few percent)."""
    reply = await sender.request("conversation:create", {"members": ["nobody-connected"]}, "alone")
    cid = reply["payload"]["conversation"]["id"]
    acks = []
    before = sum(cpu_split_s(pid))
    for i in range(sends):
        started = time.perf_counter()
        payload = {"conversation_id": cid, "content": f"to all {i}", "client_id": f"alone{i}"}
        await sender.request("chat:send", payload, f"alone{i}")
        acks.append(time.perf_counter() - started)
    return {
        "server_cpu_us_per_send_alone": (sum(cpu_split_s(pid)) - before) / sends * 1e6,
        "ack_ms_median_alone": statistics.median(acks) * 1000,
    }


# --- idle memory -----------------------------------------------------------------------------------


def bench_idle(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_sohbet("sqlite") as server:

        async def main() -> dict[str, Any]:
            warm = await connect_many(server.port, [f"w{i}" for i in range(50)])
            await asyncio.sleep(1.0)
            before = rss_kib(server.proc.pid)
            clients = await connect_many(server.port, [f"u{i}" for i in range(args.users)])
            await asyncio.sleep(2.0)
            after = rss_kib(server.proc.pid)
            for c in [*warm, *clients]:
                c.transport.close()
            return {"users": args.users, "rss_before_kib": before, "rss_after_kib": after,
                    "kib_per_user": (after - before) / args.users}  # fmt: skip

        return uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["send", "api", "metrics", "fanout", "idle"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--rate", type=float, help="send: an open loop at this many sends a second")
    parser.add_argument("--write-gather", type=float, help="send: the server's --write-gather-ms")
    parser.add_argument(
        "--instructions", type=int, help="send: count the server's instructions (callgrind) over N sends a sender"
    )
    parser.add_argument("--callgrind-out", metavar="FILE", help="send --instructions: keep callgrind's profile")
    parser.add_argument("--sohbet", metavar="DIR", type=Path, help="measure this checkout's server (its .venv)")
    args = parser.parse_args()
    if args.sohbet is not None:
        MEASURED[0] = Checkout(args.sohbet.resolve() / "benchmarks", args.sohbet.resolve() / ".venv/bin/python")
    args.duration = min(args.duration, 60.0)
    args.members = min(args.members, 10_000)
    args.users = min(args.users, 19_000)  # one process may open 20,000 files here
    args.rounds = min(args.rounds, 10)
    modes = {"send": bench_send, "api": bench_api, "metrics": bench_metrics, "fanout": bench_fanout, "idle": bench_idle}
    result = modes[args.mode](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
