"""Three real instances on one Postgres, linked through Redis, behave as one server
(docs/cluster.md): Alice on A, Bob on B, Carol on C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from sohbet.chat.hub import FANOUT_CACHE_MIN
from sohbet.config import AuthConfig

from ..chatkit import WsChat, token
from ..clusterkit import (
    SECRET,
    SERVER,
    SHARED_REDIS,
    Cluster,
    DelayingProxy,
    Instance,
    cluster,
    free_port,
    private_redis,
    ready,
    wait_port,
)

AUTH = AuthConfig(secret=SECRET)
API_KEY = "cluster-test-api-key-of-32-bytes-at-least"


def tok(user: str) -> str:
    return token(user, auth=AUTH)


@asynccontextmanager
async def connect(instance: Instance, user: str) -> AsyncIterator[WsChat]:
    async with websockets.connect(f"{instance.url}?token={tok(user)}", max_queue=None) as ws:
        client = WsChat(ws, user)
        client.hello = (await client.expect("hello"))["payload"]
        yield client


def api(instance: Instance, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{instance.port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def three(tmp_path: Path, postgres_database: str) -> Any:
    with cluster(
        tmp_path, postgres_database, extra=("--api-key", API_KEY, "--send-rate", "0", "--frame-rate", "0")
    ) as c:
        yield c


def test_everything_live_crosses_instances(three: Cluster) -> None:
    a, b, c = three[0], three[1], three[2]

    async def main() -> None:
        async with connect(a, "alice") as alice, connect(b, "bob") as bob, connect(c, "carol") as carol:
            group = await alice.create("bob", "carol", title="trio")
            for other in (bob, carol):
                created = await other.expect("conversation:created")
                assert created["payload"]["conversation"]["id"] == group
            # Bob is online on B: Alice's presence query on A sees him, and Carol's on C.
            assert (await alice.ok("presence:query", {"user_ids": ["bob", "carol"]}))["online"] == ["bob", "carol"]
            # A message from A reaches B and C; one from B reaches A and C.
            m1 = await alice.send(group, "hi from A")
            for other in (bob, carol):
                got = await other.expect("chat:message")
                assert got["payload"]["message"]["seq"] == m1["seq"] == 1
                assert got["payload"]["message"]["content"] == "hi from A"
            await bob.send(group, "hi from B")
            for other in (alice, carol):
                assert (await other.expect("chat:message"))["payload"]["message"]["seq"] == 2
            # Typing from C reaches A and B, not C's own connection.
            await carol.send_raw({"type": "chat:typing", "payload": {"conversation_id": group}})
            for other in (alice, bob):
                typing = await other.expect("chat:typing")
                assert typing["payload"]["user_id"] == "carol"
            # A read on B reaches A and C.
            await bob.send_raw({"type": "chat:read", "payload": {"conversation_id": group, "seq": 2}})
            for other in (alice, carol):
                read = await other.expect("chat:read")
                assert read["payload"] == {"conversation_id": group, "user_id": "bob", "seq": 2}
            # Each event once: not echoed back to the instance it came from.
            await alice.send(group, "marker")
            await bob.expect("chat:message")
            await carol.expect("chat:message")
            assert [m["type"] for m in bob.backlog if m["type"] in {"chat:read", "chat:typing"}] == []
            # Carol leaves on C: A and B are told, and from then on nothing of the group reaches her.
            await carol.ok("conversation:leave", {"conversation_id": group})
            for other in (alice, bob):
                removed = await other.expect("conversation:member_removed")
                assert removed["payload"] == {"conversation_id": group, "user_id": "carol"}
            await alice.send(group, "after carol left")
            assert (await bob.expect("chat:message"))["payload"]["message"]["seq"] == 4
            # ... and her send on C is refused, though A's cache had her as a member.
            refused = await carol.request("chat:send", {"conversation_id": group, "content": "x", "client_id": "late"})
            assert refused["type"] == "error" and refused["payload"]["code"] == "forbidden"
            # The backend adds her back through B's HTTP API: everyone, Carol on C too, is told.
            status, _ = api(b, "POST", f"/api/conversations/{group}/members", {"user_id": "carol"})
            assert status == 200
            for other in (alice, bob, carol):
                added = await other.expect("conversation:member_added")
                assert added["payload"] == {"conversation_id": group, "user_id": "carol"}
            await alice.send(group, "welcome back")
            got = await carol.expect("chat:message")
            assert got["payload"]["message"]["seq"] == 5
            # Nothing of seq 4 reached her in between: the next message after the marker is 5.
            assert all(m["type"] != "chat:message" for m in carol.backlog)
            # Publish and broadcast through C reach users on A and B.
            status, _ = api(
                c, "POST", "/api/publish", {"user_ids": ["alice", "bob"], "type": "app:ping", "payload": {"n": 1}}
            )
            assert status == 200
            for other in (alice, bob):
                assert (await other.expect("app:ping"))["payload"] == {"n": 1}
            status, _ = api(a, "POST", "/api/broadcast", {"type": "app:all", "payload": {}})
            assert status == 200
            for other in (alice, bob, carol):
                await other.expect("app:all")

    asyncio.run(main())


def test_a_large_groups_kept_recipients_on_another_instance_follow_every_change(three: Cluster) -> None:
    """B keeps the connections of a group's members connected to it from `FANOUT_CACHE_MIN` on
    (`Hub.here_connections`); every change between two messages from A shows in the next: a
    leave on B, a removal made on A, a second device, an addition, a closed connection."""
    a, b = three[0], three[1]
    others = [f"u{i:02}" for i in range(FANOUT_CACHE_MIN + 2)]

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            alice = await stack.enter_async_context(connect(a, "alice"))
            on_b = {user: await stack.enter_async_context(connect(b, user)) for user in others}
            dave = await stack.enter_async_context(connect(b, "dave"))
            group = await alice.create(*others, title="many")
            for client in on_b.values():
                await client.expect("conversation:created")
            sent = 0

            async def round_trip(receivers: list[WsChat], silent: list[WsChat]) -> None:
                nonlocal sent
                sent += 1
                await alice.send(group, f"m{sent}")
                for client in receivers:
                    got = await client.expect("chat:message")
                    assert got["payload"]["message"]["content"] == f"m{sent}", client.user
                for client in silent:  # B wrote to every receiver in one pass: it would be here
                    assert "chat:message" not in [e["type"] for e in await client.nothing_pending()]

            await round_trip(list(on_b.values()), [dave])
            leaver = on_b.pop("u00")
            await leaver.ok("conversation:leave", {"conversation_id": group})
            await round_trip(list(on_b.values()), [leaver, dave])
            removed = on_b.pop("u03")  # removed through A: B hears of it from the broker
            status, _ = api(a, "DELETE", f"/api/conversations/{group}/members/u03")
            assert status == 204
            await removed.expect("conversation:member_removed")
            await round_trip(list(on_b.values()), [leaver, removed, dave])
            phone = await stack.enter_async_context(connect(b, "u01"))
            await round_trip([*on_b.values(), phone], [leaver, dave])
            status, _ = api(a, "POST", f"/api/conversations/{group}/members", {"user_id": "dave"})
            assert status == 200
            await dave.expect("conversation:member_added")
            await round_trip([*on_b.values(), phone, dave], [leaver])
            await on_b.pop("u02").ws.close()
            await phone.ws.close()
            await round_trip([*on_b.values(), dave], [leaver])

    asyncio.run(main())


def test_the_connection_limit_holds_across_instances_and_presence_is_cluster_wide(three: Cluster) -> None:
    """Ten connections of Dave over A, B and C; the eleventh, wherever it lands, is refused
    with 1008 and the ten stay open. The HTTP API of any instance counts all ten."""

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            held = [await stack.enter_async_context(connect(three[i % 3], "dave")) for i in range(10)]
            for i in range(3):
                ws = await websockets.connect(f"{three[i].url}?token={tok('dave')}")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)  # no hello: closed first
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
                assert "more than 10 connections" in closed.value.rcvd.reason
            for instance in three.instances:
                status, body = api(instance, "GET", "/api/users/dave/presence")
                assert status == 200 and body == {"user_id": "dave", "online": True, "connections": 10}
                status, body = api(instance, "GET", "/api/presence?limit=10")
                assert "dave" in body["online"]
            for client in held:  # every one of the ten still answers
                await client.nothing_pending()
            # One closes on B: a new one fits again, on C.
            await held[1].ws.close()
            await asyncio.sleep(0.3)
            async with connect(three[2], "dave") as again:
                assert again.hello["user_id"] == "dave"

    asyncio.run(main())


def test_presence_both_ways_and_an_http_disconnect_from_another_instance(three: Cluster) -> None:
    a, b, c = three[0], three[1], three[2]

    async def main() -> None:
        async with connect(a, "alice") as alice:
            await alice.create("bob")
            async with connect(b, "bob") as bob:
                assert (await alice.expect("user:online"))["payload"] == {"user_id": "bob"}
                async with connect(c, "bob"):  # a second connection elsewhere: no second online
                    pass
                assert (await bob.ok("presence:query", {"user_ids": ["alice"]}))["online"] == ["alice"]
                # The backend disconnects Bob through C: his connection on B closes with 4501.
                status, _ = api(c, "POST", "/api/users/bob/disconnect", {})
                assert status == 200
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await bob.recv(timeout=5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4501
            # Bob is gone from every instance: offline on A after the 1 s grace, once.
            offline = await alice.expect("user:offline", timeout=5)
            assert offline["payload"] == {"user_id": "bob"}
            assert all(m["type"] != "user:online" for m in alice.backlog)  # B's second connection said nothing

    asyncio.run(main())


async def live_seqs(client: WsChat, conversation: int, until: int, timeout: float = 20.0) -> list[int]:
    """The seqs of *conversation* this connection is sent live, in arrival order, until *until*."""
    seqs: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not seqs or seqs[-1] < until:
        item = await client.recv(timeout=max(deadline - loop.time(), 0.01))
        if item["type"] == "chat:message" and item["payload"]["message"]["conversation_id"] == conversation:
            seqs.append(item["payload"]["message"]["seq"])
    return seqs


def test_kill_9_of_the_senders_instance_loses_nothing_and_duplicates_nothing(three: Cluster) -> None:
    """Alice sends every 10 ms on A; A is killed mid-stream. She reconnects to B and retries
    what was not acked with the same client_id. Bob (on C) and Carol (on B) see every message
    once, in seq order, live: what A stored but never published reaches them from storage."""
    a, b, c = three[0], three[1], three[2]
    total = 150

    async def main() -> None:
        async with connect(c, "bob") as bob, connect(b, "carol") as carol, connect(a, "dave") as dave:
            group = await bob.create("alice", "carol", "dave")
            acked: dict[str, int] = {}
            client_ids = [f"m{i}" for i in range(total)]

            async def sender() -> None:
                instance = a
                while len(acked) < total:
                    try:
                        async with connect(instance, "alice") as alice:
                            for cid in client_ids:
                                if cid in acked:
                                    continue
                                payload = {"conversation_id": group, "content": cid, "client_id": cid}
                                reply = await alice.request("chat:send", payload)
                                assert reply["type"] == "chat:ack", reply
                                acked[cid] = reply["payload"]["message"]["seq"]
                                await asyncio.sleep(0.01)
                    except (websockets.ConnectionClosed, OSError, TimeoutError):
                        instance = b  # the load balancer sends her elsewhere

            async def killer() -> None:
                while len(acked) < total // 3:
                    await asyncio.sleep(0.01)
                await asyncio.get_running_loop().run_in_executor(None, a.kill)

            await asyncio.gather(sender(), killer())
            assert sorted(acked.values()) == list(range(1, total + 1))  # dense, one seq per message
            # Alice, now on B, syncs from where she stood before A died: exactly what was acked.
            async with connect(b, "alice") as alice:
                await alice.send_raw({"type": "sync", "payload": {"cursors": {str(group): 0}}, "ref": "s"})
                replayed: dict[int, str] = {}
                while True:
                    item = await alice.recv()
                    if item["type"] == "sync:done":
                        assert item["payload"]["complete"] is True
                        break
                    message = item["payload"]["message"]
                    if message["conversation_id"] != group:
                        continue  # her other conversations' newest (the database is the session's)
                    assert message["seq"] not in replayed  # nothing twice
                    replayed[message["seq"]] = message["client_id"]
                assert {cid: seq for seq, cid in replayed.items()} == acked
            for watcher in (bob, carol):
                seqs = await live_seqs(watcher, group, total)
                assert seqs == list(range(1, total + 1)), watcher.user
            # Dave was only on A: the others announce him offline once A's heartbeat expires
            # (2 s here) and his grace (1 s) ends.
            offline = await bob.expect("user:offline", timeout=15)
            assert offline["payload"] == {"user_id": "dave"}
            del dave

    asyncio.run(main())


async def until(check: Any, timeout: float, what: str) -> float:
    """Poll *check* (a sync callable run in a thread) until it is true; return the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await loop.run_in_executor(None, check):
        assert loop.time() - start < timeout, f"{what} not within {timeout} s"
        await asyncio.sleep(0.1)
    return loop.time() - start


def test_redis_restarted_mid_traffic_recovers_without_restarting_sohbet(tmp_path: Path, postgres_database: str) -> None:
    """Redis dies (and comes back empty, as one without persistence does): each instance keeps
    serving its own users and says so on /readyz; what was sent meanwhile is stored, and
    reaches the other instance's users once Redis is back, within 10 s, with no restart. A
    member removed meanwhile stops receiving the conversation once Redis is back."""
    with (
        private_redis(tmp_path) as redis,
        cluster(
            tmp_path, postgres_database, n=2, redis_url=redis.url, extra=("--send-rate", "0", "--api-key", API_KEY)
        ) as two,
    ):
        a, b = two[0], two[1]

        async def main() -> None:
            async with connect(a, "alice") as alice, connect(b, "bob") as bob, connect(b, "carol") as carol:
                group = await alice.create("bob", "carol")
                await alice.send(group, "before")
                assert await live_seqs(bob, group, 1) == [1]
                assert await live_seqs(carol, group, 1) == [1]
                assert ready(a) == ready(b) == 200

                redis.stop()
                await until(lambda: ready(a) == 503 and ready(b) == 503, 10, "/readyz 503 on both")
                for i in range(5):  # stored and acked; only Alice's own instance can tell anyone
                    await alice.send(group, f"during {i}")
                await bob.send(group, "bob during")  # B serves Bob as before
                assert (await alice.ok("presence:query", {"user_ids": ["bob"]}))["online"] == ["bob"]
                # The backend removes Carol through A: B, where she is connected, cannot hear of it.
                status, _ = api(a, "DELETE", f"/api/conversations/{group}/members/carol")
                assert status == 204

                redis.start()
                took = await until(lambda: ready(a) == 200 and ready(b) == 200, 10, "/readyz 200 again")
                # What was sent while Redis was away reaches the other side, in order, once.
                bob_seqs = await live_seqs(bob, group, 6, timeout=10)
                assert bob_seqs == [2, 3, 4, 5, 6], bob_seqs  # 7 is his own (acked, not echoed)
                alice_seqs = await live_seqs(alice, group, 7, timeout=10)
                assert alice_seqs == [7]
                # Carol is told she was removed, and gets nothing more of the group.
                removed = await carol.expect("conversation:member_removed", timeout=10)
                assert removed["payload"] == {"conversation_id": group, "user_id": "carol"}
                # And live delivery is back.
                await alice.send(group, "after")
                assert await live_seqs(bob, group, 8) == [8]
                later = [m for m in await carol.nothing_pending() if m["type"] == "chat:message"]
                assert all(m["payload"]["message"]["seq"] <= 7 for m in later), later  # nothing after her removal
                assert took < 10
                # Presence never flapped: Bob was not told Alice went offline.
                assert all(m["type"] != "user:offline" for m in bob.backlog)

        asyncio.run(main())


def metric(instance: Instance, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{instance.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in the metrics of {instance.name}")


@pytest.fixture
def three_one_slow(tmp_path: Path, postgres_database: str) -> Any:
    """Three instances, A's way to Redis 30 ms slow: what A stores reaches B and C after what
    they store next."""
    slow = DelayingProxy(urllib.parse.urlsplit(SHARED_REDIS).port or 6379, 0.03)  # Redis on loopback
    try:
        extra = ("--send-rate", "0", "--frame-rate", "0")
        with cluster(tmp_path, postgres_database, extra=extra, redis_urls={0: slow.url}) as c:
            yield c
    finally:
        slow.close()


def test_concurrent_writers_on_three_instances_deliver_every_seq_once_in_order(three_one_slow: Cluster) -> None:
    """Senders on A, B and C pipeline into one group at once, so consecutive seqs are stored
    by different instances and, A being slow to Redis, arrive out of order: every watcher
    still sees 1..N once, in order. The instances' gap counters prove the race happened."""
    three = three_one_slow
    per_sender, senders = 100, 6

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            watchers = [await stack.enter_async_context(connect(three[i], f"w{i}")) for i in range(3)]
            clients = [await stack.enter_async_context(connect(three[i % 3], f"s{i}")) for i in range(senders)]
            group = await watchers[0].create(*[f"w{i}" for i in range(1, 3)], *[f"s{i}" for i in range(senders)])
            for client in [*watchers[1:], *clients]:
                await client.expect("conversation:created")

            async def flood(client: WsChat, start: int) -> None:
                for i in range(start, start + per_sender):
                    payload = {
                        "conversation_id": group,
                        "content": f"{client.user} {i}",
                        "client_id": f"{client.user}-{i}",
                    }
                    await client.send_raw({"type": "chat:send", "payload": payload, "ref": f"r{i}"})
                acks = 0
                while acks < per_sender:
                    item = await client.recv(timeout=20)
                    assert item["type"] != "error", item
                    acks += item["type"] == "chat:ack"

            def gaps() -> float:
                return sum(metric(i, "sohbet_cluster_messages_total", 'result="gaps"') for i in three.instances)

            # A stores one, then B the next at once: B has it before A's (30 ms late) arrives.
            for k in range(3):
                await clients[0].send(group, f"a{k}", f"pre-a{k}")
                await clients[1].send(group, f"b{k}", f"pre-b{k}")
            await asyncio.gather(*(flood(c, 0) for c in clients))
            total = per_sender * senders + 6
            assert await asyncio.get_running_loop().run_in_executor(None, gaps) > 0, "the race did not happen"
            for watcher in watchers:
                assert await live_seqs(watcher, group, total) == list(range(1, total + 1)), watcher.user

    asyncio.run(main())


def test_instances_starting_together_on_a_fresh_database_migrate_once(tmp_path: Path) -> None:
    """Three instances started at the same moment on an empty database: one migrates (under
    an advisory lock), the others wait for it, and all three serve."""
    import asyncpg  # noqa: PLC0415  # the Postgres half of the suite

    from ..conftest import POSTGRES_URL, pg_admin  # noqa: PLC0415

    name = f"sohbet_fresh_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    try:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        args = ["--database-url", url, "--redis-url", SHARED_REDIS, "--redis-prefix", prefix, "--jwt-secret", SECRET]
        instances = [Instance(n, free_port(), args, tmp_path / f"{n}.log") for n in "abc"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
        try:
            for instance in instances:  # all launched before any is waited for
                with instance.log.open("ab") as out:
                    instance.proc = subprocess.Popen(
                        [*SERVER, "--port", str(instance.port), "--instance-id", instance.name, *args],
                        stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=tmp_path,
                    )  # fmt: skip
            for instance in instances:
                wait_port(instance.port, instance.proc)

            async def check() -> list[int]:
                async with connect(instances[0], "alice") as alice, connect(instances[2], "bob") as bob:
                    conversation = await alice.create("bob")
                    await bob.expect("conversation:created")
                    await alice.send(conversation, "migrated once")
                    assert await live_seqs(bob, conversation, 1) == [1]
                con = await asyncpg.connect(url)
                try:
                    return [r["version"] for r in await con.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
                finally:
                    await con.close()

            versions = asyncio.run(check())
            assert versions == sorted(set(versions)) and versions  # each once
        finally:
            for instance in instances:
                instance.stop()
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_a_paused_redis_is_noticed_and_the_link_comes_back_by_itself(tmp_path: Path, postgres_database: str) -> None:
    """A Redis that stops answering (SIGSTOP: no error, only silence) is noticed by the
    heartbeat's timeout; after SIGCONT the instances link up again, no restart."""
    with (
        private_redis(tmp_path) as redis,
        cluster(tmp_path, postgres_database, n=2, redis_url=redis.url, extra=("--send-rate", "0")) as two,
    ):
        a, b = two[0], two[1]

        async def main() -> None:
            async with connect(a, "alice") as alice, connect(b, "bob") as bob:
                group = await alice.create("bob", "pat")  # a group: new whatever the database holds
                redis.pause()
                try:
                    await until(lambda: ready(a) == 503, 10, "/readyz 503 while redis is silent")
                    await alice.send(group, "while paused")
                finally:
                    redis.resume()
                await until(lambda: ready(a) == 200 and ready(b) == 200, 10, "/readyz 200 after SIGCONT")
                assert await live_seqs(bob, group, 1, timeout=10) == [1]
                await alice.send(group, "after")
                assert await live_seqs(bob, group, 2) == [2]

        asyncio.run(main())


def test_an_instance_taken_for_dead_registers_again_when_it_wakes(three: Cluster) -> None:
    """A stalls past its heartbeat's life (SIGSTOP): the others bury it and announce Alice
    offline. When A wakes it must not stay buried: it registers its connections again, and
    Alice is online and counted everywhere."""
    a, b = three[0], three[1]

    async def main() -> None:
        async with connect(a, "alice") as alice, connect(b, "bob") as bob:
            await bob.create("alice")
            assert a.proc is not None
            a.proc.send_signal(signal.SIGSTOP)
            try:
                offline = await bob.expect("user:offline", timeout=15)  # ttl 2 s + grace 1 s
                assert offline["payload"] == {"user_id": "alice"}
            finally:
                a.proc.send_signal(signal.SIGCONT)
            online = await bob.expect("user:online", timeout=15)
            assert online["payload"] == {"user_id": "alice"}
            await until(lambda: api(b, "GET", "/api/users/alice/presence")[1]["connections"] == 1, 10, "counted on B")
            await alice.nothing_pending()  # her connection lived through it

    asyncio.run(main())


def test_the_limit_holds_on_each_instance_while_redis_is_down_even_for_a_burst(
    tmp_path: Path, postgres_database: str
) -> None:
    """With Redis away an instance can count only its own connections, and does: those still
    waiting for their hello included, so a burst cannot slip past the limit."""
    with private_redis(tmp_path) as redis, cluster(tmp_path, postgres_database, n=1, redis_url=redis.url) as one:
        a = one[0]
        redis.stop()
        asyncio.run(until_async(lambda: ready(a) == 503, 10))

        async def main() -> None:
            async def attempt() -> int:
                try:
                    ws = await websockets.connect(f"{a.url}?token={tok('dave')}")
                except (OSError, websockets.InvalidStatus):
                    return 0
                try:
                    first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                    held.append(ws)
                    return 1 if first["type"] == "hello" else 0
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code == 1008
                    return 0

            held: list[Any] = []
            results = await asyncio.gather(*(attempt() for _ in range(16)))
            try:
                assert sum(results) == 10
            finally:
                for ws in held:
                    await ws.close()

        asyncio.run(main())


async def until_async(check: Any, timeout: float) -> None:
    await until(check, timeout, "condition")


def test_a_lone_server_is_refused_on_a_clustered_database(three: Cluster, tmp_path: Path) -> None:
    """A server without --redis-url would not hear of the cluster's membership changes (nor it
    of its): it refuses to start on the cluster's database, saying why."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
    result = subprocess.run(
        [*SERVER, "--port", str(free_port()), "--database-url", three.database_url, "--jwt-secret", SECRET],
        capture_output=True, text=True, timeout=60, check=False, env=environ, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "already served by another sohbet-server" in result.stderr
    assert "--redis-url" in result.stderr


def test_own_devices_http_sends_names_and_only_what_an_instance_needs(three: Cluster) -> None:
    """Alice on A and on B, Bob on C. Her other device gets what she creates and sends (not her
    typing); a send through another instance's HTTP API reaches every device; B, with no member
    of Erin and Frank's conversation, receives none of its traffic; each instance names itself
    in its logs and metrics; a stopped instance leaves the registry at once."""
    a, b, c = three[0], three[1], three[2]

    async def main() -> None:
        async with connect(a, "alice") as alice, connect(b, "alice") as alice2, connect(c, "bob") as bob:
            group = await alice.create("bob", "pat")  # a group: new whatever the database holds
            assert (await alice2.expect("conversation:created"))["payload"]["conversation"]["id"] == group
            await alice.send(group, "from A")
            for device in (alice2, bob):
                assert (await device.expect("chat:message"))["payload"]["message"]["content"] == "from A"
            await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": group}})
            assert (await bob.expect("chat:typing"))["payload"]["user_id"] == "alice"
            body = {"content": "over HTTP", "client_id": "h1", "sender_id": "alice"}
            status, _ = api(b, "POST", f"/api/conversations/{group}/messages", body)
            assert status == 201
            for device in (alice, alice2, bob):
                assert (await device.expect("chat:message"))["payload"]["message"]["content"] == "over HTTP"
            assert [m["type"] for m in alice2.backlog if m["type"] == "chat:typing"] == []  # not her own

            async with connect(a, "erin") as erin, connect(c, "frank") as frank:
                direct = await erin.create("frank")
                await frank.expect("conversation:created")
                loop = asyncio.get_running_loop()
                before = await loop.run_in_executor(None, metric, b, "sohbet_broker_events_total", 'result="received"')
                for i in range(20):
                    await erin.send(direct, f"n{i}")
                assert await live_seqs(frank, direct, 20) == list(range(1, 21))
                after = await loop.run_in_executor(None, metric, b, "sohbet_broker_events_total", 'result="received"')
                assert after - before < 5, (before, after)  # none of the 20: B follows no member of it

        assert metric(a, "sohbet_instance_info", 'instance_id="a"') == 1
        lines = [orjson.loads(line) for line in a.output().splitlines() if line.startswith("{")]
        assert lines and all(line.get("instance") == "a" for line in lines)

    asyncio.run(main())
    import redis as redis_lib  # noqa: PLC0415  # the registry itself, read as an operator would

    registry = redis_lib.Redis.from_url(three.redis_url)
    try:
        assert registry.sismember(f"{three.prefix}:instances:", "c")
        c.stop()  # SIGTERM: a graceful stop leaves the registry, not waiting for its heartbeat to expire
        assert not registry.sismember(f"{three.prefix}:instances:", "c")
        assert registry.hgetall(f"{three.prefix}:users:c") == {}
    finally:
        registry.close()
