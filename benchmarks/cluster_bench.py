"""Cluster benchmarks: several `sohbet-server` instances on one Postgres, linked through Redis.

    python -P benchmarks/cluster_bench.py --runs 3        # all three parts, three runs (~2 min a run)
    python -P benchmarks/cluster_bench.py --parts mixed --rate 4   # one part, another load
    python -P benchmarks/cluster_bench.py --runs 1 --quick

Each run measures, every configuration on a fresh Postgres database (in the server at
127.0.0.1:5432, created and dropped here) and a Redis key prefix of its own:

1. latency: one client process holds a sender and a receiver on instance A and a receiver on
   instance B, all three in one group; paced messages (not a flood) from the sender. Each
   message reaches A's receiver straight from A and B's through Redis, so "same instance" and
   "cross instance" are the same messages, timed on one clock (receive - send).
2. mixed: N users in groups of G, spread evenly over 1, 2 and 3 instances (user i on instance
   i mod n, so every group spans every instance), each user sending at a fixed rate; acks and
   deliveries per second, and CPU per delivery: every sohbet process plus redis-server, from
   /proc/<pid>/stat, with Redis's share apart (and Postgres's backends of the database, not in
   the sum). "1, no Redis" is a single instance without `--redis-url`: what the link costs.
3. big group: a 10,000-member group spread over 3 instances against the same group on one;
   receivers in several client processes (one process may open 20,000 files), each reporting
   when its last member got each message (CLOCK_MONOTONIC is one clock for all processes).

Redis is a private `redis-server` started here on a free port (`--save ''`, no AOF), so its CPU
is its own. Servers run with `--send-rate 0 --frame-rate 0` and the per-address limits off, as
the other benchmarks do; nothing is pinned (up to 3 servers, Redis, Postgres and the clients
share the machine's cores). Everything is on 127.0.0.1, bounded, and every process started here
is stopped here by its PID. Every other run takes the configurations in the reverse order.
Results: a table on stdout, JSON in benchmarks/results/, and with matplotlib installed a plot of
CPU per delivery (docs/cluster-cpu.png).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # `python -P` leaves the script's directory out: the helpers live there

import asyncpg  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
import uvloop  # noqa: E402
from chat_bench import API_KEY, PG_ADMIN, SECRET, Client, connect_many  # noqa: E402
from loadgen import CLK_TCK, free_port, wait_listening  # noqa: E402
from loadgen import server_cpu_s as cpu_s  # noqa: E402

ROOT = HERE.parent
#: What each instance runs: fanout_server.py, or a variant given with --server-script (an
#: experiment: a script that patches the server, then runs fanout_server.py).
SERVER_SCRIPT = [HERE / "fanout_server.py"]
RESULTS = HERE / "results"
MESSAGE = b'{"type":"chat:message"'
ACK = b'{"type":"chat:ack"'
CREATED = b'{"type":"conversation:created"'
METRICS = ("sohbet_broker_events", "sohbet_cluster_messages", "sohbet_deliveries", "sohbet_messages_acked")


# --- processes: Redis, the instances -------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this run's own: nothing on disk, its CPU readable from /proc."""

    def __init__(self, directory: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", directory, "--maxclients", "1000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_listening(self.port, self.proc)
        self.client = redis.Redis(port=self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def commandstats(self) -> dict[str, dict[str, float]]:
        return {k.removeprefix("cmdstat_"): v for k, v in self.client.info("commandstats").items()}

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Instance:
    """One `sohbet-server` (benchmarks/fanout_server.py: the server plus a timer around each
    fan-out to more than 100 sockets, printed to its log)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu(self) -> float:
        return cpu_s(self.proc.pid)

    def metrics(self, wanted: tuple[str, ...] = METRICS) -> dict[str, float]:
        """The counters of /metrics this benchmark reads (broker events, ordering, deliveries)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(wanted):
                name, _, value = line.rpartition(" ")
                found[name.replace("_total", "")] = float(value)
        return found

    def handoffs_ms(self) -> list[float]:
        """Each `delivered MS COUNT` line of the log: one fan-out to more than 100 sockets."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [float(line.split()[1]) for line in lines if line.startswith("delivered ")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Setup:
    instances: list[Instance]
    database: str
    redis: PrivateRedis | None
    prefix: str
    pg_pids: list[int] = field(default_factory=list)

    def sohbet_cpu(self) -> float:
        return sum(i.cpu() for i in self.instances)

    def redis_cpu(self) -> float:
        return cpu_s(self.redis.proc.pid) if self.redis is not None else 0.0

    def postgres_cpu(self) -> float:
        total = 0.0
        for pid in self.pg_pids:
            with contextlib.suppress(OSError):
                total += cpu_s(pid)
        return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all processes, ours or not), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


async def _admin(statements: list[str]) -> None:
    con = await asyncpg.connect(PG_ADMIN)
    try:
        for statement in statements:
            await con.execute(statement)
    finally:
        await con.close()


async def _backend_pids(database: str) -> list[int]:
    con = await asyncpg.connect(PG_ADMIN)
    try:
        rows = await con.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await con.close()
    return [int(r["pid"]) for r in rows]


@contextlib.contextmanager
def cluster_of(
    n: int, redis_server: PrivateRedis | None, workdir: str, extra: list[str] | None = None
) -> Iterator[Setup]:
    """*n* instances (a, b, c) on a new database, linked through *redis_server* (None: one
    instance without Redis); stopped, and the database dropped, on the way out."""
    tag = uuid.uuid4().hex[:8]
    database = f"sohbet_cluster_bench_{tag}"
    asyncio.run(_admin([f'CREATE DATABASE "{database}"']))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + database
    prefix = f"bench{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
    common = [
        "--database-url", url, "--jwt-secret", SECRET, "--api-key", API_KEY, "--send-rate", "0",
        "--frame-rate", "0", "--query-rate", "0", "--address-rate", "0", "--max-connections-per-address", "0",
        "--presence-grace", "600", "--shutdown-timeout", "5", "--log-level", "warning", *(extra or []),
    ]  # fmt: skip
    if redis_server is not None:
        common += ["--redis-url", redis_server.url, "--redis-prefix", prefix]
    instances: list[Instance] = []
    try:
        for i in range(n):
            name = chr(ord("a") + i)
            port = free_port()
            log = Path(workdir) / f"{prefix}-{name}.log"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-I", str(SERVER_SCRIPT[0]), "--port", str(port),
                     "--instance-id", name, *common],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                )  # fmt: skip
            instances.append(Instance(name, port, proc, log))
            wait_listening(port, proc)
        setup = Setup(instances, database, redis_server, prefix)
        yield setup
    finally:
        for instance in instances:
            instance.stop()
        asyncio.run(_admin([f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)']))


def api(instance: Instance, method: str, path: str, body: Any = None) -> Any:
    """One call of the HTTP API with the API key (the application's backend)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{instance.port}{path}",
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None


def create_group(instance: Instance, members: list[str], title: str) -> int:
    return int(api(instance, "POST", "/api/conversations", {"members": members, "title": title})["conversation"]["id"])


def send_chat(client: Client, conversation: int, content: str) -> None:
    """A chat:send whose ref, client_id and content are all *content* (its ack is not waited for)."""
    payload = {"conversation_id": conversation, "content": content, "client_id": content}
    client.send_json({"type": "chat:send", "ref": content, "payload": payload})


# --- client processes ----------------------------------------------------------------------------


class Worker:
    """A client process: raw uvloop WebSocket clients (chat_bench.Client), driven by commands
    from the main process over a pipe; each command runs as a task and is answered by its id."""

    def __init__(self, commands: Connection, answers: Connection) -> None:
        self.commands = commands  # read from the event loop (non-blocking)
        self.answers = answers  # written blocking: a large answer waits for the main process to read
        self.clients: dict[str, Client] = {}
        self.home: dict[str, int] = {}  # user -> instance index
        self.records: list[tuple[float, int, bytes]] | None = None  # (time, receiver's instance, payload)
        self.watching: asyncio.Event | None = None
        self.watch_target = 0
        # Every chat:message's arrival outside cmd_latency/cmd_mixed, never reset: a watch is a
        # range of it. (Resetting it when the watch task started lost the arrivals read in the
        # same loop iteration as the command, when the message beat the worker to it.)
        self.message_times: list[float] = []
        self.created = 0
        self.calls = 0
        self.done: asyncio.Future[None] | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.commands.fileno(), self._readable)
        await self.done

    def _readable(self) -> None:
        while self.commands.poll():
            try:
                rid, name, args = self.commands.recv()
            except EOFError:  # the main process is gone
                rid, name, args = 0, "exit", ()
            if name == "exit":
                for client in self.clients.values():
                    client.transport.close()
                assert self.done is not None
                if not self.done.done():
                    self.done.set_result(None)
                return
            task = asyncio.ensure_future(getattr(self, f"cmd_{name}")(*args))
            task.add_done_callback(lambda t, rid=rid: self._answer(rid, t))

    def _answer(self, rid: int, task: asyncio.Task[Any]) -> None:
        try:
            answer = (rid, True, task.result())
        except Exception:
            answer = (rid, False, traceback.format_exc())
        self.answers.send(answer)

    def _on_event(self, instance: int) -> Callable[[bytes], None]:
        def on_event(payload: bytes) -> None:
            if self.records is not None:
                self.records.append((time.perf_counter(), instance, payload))
            elif payload.startswith(MESSAGE):
                self.message_times.append(time.perf_counter())
                if len(self.message_times) >= self.watch_target and self.watching is not None:
                    self.watching.set()
            elif payload.startswith(CREATED):
                self.created += 1

        return on_event

    async def cmd_connect(self, users: list[tuple[str, int, int]]) -> float:
        """Connect (user, port, instance index) each, 100 handshakes at a time; seconds it took."""
        t0 = time.perf_counter()
        by_port: dict[tuple[int, int], list[str]] = {}
        for user, port, instance in users:
            by_port.setdefault((port, instance), []).append(user)
            self.home[user] = instance
        for (port, instance), names in by_port.items():
            clients = await connect_many(port, names, self._on_event(instance), concurrency=100)
            self.clients.update(zip(names, clients, strict=True))
        return time.perf_counter() - t0

    async def cmd_wait_created(self, expected: int, timeout: float) -> int:
        deadline = time.perf_counter() + timeout
        while self.created < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return self.created

    async def cmd_send(self, user: str, conversation: int, content: str) -> float:
        """One chat:send (its ack is not waited for); when it was written."""
        t = time.perf_counter()
        send_chat(self.clients[user], conversation, content)
        return t

    async def cmd_watch(self, start: int, count: int, timeout: float) -> list[float]:
        """Wait until chat:messages number *start* to *start* + *count* have arrived (one
        message to every member here); the time each arrived (fewer if *timeout* ran out)."""
        self.watch_target = start + count
        self.watching = asyncio.Event()
        if len(self.message_times) < self.watch_target:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watching.wait(), timeout)
        self.watching = None
        return self.message_times[start : start + count]

    async def cmd_status(self) -> tuple[int, int]:
        """chat:messages counted so far; connections the server has closed."""
        closed = sum(1 for c in self.clients.values() if c.transport is None or c.transport.is_closing())
        return len(self.message_times), closed

    async def cmd_latency(self, sender: str, conversation: int, count: int, rate: float) -> dict[str, Any]:
        """Paced sends from *sender*; the receive - send time of each delivery, by whether the
        receiver is on the sender's instance."""
        self.records = []
        self.calls += 1
        sent: dict[str, float] = {}
        client = self.clients[sender]
        start = time.perf_counter() + 0.2
        for i in range(count):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            content = f"L{self.calls}-{i}"  # a client_id used before would be answered as a repeat
            sent[content] = time.perf_counter()
            send_chat(client, conversation, content)
        deadline = time.perf_counter() + 10
        expected = count * (len(self.clients) - 1) + count  # deliveries and acks
        while len(self.records) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        records, self.records = self.records, None
        home = self.home[sender]
        same: list[float] = []
        cross: list[float] = []
        acks: list[float] = []
        for t, instance, payload in records:
            if payload.startswith(MESSAGE):
                content = orjson.loads(payload)["payload"]["message"]["content"]
                (same if instance == home else cross).append((t - sent[content]) * 1e6)
            elif payload.startswith(ACK):
                acks.append((t - sent[orjson.loads(payload)["ref"]]) * 1e6)
        return {"same_us": same, "cross_us": cross, "ack_us": acks}

    async def cmd_mixed(
        self, groups: list[tuple[int, list[str]]], rate: float, window: tuple[float, float, float], phase: float
    ) -> dict[str, Any]:
        """Every user of *groups* sends to their group at *rate* per second from *t0* (offset by
        *phase* of one period, to interleave with the other processes) until the window
        [t0 + warm, t0 + warm + duration] ends; what was acked and delivered in the window."""
        t0, warm, duration = window
        senders = [(user, cid) for cid, members in groups for user in members]
        interval = 1.0 / (rate * len(senders))
        begin, end = t0 + warm, t0 + warm + duration
        self.records = []
        sent: dict[str, float] = {}
        k = 0
        while True:
            at = t0 + (phase + k) * interval
            if at >= end:
                break
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            while t0 + (phase + k) * interval <= now and t0 + (phase + k) * interval < end:
                user, cid = senders[k % len(senders)]
                content = f"{user}:{k // len(senders)}"
                sent[content] = time.perf_counter()
                send_chat(self.clients[user], cid, content)
                k += 1
        await asyncio.sleep(1.5)  # what is in flight arrives
        records, self.records = self.records, None
        acked = delivered = 0
        lat: dict[str, list[float]] = {"same_us": [], "cross_us": [], "ack_us": []}
        for t, instance, payload in records:
            if payload.startswith(MESSAGE):
                content = orjson.loads(payload)["payload"]["message"]["content"]
                delivered += begin <= t < end
                s = sent[content]
                if begin <= s < end:
                    sender = content.rsplit(":", 1)[0]
                    lat["same_us" if self.home[sender] == instance else "cross_us"].append((t - s) * 1e6)
            elif payload.startswith(ACK):
                ref = orjson.loads(payload)["ref"]
                acked += begin <= t < end
                s = sent[ref]
                if begin <= s < end:
                    lat["ack_us"].append((t - s) * 1e6)
        in_window = sum(begin <= s < end for s in sent.values())
        return {"sent_in_window": in_window, "acked_in_window": acked, "delivered_in_window": delivered,
                "sent_total": len(sent), **lat}  # fmt: skip


def _worker_main(commands: Connection, answers: Connection) -> None:
    uvloop.run(Worker(commands, answers).serve())


class Workers:
    """The client processes, and calls to them from the (synchronous) main process."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.commands: list[Connection] = []
        self.replies: list[Connection] = []
        self.procs = []
        for _ in range(n):
            their_commands, commands = ctx.Pipe(duplex=False)
            replies, their_replies = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(their_commands, their_replies), daemon=True)
            proc.start()
            their_commands.close()
            their_replies.close()
            self.commands.append(commands)
            self.replies.append(replies)
            self.procs.append(proc)
        self.next_id = 0
        self.answers: list[dict[int, Any]] = [{} for _ in range(n)]

    def ask(self, w: int, name: str, *args: Any) -> int:
        self.next_id += 1
        self.commands[w].send((self.next_id, name, args))
        return self.next_id

    def answer(self, w: int, rid: int, timeout: float = 300.0) -> Any:
        deadline = time.monotonic() + timeout
        while rid not in self.answers[w]:
            if not self.replies[w].poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"client process {w} did not answer in {timeout} s")
            got, ok, value = self.replies[w].recv()
            self.answers[w][got] = (ok, value)
        ok, value = self.answers[w].pop(rid)
        if not ok:
            raise RuntimeError(f"client process {w} failed:\n{value}")
        return value

    def call(self, w: int, name: str, *args: Any, timeout: float = 300.0) -> Any:
        return self.answer(w, self.ask(w, name, *args), timeout)

    def call_all(self, name: str, per_worker: list[tuple[Any, ...]], timeout: float = 300.0) -> list[Any]:
        rids = [self.ask(w, name, *args) for w, args in enumerate(per_worker)]
        return [self.answer(w, rid, timeout) for w, rid in enumerate(rids)]

    def cpu(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs if p.pid is not None)

    def close(self) -> None:
        for commands in self.commands:
            with contextlib.suppress(OSError):
                commands.send((0, "exit", ()))
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def workers(n: int) -> Iterator[Workers]:
    pool = Workers(n)
    try:
        yield pool
    finally:
        pool.close()


# --- the three parts ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_latency(args: argparse.Namespace, redis_server: PrivateRedis, workdir: str) -> dict[str, Any]:
    with cluster_of(2, redis_server, workdir) as setup, workers(1) as pool:
        a, b = setup.instances
        cid = create_group(a, ["lat_s", "lat_a", "lat_b"], "latency")
        pool.call(0, "connect", [("lat_s", a.port, 0), ("lat_a", a.port, 0), ("lat_b", b.port, 1)])
        pool.call(0, "latency", "lat_s", cid, 50, args.latency_rate)  # warm-up
        got = pool.call(0, "latency", "lat_s", cid, args.latency_messages, args.latency_rate)
    same, cross, acks = got["same_us"], got["cross_us"], got["ack_us"]
    return {
        "messages": args.latency_messages, "rate_per_s": args.latency_rate,
        "received_same": len(same), "received_cross": len(cross),
        "same_p50_us": pct(same, 0.5), "same_p99_us": pct(same, 0.99),
        "cross_p50_us": pct(cross, 0.5), "cross_p99_us": pct(cross, 0.99),
        "ack_p50_us": pct(acks, 0.5), "ack_p99_us": pct(acks, 0.99),
        "cross_minus_same_p50_us": pct(cross, 0.5) - pct(same, 0.5),
    }  # fmt: skip


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def bench_mixed(
    n: int, linked: bool, args: argparse.Namespace, redis_server: PrivateRedis, workdir: str
) -> dict[str, Any]:
    """*args.users* users in groups of *args.group*, user i on instance i mod n."""
    users = [f"u{i}" for i in range(args.users)]
    groups = [users[i : i + args.group] for i in range(0, len(users), args.group)]
    with cluster_of(n, redis_server if linked else None, workdir) as setup, workers(args.mixed_procs) as pool:
        ids = [create_group(setup.instances[0], members, f"g{g}") for g, members in enumerate(groups)]
        home = {user: i % n for i, user in enumerate(users)}
        share: list[list[tuple[int, list[str]]]] = [[] for _ in range(args.mixed_procs)]
        for g, (cid, members) in enumerate(zip(ids, groups, strict=True)):
            share[g % args.mixed_procs].append((cid, members))
        connect_s = pool.call_all("connect", [
            ([(u, setup.instances[home[u]].port, home[u]) for _, members in mine for u in members],) for mine in share
        ])  # fmt: skip
        setup.pg_pids = asyncio.run(_backend_pids(setup.database))
        t0 = time.perf_counter() + 0.5
        rids = [
            pool.ask(w, "mixed", mine, args.rate, (t0, args.warmup, args.duration), w / args.mixed_procs)
            for w, mine in enumerate(share)
        ]
        time.sleep(max(0.0, t0 + args.warmup - time.perf_counter()))
        before = (setup.sohbet_cpu(), setup.redis_cpu(), setup.postgres_cpu(), pool.cpu(), machine_busy_s())
        metrics0 = [i.metrics() for i in setup.instances]
        if linked:
            redis_server.client.config_resetstat()
        time.sleep(max(0.0, t0 + args.warmup + args.duration - time.perf_counter()))
        after = (setup.sohbet_cpu(), setup.redis_cpu(), setup.postgres_cpu(), pool.cpu(), machine_busy_s())
        metrics1 = [i.metrics() for i in setup.instances]
        stats = redis_server.commandstats() if linked else {}
        got = [pool.answer(w, rid) for w, rid in enumerate(rids)]
    sohbet, rds, pg, clients, machine = (x1 - x0 for x0, x1 in zip(before, after, strict=True))
    acked = sum(g["acked_in_window"] for g in got)
    delivered = sum(g["delivered_in_window"] for g in got)
    same = [x for g in got for x in g["same_us"]]
    cross = [x for g in got for x in g["cross_us"]]
    acks = [x for g in got for x in g["ack_us"]]
    d = args.duration
    per_instance = [_delta(m1, m0) for m0, m1 in zip(metrics0, metrics1, strict=True)]
    return {
        "instances": n, "redis": linked, "users": args.users, "group": args.group, "rate_per_user": args.rate,
        "duration_s": d, "connect_s": max(connect_s),
        "offered_per_s": args.users * args.rate,
        "acked_per_s": acked / d, "deliveries_per_s": delivered / d,
        "sent_in_window": sum(g["sent_in_window"] for g in got),
        "cpu_sohbet_s": sohbet, "cpu_redis_s": rds, "cpu_postgres_backends_s": pg, "cpu_clients_s": clients,
        "cpu_us_per_delivery": (sohbet + rds) / delivered * 1e6,
        "cpu_us_per_delivery_sohbet": sohbet / delivered * 1e6,
        "cpu_us_per_delivery_redis": rds / delivered * 1e6,
        "cpu_us_per_delivery_postgres_backends": pg / delivered * 1e6,
        "redis_share": rds / (sohbet + rds),
        "cpu_us_per_message_sohbet_redis": (sohbet + rds) / max(acked, 1) * 1e6,
        "machine_busy_share": (sohbet + rds + pg + clients) / d / (os.cpu_count() or 1),
        "machine_busy_share_all_processes": machine / d / (os.cpu_count() or 1),
        "ack_p50_us": pct(acks, 0.5), "ack_p99_us": pct(acks, 0.99),
        "delivery_same_p50_us": pct(same, 0.5), "delivery_same_p99_us": pct(same, 0.99),
        "delivery_cross_p50_us": pct(cross, 0.5), "delivery_cross_p99_us": pct(cross, 0.99),
        "per_instance_metrics": per_instance,
        "redis_commandstats": {k: stats[k] for k in ("publish", "evalsha", "eval", "subscribe", "set") if k in stats},
    }  # fmt: skip


def bench_big_group(n: int, args: argparse.Namespace, redis_server: PrivateRedis, workdir: str) -> dict[str, Any]:
    """A group of *args.members* (the sender included) with member i on instance i mod n, the
    receivers spread over *args.big_procs* client processes; one warm-up message, then
    *args.big_messages*, each after the last one has reached every member."""
    receivers = [f"m{i}" for i in range(args.members - 1)]
    procs = args.big_procs
    # 10,000 members named in one POST: ~90 KB, over the 64 KiB a user's message may be.
    extra = ["--max-message-bytes", str(1 << 20)]
    with cluster_of(n, redis_server, workdir, extra) as setup, workers(procs) as pool:
        ports = [i.port for i in setup.instances]
        share = [[(u, ports[i % n], i % n) for i, u in enumerate(receivers) if i % procs == w] for w in range(procs)]
        share[0].append(("sender", ports[0], 0))
        t = time.perf_counter()
        pool.call_all("connect", [(mine,) for mine in share], timeout=600)
        connect_s = time.perf_counter() - t
        t = time.perf_counter()
        cid = create_group(setup.instances[0], ["sender", *receivers], "big")
        counts = pool.call_all("wait_created", [(len(mine), 120.0) for mine in share], timeout=200)
        if counts != [len(mine) for mine in share]:
            raise RuntimeError(f"conversation:created reached {counts} of {[len(mine) for mine in share]}")
        created_s = time.perf_counter() - t
        targets = [sum(1 for u, _, _ in mine if u != "sender") for mine in share]
        times: list[dict[str, float]] = []
        cpu0 = (setup.sohbet_cpu(), setup.redis_cpu())
        for i in range(args.big_messages + 1):
            rids = [pool.ask(w, "watch", i * targets[w], targets[w], 60.0) for w in range(procs)]
            sent_at = pool.call(0, "send", "sender", cid, f"B{i}")
            arrived = [pool.answer(w, rid, timeout=120) for w, rid in enumerate(rids)]
            everyone = sorted(x for got in arrived for x in got)
            if len(everyone) < len(receivers):
                time.sleep(5)
                status = pool.call_all("status", [() for _ in range(procs)])
                closes = [inst.metrics(("sohbet_slow_consumers", "sohbet_closes")) for inst in setup.instances]
                raise RuntimeError(
                    f"message {i}: {len(everyone)} of {len(receivers)} members got it in 60 s; 5 s later, "
                    f"(messages counted, connections closed) by client process: {status} against "
                    f"{[(i + 1) * t for t in targets]} expected; closes by instance: {closes}"
                )
            middle = everyone[len(everyone) // 2]
            times.append({"last_ms": (everyone[-1] - sent_at) * 1e3, "median_ms": (middle - sent_at) * 1e3,
                          "first_ms": (everyone[0] - sent_at) * 1e3})  # fmt: skip
            if i == 0:
                cpu0 = (setup.sohbet_cpu(), setup.redis_cpu())
            time.sleep(0.3)
        cpu1 = (setup.sohbet_cpu(), setup.redis_cpu())
        handoffs = [inst.handoffs_ms()[-args.big_messages :] for inst in setup.instances]
    measured = times[1:]
    deliveries = args.big_messages * len(receivers)
    return {
        "instances": n, "members": args.members, "messages": args.big_messages,
        "connect_s": connect_s, "created_everywhere_s": created_s, "created_counts": counts,
        "last_member_ms": [m["last_ms"] for m in measured],
        "last_member_ms_median": statistics.median(m["last_ms"] for m in measured),
        "median_member_ms_median": statistics.median(m["median_ms"] for m in measured),
        "first_member_ms_median": statistics.median(m["first_ms"] for m in measured),
        "warmup_last_member_ms": times[0]["last_ms"],
        "server_handoff_ms_median_by_instance": [statistics.median(h) if h else None for h in handoffs],
        "cpu_us_per_delivery_sohbet": (cpu1[0] - cpu0[0]) / deliveries * 1e6,
        "cpu_us_per_delivery_redis": (cpu1[1] - cpu0[1]) / deliveries * 1e6,
    }  # fmt: skip


# --- running and reporting -----------------------------------------------------------------------


def one_run(index: int, args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {
        "run": index,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as workdir:
        redis_server = PrivateRedis(workdir)
        try:
            if "latency" in args.parts:
                print(f"run {index}: latency", file=sys.stderr, flush=True)
                run["latency"] = bench_latency(args, redis_server, workdir)
            order = [(1, False), (1, True), (2, True), (3, True)]
            if not args.baseline:
                order = order[1:]
            if index % 2 == 0:  # every other run the other way round: no bias from the order
                order.reverse()
            mixed = []
            for n, linked in order if "mixed" in args.parts else ():
                print(
                    f"run {index}: mixed load, {n} instance(s){'' if linked else ', no redis'}",
                    file=sys.stderr,
                    flush=True,
                )
                mixed.append(bench_mixed(n, linked, args, redis_server, workdir))
            run["mixed"] = sorted(mixed, key=lambda m: (m["instances"], m["redis"]))
            big = []
            for n in ((3, 1) if index % 2 else (1, 3)) if "big" in args.parts else ():
                print(f"run {index}: {args.members}-member group on {n} instance(s)", file=sys.stderr, flush=True)
                big.append(bench_big_group(n, args, redis_server, workdir))
            run["big_group"] = sorted(big, key=lambda b: b["instances"])
        finally:
            redis_server.stop()
    run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return run


def _latency_table(runs: list[dict[str, Any]]) -> list[str]:
    out = [
        "### Delivery latency, same instance vs cross instance (paced, one client process)",
        "",
        "| run | same p50 / p99 µs | cross p50 / p99 µs | cross - same (p50) | ack p50 / p99 µs |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        x = r["latency"]
        out.append(
            f"| {r['run']} | {x['same_p50_us']:.0f} / {x['same_p99_us']:.0f} | {x['cross_p50_us']:.0f} / "
            f"{x['cross_p99_us']:.0f} | +{x['cross_minus_same_p50_us']:.0f} | "
            f"{x['ack_p50_us']:.0f} / {x['ack_p99_us']:.0f} |"
        )
    return out


def _mixed_table(runs: list[dict[str, Any]]) -> list[str]:
    m0 = runs[0]["mixed"][0]
    out = [
        f"### Mixed load: {m0['users']} users in groups of {m0['group']}, {m0['rate_per_user']:g} sends/s each, "
        f"{m0['duration_s']:g} s",
        "",
        "| run | instances | acked/s | deliveries/s | CPU µs / delivery (sohbet + redis) | sohbet | redis "
        "| redis share | postgres backends µs / delivery | delivery p50 / p99 µs (same; cross) | gaps "
        "| machine busy: ours / all |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for m in r["mixed"]:
            name = f"{m['instances']}" + ("" if m["redis"] else ", no Redis")
            cross = ""
            if m["delivery_cross_p50_us"] == m["delivery_cross_p50_us"]:  # not NaN: there were some
                cross = f"; {m['delivery_cross_p50_us']:.0f} / {m['delivery_cross_p99_us']:.0f}"
            gaps = sum(p.get('sohbet_cluster_messages{result="gaps"}', 0) for p in m["per_instance_metrics"])
            out.append(
                f"| {r['run']} | {name} | {m['acked_per_s']:,.0f} | {m['deliveries_per_s']:,.0f} | "
                f"{m['cpu_us_per_delivery']:.2f} | {m['cpu_us_per_delivery_sohbet']:.2f} | "
                f"{m['cpu_us_per_delivery_redis']:.2f} | {m['redis_share']:.0%} | "
                f"{m['cpu_us_per_delivery_postgres_backends']:.2f} | {m['delivery_same_p50_us']:.0f} / "
                f"{m['delivery_same_p99_us']:.0f}{cross} | {gaps:.0f} | "
                f"{m['machine_busy_share']:.0%} / {m['machine_busy_share_all_processes']:.0%} |"
            )
    return out


def _big_table(runs: list[dict[str, Any]]) -> list[str]:
    b0 = runs[0]["big_group"][0]
    out = [
        f"### One message to a {b0['members']:,}-member group (median of {b0['messages']})",
        "",
        "| run | instances | last member ms | median member ms | server handoff ms by instance "
        "| CPU µs / delivery (sohbet; redis) | connecting everyone, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for b in r["big_group"]:
            handoff = ", ".join(f"{h:.1f}" for h in b["server_handoff_ms_median_by_instance"] if h is not None)
            out.append(
                f"| {r['run']} | {b['instances']} | {b['last_member_ms_median']:.1f} | "
                f"{b['median_member_ms_median']:.1f} | {handoff} | {b['cpu_us_per_delivery_sohbet']:.2f}; "
                f"{b['cpu_us_per_delivery_redis']:.3f} | {b['connect_s']:.1f} |"
            )
    return out


def report(runs: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for key, table in (("latency", _latency_table), ("mixed", _mixed_table), ("big_group", _big_table)):
        if runs[0].get(key):
            out += [*table(runs), ""]
    return "\n".join(out)


def plot(runs: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415  # optional: the plot only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    configs = [(m["instances"], m["redis"]) for m in runs[0]["mixed"]]
    labels = [
        f"{n} instance{'s' if n > 1 else ''}\n" + ("through Redis" if linked else "no Redis") for n, linked in configs
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(runs)
    for k, r in enumerate(runs):
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(configs))]
        sohbet = [m["cpu_us_per_delivery_sohbet"] for m in r["mixed"]]
        rds = [m["cpu_us_per_delivery_redis"] for m in r["mixed"]]
        ax.bar(xs, sohbet, width * 0.9, color="#4c72b0", label="sohbet servers" if k == 0 else None)
        ax.bar(xs, rds, width * 0.9, bottom=sohbet, color="#dd8452", label="redis-server" if k == 0 else None)
    ax.set_xticks(range(len(configs)), labels)
    ax.set_ylabel("CPU µs per delivery")
    m0 = runs[0]["mixed"][0]
    ax.set_title(
        f"Mixed load: {m0['users']} users, groups of {m0['group']}, {m0['rate_per_user']:g} msg/s each "
        f"(bars: runs 1 to {len(runs)})",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--parts", default="latency,mixed,big", help="which parts to run (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the script")
    parser.add_argument("--latency-messages", type=int, default=2000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="messages per second (paced)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--group", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="sends per second per user")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--mixed-procs", type=int, default=2)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip 1 instance without Redis")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--big-messages", type=int, default=5)
    parser.add_argument("--big-procs", type=int, default=4)
    parser.add_argument("--server-script", type=Path, help="run this instead of fanout_server.py (an experiment)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "cluster-cpu.png")
    args = parser.parse_args()
    if args.quick:
        args.latency_messages, args.users, args.duration, args.members = 300, 120, 3.0, 1000
    args.parts = args.parts.split(",")
    if args.server_script is not None:
        SERVER_SCRIPT[0] = args.server_script.resolve()
    args.runs = min(args.runs, 5)
    args.duration = min(args.duration, 30.0)
    args.members = min(args.members, 10_000)  # the server's group limit
    args.users = min(args.users, 3000)
    if (args.members // args.big_procs) > 15_000:
        raise SystemExit("at most 15,000 connections per client process (20,000 open files)")
    started = time.strftime("%Y%m%d-%H%M%S")  # as cluster_channels.py names its results
    load_before = os.getloadavg()
    runs = []
    for index in range(1, args.runs + 1):
        runs.append(one_run(index, args))
    table = report(runs)
    print(table)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "sohbet"], capture_output=True, text=True, check=False
    )
    result = {
        "benchmark": "cluster", "started": started, "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu": _cpu_model(), "load_before": load_before},
        "commit": commit.stdout.strip(), "sohbet_tree_modified": bool(dirty.stdout.strip()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cluster-{started}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {out.relative_to(ROOT)}")
    if not args.quick and runs[0].get("mixed") and plot(runs, args.plot):
        print(f"plot: {args.plot}")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
