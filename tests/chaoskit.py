"""A Jepsen-style chaos checker for a sohbet cluster: faults injected on a seeded schedule while
clients chat, then a check of the history against storage.

The system: a private PostgreSQL cluster (`tests/pgcluster.py`, which may be frozen), a private
`redis-server` (which may be restarted, empty) and three `sohbet-server` processes on them
(`tests/clusterkit.py`, which may be killed with SIGKILL and started again on their ports).

The workload: a few users in a few groups, each with one connection at a time to a random live
instance. Each sends at a steady rate, one message at a time, every message with a client_id of
its own; an unacked send is retried with the SAME client_id, on the same connection after
`unavailable`, or after a reconnect (to another live instance, with backoff) when the connection
dies or the ack does not come. After each (re)connect, and whenever a live seq shows a hole, the
client calls `sync` (paging while `complete` is false) from the end of what it has without a
hole. One more user is in no group: she must never see any message of them, and whatever she
sends to them is refused.

The nemesis: server-side faults one at a time, round-robin in a seeded order: kill -9 of a random
instance, started again after a moment (never two down at once); a Redis restart (it comes back
empty); a Postgres freeze (SIGSTOP of the postmaster and its children for 1-2 s, longer than the
servers' storage timeout, so commits time out with their outcome unknown). Alongside, client
connections are dropped at random (the socket aborted, no close handshake). On demand
(`benchmarks/chaos.py`): Redis frozen with SIGSTOP ("redis-pause"), and `overlap`, each kind of
fault on a schedule of its own so that they coincide. An instance that cannot start (Postgres is
frozen at its start) is started again, as a supervisor would.

Then everything is healed, the clients finish their sends and catch up with `sync`, and each
member sends one marker to each of its groups, which every other member must receive live, with
no sync (so delivery between instances works again after the faults). The checks:

- every acked (sender, client_id) is stored exactly once, as acked (conversation, seq, id,
  content); nothing is stored that no client sent; nothing the non-member sent is stored;
- the seqs of each conversation are 1..N without a gap;
- every member's view (acks, live and `sync` messages, deduplicated by (conversation, seq)) equals
  storage for its conversations exactly, before the final `sync` (after the markers) and after it;
- no (conversation, seq) was ever seen with two different messages (by any client);
- each `sync:done` lists exactly the member's conversations, and by then everything from the
  cursor up to where it says each one stands has arrived; the non-member's lists the groups she
  named as `forbidden` and replays nothing;
- each connection's live messages of one conversation come in increasing seq order (no
  duplicate, no step back); messages that arrived while a `sync` was under way on the connection
  may be replays, and are left out of this one check;
- a live stream's hole that the connection never received (not the user's own message) is a
  "live gap": the client filled it with `sync`. The cluster fills holes from storage, so one is
  only excused while storage is frozen (or shortly after); any other is reported;
- the non-member saw no message of the groups and a later marker published to her arrived (so
  her connection was listening).

`run_chaos` returns a `Report` (counts, the nemesis timeline, the violations); `Report.ok` is
whether every invariant held.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from sohbet.config import AuthConfig

from .chatkit import token
from .clusterkit import SECRET, Cluster, Instance, PrivateRedis, cluster, private_redis
from .pgcluster import PrivatePostgres

__all__ = ["API_KEY", "Report", "run_chaos"]

API_KEY = "chaos-test-api-key-of-at-least-32-bytes"
AUTH = AuthConfig(secret=SECRET)
DATABASE = "chaos"
#: Rate limits off: the clients retry and sync as often as faults make them.
SERVER_FLAGS: tuple[str, ...] = (
    "--api-key", API_KEY, "--send-rate", "0", "--sync-rate", "0", "--query-rate", "0",
    "--create-rate", "0", "--signal-rate", "0", "--frame-rate", "0", "--address-rate", "0",
    "--groups-per-hour", "0",
)  # fmt: skip
USER_NAMES = ("ada", "bora", "cem", "deniz", "ece", "fuat", "gul", "hakan", "ilke", "jale", "kaan", "lale")
OUTSIDER = "zed"  # in no group

#: Seconds after a Postgres freeze ends during which a live gap is excused (a gap fill that
#: timed out delivers on; the storage timeout is added to this).
GAP_EXCUSE_S = 5.0
#: How long a hole in a client's view may last before it calls `sync` for it.
HOLE_WAIT_S = 0.5
SEND_TIMEOUT_S = 10.0  # no answer to a send this long: the connection is given up
SYNC_TIMEOUT_S = 20.0
HEAL_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0  # for the drain, the catch-up and the markers each


Key = tuple[int, int]  # (conversation, seq)
Seen = tuple[int, str, str, str]  # (message id, sender, client_id, content)


@dataclass
class Report:
    """What a chaos run did and what it found. `violations` empty: every invariant held."""

    seed: int
    duration_s: float
    users: int = 0
    conversations: int = 0
    # the workload
    sent: int = 0  # distinct messages (client_ids) the members sent, markers included
    send_attempts: int = 0  # chat:send requests, retries included
    acked: int = 0
    stored: int = 0
    unavailable_retries: int = 0  # `error unavailable` to a send, retried with the same client_id
    send_timeouts: int = 0  # no answer in time: reconnected and retried
    outsider_refusals: int = 0  # the non-member's sends refused `forbidden`
    # the nemesis
    kills: int = 0
    redis_restarts: int = 0
    redis_pauses: int = 0  # SIGSTOP then SIGCONT (only with the "redis-pause" fault)
    pg_pauses: int = 0
    client_drops: int = 0
    start_failures: int = 0  # an instance killed did not start at once (Postgres frozen): started again
    # what the clients went through
    connections: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    syncs: int = 0  # sync calls (pages)
    gap_syncs: int = 0  # syncs a hole in the live stream asked for
    live_messages: int = 0  # chat:message outside a sync
    synced_messages: int = 0  # chat:message while a sync was under way
    duplicates_deduped: int = 0  # chat:message already in the client's view
    live_gaps: int = 0  # seqs missing from a live stream, filled by sync later
    live_gaps_excused: int = 0  # ... of them, around a Postgres freeze
    # the servers' own counters (sohbet_cluster_messages and the broker's), summed over instances
    # and incarnations (each instance is scraped before it is killed and at the end)
    server: dict[str, float] = field(default_factory=dict)
    server_log_levels: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # unexpected error-level log lines (first few)
    timeline: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    violations: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED: {len(self.violations)} violation(s)"
        lines = [
            f"chaos seed={self.seed} nemesis={self.duration_s:g}s wall={self.wall_s:.1f}s: {verdict}",
            f"  {self.users} users in {self.conversations} groups; sent {self.sent} (attempts {self.send_attempts}),"
            f" acked {self.acked}, stored {self.stored}; {self.unavailable_retries} unavailable retries,"
            f" {self.send_timeouts} send timeouts",
            f"  nemesis: {self.kills} kill -9, {self.redis_restarts} Redis restarts, {self.redis_pauses} Redis"
            f" freezes, {self.pg_pauses} Postgres"
            f" freezes, {self.client_drops} client drops; {self.start_failures} restarts failed and retried",
            f"  clients: {self.connections} connections ({self.reconnects} reconnects, {self.connect_failures}"
            f" failed attempts), {self.syncs} sync calls ({self.gap_syncs} for a live hole),"
            f" {self.live_messages} live + {self.synced_messages} synced messages,"
            f" {self.duplicates_deduped} duplicates deduped, {self.live_gaps} live gaps"
            f" ({self.live_gaps_excused} excused)",
            "  servers: " + ", ".join(f"{k}={v:g}" for k, v in sorted(self.server.items())),
            "  server logs: " + ", ".join(f"{k} {v}" for k, v in sorted(self.server_log_levels.items())),
        ]
        lines += [f"  unexpected server log line: {line}" for line in self.server_errors[:5]]
        lines += [f"  VIOLATION: {v}" for v in self.violations[:30]]
        if len(self.violations) > 30:
            lines.append(f"  ... and {len(self.violations) - 30} more")
        return "\n".join(lines)


# -- plumbing ------------------------------------------------------------------------------------


def _http(port: int, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


async def http(port: int, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP call to an instance (in a thread); OSError when nothing answers."""
    return await asyncio.to_thread(_http, port, method, path, body, timeout)


_METRIC = re.compile(r'^(sohbet_cluster_messages|sohbet_broker_events|sohbet_broker_reconnections)(?:_total)?'
                     r'(?:\{result="(\w+)"\})? ([0-9.eE+-]+)$')  # fmt: skip


async def scrape(instance: Instance) -> dict[str, float]:
    """The cluster counters of one instance's `/metrics`; empty when it does not answer."""
    try:
        status, body = await http(instance.port, "GET", "/metrics", timeout=2.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    found: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if m := _METRIC.match(line):
            family = m.group(1).removeprefix("sohbet_")
            found[f"{family}.{m.group(2)}" if m.group(2) else family] = float(m.group(3))
    return found


class _Lost(Exception):
    """This connection is given up: reconnect."""


# -- the clients ---------------------------------------------------------------------------------


@dataclass
class Conn:
    """One connection of a client, as it went."""

    number: int
    instance: str
    ws: ClientConnection
    hello: asyncio.Future[dict[str, Any]]
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    sync_ref: str | None = None
    #: chat:message arrivals in order: (conversation, seq, while a sync was under way, monotonic t)
    events: list[tuple[int, int, bool, float]] = field(default_factory=list)


class Client:
    """One user: one connection at a time, steady sends, retries, syncs."""

    _refs = itertools.count(1)

    def __init__(self, run: Run, user: str, conversations: list[int], rng: random.Random, *, member: bool) -> None:
        self.run = run
        self.user = user
        self.conversations = conversations
        self.rng = rng
        self.member = member
        self.view: dict[Key, Seen] = {}
        self.connections: list[Conn] = []
        self.conn: Conn | None = None
        self.acked: dict[str, dict[str, Any]] = {}  # client_id -> the acked message
        self.attempted: dict[str, tuple[int, str]] = {}  # client_id -> (conversation, content)
        self.queue: list[tuple[str, int, str]] = []  # sends to make: (client_id, conversation, content)
        self.next_number = itertools.count(1)
        self._prefix: dict[int, int] = {}  # see `prefix`
        self._highest: dict[int, int] = {}  # the highest seq seen, per conversation
        self.hole_since: float | None = None  # when the view was first seen with a hole
        self.sync_allowed = True  # off while markers must arrive live
        self.sync_request: asyncio.Event = asyncio.Event()  # the orchestrator asks for a sync
        self.synced: asyncio.Event = asyncio.Event()
        self.foreign: list[dict[str, Any]] = []  # chat:message of a conversation not its own
        self.markers_from_server: asyncio.Event = asyncio.Event()  # the outsider's app:marker
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    # -- the view --------------------------------------------------------------------------------

    def prefix(self, conversation: int) -> int:
        """The highest seq n of *conversation* such that 1..n are all in the view."""
        n = self._prefix.get(conversation, 0)
        while (conversation, n + 1) in self.view:
            n += 1
        self._prefix[conversation] = n
        return n

    def has_holes(self) -> bool:
        """Whether a seq was seen past one that is not in the view."""
        return any(self.prefix(c) < self._highest.get(c, 0) for c in self.conversations)

    def _take(self, key: Key, seen: Seen, how: str) -> None:
        """Add a message to the view; *how*: "live", "sync" (while a sync was under way) or "ack"."""
        run = self.run
        run.observe(key, seen, self.user)
        if key[1] > self._highest.get(key[0], 0):
            self._highest[key[0]] = key[1]
        if key in self.view:
            if how != "ack":
                run.report.duplicates_deduped += 1
            return
        self.view[key] = seen
        if how == "live":
            run.report.live_messages += 1
        elif how == "sync":
            run.report.synced_messages += 1

    def _message(self, conn: Conn, message: dict[str, Any]) -> None:
        conversation, seq = int(message["conversation_id"]), int(message["seq"])
        window = conn.sync_ref is not None
        conn.events.append((conversation, seq, window, time.monotonic()))
        if conversation not in self.conversations:
            self.foreign.append(message)
            return
        seen = (int(message["id"]), str(message["sender_id"]), str(message["client_id"]), str(message["content"]))
        self._take((conversation, seq), seen, "sync" if window else "live")

    # -- the connection ----------------------------------------------------------------------------

    async def main(self) -> None:
        backoff = 0.05
        while not self.closing:
            # A live instance, another than the last one when there is one (a load balancer's pick).
            live = [i for i in self.run.cluster.instances if i.proc is not None] or self.run.cluster.instances
            last = self.connections[-1].instance if self.connections else None
            instance = self.rng.choice([i for i in live if i.name != last] or live)
            try:
                url = f"{instance.url}?token={token(self.user, auth=AUTH)}"
                ws = await websockets.connect(
                    url, open_timeout=3, ping_interval=None, close_timeout=1, max_queue=None, max_size=None,
                    compression=None,
                )  # fmt: skip
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
                self.run.report.connect_failures += 1
            else:
                conn = Conn(len(self.connections) + 1, instance.name, ws, asyncio.get_running_loop().create_future())
                self.connections.append(conn)
                self.run.report.connections += 1
                if len(self.connections) > 1:
                    self.run.report.reconnects += 1
                self.conn = conn
                try:
                    if await self._session(conn):
                        backoff = 0.05
                finally:
                    self.conn = None
                    for future in conn.pending.values():
                        if not future.done():
                            future.set_exception(_Lost())
                    conn.ws.transport.abort()
            if self.closing:
                return
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 1.0)

    async def _session(self, conn: Conn) -> bool:
        """Run one connection until it is lost; True if it got as far as its hello."""
        reader = asyncio.ensure_future(self._read(conn))
        worker = asyncio.ensure_future(self._work(conn))
        try:
            await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, worker):
                task.cancel()
            await asyncio.gather(reader, worker, return_exceptions=True)
        for task in (reader, worker):
            failure = None if task.cancelled() else task.exception()
            if failure is not None and not isinstance(failure, _Lost):
                self.run.violation(f"the checker failed ({self.user}): {failure!r}")
                self.closing = True  # a bug here: stop this client rather than loop
        return conn.hello.done()

    async def _read(self, conn: Conn) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed, OSError):
            async for raw in conn.ws:
                item = orjson.loads(raw)
                kind = item.get("type")
                if kind == "chat:message":
                    self._message(conn, item["payload"]["message"])
                    continue
                if kind == "hello" and not conn.hello.done():
                    conn.hello.set_result(item["payload"])
                elif kind == "app:marker":
                    self.markers_from_server.set()
                ref = item.get("ref")
                if ref is not None:
                    if ref == conn.sync_ref:
                        conn.sync_ref = None  # the window of replays ends with the sync's answer
                    future = conn.pending.get(ref)
                    if future is not None and not future.done():
                        future.set_result(item)

    async def _request(self, conn: Conn, kind: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        ref = f"{self.user}.{next(self._refs)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.pending[ref] = future
        if kind == "sync":
            conn.sync_ref = ref
        try:
            await conn.ws.send(orjson.dumps({"type": kind, "payload": payload, "ref": ref}).decode())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise  # an OSError too, but not a lost connection: no answer in time
        except (websockets.exceptions.ConnectionClosed, OSError) as exc:
            raise _Lost() from exc
        finally:
            conn.pending.pop(ref, None)

    async def _work(self, conn: Conn) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(conn.hello), 10)
        except TimeoutError:
            return
        if not await self._sync(conn):
            return
        report = self.run.report
        while not self.closing:
            if self.sync_request.is_set():
                if not await self._sync(conn):
                    return
                self.sync_request.clear()
                self.synced.set()
                continue
            if self.sync_allowed and self.has_holes():
                # A hole that lasts: an ack may come before the live messages just before it.
                now = time.monotonic()
                if self.hole_since is None:
                    self.hole_since = now
                elif now - self.hole_since > HOLE_WAIT_S:
                    self.hole_since = None
                    report.gap_syncs += 1
                    if not await self._sync(conn):
                        return
                    continue
            else:
                self.hole_since = None
            if not self.queue and self.run.loading:
                self._new_message()
            if not self.queue:
                await asyncio.sleep(0.02)
                continue
            pause = await self._send(conn)
            if pause is None:
                return
            await asyncio.sleep(pause)

    def _new_message(self) -> None:
        n = next(self.next_number)
        conversation = self.rng.choice(self.conversations if self.member else self.run.groups)
        client_id = f"{self.user}-{n}"
        filler = "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz ", k=self.rng.randint(1, 40)))
        self.queue.append((client_id, conversation, f"{client_id} to {conversation}: {filler}"))

    async def _send(self, conn: Conn) -> float | None:
        """One attempt at the first queued send: the pause before the next, None to reconnect."""
        report = self.run.report
        client_id, conversation, content = self.queue[0]
        if client_id not in self.attempted:
            self.attempted[client_id] = (conversation, content)
            if self.member:
                report.sent += 1
        report.send_attempts += 1
        payload = {"conversation_id": conversation, "content": content, "client_id": client_id}
        try:
            reply = await self._request(conn, "chat:send", payload, SEND_TIMEOUT_S)
        except TimeoutError:
            report.send_timeouts += 1
            return None
        except _Lost:
            return None
        kind, body = reply["type"], reply.get("payload", {})
        if kind == "chat:ack":
            message = body["message"]
            self.queue.pop(0)
            if not self.member:
                self.run.violation(f"{self.user} (in no group) got an ack for a send to {conversation}: {message}")
                return self.run.interval
            self._acked(client_id, conversation, content, message)
            return self.run.interval * (0.5 + self.rng.random())
        code = body.get("code")
        if code == "forbidden" and not self.member:
            self.queue.pop(0)
            report.outsider_refusals += 1
            return 2.0
        if code == "unavailable":
            report.unavailable_retries += 1
            return 0.1 + 0.2 * self.rng.random()
        if code == "rate_limited":
            return float(body.get("retry_after_ms", 100)) / 1000
        self.run.violation(f"{self.user}: unexpected answer to chat:send {client_id}: {reply}")
        self.queue.pop(0)
        return self.run.interval

    def _acked(self, client_id: str, conversation: int, content: str, message: dict[str, Any]) -> None:
        run = self.run
        run.report.acked += 1
        before = self.acked.get(client_id)
        if before is not None and before != message:
            run.violation(f"{self.user}: {client_id} acked twice differently: {before} then {message}")
        self.acked[client_id] = message
        got = (
            int(message["conversation_id"]),
            str(message["sender_id"]),
            str(message["client_id"]),
            message["content"],
        )
        if got != (conversation, self.user, client_id, content):
            run.violation(f"{self.user}: the ack of {client_id} is another message: {message}")
        key = (int(message["conversation_id"]), int(message["seq"]))
        self._take(key, (int(message["id"]), self.user, client_id, str(message["content"])), "ack")

    async def _sync(self, conn: Conn) -> bool:
        """Catch up from the end of each conversation's holeless prefix, paging; False if lost."""
        report = self.run.report
        if self.member:
            cursors = {str(c): self.prefix(c) for c in self.conversations}
        else:
            cursors = {str(c): 0 for c in self.run.groups}
        for _ in range(1000):
            report.syncs += 1
            try:
                reply = await self._request(conn, "sync", {"cursors": cursors}, SYNC_TIMEOUT_S)
            except (TimeoutError, _Lost):
                return False
            body = reply.get("payload", {})
            if reply["type"] == "error":
                if body.get("code") in ("unavailable", "rate_limited"):
                    await asyncio.sleep(0.2 + 0.3 * self.rng.random())
                    continue
                self.run.violation(f"{self.user}: unexpected answer to sync: {reply}")
                return True
            forbidden = sorted(int(c) for c in body["forbidden"])
            expected = [] if self.member else sorted(self.run.groups)
            if forbidden != expected:
                self.run.violation(f"{self.user}: sync said forbidden {forbidden}, expected {expected}")
            # It replayed everything after each cursor up to where it says the conversation stands.
            stands = {int(c): int(seq) for c, seq in body["conversations"].items()}
            if self.member and sorted(stands) != sorted(self.conversations):
                self.run.violation(f"{self.user}: sync listed conversations {sorted(stands)}, not {self.conversations}")
            short = {c: seq for c, seq in stands.items() if c in self.conversations and self.prefix(c) < seq}
            if short:
                missing = {c: [s for s in range(self.prefix(c) + 1, seq + 1) if (c, s) not in self.view][:10]
                           for c, seq in short.items()}  # fmt: skip
                self.run.violation(f"{self.user}: sync:done {stands} after cursors {cursors}, but missing {missing}")
            if body["complete"]:
                return True
            cursors = {c: int(body["conversations"][c]) for c in cursors if c in body["conversations"]}
        self.run.violation(f"{self.user}: sync never said complete")
        return True

    def drop(self) -> bool:
        """Cut the connection now, as a network would (no close handshake)."""
        conn = self.conn
        if conn is None or not conn.hello.done():
            return False
        conn.ws.transport.abort()
        return True


# -- the run -------------------------------------------------------------------------------------


class Run:
    """The state of one chaos run, shared by the clients, the nemesis and the checks."""

    def __init__(self, report: Report, the_cluster: Cluster, *, redis: PrivateRedis, pg: PrivatePostgres,
                 rng: random.Random, interval: float, storage_timeout: float,
                 progress: Callable[[str], None] | None) -> None:  # fmt: skip
        self.report = report
        self.cluster = the_cluster
        self.redis = redis
        self.pg = pg
        self.rng = rng
        self.interval = interval
        self.storage_timeout = storage_timeout
        self.progress = progress
        self.loading = True
        self.groups: list[int] = []
        self.members: dict[int, list[str]] = {}
        self.clients: list[Client] = []
        self.observed: dict[Key, Seen] = {}
        self.started = time.monotonic()
        self.freezes: list[tuple[float, float]] = []  # (start, end) monotonic, of each Postgres freeze
        self.redis_lock = asyncio.Lock()
        self.before_final: dict[str, dict[Key, Seen]] = {}  # each member's view after the markers

    def violation(self, text: str) -> None:
        if len(self.report.violations) < 1000:
            self.report.violations.append(text)

    def observe(self, key: Key, seen: Seen, who: str) -> None:
        before = self.observed.setdefault(key, seen)
        if before != seen:
            self.violation(f"{key} seen as two messages: {before} and, by {who}, {seen}")

    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:7.2f}s {text}"
        self.report.timeline.append(line)
        if self.progress is not None:
            self.progress(line)

    def add_counters(self, counters: dict[str, float]) -> None:
        for name, value in counters.items():
            self.report.server[name] = self.report.server.get(name, 0.0) + value

    # -- the nemesis -----------------------------------------------------------------------------

    async def nemesis(self, duration_s: float, faults: tuple[str, ...], rng: random.Random, *, overlap: bool) -> None:
        """Server-side faults one at a time, round-robin over *faults* in a seeded order; with
        *overlap*, each kind of fault on a schedule of its own, so they may coincide (still at
        most one instance down at a time)."""
        deadline = time.monotonic() + duration_s
        server_faults = [f for f in faults if f != "drop"]
        if overlap and server_faults:
            rngs = [random.Random(rng.random()) for _ in server_faults]
            await asyncio.gather(*(self._one_kind(f, r, deadline) for f, r in zip(server_faults, rngs, strict=True)))
            return
        order: list[str] = []
        while server_faults and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            if time.monotonic() >= deadline:
                break
            if not order:
                order = rng.sample(server_faults, len(server_faults))
            await self._fault(order.pop(), rng)
        if not server_faults:
            await asyncio.sleep(max(deadline - time.monotonic(), 0))

    async def _one_kind(self, fault: str, rng: random.Random, deadline: float) -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            if time.monotonic() >= deadline:
                return
            await self._fault(fault, rng)

    async def _fault(self, fault: str, rng: random.Random) -> None:
        if fault == "kill":
            await self._kill(rng)
        elif fault == "redis":
            async with self.redis_lock:  # a restart and a freeze of Redis do not overlap
                await self._restart_redis(rng)
        elif fault == "pg":
            await self._freeze_postgres(rng)
        elif fault == "redis-pause":
            async with self.redis_lock:
                await self._pause_redis(rng)

    async def _kill(self, rng: random.Random) -> None:
        running = [i for i in self.cluster.instances if i.proc is not None]
        if len(running) < len(self.cluster.instances):
            return  # one is down already
        victim = rng.choice(running)
        down_s = rng.uniform(0.5, 2.5)
        self.add_counters(await scrape(victim))
        await asyncio.to_thread(victim.kill)
        self.report.kills += 1
        self.event(f"kill -9 {victim.name}; restart in {down_s:.1f} s")
        await asyncio.sleep(down_s)
        await self.start(victim)

    async def start(self, instance: Instance) -> None:
        """Start *instance* again, as a supervisor would: until it listens (a server that cannot
        reach Postgres at start exits: it is started again after a moment)."""
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while True:
            try:
                await asyncio.to_thread(instance.start)
            except AssertionError as exc:  # it exited, or did not listen in time
                if instance.proc is not None and instance.proc.poll() is None:
                    await asyncio.to_thread(instance.kill)
                instance.proc = None
                self.report.start_failures += 1
                self.event(f"{instance.name} did not start ({exc}): again in 0.5 s")
                if time.monotonic() > deadline:
                    self.violation(f"instance {instance.name} did not start within {HEAL_TIMEOUT_S} s: {exc}")
                    return
                await asyncio.sleep(0.5)
            else:
                self.event(f"{instance.name} started again")
                return

    async def _restart_redis(self, rng: random.Random) -> None:
        down_s = rng.uniform(0.5, 2.0)
        await asyncio.to_thread(self.redis.stop)
        self.report.redis_restarts += 1
        self.event(f"Redis stopped; back (empty) in {down_s:.1f} s")
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.redis.start)
        self.event("Redis started")

    async def _pause_redis(self, rng: random.Random) -> None:
        paused_s = rng.uniform(0.5, 3.0)
        await asyncio.to_thread(self.redis.pause)
        self.report.redis_pauses += 1
        self.event(f"Redis frozen for {paused_s:.1f} s")
        try:
            await asyncio.sleep(paused_s)
        finally:
            await asyncio.to_thread(self.redis.resume)
        self.event("Redis thawed")

    async def _freeze_postgres(self, rng: random.Random) -> None:
        frozen_s = rng.uniform(1.0, 2.0)
        start = time.monotonic()
        await asyncio.to_thread(self.pg.pause)
        self.report.pg_pauses += 1
        self.event(f"Postgres frozen for {frozen_s:.1f} s")
        try:
            await asyncio.sleep(frozen_s)
        finally:
            await asyncio.to_thread(self.pg.resume)
            self.freezes.append((start, time.monotonic()))
        self.event("Postgres thawed")

    async def dropper(self, duration_s: float, rng: random.Random) -> None:
        deadline = time.monotonic() + duration_s
        while True:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            if time.monotonic() >= deadline:
                return
            client = rng.choice(self.clients)
            if client.drop():
                self.report.client_drops += 1
                self.event(f"dropped {client.user}'s connection")

    async def heal(self) -> None:
        """Everything up again: Postgres thawed, Redis running, every instance running and ready."""
        if self.pg.is_paused:
            await asyncio.to_thread(self.pg.resume)
        if self.redis.proc is None:
            await asyncio.to_thread(self.redis.start)
        for instance in self.cluster.instances:
            if instance.proc is not None and instance.proc.poll() is not None:
                self.violation(f"instance {instance.name} exited by itself with {instance.proc.returncode}")
                instance.proc = None
            if instance.proc is None:
                await self.start(instance)
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        for instance in self.cluster.instances:
            while True:
                try:
                    status, _ = await http(instance.port, "GET", "/readyz", timeout=2.0)
                except OSError:
                    status = 0
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    self.violation(f"instance {instance.name} not ready {HEAL_TIMEOUT_S} s after healing")
                    break
                await asyncio.sleep(0.1)
        self.event("healed: every instance ready")


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _create_database(pg: PrivatePostgres) -> str:
    import asyncpg  # noqa: PLC0415  # only the Postgres half of the suite needs it

    con = await asyncpg.connect(pg.url, timeout=10)
    try:
        await con.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await con.close()
    return pg.database_url(DATABASE)


async def _stored(url: str) -> list[dict[str, Any]]:
    import asyncpg  # noqa: PLC0415

    con = await asyncpg.connect(url, timeout=10)
    try:
        rows = await con.fetch(
            "SELECT id, conversation_id, seq, sender_id, client_id, content FROM messages ORDER BY conversation_id, seq"
        )
    finally:
        await con.close()
    return [dict(r) for r in rows]


def _groups(rng: random.Random, users: list[str], count: int) -> list[list[str]]:
    """*count* groups of 3+ members each, every user in at least one."""
    shuffled = rng.sample(users, len(users))
    groups = [shuffled[i::count] for i in range(count)]
    for group in groups:
        others = [u for u in users if u not in group]
        group.extend(rng.sample(others, rng.randint(max(3 - len(group), 1), min(2, len(others)))))
    return [sorted(group) for group in groups]


async def run_chaos(
    duration_s: float,
    seed: int,
    *,
    workdir: Path,
    postgres: PrivatePostgres | None = None,
    users: int = 6,
    groups: int = 3,
    send_interval_s: float = 0.25,
    storage_timeout_s: float = 1.0,
    faults: tuple[str, ...] = ("kill", "redis", "pg", "drop"),
    overlap: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the cluster under the nemesis for *duration_s* seconds, heal it, check the history.

    Args:
        workdir: where the instances' logs (a.log, b.log, c.log) and Redis' directory go.
        postgres: a started private cluster to use (a database `chaos` is created in it); None:
            one is made and destroyed here.
        send_interval_s: each member's mean pause between two acked sends.
        faults: of "kill", "redis", "pg", "redis-pause" (the server-side ones, taken in turn) and
            "drop"; "redis-pause" (SIGSTOP of Redis for 0.5-3 s) is not in the default set.
        overlap: each server-side fault on its own schedule, so that they may coincide.
    """
    began = time.monotonic()
    report = Report(seed=seed, duration_s=duration_s, workdir=str(workdir))
    own_pg = postgres is None
    pg = postgres or PrivatePostgres()
    try:
        if own_pg:
            await asyncio.to_thread(pg.init)
        database_url = await _create_database(pg)
        with contextlib.ExitStack() as stack:
            redis = await asyncio.to_thread(stack.enter_context, private_redis(workdir))
            extra = (*SERVER_FLAGS, "--storage-timeout", str(storage_timeout_s))
            the_cluster = await asyncio.to_thread(
                stack.enter_context, cluster(workdir, database_url, n=3, redis_url=redis.url, extra=extra)
            )
            rng = random.Random(seed)
            run = Run(report, the_cluster, redis=redis, pg=pg, rng=rng, interval=send_interval_s,
                      storage_timeout=storage_timeout_s, progress=progress)  # fmt: skip
            try:
                await _drive(run, duration_s, users, groups, faults, overlap=overlap)
                await _check(run, await _stored(database_url))
            finally:
                for client in run.clients:
                    client.closing = True
                    if client.task is not None:
                        client.task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await client.task
                if pg.is_paused:
                    pg.resume()
                _read_logs(run, workdir)
            await asyncio.to_thread(stack.close)
    finally:
        if own_pg:
            await asyncio.to_thread(pg.destroy)
    report.wall_s = round(time.monotonic() - began, 2)
    return report


async def _drive(
    run: Run, duration_s: float, n_users: int, n_groups: int, faults: tuple[str, ...], *, overlap: bool
) -> None:
    report, rng = run.report, run.rng
    names = list(USER_NAMES[:n_users]) if n_users <= len(USER_NAMES) else [f"u{i}" for i in range(n_users)]
    report.users = n_users
    for group in _groups(rng, names, n_groups):
        status, body = await http(run.cluster[0].port, "POST", "/api/conversations",
                                  {"members": group, "title": "chaos"})  # fmt: skip
        assert status == 201, (status, body)
        conversation = int(json.loads(body)["conversation"]["id"])
        run.groups.append(conversation)
        run.members[conversation] = group
    report.conversations = len(run.groups)
    run.event("groups: " + "; ".join(f"{c}={','.join(m)}" for c, m in run.members.items()))
    for name in names:
        mine = [c for c, m in run.members.items() if name in m]
        run.clients.append(Client(run, name, mine, random.Random(rng.random()), member=True))
    outsider = Client(run, OUTSIDER, [], random.Random(rng.random()), member=False)
    run.clients.append(outsider)
    members = run.clients[:-1]
    nemesis_rng, drop_rng = random.Random(rng.random()), random.Random(rng.random())
    for client in run.clients:
        client.task = asyncio.ensure_future(client.main())

    # Chaos.
    tasks = [asyncio.ensure_future(run.nemesis(duration_s, faults, nemesis_rng, overlap=overlap))]
    if "drop" in faults:
        tasks.append(asyncio.ensure_future(run.dropper(duration_s, drop_rng)))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    run.event("nemesis done")
    await run.heal()

    # Everything sent is acked; then everyone catches up.
    run.loading = False
    if not await _until(lambda: all(not c.queue for c in run.clients), SETTLE_TIMEOUT_S):
        for client in run.clients:
            if client.queue:
                run.violation(f"{client.user}: sends never acked after healing: {client.queue[:5]}")
    run.event("every send acked")
    for client in members:
        client.synced.clear()
        client.sync_request.set()
    if not await _until(lambda: all(c.synced.is_set() for c in members), SETTLE_TIMEOUT_S):
        run.violation(
            "the catch-up syncs did not finish: " + ", ".join(c.user for c in members if not c.synced.is_set())
        )
    run.event("caught up")

    # Markers: each member to each of its groups; everyone else must get them live, no sync.
    for client in members:
        client.sync_allowed = False
    connections_before = {c.user: c.conn for c in members}
    for client in members:
        for conversation in client.conversations:
            client_id = f"{client.user}-marker-{conversation}"
            client.queue.append((client_id, conversation, f"marker of {client.user} in {conversation}"))
    if not await _until(lambda: all(not c.queue for c in members), SETTLE_TIMEOUT_S):
        run.violation("markers not acked: " + ", ".join(c.user for c in members if c.queue))
    markers = {
        (int(m["conversation_id"]), int(m["seq"]))
        for c in members for cid, m in c.acked.items() if "-marker-" in cid
    }  # fmt: skip

    def missing_markers() -> dict[str, list[Key]]:
        return {
            c.user: sorted(k for k in markers if k[0] in c.conversations and k not in c.view)
            for c in members
            if any(k[0] in c.conversations and k not in c.view for k in markers)
        }

    if not await _until(lambda: not missing_markers(), SETTLE_TIMEOUT_S):
        run.violation(f"markers never delivered live after healing: {missing_markers()}")
    lost = [c.user for c in members if c.conn is None or c.conn is not connections_before[c.user]]
    if lost:
        run.violation(f"connections lost after healing, with no fault injected: {', '.join(lost)}")
    run.event("markers delivered")
    before_final = {c.user: dict(c.view) for c in members}

    # The non-member: a marker published to her must arrive, after everything else.
    for instance in rng.sample(run.cluster.instances, len(run.cluster.instances)):
        status, _ = await http(instance.port, "POST", "/api/publish",
                               {"user_ids": [OUTSIDER], "type": "app:marker", "payload": {}})  # fmt: skip
        if status == 200:
            break
    try:
        await asyncio.wait_for(outsider.markers_from_server.wait(), SETTLE_TIMEOUT_S)
    except TimeoutError:
        run.violation(f"the marker published to {OUTSIDER} never arrived")

    # The final sync, then the counters.
    for client in members:
        client.sync_allowed = True
        client.synced.clear()
        client.sync_request.set()
    if not await _until(lambda: all(c.synced.is_set() for c in members), SETTLE_TIMEOUT_S):
        run.violation("the final syncs did not finish")
    run.event("final sync done")
    for instance in run.cluster.instances:
        run.add_counters(await scrape(instance))
    for client in run.clients:
        client.closing = True
    run.before_final = before_final


async def _check(run: Run, rows: list[dict[str, Any]]) -> None:
    report = run.report
    report.stored = len(rows)
    members = [c for c in run.clients if c.member]
    outsider = next(c for c in run.clients if not c.member)

    # Storage: one row per (sender, client_id), dense seqs, ids unique, nothing unsent.
    by_key: dict[Key, Seen] = {}
    by_client: Counter[tuple[str, str]] = Counter()
    per_conversation: dict[int, list[int]] = {}
    ids: Counter[int] = Counter()
    for row in rows:
        key = (int(row["conversation_id"]), int(row["seq"]))
        by_key[key] = (int(row["id"]), row["sender_id"], row["client_id"], row["content"])
        by_client[(row["sender_id"], row["client_id"])] += 1
        per_conversation.setdefault(key[0], []).append(key[1])
        ids[int(row["id"])] += 1
    for (sender, client_id), count in by_client.items():
        if count != 1:
            run.violation(f"({sender}, {client_id}) stored {count} times")
    for message_id, count in ids.items():
        if count != 1:
            run.violation(f"message id {message_id} stored {count} times")
    for conversation, seqs in per_conversation.items():
        if seqs != list(range(1, len(seqs) + 1)):
            holes = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
            run.violation(f"conversation {conversation}: seqs not 1..N: holes {holes[:20]}, {len(seqs)} rows")
        if conversation not in run.groups:
            run.violation(f"messages stored in conversation {conversation}, which is none of the groups")
    stored_by_client = {(row["sender_id"], row["client_id"]): row for row in rows}

    # Every acked message stored as acked; every attempt acked; nothing stored that nobody sent.
    attempted: set[tuple[str, str]] = set()
    for client in run.clients:
        for client_id in client.attempted:
            attempted.add((client.user, client_id))
        for client_id, message in client.acked.items():
            stored = stored_by_client.get((client.user, client_id))
            if stored is None:
                run.violation(f"acked but not stored: {client.user} {client_id} {message}")
                continue
            if (stored["conversation_id"], stored["seq"], stored["id"], stored["content"]) != (
                message["conversation_id"], message["seq"], message["id"], message["content"]
            ):  # fmt: skip
                run.violation(f"acked {message}, stored {stored}")
        if client.member:
            for client_id in client.attempted:
                if client_id not in client.acked:
                    run.violation(f"{client.user} {client_id} was never acked")
    for pair in stored_by_client:
        if pair not in attempted:
            run.violation(f"stored but never sent: {pair}")
        if pair[0] == OUTSIDER:
            run.violation(f"a send of {OUTSIDER}, in no group, was stored: {pair}")

    # Every member's view equals storage for its groups, before the final sync and after it.
    before_final = run.before_final
    for client in members:
        expected = {k: v for k, v in by_key.items() if k[0] in client.conversations}
        for label, view in (("before the final sync", before_final.get(client.user, {})), ("at the end", client.view)):
            if view != expected:
                missing = sorted(set(expected) - set(view))
                extra = sorted(set(view) - set(expected))
                differ = sorted(k for k in set(view) & set(expected) if view[k] != expected[k])
                run.violation(
                    f"{client.user}'s view {label} is not storage: missing {missing[:10]} ({len(missing)}),"
                    f" extra {extra[:10]} ({len(extra)}), different {differ[:10]} ({len(differ)})"
                )
    for key, seen in run.observed.items():
        if key in by_key and by_key[key] != seen:
            run.violation(f"{key} was seen as {seen}, stored as {by_key[key]}")

    # Each connection's live stream: increasing seqs per conversation; holes are live gaps.
    excuse = GAP_EXCUSE_S + run.storage_timeout
    sender_of = {key: seen[1] for key, seen in by_key.items()}
    for client in members:
        for conn in client.connections:
            last: dict[int, int] = {}
            received: set[Key] = set()
            for conversation, seq, window, at in conn.events:
                key = (conversation, seq)
                if not window:
                    before = last.get(conversation)
                    if before is not None and seq <= before:
                        run.violation(
                            f"{client.user} connection {conn.number} (on {conn.instance}): live seq {seq} of"
                            f" {conversation} after {before}"
                        )
                    elif before is not None:
                        holes = [
                            s for s in range(before + 1, seq)
                            if (conversation, s) not in received and sender_of.get((conversation, s)) != client.user
                        ]  # fmt: skip
                        if holes:
                            report.live_gaps += len(holes)
                            if any(start <= at <= end + excuse for start, end in run.freezes):
                                report.live_gaps_excused += len(holes)
                            else:
                                run.violation(
                                    f"{client.user} connection {conn.number} (on {conn.instance}): live seq {seq}"
                                    f" of {conversation} after {before}, never sent {holes[:10]}, at"
                                    f" {at - run.started:.2f} s, no Postgres freeze near"
                                )
                    last[conversation] = max(seq, before or 0)
                received.add(key)

    # The outsider saw nothing of the groups.
    if outsider.foreign or outsider.view:
        run.violation(f"{OUTSIDER}, in no group, saw {len(outsider.foreign)} messages: {outsider.foreign[:3]}")
    seen_by_outsider = sum(len(c.events) for c in outsider.connections)
    if seen_by_outsider:
        run.violation(f"{OUTSIDER} received {seen_by_outsider} chat:message")


#: Error-level log lines the faults themselves cause (counted, not listed).
EXPECTED_ERRORS = ("redis is unreachable", "storage is down")


def _read_logs(run: Run, workdir: Path) -> None:
    """Count the instances' log lines by level; list the error-level ones the faults do not
    explain, and anything that is not a JSON record (a traceback on stderr)."""
    levels: Counter[str] = Counter()
    unexpected = run.report.server_errors
    for path in sorted(workdir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if line.strip():
                    levels["not json"] += 1
                    if len(unexpected) < 20:
                        unexpected.append(f"{path.name}: {line[:300]}")
                continue
            level = str(record.get("level", "?")).lower()
            levels[level] += 1
            expected = str(record.get("msg", "")).startswith(EXPECTED_ERRORS)
            if level in ("error", "critical") and not expected and len(unexpected) < 20:
                unexpected.append(f"{path.name}: {line[:500]}")
    run.report.server_log_levels = dict(levels)
