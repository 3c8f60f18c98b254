"""Several real `sohbet-server` processes on one Postgres database, linked through Redis.

Every cluster gets a Redis key prefix of its own, so tests (and runs) sharing one Redis never
see each other. Tests that stop or pause Redis start a private `redis-server` on another port
(`private_redis`), never touching the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import IN_CI, required_program

SERVER = [sys.executable, "-I", "-m", "sohbet.app.cli"]
SECRET = "cluster-test-secret-of-at-least-32-bytes!"
SHARED_REDIS = os.environ.get("SOHBET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"process exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


@dataclass
class Instance:
    """One server process of a cluster (it can be killed and started again on its port)."""

    name: str
    port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*SERVER, "--port", str(self.port), "--instance-id", self.name, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=self.log.parent,
            )
        wait_port(self.port, self.proc)

    def kill(self) -> None:
        """kill -9: no goodbye to Redis, connections cut."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def ready(instance: Instance) -> int:
    """The status `/readyz` of *instance* answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{instance.port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Cluster:
    instances: list[Instance]
    database_url: str
    redis_url: str
    prefix: str
    logs: list[Path] = field(default_factory=list)

    def __getitem__(self, i: int) -> Instance:
        return self.instances[i]


@contextmanager
def cluster(
    tmp_path: Path,
    database_url: str,
    *,
    n: int = 3,
    redis_url: str = SHARED_REDIS,
    extra: tuple[str, ...] = (),
    redis_urls: dict[int, str] | None = None,
) -> Iterator[Cluster]:
    """*n* instances named a, b, c... on one database and one Redis, started together
    (*redis_urls* may give instance *i* another way to the same Redis: a proxy)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    args = [
        "--database-url", database_url, "--redis-url", redis_url, "--redis-prefix", prefix,
        "--jwt-secret", SECRET, "--presence-grace", "1", "--heartbeat", "0.5", "--heartbeat-ttl", "2",
        "--log-format", "json", *extra,
    ]  # fmt: skip
    instances = [
        Instance(chr(ord("a") + i), free_port(), args, tmp_path / f"{chr(ord('a') + i)}.log") for i in range(n)
    ]
    with ExitStack() as stack:
        for instance in instances:
            stack.callback(instance.stop)
        for instance in instances:
            instance.start()
        yield Cluster(instances, database_url, redis_url, prefix)


@dataclass
class PrivateRedis:
    """A `redis-server` of this test's own, keeping nothing on disk: it may be stopped,
    restarted (empty, as a Redis without persistence comes back) or paused."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = required_program("redis-server", "the tests that stop and restart Redis")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextmanager
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(free_port(), tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        if redis.proc is not None:
            redis.resume()
        redis.stop()


__all__ = ["IN_CI", "SECRET", "Cluster", "Instance", "PrivateRedis", "cluster", "private_redis"]


class DelayingProxy:
    """A TCP proxy to Redis that holds what one instance sends for `delay_s` (in order): that
    instance's publishes reach the others late, so the others store the next seqs of a shared
    conversation and see them before the ones it stored. A race made to happen, not hoped for."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.port = free_port()
        self._target = target_port
        self._delay = delay_s
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def pump_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def later() -> None:
                while True:
                    due, data = await queue.get()
                    if not data:
                        break
                    await asyncio.sleep(max(0.0, due - self._loop.time()))
                    writer.write(data)
                    await writer.drain()
                writer.close()

            sender = asyncio.ensure_future(later())
            while data := await reader.read(65536):
                queue.put_nowait((self._loop.time() + self._delay, data))
            queue.put_nowait((0.0, b""))
            await sender

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target)
                await asyncio.gather(pump_late(client_r, server_w), pump(server_r, client_w))
            except OSError:
                client_w.close()

        async def main() -> None:
            self._server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            self._ready.set()
            await self._server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(main())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        def stop() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)
