"""The soak's machinery, shared by `benchmarks/soak.py` (10,000 users, 10 minutes) and
`tests/integration/test_soak.py` (300 users, under a minute, in CI).

A `sohbet-server` process on a fresh database; users in groups of 10 to 1,000 (created through
the HTTP API with the API key); their connections spread over client processes (forked, each a
uvloop loop of raw WebSocket clients framed with `sohbet.ws._frames`, driven by commands over a
pipe). Then cycles of churn, load and idle:

- churn (every cycle): some users disconnect, others connect (new ones and ones
  who left earlier) and `sync`;
- load: steady rates of `chat:send`, `chat:typing`, `chat:read`, `chat:history` and
  `presence:query` (per user, and for the requests that fan out, at most so many per group, so
  a group of 1,000 is not a flood); then everything asked is answered and delivered (settle),
  and every acked message is checked to have reached every other member connected, exactly once;
- idle: nothing is sent; the server's RSS at its end is the figure a leak would move.

At the end everyone disconnects, and once the grace period has passed every table the server
reports in `sohbet_entries` must be back at its level before the load (those capped by design,
`BOUNDED_TABLES`, excepted). Throughout, the server's RSS is sampled every second from /proc,
`error` answers and close codes other than 1000 are counted, and the server's log is read for
tracebacks and ERROR lines at the end.

Everything is on 127.0.0.1, bounded in users and time, and every process started here is
stopped here, by its PID. Only the standard library, orjson, uvloop, asyncpg and sohbet itself
are used, so the tool and the test share it as it is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import orjson
import uvloop

from sohbet.api.metrics import BOUNDED_TABLES
from sohbet.auth import issue_token
from sohbet.config import AuthConfig
from sohbet.ws import _frames

from .prockit import cpu_s, free_port, rss_kib

__all__ = ["BOUNDED_TABLES", "SoakConfig", "run_soak"]

SECRET: Final = "soak-secret-of-at-least-32-bytes-long!!"
API_KEY: Final = "soak-api-key-of-at-least-32-bytes-long!!"
AUTH: Final = AuthConfig(secret=SECRET)
PG_ADMIN: Final = os.environ.get(
    "SOHBET_BENCH_POSTGRES_URL",
    os.environ.get("SOHBET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
TOKEN_TTL_S: Final = 4 * 3600.0  # longer than any run: a 4001 would be a failure of the run
NORMAL_CLOSE: Final = 1000
OP_TEXT: Final = 1
OP_CLOSE: Final = 8
OP_PING: Final = 9
OP_PONG: Final = 10
#: Request kinds of the load, as the protocol names them (docs/protocol.md).
SEND, TYPING, READ, HISTORY, PRESENCE, SYNC = (
    "chat:send", "chat:typing", "chat:read", "chat:history", "presence:query", "sync",
)  # fmt: skip
#: The requests whose answer is a delivery to the group: capped per group (`SoakConfig.group_cap_per_s`).
FAN_OUT: Final = frozenset({SEND, TYPING, READ})
LOG_PROBLEMS: Final = ("Traceback", " ERROR ", " CRITICAL ")


@dataclass
class SoakConfig:
    """What one soak does; the defaults are the 10-minute run's per-user rates."""

    users: int = 10_000  # connected at once
    cycles: int = 8
    load_s: float = 45.0
    idle_s: float = 25.0
    churn: float = 0.1  # the share of connected users replaced at the start of each cycle
    reserve: float = 0.2  # users beyond `users` in the groups, to churn with (new ones)
    procs: int = 0  # client processes; 0: one per 4,000 users, at least 2
    database: str = "postgres"  # or "sqlite"
    # Requests per connected user per second, and of the fan-out kinds at most this many per group.
    send_per_s: float = 0.03
    typing_per_s: float = 0.02
    read_per_s: float = 0.01
    history_per_s: float = 0.01
    presence_per_s: float = 0.01
    group_cap_per_s: float = 1.0
    presence_grace_s: float = 10.0
    ack_p99_bound_ms: float = 250.0
    rss_tolerance: float = 0.05
    pin: bool = True  # server on CPU 0, clients on CPU 1
    nice: int = 0
    seed: int = 12
    max_minutes: float = 15.0  # a bound on the whole run, whatever the settings

    @property
    def pool(self) -> int:
        return self.users + max(1, round(self.users * self.reserve))

    @property
    def worker_count(self) -> int:
        return self.procs or max(2, math.ceil(self.pool / 4000))


# --- groups ----------------------------------------------------------------------------------


def plan_groups(pool: int, rng: random.Random) -> list[list[str]]:
    """Every user of the pool in one group: a quarter of them in groups of up to 1,000 (a few),
    a tenth in groups of 100-300, the rest in groups of 10-50."""
    users = [f"u{i}" for i in range(pool)]
    rng.shuffle(users)
    sizes: list[int] = []
    big = min(1000, max(50, pool // 8))
    for _ in range(max(1, round(pool * 0.25 / big))):
        sizes.append(big)
    medium = pool // 10
    while medium >= 100:
        size = min(medium, rng.randint(100, 300))
        sizes.append(size)
        medium -= size
    left = pool - sum(sizes)
    while left > 0:
        size = min(left, rng.randint(10, 50))
        if left - size < 10:
            size = left
        sizes.append(size)
        left -= size
    groups, at = [], 0
    for size in sizes:
        groups.append(users[at : at + size])
        at += size
    return groups


# --- the server --------------------------------------------------------------------------------


async def _pg(statement: str) -> None:
    import asyncpg  # noqa: PLC0415  # only a Postgres run needs it

    con = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await con.execute(statement)
    finally:
        await con.close()


class SoakServer:
    """`sohbet-server` on a fresh database (a new Postgres one, dropped at the end, or SQLite in
    a temporary directory), with its log in a file; limits per address off (every client is
    127.0.0.1), per-user limits at their defaults (the load is far below them, and their buckets
    are among the tables checked)."""

    def __init__(self, config: SoakConfig, workdir: str) -> None:
        self.config = config
        self.port = free_port()
        self.log = Path(workdir) / "server.log"
        self.database: str | None = None
        if config.database == "postgres":
            self.database = f"sohbet_soak_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            asyncio.run(_pg(f'CREATE DATABASE "{self.database}"'))
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.database
        else:
            url = f"sqlite:///{workdir}/soak.db"
        binary = shutil.which("sohbet-server", path=str(Path(sys.executable).parent)) or "sohbet-server"
        command = [
            binary, "--host", "127.0.0.1", "--port", str(self.port), "--database-url", url, "--data-dir", workdir,
            "--jwt-secret", SECRET, "--api-key", API_KEY, "--address-rate", "0", "--max-connections-per-address", "0",
            "--presence-grace", str(config.presence_grace_s), "--shutdown-timeout", "10", "--log-level", "warning",
        ]  # fmt: skip
        if config.pin and (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
            command = ["taskset", "-c", "0", *command]
        if config.nice:
            command = ["nice", "-n", str(config.nice), *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sohbet-server exited: {self.log.read_text(errors='replace')[-2000:]}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("sohbet-server did not become ready")

    @property
    def pid(self) -> int:
        """The server's own PID (under `nice` and `taskset`, which exec it, the same one)."""
        return self.proc.pid

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else orjson.dumps(body),
            method=method,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return orjson.loads(response.read() or b"null")

    def entries(self) -> dict[str, int]:
        """`sohbet_entries` by table, from one scrape of /metrics (a rendering is reused for up to
        a second: wait that long after a change before trusting it)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("sohbet_entries{"):
                labels, _, value = line.rpartition(" ")
                found[labels.split('table="', 1)[1].split('"', 1)[0]] = int(float(value))
        return found

    def stop(self) -> int:
        """SIGTERM, and its exit status (killed after 60 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.database is not None:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            self.database = None
        return self.proc.returncode

    def log_problems(self) -> list[str]:
        """Lines of the server's log that are tracebacks or errors."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if any(p in line for p in LOG_PROBLEMS)]


class RssSampler(threading.Thread):
    """The server's RSS every second, with the phase it fell in."""

    def __init__(self, pid: int, started: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.started = started
        self.phase = "setup"
        self.samples: list[tuple[float, int, str]] = []  # (seconds since start, KiB, phase)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.monotonic() - self.started, rss_kib(self.pid), self.phase))
            self._halt.wait(1.0)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# --- client processes ------------------------------------------------------------------------


class SoakClient(asyncio.Protocol):
    """One user's connection: upgrade, then JSON text frames; answers pings; reports closes."""

    def __init__(self, worker: Worker, user: str, token: str) -> None:
        self.worker = worker
        self.user = user
        key = base64.b64encode(os.urandom(16)).decode()
        self.upgrade = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.transport: Any = None
        self.parser = _frames.FrameParser(client=True, max_frame_bytes=1 << 24)
        self.head = b""
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.closing = False  # we started the close
        self.mask = os.urandom(4)

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are no asyncio.Transport
        self.transport = transport
        transport.write(self.upgrade)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.head[:20]:
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(self.head[:200].decode(errors="replace")))
                return
            self.upgraded = True
            data, self.head = self.head[end + 4 :], b""
        for frame in self.parser.feed(data):
            opcode = frame.opcode
            if opcode == OP_TEXT:
                if not self.ready.done():
                    self.ready.set_result(None)  # hello
                else:
                    self.worker.on_text(self, frame.payload)
            elif opcode == OP_PING:
                self.write(_frames.build_frame(OP_PONG, frame.payload, mask=self.mask))
            elif opcode == OP_CLOSE:
                code = _frames.parse_close(frame.payload)[0] if frame.payload else 1005
                if not self.closing:
                    self.worker.closes[str(code)] += 1
                    self.write(_frames.build_close(code if code != 1005 else NORMAL_CLOSE, mask=self.mask))
                if self.transport is not None:
                    self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost during the handshake"))
        elif not self.closing:
            self.worker.lost += 1
        if not self.gone.done():
            self.gone.set_result(None)
        self.worker.connection_gone(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, obj: dict[str, Any]) -> None:
        self.write(_frames.build_frame(OP_TEXT, orjson.dumps(obj), mask=self.mask))

    def close(self) -> None:
        self.closing = True
        self.write(_frames.build_close(NORMAL_CLOSE, mask=self.mask))


class Worker:
    """A client process: its share of the users, connected or not, and their load."""

    def __init__(self, index: int, commands: Connection, groups: list[list[str]], tag: str, seed: int) -> None:
        self.index = index
        self.commands = commands
        self.groups = groups
        self.group_of = {u: g for g, members in enumerate(groups) for u in members}
        self.tag = tag
        self.rng = random.Random(seed * 1000 + index)
        self.clients: dict[str, SoakClient] = {}
        self.mine: dict[int, list[str]] = {}  # group -> my connected users in it
        self.conversation: list[int] = []  # group -> conversation id
        self.last_seq: dict[str, int] = {}  # user -> highest seq seen in their group
        self.waiting: dict[str, tuple[str, float, str]] = {}  # ref -> (kind, sent at, user)
        self.sync_done: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.count = 0
        self.done: asyncio.Future[None] | None = None
        self._reset()
        self.closes: Counter[str] = Counter()
        self.lost = 0
        self.connect_failures: list[str] = []

    def _reset(self) -> None:
        self.acked: Counter[str] = Counter()  # user -> sends acked in this window
        self.received: Counter[str] = Counter()  # user -> chat:messages received in this window
        self.latencies: dict[str, list[float]] = {SEND: [], HISTORY: [], PRESENCE: []}
        self.errors: Counter[str] = Counter()  # "kind code"
        self.events: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()

    # -- the pipe ---------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        # A thread reads the pipe with blocking calls: the loop's reader would make its end
        # non-blocking, and a command or an answer larger than the pipe's buffer would then
        # break off halfway (EAGAIN).
        threading.Thread(target=self._read_commands, args=(loop,), daemon=True).start()
        await self.done

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                command = self.commands.recv()
            except (EOFError, OSError):
                command = (0, "exit", ())
            loop.call_soon_threadsafe(self._command, *command)
            if command[1] == "exit":
                return

    def _command(self, rid: int, name: str, args: tuple[Any, ...]) -> None:
        if name == "exit":
            for client in list(self.clients.values()):
                if client.transport is not None:
                    client.transport.abort()
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
        self.commands.send(answer)

    # -- what the server sends ------------------------------------------------------------------

    def on_text(self, client: SoakClient, payload: bytes) -> None:
        msg = orjson.loads(payload)
        kind = msg["type"]
        ref = msg.get("ref")
        if ref is not None:
            asked = self.waiting.pop(ref, None)
            if kind == "error":
                what = asked[0] if asked else "?"
                self.errors[f"{what} {msg['payload'].get('code')}"] += 1
                if what == SYNC and ref in self.sync_done:
                    self.sync_done.pop(ref).set_exception(RuntimeError(f"sync refused: {msg['payload']}"))
                return
            if kind == "sync:done":
                waiter = self.sync_done.pop(ref, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg["payload"])
                return
            if asked is not None and asked[0] in self.latencies:
                self.latencies[asked[0]].append(time.perf_counter() - asked[1])
            if kind == "chat:ack":
                self.acked[client.user] += 1
                self._saw(client.user, msg["payload"]["message"]["seq"])
            return
        if kind == "chat:message":
            self.received[client.user] += 1
            self._saw(client.user, msg["payload"]["message"]["seq"])
        elif kind == "error":
            self.errors[f"- {msg['payload'].get('code')}"] += 1
        else:
            self.events[kind] += 1

    def _saw(self, user: str, seq: int) -> None:
        if seq > self.last_seq.get(user, 0):
            self.last_seq[user] = seq

    def connection_gone(self, client: SoakClient) -> None:
        if self.clients.get(client.user) is client:
            del self.clients[client.user]
            group = self.mine.get(self.group_of[client.user])
            if group is not None and client.user in group:
                group.remove(client.user)

    # -- commands -----------------------------------------------------------------------------

    async def cmd_setup(self, conversations: list[int]) -> None:
        self.conversation = conversations

    async def cmd_connect(self, port: int, users: list[str], sync: bool) -> dict[str, Any]:
        """Connect *users* (100 handshakes at a time); with *sync*, each asks `sync` with what it
        saw before (nothing, for a new user) and waits for `sync:done`."""
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(100)
        t0 = time.perf_counter()

        async def one(user: str) -> None:
            async with sem:
                token = issue_token(AUTH, user, TOKEN_TTL_S, time.time())
                try:
                    _, client = await loop.create_connection(lambda: SoakClient(self, user, token), "127.0.0.1", port)
                    await asyncio.wait_for(client.ready, 60)
                except (OSError, RuntimeError, TimeoutError) as exc:
                    self.connect_failures.append(f"{user}: {exc!r}"[:300])
                    return
                self.clients[user] = client
                self.mine.setdefault(self.group_of[user], []).append(user)
                if sync:
                    await self._sync(client)

        await asyncio.gather(*(one(u) for u in users))
        return {"connected": len(users) - len(self.connect_failures), "seconds": time.perf_counter() - t0}

    async def _sync(self, client: SoakClient) -> None:
        cid = self.conversation[self.group_of[client.user]]
        # A returning user names what they saw; a new one (a new device) names nothing and
        # gets the newest 50 of each of their conversations.
        seen = self.last_seq.get(client.user)
        cursors = {} if seen is None else {str(cid): seen}
        for _ in range(20):  # `complete: false` asks again; 20 rounds is far more than a cycle misses
            ref = self._ref()
            waiter = asyncio.get_running_loop().create_future()
            self.sync_done[ref] = waiter
            self.waiting[ref] = (SYNC, time.perf_counter(), client.user)
            client.send({"type": SYNC, "ref": ref, "payload": {"cursors": cursors}})
            try:
                done = await asyncio.wait_for(waiter, 60)
            except (RuntimeError, TimeoutError):
                return  # counted as an error (or as unanswered): the run goes on, and fails its check
            seq = done["conversations"].get(str(cid), 0)
            self._saw(client.user, seq)
            cursors = {str(cid): seq}
            if done["complete"]:
                return

    async def cmd_disconnect(self, users: list[str]) -> int:
        """Close *users*' connections with 1000 and wait for each to end; how many took over 10 s."""
        clients = [self.clients[u] for u in users if u in self.clients]
        for client in clients:
            client.close()
        slow = 0
        for client in clients:
            try:
                await asyncio.wait_for(asyncio.shield(client.gone), 10)
            except TimeoutError:
                slow += 1
                if client.transport is not None:
                    client.transport.abort()
        return slow

    def _ref(self) -> str:
        self.count += 1
        return f"{self.index}.{self.count}"

    async def cmd_load(self, duration: float, rates: list[tuple[int, str, float]]) -> dict[str, Any]:
        """Steady load for *duration*: (group, kind, requests per second from my users) each."""
        rates = [r for r in rates if r[2] > 0 and self.mine.get(r[0])]
        total = sum(r[2] for r in rates)
        if not rates:
            await asyncio.sleep(duration)
            return {"requests": 0}
        cum, acc = [], 0.0
        for r in rates:
            acc += r[2]
            cum.append(acc)
        tick = 0.02
        start = time.perf_counter()
        credit = self.rng.random()
        fired = 0
        while (now := time.perf_counter()) - start < duration:
            target = (now - start) * total + credit
            n = int(target) - fired
            if n > 0:
                for group, kind, _ in self.rng.choices(rates, cum_weights=cum, k=n):
                    self._fire(group, kind)
                fired += n
            await asyncio.sleep(tick)
        return {"requests": fired}

    def _fire(self, group: int, kind: str) -> None:
        users = self.mine.get(group)
        if not users:
            return
        user = self.rng.choice(users)
        client = self.clients[user]
        cid = self.conversation[group]
        ref = self._ref()
        self.sent[kind] += 1
        if kind == SEND:
            payload: dict[str, Any] = {
                "conversation_id": cid,
                "content": f"soak {ref}",
                "client_id": f"{self.tag}.{ref}",
            }
        elif kind == TYPING:
            payload = {"conversation_id": cid}
        elif kind == READ:
            payload = {"conversation_id": cid, "seq": max(1, self.last_seq.get(user, 0))}
        elif kind == HISTORY:
            payload = {"conversation_id": cid, "limit": 20}
        else:
            members = self.groups[group]
            payload = {"user_ids": self.rng.sample(members, min(20, len(members)))}
        if kind not in (TYPING, READ):  # those are answered only when they fail (with the ref)
            self.waiting[ref] = (kind, time.perf_counter(), user)
        client.send({"type": kind, "ref": ref, "payload": payload})

    async def cmd_settle(self, timeout: float) -> int:
        """Wait until every request asked has been answered; how many are still waiting."""
        deadline = time.perf_counter() + timeout
        while self.waiting and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return len(self.waiting)

    async def cmd_report(self) -> dict[str, Any]:
        """What happened since the last report (then forgotten), and what the worker holds."""
        report = {
            "acked": dict(self.acked),
            "received": {u: self.received.get(u, 0) for u in self.clients},
            "latencies": self.latencies,
            "errors": dict(self.errors),
            "events": dict(self.events),
            "sent": dict(self.sent),
            "closes": dict(self.closes),
            "lost": self.lost,
            "connect_failures": self.connect_failures[:20],
            "connect_failure_count": len(self.connect_failures),
            "waiting": len(self.waiting),
            "connected": sorted(self.clients),
        }
        self._reset()
        gc.collect()  # between phases: what the worker dropped, while nothing is being timed
        return report


def _worker_main(  # noqa: PLR0917  # a Process target takes its arguments by position
    index: int, commands: Connection, groups: list[list[str]], tag: str, seed: int, cpu: int
) -> None:
    if cpu >= 0:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us
    # The worker's own collector would pause it over thousands of clients' state, and those
    # pauses would show as the server's ack latency (as they did in chat_bench's send): off,
    # and run between phases instead (`cmd_report`).
    gc.disable()
    uvloop.run(Worker(index, commands, groups, tag, seed).serve())


class Workers:
    """The client processes, and calls to them (each answered by its id)."""

    def __init__(self, n: int, groups: list[list[str]], tag: str, seed: int, cpu: int) -> None:
        ctx = mp.get_context("fork")  # a fresh interpreter would have to find tests/ on its path
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(i, theirs, groups, tag, seed, cpu), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)
        self._rid = 0

    def ask(self, w: int, name: str, *args: Any) -> int:
        self._rid += 1
        self.pipes[w].send((self._rid, name, args))
        return self._rid

    def answer(self, w: int, rid: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.pipes[w].poll(left):
                raise TimeoutError(f"client process {w} did not answer in {timeout:.0f} s")
            got, ok, result = self.pipes[w].recv()
            if got != rid:
                continue  # an answer to a call given up on
            if not ok:
                raise RuntimeError(f"client process {w}: {result}")
            return result

    def call_all(self, name: str, args: list[tuple[Any, ...]], timeout: float) -> list[Any]:
        rids = [self.ask(w, name, *a) for w, a in enumerate(args)]
        return [self.answer(w, rid, timeout) for w, rid in enumerate(rids)]

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send((0, "exit", ()))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


# --- the run ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Soak:
    """One run's state in the main process."""

    config: SoakConfig
    server: SoakServer
    workers: Workers
    groups: list[list[str]]
    sampler: RssSampler
    started: float
    log: Callable[[str], None]
    connected: set[str] = field(default_factory=set)
    ever: set[str] = field(default_factory=set)
    phases: list[dict[str, Any]] = field(default_factory=list)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    connect_failures: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def phase(self, name: str) -> float:
        at = self.now()
        self.sampler.phase = name
        self.phases.append({"name": name, "start_s": at})
        if len(self.phases) > 1:
            self.phases[-2]["end_s"] = at
        return at

    def by_worker(self, users: list[str]) -> list[list[str]]:
        n = len(self.workers.pipes)
        out: list[list[str]] = [[] for _ in range(n)]
        for u in users:
            out[int(u[1:]) % n].append(u)
        return out

    def connect(self, users: list[str], *, sync: bool) -> float:
        t = time.monotonic()
        self.workers.call_all(
            "connect", [(self.server.port, mine, sync) for mine in self.by_worker(users)], timeout=900
        )
        self.connected |= set(users)
        self.ever |= set(users)
        return time.monotonic() - t

    def disconnect(self, users: list[str]) -> int:
        slow = sum(self.workers.call_all("disconnect", [(mine,) for mine in self.by_worker(users)], timeout=300))
        self.connected -= set(users)
        return int(slow)

    def rates(self) -> list[list[tuple[int, str, float]]]:
        """What each client process asks, by group and kind: each group's rate shared among
        the processes in proportion to its members they hold connected."""
        cfg = self.config
        per_user = {SEND: cfg.send_per_s, TYPING: cfg.typing_per_s, READ: cfg.read_per_s,
                    HISTORY: cfg.history_per_s, PRESENCE: cfg.presence_per_s}  # fmt: skip
        n = len(self.workers.pipes)
        out: list[list[tuple[int, str, float]]] = [[] for _ in range(n)]
        for g, members in enumerate(self.groups):
            online = [u for u in members if u in self.connected]
            if not online:
                continue
            share = Counter(int(u[1:]) % n for u in online)
            for kind, rate in per_user.items():
                group_rate = rate * len(online)
                if kind in FAN_OUT:
                    group_rate = min(group_rate, cfg.group_cap_per_s)
                for w, held in share.items():
                    out[w].append((g, kind, group_rate * held / len(online)))
        return out

    def collect(self) -> list[dict[str, Any]]:
        """Each client process's report since the last one; errors add up here, closes and
        failures are counted in the processes from the start."""
        reports = self.workers.call_all("report", [() for _ in self.workers.pipes], timeout=120)
        self.closes = Counter()
        self.connect_failures = []
        for r in reports:
            self.errors.update(r["errors"])
            self.closes.update(r["closes"])
            self.connect_failures += r["connect_failures"]
        self.lost = sum(r["lost"] for r in reports)
        return reports

    def delivery_check(self, reports: list[dict[str, Any]]) -> dict[str, int]:
        """Every message acked in the phase reached every other member connected, once."""
        acked: Counter[str] = Counter()
        received: dict[str, int] = {}
        for r in reports:
            acked.update(r["acked"])
            received.update(r["received"])
        by_group = [sum(acked[u] for u in members) for members in self.groups]
        group_of = {u: g for g, members in enumerate(self.groups) for u in members}
        missing = extra = expected_total = 0
        for user, got in received.items():
            expected = by_group[group_of[user]] - acked[user]
            expected_total += expected
            missing += max(0, expected - got)
            extra += max(0, got - expected)
        return {"acked": sum(acked.values()), "deliveries_expected": expected_total, "missing": missing,
                "duplicates_or_unexpected": extra}  # fmt: skip


def run_soak(config: SoakConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one soak (see the module's docstring) and return its result; raises only when the
    run could not be carried out, never for a check that failed (see `result["checks"]`)."""
    deadline = time.monotonic() + config.max_minutes * 60
    rng = random.Random(config.seed)
    groups = plan_groups(config.pool, rng)
    tag = uuid.uuid4().hex[:8]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sohbet-soak-") as workdir:
        server = SoakServer(config, workdir)
        sampler = RssSampler(server.pid, started)
        sampler.start()
        cpu = 1 if config.pin and (os.cpu_count() or 1) > 1 else -1
        workers: Workers | None = None
        try:
            fresh = server.entries()
            t = time.monotonic()
            conversations = [
                int(server.api("POST", "/api/conversations", {"members": m, "title": f"g{i}"})["conversation"]["id"])
                for i, m in enumerate(groups)
            ]
            log(f"{len(groups)} groups of {config.pool} users created in {time.monotonic() - t:.1f} s")
            workers = Workers(config.worker_count, groups, tag, config.seed, cpu)
            workers.call_all("setup", [(conversations,) for _ in workers.pipes], timeout=60)
            soak = Soak(config, server, workers, groups, sampler, started, log)
            time.sleep(1.1)  # /metrics reuses a rendering for a second
            baseline = server.entries()
            rss_baseline = rss_kib(server.pid)
            result = _cycles(soak, rng, deadline)
            result.update(_wind_down(soak, baseline, deadline))
            result["entries_fresh"] = fresh
            result["entries_before_load"] = baseline
            result["rss_before_load_kib"] = rss_baseline
        finally:
            sampler.stop()
            if workers is not None:
                workers.stop()
            exit_status = server.stop()
        problems = server.log_problems()
    result.update({
        "config": asdict(config), "groups": sorted((len(g) for g in groups), reverse=True),
        "server_exit_status": exit_status, "log_problems": problems[:50], "log_problem_count": len(problems),
        "rss_samples": sampler.samples, "phases": soak.phases, "errors": dict(soak.errors),
        "closes_not_normal": dict(soak.closes), "connections_lost": soak.lost,
        "connect_failures": soak.connect_failures[:20], "duration_s": time.monotonic() - started,
    })  # fmt: skip
    result["checks"] = checks(result, config)
    return result


def _cycles(soak: Soak, rng: random.Random, deadline: float) -> dict[str, Any]:
    cfg = soak.config
    pool = [f"u{i}" for i in range(cfg.pool)]
    first = rng.sample(pool, cfg.users)
    soak.phase("connect")
    cpu0 = cpu_s(soak.server.pid)
    seconds = soak.connect(first, sync=False)
    soak.log(f"{len(first)} users connected in {seconds:.1f} s")
    soak.collect()
    for cycle in range(1, cfg.cycles + 1):
        if time.monotonic() > deadline:
            soak.log("the run's time is up: no more cycles")
            break
        record: dict[str, Any] = {"cycle": cycle}
        if cfg.churn:  # every cycle, the first too: its RSS, the reference, has seen every kind of work
            soak.phase(f"churn {cycle}")
            k = round(cfg.users * cfg.churn)
            leaving = rng.sample(sorted(soak.connected), k)
            joining = rng.sample(sorted(set(pool) - soak.connected), k)
            returning = sum(1 for u in joining if u in soak.ever)
            slow = soak.disconnect(leaving)
            seconds = soak.connect(joining, sync=True)
            record["churn"] = {"left": k, "joined": k, "returning": returning, "new": k - returning,
                               "slow_closes": slow, "connect_and_sync_s": seconds}  # fmt: skip
            soak.collect()  # what churn and sync brought (replays) is not the load's
        soak.phase(f"load {cycle}")
        cpu0 = cpu_s(soak.server.pid)
        t0 = time.monotonic()
        rates = soak.rates()
        soak.workers.call_all("load", [(cfg.load_s, r) for r in rates], timeout=cfg.load_s + 120)
        left = soak.workers.call_all("settle", [(30.0,) for _ in rates], timeout=120)
        time.sleep(1.0)  # deliveries written with the last acks are still on their way
        load_s = time.monotonic() - t0
        cpu1 = cpu_s(soak.server.pid)
        reports = soak.collect()
        sends = [x for r in reports for x in r["latencies"][SEND]]
        reads = [x for r in reports for x in r["latencies"][HISTORY] + r["latencies"][PRESENCE]]
        sent: Counter[str] = Counter()
        for r in reports:
            sent.update(r["sent"])
        record.update({
            "connected": len(soak.connected), "load_s": load_s, "requests": dict(sent),
            "requests_per_s": sum(sent.values()) / cfg.load_s, "unanswered": sum(left),
            "ack_p50_ms": pct(sends, 0.5) * 1e3, "ack_p99_ms": pct(sends, 0.99) * 1e3,
            "ack_max_ms": max(sends, default=float("nan")) * 1e3, "acks": len(sends),
            "query_p50_ms": pct(reads, 0.5) * 1e3, "query_p99_ms": pct(reads, 0.99) * 1e3,
            "server_cpu_share": (cpu1 - cpu0) / load_s, "delivery": soak.delivery_check(reports),
            "events": dict(sum((Counter(r["events"]) for r in reports), Counter())),
        })  # fmt: skip
        soak.phase(f"idle {cycle}")
        time.sleep(cfg.idle_s)
        record["rss_end_of_idle_kib"] = rss_kib(soak.server.pid)
        record["entries_end_of_idle"] = soak.server.entries()
        soak.cycles.append(record)
        d = record["delivery"]
        soak.log(
            f"cycle {cycle}: {record['requests_per_s']:.0f} requests/s, ack p50 {record['ack_p50_ms']:.1f} ms "
            f"p99 {record['ack_p99_ms']:.1f} ms, {d['acked']} acked, {d['missing']} deliveries missing, "
            f"RSS after idle {record['rss_end_of_idle_kib'] / 1024:.1f} MiB, errors so far {sum(soak.errors.values())}"
        )
    return {"cycles": soak.cycles}


def _wind_down(soak: Soak, baseline: dict[str, int], deadline: float) -> dict[str, Any]:
    """Everyone leaves; wait out the grace period until every table is back (or a bound)."""
    soak.phase("everyone leaves")
    slow = soak.disconnect(sorted(soak.connected))
    soak.collect()
    wait_until = time.monotonic() + soak.config.presence_grace_s + 30
    after = soak.server.entries()
    while True:
        grown = {
            t: (baseline.get(t, 0), n) for t, n in after.items() if n > baseline.get(t, 0) and t not in BOUNDED_TABLES
        }
        if not grown or time.monotonic() > wait_until:
            break
        time.sleep(0.5)
        after = soak.server.entries()
    back_s = soak.now() - soak.phases[-1]["start_s"]
    soak.phase("after")
    time.sleep(2.0)
    soak.phases[-1]["end_s"] = soak.now()
    return {"slow_closes_at_end": slow, "entries_after": after, "entries_grown": grown,
            "entries_back_after_s": back_s, "rss_after_kib": rss_kib(soak.server.pid)}  # fmt: skip


def checks(result: dict[str, Any], config: SoakConfig, *, rss: bool = True) -> dict[str, Any]:
    """The run's verdicts: each a (passed, detail) pair."""
    cycles = result["cycles"]
    out: dict[str, Any] = {}
    if cycles:
        first = cycles[0]["rss_end_of_idle_kib"]
        ratios = [c["rss_end_of_idle_kib"] / first for c in cycles]
        out["rss_within_tolerance"] = (
            all(r <= 1 + config.rss_tolerance for r in ratios),
            f"RSS at the end of each idle phase / after cycle 1: {[round(r, 3) for r in ratios]} "
            f"(at most {1 + config.rss_tolerance:.2f})",
        )
        worst = max(c["ack_p99_ms"] for c in cycles)
        out["ack_p99_under_bound"] = (
            worst < config.ack_p99_bound_ms,
            f"worst p99 of a load phase {worst:.1f} ms, bound {config.ack_p99_bound_ms:g} ms",
        )
        missing = sum(c["delivery"]["missing"] + c["delivery"]["duplicates_or_unexpected"] for c in cycles)
        out["every_acked_message_delivered_once"] = (
            missing == 0 and all(c["delivery"]["acked"] > 0 for c in cycles),
            f"{sum(c['delivery']['acked'] for c in cycles)} acked, "
            f"{sum(c['delivery']['deliveries_expected'] for c in cycles)} deliveries expected, "
            f"{missing} missing or extra",
        )
        out["everything_answered"] = (
            all(c["unanswered"] == 0 for c in cycles),
            f"unanswered per cycle: {[c['unanswered'] for c in cycles]}",
        )
    else:
        out["cycles_ran"] = (False, "no cycle ran")
    out["entries_back_to_baseline"] = (
        not result["entries_grown"],
        f"above the level before the load: {result['entries_grown']}",
    )
    out["no_errors"] = (not result["errors"], f"error answers: {result['errors']}")
    out["no_abnormal_closes"] = (
        not result["closes_not_normal"] and result["connections_lost"] == 0 and not result["connect_failures"],
        f"closes by the server: {result['closes_not_normal']}, lost: {result['connections_lost']}, "
        f"failed connects: {result['connect_failures'][:3]}",
    )
    out["clean_log"] = (
        result["log_problem_count"] == 0,
        f"{result['log_problem_count']} lines: {result['log_problems'][:3]}",
    )
    out["clean_exit"] = (result["server_exit_status"] == 0, f"exit status {result['server_exit_status']}")
    if not rss:
        out.pop("rss_within_tolerance", None)
    return out


def failed(result: dict[str, Any]) -> dict[str, str]:
    """The checks that did not pass, with their details."""
    return {name: detail for name, (ok, detail) in result["checks"].items() if not ok}


def summary(result: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    lines = []
    for c in result["cycles"]:
        lines.append(
            f"cycle {c['cycle']}: {c['connected']} connected, {c['requests_per_s']:.0f} requests/s, "
            f"ack p50/p99 {c['ack_p50_ms']:.1f}/{c['ack_p99_ms']:.1f} ms, server CPU {c['server_cpu_share']:.0%}, "
            f"RSS after idle {c['rss_end_of_idle_kib'] / 1024:.1f} MiB"
        )
    for name, (ok, detail) in result["checks"].items():
        lines.append(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    return "\n".join(lines)
