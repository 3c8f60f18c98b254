"""docs/cluster.md works as written: its HAProxy and nginx configurations, read out of the page,
put three real instances behind a real proxy, and what the page says of them holds.

The page shows the instances at 127.0.0.1:8081-8083, the proxy listening on port 8080,
HAProxy's stats page on 127.0.0.1:8404 and nginx's access log in /var/log/nginx; the test
points exactly those at its own free ports and directory (checking that each appears as often
as it should, so the page cannot drift from what is tested), and changes nothing else.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from sohbet.config import AuthConfig

from ..chatkit import WsChat, token
from ..clusterkit import SECRET, Cluster, Instance, cluster, free_port, private_redis, ready, wait_port
from ..conftest import required_program

DOC = Path(__file__).parent.parent.parent / "docs" / "cluster.md"
AUTH = AuthConfig(secret=SECRET)
#: As docs/cluster.md tells operators to run the instances behind a proxy on this host.
BEHIND_PROXY = ("--trusted-proxies", "127.0.0.1/32", "--drain-delay", "3")
INSTANCE_ADDRESSES = ("127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083")
FOR_HAPROXY = "the HAProxy configuration of docs/cluster.md"
FOR_NGINX = "the nginx configuration of docs/cluster.md"


def documented(name: str) -> str:
    """The fenced block of docs/cluster.md whose first line is `# file: <name>`."""
    blocks = re.findall(r"^```[a-z]*\n(# file: (\S+)\n.*?)^```", DOC.read_text(), re.DOTALL | re.MULTILINE)
    found = [text for text, file in blocks if file == name]
    assert len(found) == 1, f"docs/cluster.md must show exactly one `# file: {name}` block"
    return str(found[0])


def rewrite(text: str, replacements: dict[str, tuple[str, int]]) -> str:
    """Replace each documented address by the test's, checking how often the page names it."""
    for old, (new, times) in replacements.items():
        assert text.count(old) == times, f"{old!r} appears {text.count(old)} times, not {times}"
        text = text.replace(old, new)
    return text


def instance_ports(c: Cluster) -> dict[str, int]:
    """The documented instance addresses, by the test port each stands for (a port where
    nothing listens, for instances the cluster lacks)."""
    ports = [i.port for i in c.instances]
    ports += [free_port() for _ in range(len(INSTANCE_ADDRESSES) - len(ports))]
    return dict(zip(INSTANCE_ADDRESSES, ports, strict=True))


@contextmanager
def running(command: list[str], log: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A proxy process in the foreground, until the end of the block (then SIGTERM, by PID)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port, proc)
        except AssertionError:
            raise AssertionError(f"{command[0]} did not start:\n{log.read_text(errors='replace')}") from None
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def haproxy(tmp_path: Path, addresses: dict[str, int]) -> Iterator[tuple[int, int]]:
    """HAProxy running docs/cluster.md's haproxy.cfg: (its port, its stats page's port)."""
    binary = required_program("haproxy", FOR_HAPROXY)
    port, stats = free_port(), free_port()
    replacements = {"bind :8080\n": (f"bind 127.0.0.1:{port}\n", 1), "127.0.0.1:8404": (f"127.0.0.1:{stats}", 1)}
    replacements |= {old: (f"127.0.0.1:{new}", 2) for old, new in addresses.items()}
    config = tmp_path / "haproxy.cfg"
    config.write_text(rewrite(documented("haproxy.cfg"), replacements))
    checked = subprocess.run([binary, "-c", "-f", str(config)], check=False, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with running([binary, "-db", "-f", str(config)], tmp_path / "haproxy.log", port):
        yield port, stats


#: What the stock nginx.conf of a distribution puts around conf.d/*.conf, with every path in
#: the test's own directory (the `http` block's temp paths too: no file outside it is touched).
NGINX_MAIN = """\
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/sohbet.conf;
}}
"""


@contextmanager
def nginx(tmp_path: Path, addresses: dict[str, int]) -> Iterator[int]:
    """nginx running docs/cluster.md's sohbet.conf in its `http` block: its port."""
    binary = required_program("nginx", FOR_NGINX)
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    replacements = {
        "listen 8080;": (f"listen 127.0.0.1:{port};", 1),
        "/var/log/nginx/sohbet.access.log": (f"{prefix}/sohbet.access.log", 1),
    }
    replacements |= {old: (f"127.0.0.1:{new}", 1) for old, new in addresses.items()}
    (prefix / "sohbet.conf").write_text(rewrite(documented("sohbet.conf"), replacements))
    (prefix / "nginx.conf").write_text(NGINX_MAIN.format(d=prefix))
    command = [binary, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", f"{prefix}/error.log"]
    command += ["-g", f"daemon off; pid {prefix}/nginx.pid;"]
    checked = subprocess.run([*command, "-t"], check=False, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with running(command, prefix / "out.log", port):
        yield port


def no_token_in(*logs: Path) -> None:
    """No JWT (they all begin `eyJ`, base64 of `{"`) in the proxy's logs, though one client
    sent its token as `?token=`."""
    for log in logs:
        text = log.read_text(errors="replace")
        assert text, f"{log} is empty: is the proxy logging?"
        assert "eyJ" not in text, f"a token in {log}"


def stats(port: int) -> dict[tuple[str, str], dict[str, str]]:
    """HAProxy's stats page as CSV: each (proxy, server)'s row."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats;csv", timeout=5) as response:
        text = response.read().decode().lstrip("# ")
    return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}


def status(port: int, backend: str, server: str) -> str:
    return stats(port)[(backend, server)]["status"]


async def until(check: Any, what: str, timeout: float = 15.0) -> None:
    """Poll *check* (a sync callable, run in a thread) until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await loop.run_in_executor(None, check):
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.1)


def opened(c: Cluster) -> Counter[tuple[str, str]]:
    """How many connections each user opened on each instance, from the instances' logs."""
    seen: Counter[tuple[str, str]] = Counter()
    for instance in c.instances:
        for line in instance.output().splitlines():
            if line.startswith("{") and '"connection opened"' in line:
                seen[(instance.name, orjson.loads(line)["user"])] += 1
    return seen


@asynccontextmanager
async def through(port: int, c: Cluster, user: str, *, in_url: bool = False) -> AsyncIterator[tuple[WsChat, str]]:
    """A connection of *user* through the proxy, and the name of the instance it landed on.

    The token goes in the `Authorization` header, as docs/cluster.md advises, or *in_url*
    (`?token=`), which the documented log formats must keep out of the proxy's log.
    """
    before = opened(c)
    jwt = token(user, auth=AUTH)
    url, headers = f"ws://127.0.0.1:{port}/ws", {"Authorization": f"Bearer {jwt}"}
    if in_url:
        url, headers = f"{url}?token={jwt}", {}
    async with websockets.connect(url, additional_headers=headers, max_queue=None) as ws:
        client = WsChat(ws, user)
        client.hello = (await client.expect("hello", timeout=10))["payload"]
        grew = [name for (name, who), n in opened(c).items() if who == user and n > before[(name, who)]]
        assert len(grew) == 1, grew
        yield client, grew[0]


async def closed_with(client: WsChat, timeout: float = 15.0) -> int:
    """The close code the connection ends with (1006: none), reading whatever comes first."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=timeout)
    return 1006 if closed.value.rcvd is None else closed.value.rcvd.code


async def synced(client: WsChat, conversation: int, cursor: int) -> list[int]:
    """The seqs of *conversation* that `sync` replays after *cursor* (the user's other
    conversations, of earlier tests on the same database, replay too: they are left out)."""
    await client.send_raw({"type": "sync", "ref": "y", "payload": {"cursors": {str(conversation): cursor}}})
    seqs = []
    while (item := await client.recv())["type"] != "sync:done":
        message = item["payload"].get("message", {})
        if item["type"] == "chat:message" and message["conversation_id"] == conversation:
            seqs.append(message["seq"])
    assert item["payload"]["complete"] is True
    return seqs


def by_name(c: Cluster, name: str) -> Instance:
    return next(i for i in c.instances if i.name == name)


async def spread_relay_fail_over(c: Cluster, port: int, wait_down: Any = None) -> None:
    """What docs/cluster.md says of either proxy: connections spread over the instances, any
    instance serves any user, a killed instance's users reconnect to the others and `sync`,
    a stopped instance's get 1001 and do the same.

    *wait_down(name)* waits until the proxy's health check has taken that instance out
    (HAProxy); without it (nginx) the proxy has only failed connections to go by.
    """
    async with (
        through(port, c, "alice", in_url=True) as (alice, on_alice),
        through(port, c, "bob") as (bob, on_bob),
        through(port, c, "carol") as (carol, on_carol),
    ):
        # Least connections: three held connections land on the three instances.
        assert {on_alice, on_bob, on_carol} == {"a", "b", "c"}
        group = await alice.create("bob", "carol", title="through the proxy")
        for other in (bob, carol):
            await other.expect("conversation:created")
        await alice.send(group, "one")
        for other in (bob, carol):
            assert (await other.expect("chat:message"))["payload"]["message"]["seq"] == 1

        # kill -9 of Alice's instance: her connection drops; Bob talks on meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, by_name(c, on_alice).kill)
        assert await closed_with(alice) == 1006
        await bob.send(group, "two")
        assert (await carol.expect("chat:message"))["payload"]["message"]["seq"] == 2
        # At once, whether or not a health check has noticed yet: the proxy's attempt on the
        # dead instance is refused, and retried on another.
        async with through(port, c, "frank") as (_, on_frank):
            assert on_frank != on_alice
        if wait_down is not None:
            await wait_down(on_alice)
        # She reconnects through the proxy, lands elsewhere, and sync gives her what she missed.
        async with through(port, c, "alice") as (again, on_again):
            assert on_again != on_alice
            assert await synced(again, group, 1) == [2]
            # New users too land only on the live instances.
            async with through(port, c, "dave") as (_, on_dave), through(port, c, "erin") as (_, on_erin):
                assert on_alice not in {on_dave, on_erin}

            # SIGTERM of the instance she is on now: after the drain her connection gets 1001
            # through the proxy; she reconnects to the last instance and syncs what was sent
            # meanwhile by whichever of Bob and Carol is still connected.
            stopping = by_name(c, on_again)
            assert stopping.proc is not None
            stopping.proc.send_signal(signal.SIGTERM)
            if wait_down is not None:
                await wait_down(on_again)
            assert await closed_with(again) == 1001
            await asyncio.get_running_loop().run_in_executor(None, stopping.stop)  # reaped
            stayer = bob if on_bob != on_again else carol
            assert (await stayer.send(group, "three"))["seq"] == 3
        async with through(port, c, "alice") as (third, on_third):
            assert on_third not in {on_alice, on_again}
            assert await synced(third, group, 2) == [3]


def test_haproxy_as_documented_spreads_relays_and_fails_over(tmp_path: Path, postgres_database: str) -> None:
    required_program("haproxy", FOR_HAPROXY)  # before a cluster starts for nothing
    with (
        cluster(tmp_path, postgres_database, extra=BEHIND_PROXY) as c,
        haproxy(tmp_path, instance_ports(c)) as (port, stats_port),
    ):

        async def main() -> None:
            await until(
                lambda: all(status(stats_port, "sohbet", n) == "UP" for n in "abc"), "every instance UP on /readyz"
            )

            async def wait_down(name: str) -> None:
                # The /readyz check takes it out: killed (no answer) or draining (503).
                await until(lambda: status(stats_port, "sohbet", name).startswith("DOWN"), f"{name} DOWN")

            await spread_relay_fail_over(c, port, wait_down)

        asyncio.run(main())
        no_token_in(tmp_path / "haproxy.log")


def test_nginx_as_documented_spreads_relays_and_fails_over(tmp_path: Path, postgres_database: str) -> None:
    required_program("nginx", FOR_NGINX)  # before a cluster starts for nothing
    with (
        cluster(tmp_path, postgres_database, extra=BEHIND_PROXY) as c,
        nginx(tmp_path, instance_ports(c)) as port,
    ):
        asyncio.run(spread_relay_fail_over(c, port))
        no_token_in(tmp_path / "nginx" / "sohbet.access.log", tmp_path / "nginx" / "error.log")


def test_haproxy_still_lets_clients_in_while_redis_is_down(tmp_path: Path, postgres_database: str) -> None:
    """Redis stops: every /readyz says 503 and HAProxy takes every instance out of `sohbet`,
    yet new clients get in through `sohbet_alive`; once Redis is back, what was sent meanwhile
    crosses over and `sohbet` takes the instances back. (Two instances; the page's third
    address is one where nothing listens: an instance that is down.)"""
    required_program("haproxy", FOR_HAPROXY)  # before a cluster starts for nothing
    with (
        private_redis(tmp_path) as redis,
        cluster(tmp_path, postgres_database, n=2, redis_url=redis.url, extra=BEHIND_PROXY) as c,
        haproxy(tmp_path, instance_ports(c)) as (port, stats_port),
    ):

        def states(backend: str) -> list[str]:
            return [status(stats_port, backend, name) for name in "ab"]

        def sessions(backend: str) -> int:
            return sum(int(stats(stats_port)[(backend, name)]["stot"]) for name in "ab")

        async def main() -> None:
            await until(lambda: states("sohbet") == ["UP", "UP"], "both instances UP")
            async with through(port, c, "alice") as (alice, on_alice), through(port, c, "bob") as (bob, on_bob):
                assert {on_alice, on_bob} == {"a", "b"}
                group = await alice.create("bob", "pat")  # a group: new whatever the database holds
                await bob.expect("conversation:created")

                redis.stop()
                await until(lambda: all(s.startswith("DOWN") for s in states("sohbet")), "both DOWN on /readyz")
                assert [ready(i) for i in c.instances] == [503, 503]
                assert sessions("sohbet_alive") == 0
                # A new client gets in all the same, and is served: through the fallback backend.
                async with through(port, c, "carol") as (carol, _):
                    await carol.create("alice")
                    assert sessions("sohbet_alive") == 1
                ack = await alice.send(group, "while redis was down")  # stored and acked

                redis.start()
                await until(lambda: states("sohbet") == ["UP", "UP"], "both UP again")
                got = await bob.expect("chat:message", timeout=10)  # caught up from storage
                assert got["payload"]["message"]["seq"] == ack["seq"]
                async with through(port, c, "dave") as _:
                    assert sessions("sohbet_alive") == 1  # back on the default backend

        asyncio.run(main())
