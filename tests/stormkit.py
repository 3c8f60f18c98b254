"""A reconnect storm: N users connected to a real `sohbet-server`, the server killed with -9 and
started again at once, every client reconnecting at the same moment and syncing, and a check
that nothing was lost. Shared by `benchmarks/storm.py` (10,000 users, by hand) and
`tests/integration/test_storm.py` (a few hundred, in CI).

The coordinator (`run_storm`) owns the server and the database; the clients live in several
worker processes (started by `_WORKER_BOOT`: one process may hold only so many sockets,
and one event loop only so much work), each holding whole groups, so each checks its own groups.
They talk in JSON lines: the coordinator writes a command to a worker's stdin, the worker answers
with one line on stdout.

1. Workers connect their users, each group's first member creates the group, and every member
   starts from cursor 0 in it (a client must name a conversation it has seen nothing of, or
   `sync` gives it only the newest few); then senders send at a steady rate and record each
   acked `(conversation, seq)`.
2. `kill -9` the server, start it again at once (same port, same database); as soon as it
   listens, every client reconnects at the same moment (`ChatClient.reconnect`, which honours
   503 + `Retry-After`) and syncs from its cursors; sending goes on during and after the storm.
3. Sending stops; once live delivery settles, every member of every group must have seen every
   acked message, and the seqs each saw must be 1..M with no gap and no duplicate, M the same
   for all members (a message stored whose ack was lost in the kill is seen by all too).

Loopback only, bounded in users (`MAX_USERS`) and time (`timeout_s` for the storm, fixed bounds
on the rest). The server's log must hold no traceback, and the server must not die.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from sohbet.auth import issue_token
from sohbet.client import ChatClient, ChatError, ConnectionClosed
from sohbet.config import AuthConfig

from .prockit import cpu_s, free_port, peak_rss_kib

ROOT = Path(__file__).resolve().parent.parent
SECRET = "storm-secret-of-at-least-32-bytes-long!"
PG_ADMIN = os.environ.get("SOHBET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The most users one run may have (the machine allows 20,000 open files per process: the server
#: holds one per user, plus its database's and a margin).
MAX_USERS = 15_000
#: Seconds to connect and set up, to settle after the load, and to stop a worker.
SETUP_S = 300.0
SETTLE_S = 30.0


@dataclass
class StormConfig:
    """One storm's shape."""

    users: int = 10_000
    workers: int = 4
    group_min: int = 10
    group_max: int = 100
    database: str = "postgres"  # or "sqlite"
    #: The server's `--max-admitting` (0: unlimited).
    max_admitting: int = 1000
    #: Sends per second over all workers, before, during and after the storm.
    send_rate_per_s: float = 50.0
    #: Seconds of load before the kill, and after every client is back and caught up.
    before_s: float = 3.0
    after_s: float = 3.0
    #: Bound on the storm: from the restart until every client is caught up.
    timeout_s: float = 180.0
    seed: int = 1
    #: Pin the server to CPU 0 and the clients to CPU 1 (taskset), as the other benchmarks do.
    pin: bool = True
    #: More `sohbet-server` flags.
    server_flags: list[str] = field(default_factory=list)


@dataclass
class StormReport:
    """What a storm measured, and whether anything was lost."""

    config: dict[str, Any]
    groups: int = 0
    restart_to_listening_s: float = 0.0
    restart_to_all_connected_s: float = 0.0
    restart_to_all_caught_up_s: float = 0.0
    #: Refusals the clients waited out (503 + Retry-After, 429), and what the server counted.
    refusals_waited: int = 0
    refused_connects: int = 0  # connection refused (not listening yet, a full backlog): retried
    server_handshakes: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    acked: int = 0
    acked_after_kill: int = 0
    send_failures: int = 0
    deliveries_checked: int = 0
    lost: int = 0
    gaps: int = 0
    duplicates: int = 0
    out_of_order_before_kill: int = 0
    server_peak_rss_kib: int = 0
    server_cpu_storm_s: float = 0.0
    server_cpu_total_s: float = 0.0
    server_alive: bool = True
    tracebacks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Where the server's and the workers' logs were kept (a run that was not ok), or None.
    logs: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated, the server alive, no traceback, no error."""
        return (
            self.lost == 0
            and self.gaps == 0
            and self.duplicates == 0
            and self.server_alive
            and not self.tracebacks
            and not self.errors
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- the server -------------------------------------------------------------------------------------


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


class StormServer:
    """`sohbet-server` on a fixed port and database, started again after a kill; its logs kept."""

    def __init__(self, cfg: StormConfig, database_url: str, data_dir: Path) -> None:
        self.port = free_port()
        self.cfg = cfg
        self.database_url = database_url
        self.data_dir = data_dir
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; return when (monotonic) it was started."""
        cfg = self.cfg
        log = self.data_dir / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        command = [sys.executable, "-I", "-m", "sohbet.app.cli", "--port", str(self.port),
                   "--database-url", self.database_url, "--jwt-secret", SECRET, "--data-dir", str(self.data_dir),
                   "--send-rate", "0", "--frame-rate", "0", "--address-rate", "0",
                   "--max-connections-per-address", "0", "--max-admitting", str(cfg.max_admitting),
                   "--log-level", "warning", *cfg.server_flags]  # fmt: skip
        if cfg.pin:
            command = ["taskset", "-c", "0", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
        with log.open("wb") as out:
            started = time.monotonic()
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.data_dir)
        return started

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no drain, no commit of what is queued
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tracebacks(self) -> list[str]:
        found = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Traceback" in text:
                found.append(f"{log.name}: {text[text.index('Traceback') :][:2000]}")
        return found

    def handshakes(self) -> dict[str, int]:
        """The server's `sohbet_handshakes_total` by result, from `/metrics`."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        found: dict[str, int] = {}
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("sohbet_handshakes_total{"):
                result = line.split('result="', 1)[1].split('"', 1)[0]
                found[result] = int(float(line.rsplit(" ", 1)[1]))
        return found


@contextlib.contextmanager
def fresh_database(kind: str, data_dir: Path) -> Iterator[str]:
    """An empty database: an SQLite file in *data_dir*, or a new Postgres database, dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{data_dir}/storm.db"
        return
    import asyncpg  # noqa: PLC0415  # only the Postgres storm needs it

    name = f"sohbet_storm_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        con = await asyncpg.connect(PG_ADMIN, timeout=10)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- the coordinator --------------------------------------------------------------------------------


def plan_groups(cfg: StormConfig) -> list[list[str]]:
    """Every user in one group of `group_min`-`group_max` members (the last may be smaller)."""
    rng = random.Random(cfg.seed)
    groups: list[list[str]] = []
    start = 0
    while start < cfg.users:
        size = min(rng.randint(cfg.group_min, cfg.group_max), cfg.users - start)
        if size < 3 and groups:  # a group needs 3 members: the rest join the last one
            groups[-1].extend(f"u{i}" for i in range(start, start + size))
        else:
            groups.append([f"u{i}" for i in range(start, start + size)])
        start += size
    return groups


class Worker:
    """One client process: commands in on its stdin, one JSON line out per command."""

    def __init__(self, index: int, port: int, groups: list[list[str]], cfg: StormConfig, workdir: Path) -> None:
        spec = {"port": port, "groups": groups, "rate": cfg.send_rate_per_s / cfg.workers,
                "timeout_s": cfg.timeout_s, "seed": cfg.seed * 1000 + index}  # fmt: skip
        spec_file = workdir / f"worker-{index}.json"
        spec_file.write_text(json.dumps(spec))
        # -P and ROOT appended, not `-m` from ROOT: the checkout's sohbet/ must not shadow the
        # installed package (a plain `pip install .`, as CI makes, leaves the source tree with no
        # compiled core), while `tests` is found only in the checkout.
        command = [sys.executable, "-P", "-c", _WORKER_BOOT, str(ROOT), str(spec_file)]
        if cfg.pin:
            command = ["taskset", "-c", "1", *command]
        self.log = workdir / f"worker-{index}.log"
        self.stderr = self.log.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr
        )

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait()
            self.stderr.flush()
            said = self.log.read_text(errors="replace").strip().splitlines()[-5:]  # why, in its own words
            raise RuntimeError(f"worker {self.proc.pid} exited with {status}: " + " | ".join(said))
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.proc.pid}: {answer['error']}")
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.tell("quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def ask_all(workers: list[Worker], command: str) -> list[dict[str, Any]]:
    for worker in workers:
        worker.tell(command)
    return [worker.answer() for worker in workers]


def run_storm(cfg: StormConfig, progress: Callable[[str], None] | None = None) -> StormReport:
    """Run one storm (see the module's docstring) and report what it measured."""
    say = progress or (lambda line: None)
    if not 3 <= cfg.users <= MAX_USERS:
        raise ValueError(f"users must be 3-{MAX_USERS}, not {cfg.users}")
    report = StormReport(config=asdict(cfg))
    groups = plan_groups(cfg)
    report.groups = len(groups)
    workdir = Path(tempfile.mkdtemp(prefix="sohbet-storm-"))
    workers: list[Worker] = []
    server: StormServer | None = None
    try:
        with fresh_database(cfg.database, workdir) as url:
            server = StormServer(cfg, url, workdir)
            assert server.proc is None
            server.start()
            assert server.proc is not None
            wait_listening(server.port, server.proc)
            shares: list[list[list[str]]] = [[] for _ in range(cfg.workers)]
            for i, group in enumerate(sorted(groups, key=len, reverse=True)):  # balance the users
                min(shares, key=lambda share: sum(map(len, share))).append(group)
                del i
            workers = [Worker(i, server.port, share, cfg, workdir) for i, share in enumerate(shares) if share]
            say(f"{cfg.users} users in {len(groups)} groups over {len(workers)} workers; connecting")
            ask_all(workers, "setup")
            say(f"all connected and in their groups; {cfg.before_s:g} s of load, then kill -9")
            ask_all(workers, "load")
            time.sleep(cfg.before_s)
            killed_at = time.monotonic()
            server.kill()
            restarted = server.start()
            cpu_before = 0.0
            wait_listening(server.port, server.proc)
            report.restart_to_listening_s = time.monotonic() - restarted
            cpu_before = cpu_s(server.proc.pid)
            say(f"killed and restarted; listening after {report.restart_to_listening_s:.2f} s; the storm")
            for worker in workers:
                worker.tell(f"storm {killed_at}")
            storms = [worker.answer() for worker in workers]
            report.server_cpu_storm_s = cpu_s(server.proc.pid) - cpu_before
            report.restart_to_all_connected_s = max(s["last_hello_at"] for s in storms) - restarted
            report.restart_to_all_caught_up_s = max(s["last_caught_up_at"] for s in storms) - restarted
            report.refusals_waited = sum(s["refusals"] for s in storms)
            report.refused_connects = sum(s["refused_connects"] for s in storms)
            report.errors += [e for s in storms for e in s["errors"]]
            say(
                f"every client back after {report.restart_to_all_connected_s:.2f} s, caught up after "
                f"{report.restart_to_all_caught_up_s:.2f} s; {report.refusals_waited} refusals waited out"
            )
            time.sleep(cfg.after_s)
            results = ask_all(workers, "finish")
            report.server_alive = server.proc.poll() is None
            report.server_peak_rss_kib = peak_rss_kib(server.proc.pid) if report.server_alive else 0
            report.server_cpu_total_s = cpu_s(server.proc.pid) if report.server_alive else 0.0
            if report.server_alive:
                report.server_handshakes = server.handshakes()
            for r in results:
                for name in ("sent", "acked", "acked_after_kill", "send_failures", "deliveries_checked", "lost",
                             "gaps", "duplicates", "out_of_order_before_kill"):  # fmt: skip
                    setattr(report, name, getattr(report, name) + r[name])
                report.errors += r["errors"]
            if report.acked_after_kill == 0:
                report.errors.append("no message was acked after the kill: the load did not go on")
            for worker in workers:
                worker.stop()
            workers = []
            server.stop()
            report.tracebacks = server.tracebacks()
    finally:
        for worker in workers:
            worker.stop()
        if server is not None:
            server.stop()
        if report.ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            report.logs = str(workdir)
    return report


# -- a worker ---------------------------------------------------------------------------------------


class Bot:
    """One user: a `ChatClient`, what it saw, and when it came back."""

    def __init__(self, user: str, conversation: int = 0) -> None:
        self.user = user
        self.conversation = conversation
        self.client: Any = None
        self.seen: list[int] = []  # the seqs of its conversation it was sent, in the order they came
        self.own: set[int] = set()  # ... and of its own messages, from their acks
        self.before_kill = 0  # how many it was sent before the kill
        self.drain: asyncio.Task[None] | None = None
        self.up = False
        self.caught_up_at = 0.0

    async def drain_events(self) -> None:
        async for event in self.client.events():
            if event["type"] == "chat:message":
                self.seen.append(event["payload"]["message"]["seq"])


async def worker_main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    url = f"ws://127.0.0.1:{spec['port']}/ws"
    auth = AuthConfig(secret=SECRET)
    rng = random.Random(spec["seed"])
    loop = asyncio.get_running_loop()
    groups: list[list[str]] = spec["groups"]
    bots = {user: Bot(user) for group in groups for user in group}
    tokens = {user: issue_token(auth, user, 7200, time.time()) for user in bots}
    conversations: list[tuple[int, list[Bot]]] = []
    acked: dict[int, set[int]] = {}
    counts = {"sent": 0, "acked": 0, "acked_after_kill": 0, "send_failures": 0}
    errors: list[str] = []
    killed_at = 0.0
    sending: asyncio.Task[None] | None = None
    in_flight: set[asyncio.Task[None]] = set()

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def gather_bounded(coros: list[Any], limit: int) -> list[Any]:
        sem = asyncio.Semaphore(limit)

        async def one(coro: Any) -> Any:
            async with sem:
                return await coro

        return list(await asyncio.gather(*(one(c) for c in coros)))

    async def setup() -> None:
        async def connect(bot: Bot) -> None:
            bot.client = await ChatClient.connect(url, tokens[bot.user], timeout=60.0, retry=True)
            bot.up = True

        await gather_bounded([connect(b) for b in bots.values()], 100)

        async def create(group: list[str]) -> None:
            owner = bots[group[0]]
            reply = await owner.client.request(
                "conversation:create", {"members": group[1:], "title": f"storm {group[0]}"}, timeout=60.0
            )
            cid = int(reply["conversation"]["id"])
            members = [bots[u] for u in group]
            for bot in members:
                bot.conversation = cid
                bot.client.cursors[cid] = 0  # named in every sync from now on
            conversations.append((cid, members))
            acked[cid] = set()

        await gather_bounded([create(g) for g in groups], 20)
        for bot in bots.values():
            bot.drain = asyncio.ensure_future(bot.drain_events())

    async def send_one(cid: int, bot: Bot) -> None:
        counts["sent"] += 1
        try:
            message = await bot.client.send(f"m{counts['sent']}", cid)
        except (ChatError, ConnectionClosed, TimeoutError, OSError, AttributeError):
            counts["send_failures"] += 1  # not acked: not required to arrive (if stored, it must be gap-free)
            return
        seq = int(message["seq"])
        acked[cid].add(seq)
        bot.own.add(seq)  # the sender's own copy is the ack
        counts["acked"] += 1
        if killed_at and time.monotonic() > killed_at:
            counts["acked_after_kill"] += 1

    async def send_loop(rate: float) -> None:
        interval = 1.0 / rate if rate > 0 else 1e9
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(next_at - loop.time(), 0.0))
            if len(in_flight) >= 500:
                continue  # the server is slow: do not pile up
            cid, members = rng.choice(conversations)
            bot = rng.choice(members)
            if not bot.up:
                continue  # reconnecting: a real client would queue it; this one skips it
            task = asyncio.ensure_future(send_one(cid, bot))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async def storm() -> dict[str, Any]:
        refused_connects = 0
        refusals_before = sum(b.client.refusals for b in bots.values())  # those of the setup

        async def back(bot: Bot) -> None:
            nonlocal refused_connects
            if bot.drain is not None:
                await bot.drain  # the old connection's events end with its close
            bot.up = False
            deadline = loop.time() + spec["timeout_s"]
            while True:
                try:
                    await bot.client.reconnect(timeout=max(deadline - loop.time(), 0.1))
                    break
                except (ConnectionClosed, OSError) as exc:
                    if loop.time() >= deadline or getattr(exc, "status", None) is not None:
                        raise
                    # Not listening yet, or the accept queue full: a real client backs off too.
                    refused_connects += 1
                    await asyncio.sleep(0.1 + rng.random() * 0.4)
            bot.caught_up_at = loop.time()
            bot.up = True
            bot.drain = asyncio.ensure_future(bot.drain_events())

        failures = await asyncio.gather(*(back(b) for b in bots.values()), return_exceptions=True)
        storm_errors = [f"{type(f).__name__}: {f}" for f in failures if isinstance(f, BaseException)][:10]
        return {
            "last_hello_at": max(b.client.hello_at for b in bots.values()),
            "last_caught_up_at": max(b.caught_up_at for b in bots.values()),
            "refusals": sum(b.client.refusals for b in bots.values()) - refusals_before,
            "refused_connects": refused_connects,
            "errors": storm_errors,
        }

    def check() -> dict[str, Any]:
        found = {"lost": 0, "gaps": 0, "duplicates": 0, "deliveries_checked": 0, "out_of_order_before_kill": 0}
        for cid, members in conversations:
            top = max([*acked[cid], *(s for b in members for s in (*b.seen, *b.own))], default=0)
            every = set(range(1, top + 1))
            for bot in members:
                seen = set(bot.seen)
                found["duplicates"] += len(bot.seen) - len(seen) + len(seen & bot.own)
                seen |= bot.own
                found["lost"] += len(acked[cid] - seen)
                found["gaps"] += len(every - seen)
                found["deliveries_checked"] += len(seen)
                early = bot.seen[: bot.before_kill]
                found["out_of_order_before_kill"] += sum(a >= b for a, b in itertools.pairwise(early))
        return found

    async def finish() -> dict[str, Any]:
        if sending is not None:
            sending.cancel()
        async with asyncio.timeout(SETTLE_S):
            while in_flight:
                await asyncio.sleep(0.05)
        deadline = loop.time() + SETTLE_S
        found = check()
        while (found["lost"] or found["gaps"]) and loop.time() < deadline:
            await asyncio.sleep(0.2)  # live delivery still on its way
            found = check()
        for bot in bots.values():
            await bot.client.close()
        return {**counts, **found, "errors": errors[:10]}

    while True:
        command = (await asyncio.to_thread(sys.stdin.readline)).strip()
        try:
            if command in {"quit", ""}:
                return
            if command == "setup":
                async with asyncio.timeout(SETUP_S):
                    await setup()
                answer({"ready": len(bots)})
            elif command == "load":
                sending = asyncio.ensure_future(send_loop(spec["rate"]))
                answer({"loading": True})
            elif command.startswith("storm "):
                killed_at = float(command.split()[1])
                for bot in bots.values():
                    bot.before_kill = len(bot.seen)  # nothing arrives while the server is down
                async with asyncio.timeout(spec["timeout_s"] + 10):
                    answer(await storm())
            elif command == "finish":
                answer(await finish())
            else:
                answer({"error": f"unknown command {command!r}"})
        except Exception as exc:  # reported to the coordinator, which fails the run
            answer({"error": f"{command}: {type(exc).__name__}: {exc}"})


#: How a worker process starts (see `Worker`): argv is the checkout's root, then the spec file.
_WORKER_BOOT: Final = (
    "import sys; sys.path.append(sys.argv[1]); import uvloop; from tests.stormkit import worker_main; "
    "uvloop.run(worker_main(sys.argv[2]))"
)
