"""What one unauthenticated socket can make the server do over plain HTTP, over real sockets.

Pipelining is bounded (at most `max_pipelined_requests` answers per read, then the connection
closes after them), a plain-HTTP socket lives at most `http_lifetime_s` however often it is
answered, plain sockets count toward `max_connections`, a request pipelined before an upgrade is
answered and then the upgrade happens, HEAD answers carry no body, and `/readyz` checks storage
once for all concurrent probes, answers from a short cache, and says 503 when storage is down and
from the start of a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sohbet.app.compose import App, AppConfig
from sohbet.app.gateway import ChatGateway
from sohbet.config import ChatConfig, StoreConfig
from sohbet.store import MessageStore
from sohbet.ws.config import MAX_PIPELINED_REQUESTS, Limits, WebSocketConfig
from sohbet.ws.http11 import Request
from sohbet.ws.server import REFUSALS_LOGGED, Handler, Response

from ..chatkit import AUTH, chat_server, open_store
from ..conftest import IN_CI
from .conftest import RawClient, Recorder, client_frame, http, running, take_server_frames

Run = Callable[[Coroutine[Any, Any, Any]], Any]
GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
BODY = b'{"ok":true}'

HttpAnswer = tuple[int, dict[str, str], bytes]


class Counting(Handler):
    """Answers every plain request with `BODY`, synchronously or after a loop turn; counts them."""

    def __init__(self, *, later: bool = False) -> None:
        self.later = later
        self.calls = 0

    def on_http(self, request: Request) -> Any:
        self.calls += 1
        if not self.later:
            return Response(200, BODY)

        async def answer() -> Response:
            await asyncio.sleep(0)
            return Response(200, BODY)

        return answer()


def parse(data: bytes, *, heads: int = 0) -> list[HttpAnswer]:
    """Cut *data* into responses framed by their Content-Length; the first *heads* answer HEAD."""
    answers: list[HttpAnswer] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"a truncated response: {data[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), f"not a response: {data[:200]!r}"
        headers = {n.strip().lower(): v.strip() for n, v in (line.split(":", 1) for line in lines)}
        n = 0 if len(answers) < heads else int(headers.get("content-length", "0"))
        assert len(rest) >= n, "a truncated body"
        answers.append((int(status_line.split()[1]), headers, rest[:n]))
        data = rest[n:]
    return answers


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset here is a lost answer: it fails)."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(1 << 16):
            data += chunk
    return bytes(data)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- pipelining -----------------------------------------------------------------------------------


@pytest.mark.parametrize("later", [False, True], ids=["sync", "async"])
def test_ten_thousand_pipelined_requests_get_the_limit_of_answers_then_a_close(run: Run, later: bool) -> None:
    async def main() -> None:
        handler = Counting(later=later)
        async with running(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(GET * 10_000)  # one write: the server's first read holds thousands
            answers = parse(await read_to_eof(reader))
            assert len(answers) == MAX_PIPELINED_REQUESTS
            assert all((status, body) == (200, BODY) for status, _, body in answers)
            # Only the last one says it closes; the requests behind it never reached the handler.
            assert [h.get("connection") for _, h, _ in answers] == [None] * (MAX_PIPELINED_REQUESTS - 1) + ["close"]
            assert handler.calls == MAX_PIPELINED_REQUESTS
            writer.close()

    run(main())


def test_pipelining_up_to_the_limit_keeps_the_connection(run: Run) -> None:
    async def main() -> None:
        handler = Counting()
        async with running(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(GET * MAX_PIPELINED_REQUESTS)
            for _ in range(MAX_PIPELINED_REQUESTS):
                await expect_ok(reader)
            for _ in range(8):  # a keep-alive client waiting for each answer is never cut off
                writer.write(GET)
                await expect_ok(reader)
            writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert parse(await read_to_eof(reader))[0][1]["connection"] == "close"
            assert handler.calls == MAX_PIPELINED_REQUESTS + 9
            writer.close()

    run(main())


class Large(Handler):
    """Answers every request with a megabyte, counting the requests it was asked."""

    BODY = b"x" * (1 << 20)

    def __init__(self) -> None:
        self.calls = 0

    def on_http(self, request: Request) -> Response:
        self.calls += 1
        return Response(200, self.BODY)


def test_pipelined_requests_wait_while_the_client_does_not_read(run: Run) -> None:
    """Thirty-one pipelined requests for a megabyte each, never read: the server answers while
    the client reads and holds the rest back, rather than 31 MB in memory for one socket."""

    async def main() -> None:
        handler = Large()
        async with running(handler, limits=Limits(max_buffered_bytes=64 << 20)) as server:
            # A small receive buffer, so that the kernel's share of what is unread is small too.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(GET * MAX_PIPELINED_REQUESTS)
            await until(lambda: any(s._paused_at for s in server._sockets.values()))
            await asyncio.sleep(0.2)  # time to answer more, were it going to (the kernel holds a few MB)
            (ws,) = server._sockets.values()
            assert handler.calls <= 6 and ws._transport.get_write_buffer_size() < 2 * len(Large.BODY)
            answers = parse(await read_to_eof(reader, timeout=30))  # the client reads: all come
            assert len(answers) == MAX_PIPELINED_REQUESTS and handler.calls == MAX_PIPELINED_REQUESTS
            assert all(body == Large.BODY for _, _, body in answers)
            writer.close()

    run(main())


async def expect_ok(reader: asyncio.StreamReader) -> None:
    """The next response is a kept-alive 200 with `BODY`."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head, head
    assert await asyncio.wait_for(reader.readexactly(len(BODY)), 5.0) == BODY


@pytest.mark.parametrize("later", [False, True], ids=["sync", "async"])
def test_a_request_pipelined_before_an_upgrade_is_answered_then_the_upgrade_happens(run: Run, later: bool) -> None:
    class Both(Recorder):
        def on_http(self, request: Request) -> Any:
            return Counting(later=later).on_http(request)

    async def main() -> None:
        handler = Both()
        async with running(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(GET + UPGRADE + client_frame(1, "hi"))  # all before any answer
            await expect_ok(reader)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            assert head.startswith(b"HTTP/1.1 101 ")
            buffer = bytearray()
            while not (frames := take_server_frames(buffer)):
                buffer += await asyncio.wait_for(reader.read(4096), 5.0)
            assert frames[0].payload == b"hi"  # the frame sent behind the upgrade, echoed
            writer.write(client_frame(8, (1000).to_bytes(2, "big")))
            await read_to_eof(reader)
            writer.close()

    run(main())


def test_head_answers_carry_no_body(run: Run) -> None:
    async def main() -> None:
        async with running(Counting()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            (head_status, head_headers, head_body), (status, headers, body) = parse(await read_to_eof(reader), heads=1)
            # The HEAD answer describes the body a GET gets, and the GET answer follows it at once.
            assert (head_status, head_headers["content-length"], head_body) == (200, str(len(BODY)), b"")
            assert (status, headers["connection"], body) == (200, "close", BODY)
            writer.close()

    run(main())


@pytest.mark.parametrize("by", ["lifetime", "shutdown"])
def test_an_answer_that_never_comes_is_cancelled_with_its_socket_without_warnings(run: Run, by: str) -> None:
    """The socket reads nothing while it awaits an answer, so only our own deadline (or a
    shutdown) ends it: the answer is cancelled then, and the requests behind it never start."""
    started = asyncio.Event()
    cancelled: list[str] = []

    class Stuck(Handler):
        def on_http(self, request: Request) -> Any:
            async def answer() -> Response:
                started.set()
                try:
                    await asyncio.Event().wait()  # never answers
                except asyncio.CancelledError:
                    cancelled.append(request.path)
                    raise
                return Response(200)

            return answer()

    async def main() -> None:
        limits = Limits(http_lifetime_s=1.0, close_timeout_s=1.0) if by == "lifetime" else Limits()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with running(Stuck(), limits=limits) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + GET * 3)
                await asyncio.wait_for(started.wait(), 5.0)
                if by == "shutdown":
                    await server.shutdown(timeout_s=0.5)
                with contextlib.suppress(ConnectionError):
                    assert await read_to_eof(reader) == b""  # dropped without an answer
                await until(lambda: not server._sockets)
                await until(lambda: bool(cancelled))
                writer.close()
            gc.collect()
        assert cancelled == ["/first"]  # the one being answered; the ones behind it never started
        assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []

    run(main())


# -- lifetime and capacity ------------------------------------------------------------------------


LIFETIME = Limits(http_lifetime_s=2.0, handshake_timeout_s=60.0)  # the idle limit never fires here


async def trickle(writer: asyncio.StreamWriter, data: bytes, until_done: asyncio.Future[None]) -> None:
    """Send *data* a byte every 25 ms, round and round, for at most four lifetimes or until done."""
    with contextlib.suppress(ConnectionError):
        for i in range(int(4 * LIFETIME.http_lifetime_s / 0.025)):
            if until_done.done():
                return
            writer.write(data[i % len(data) : i % len(data) + 1])
            await asyncio.sleep(0.025)


async def collect(reader: asyncio.StreamReader, into: bytearray) -> None:
    """Read until the server closes (by a reset, too)."""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(4096):
            into.extend(chunk)


def test_a_trickling_socket_is_closed_at_its_lifetime_however_often_it_is_answered(run: Run) -> None:
    async def main() -> None:
        async with running(Counting(), limits=LIFETIME) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            received = bytearray()
            reading = asyncio.ensure_future(collect(reader, received))
            await trickle(writer, b"GET / HTTP/1.1\r\n\r\n", reading)  # a request every 0.45 s
            assert reading.done(), "the server kept a trickling socket past its lifetime"
            assert received.count(b"HTTP/1.1 200 ") >= 2  # answered, and the answers did not extend it
            writer.close()

    run(main())


def test_a_socket_in_the_middle_of_a_request_at_its_lifetime_is_told_408(run: Run) -> None:
    async def main() -> None:
        async with running(Counting(), limits=LIFETIME) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(GET)
            await expect_ok(reader)
            received = bytearray()
            reading = asyncio.ensure_future(collect(reader, received))
            await trickle(writer, b"GET / HTTP/1.1\r\nX-Slow: " + b"z" * 4000, reading)  # never ends
            assert reading.done(), "the server kept a socket past its lifetime"
            # A request was under way: its sender is told why it ends, then the socket closes.
            assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), bytes(received[:80])
            assert b"Connection: close" in received
            assert b"the request did not arrive whole within the connection's lifetime of 2 s" in received
            writer.close()

    run(main())


def test_an_answer_sent_after_the_lifetime_closes_the_connection(run: Run) -> None:
    gate = asyncio.Event()

    class Late(Handler):
        def on_http(self, request: Request) -> Any:
            async def answer() -> Response:
                await gate.wait()
                return Response(200, BODY)

            return answer()

    async def main() -> None:
        limits = Limits(http_lifetime_s=1.0, close_timeout_s=10.0)  # the answer may finish late
        async with running(Late(), limits=limits) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(GET)
            await until(lambda: any(s._http is not None and s._http.is_answering for s in server._sockets.values()))
            [ws] = server._sockets.values()
            opened = ws._http.opened if ws._http is not None else 0.0
            await until(lambda: server.now - opened >= limits.http_lifetime_s)  # the sweep saw it expire
            gate.set()
            [(status, headers, body)] = parse(await read_to_eof(reader))
            assert (status, headers["connection"], body) == (200, "close", BODY)
            writer.close()

    run(main())


def test_plain_http_sockets_count_toward_max_connections(run: Run) -> None:
    async def main() -> None:
        async with running(Counting(), limits=Limits(max_connections=3)) as server:
            plain = []
            for _ in range(3):  # three kept-alive plain sockets, each answered: all admitted
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(GET)
                await expect_ok(reader)
                plain.append(writer)
            status, _, body = await http(server.port, UPGRADE)  # the fourth socket: a WebSocket
            error = orjson.loads(body)["error"]
            assert (status, error["code"]) == (503, "unavailable")
            assert "limit of 3 connections" in error["message"]
            status, _, body = await http(server.port, GET)  # a fourth plain socket too
            assert (status, orjson.loads(body)["error"]["code"]) == (503, "unavailable")
            # The 503 is the last check of the protocol's order: what is wrong before it says so.
            status, _, _ = await http(server.port, b"NONSENSE\r\n\r\n")
            assert status == 400
            status, _, _ = await http(server.port, UPGRADE.replace(b"Version: 13", b"Version: 8"))
            assert status == 426
            plain[0].close()
            await until(lambda: len(server._sockets) <= 2)
            client = await RawClient.connect(server.port, path="/ws")  # room again: upgraded
            client.close()
            await client.expect_eof()
            for writer in plain[1:]:
                writer.close()

    run(main())


# -- /readyz --------------------------------------------------------------------------------------


class GatedPing:
    """A real store whose `ping` counts itself and waits for a gate: a check held open."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.pings = 0
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def ping(self) -> None:
        self.pings += 1
        await self.gate.wait()
        await self._store.ping()


def test_concurrent_readyz_share_one_storage_check_and_reuse_it(run: Run, tmp_path: Path) -> None:
    probes = 20

    async def main() -> None:
        url = f"sqlite:///{tmp_path}/sohbet.db"
        store = GatedPing(await open_store(url))
        async with chat_server(url, store=store) as h:  # type: ignore[arg-type]  # a MessageStore by delegation
            gateway = h.server.handler
            assert isinstance(gateway, ChatGateway)
            gateway.readiness.ttl_s = 3600.0  # the cache outlives the test: no clock in the assertions
            clients = [await asyncio.open_connection("127.0.0.1", h.server.port) for _ in range(probes)]
            for _, writer in clients:
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            # Every probe is inside the check before it is let go: all of them are concurrent. The
            # check runs in a task of its own, which may not have started when the last probe waits.
            await until(
                lambda: (
                    sum(s._http is not None and s._http.is_answering for s in h.server._sockets.values()) == probes
                    and store.pings > 0
                )
            )
            assert store.pings == 1
            store.gate.set()
            for reader, writer in clients:
                [(status, _, body)] = parse(await read_to_eof(reader))
                assert (status, body) == (200, b'{"status":"ready"}')
                writer.close()
            status, _, _ = await http(h.server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (status, store.pings) == (200, 1)  # answered from the cache
            gateway.readiness.ttl_s = 0.0  # the cached answer is now stale: the next probe checks
            await asyncio.sleep(0)
            status, _, _ = await http(h.server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (status, store.pings) == (200, 2)
        await store._store.close()

    run(main())


def test_readyz_answers_503_from_the_start_of_a_shutdown(run: Run, tmp_path: Path) -> None:
    """`App.shutdown` first stops saying ready and drains, so a load balancer sends no new clients
    to a server about to close (docs/protocol.md: `/readyz` is 503 while shutting down)."""

    async def main() -> None:
        url = f"sqlite:///{tmp_path}/sohbet.db"
        store = await open_store(url)
        config = AppConfig(
            auth=AUTH, chat=ChatConfig(), limits=Limits(), websocket=WebSocketConfig(), store=StoreConfig(url=url),
            drain_delay_s=1.0,  # the probe below takes milliseconds: far inside it
        )  # fmt: skip
        app = App(config, store)
        await app.start("127.0.0.1", 0)
        try:
            assert (await readyz(app.port))[0] == 200
            stopping = asyncio.ensure_future(app.shutdown(10.0))
            await until(lambda: not app.gateway.accepting)  # the drain has begun; storage still answers
            status, _, body = await readyz(app.port)
            assert status == 503, body
            assert orjson.loads(body)["error"]["code"] == "unavailable"
            await stopping
        finally:
            await store.close()

    run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A Postgres server of our own on a free port, in a temporary directory: one a test may stop."""

    def __init__(self) -> None:
        initdb = shutil.which("initdb")
        if initdb is None:
            message = "no initdb on PATH: a private Postgres (one a test may stop) cannot be made"
            if IN_CI:
                pytest.fail(message)
            pytest.skip("SKIPPING A POSTGRES OUTAGE TEST: " + message)
        self.bin = Path(initdb).resolve().parent
        self.dir = Path(tempfile.mkdtemp(prefix="sohbet-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # Postgres refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs (the first line of postmaster.pid)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def remove(self) -> None:
        """Stop it if it still runs (by its own PID, never by name), and delete its files."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown of that one postmaster
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


async def readyz(port: int) -> HttpAnswer:
    raw = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    [answer] = parse(await read_to_eof(reader))
    writer.close()
    return answer


async def readyz_until(port: int, status: int, timeout: float = 15.0) -> HttpAnswer:
    """Probe until /readyz answers *status* (the cache and reconnects take a moment), bounded."""
    async with asyncio.timeout(timeout):
        while True:
            answer = await readyz(port)
            if answer[0] == status:
                return answer
            await asyncio.sleep(0.2)


def test_readyz_answers_503_while_storage_is_down_and_200_once_it_is_back(
    run: Run, private_postgres: PrivatePostgres
) -> None:
    async def main() -> None:
        async with chat_server(private_postgres.url) as h:
            status, _, body = await readyz(h.server.port)
            assert (status, body) == (200, b'{"status":"ready"}')
            await asyncio.to_thread(private_postgres.stop)
            assert private_postgres.pid is None
            _, headers, body = await readyz_until(h.server.port, 503)
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body) == {"error": {"code": "unavailable", "message": "storage is unreachable"}}
            await asyncio.to_thread(private_postgres.start)
            _, _, body = await readyz_until(h.server.port, 200)  # the pool reconnects
            assert body == b'{"status":"ready"}'

    run(main())


def test_a_flood_of_refused_upgrades_logs_a_few_lines_a_second_of_bounded_length(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    """Every refusal is counted, but a client that sends thousands (each with 8 KB of its own
    text in it) cannot fill the operator's disk: a bounded number of lines, each cut short, and
    the next line let through says how many were not logged."""
    caplog.set_level(logging.INFO, logger="sohbet.server")
    upgrade = (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: " + "9" * 8000 + "\r\n\r\n"
    ).encode()

    async def main() -> None:
        async with running(Recorder()) as server:
            for _ in range(REFUSALS_LOGGED.burst + 30):
                assert (await http(server.port, upgrade))[0] == 426
            now = server.now
            async with asyncio.timeout(5):  # the server's clock moves on (once a second): room for one more line
                while server.now < now + 1 / REFUSALS_LOGGED.per_s:
                    await asyncio.sleep(0.05)
            assert (await http(server.port, upgrade))[0] == 426
            assert server.stats.handshakes["426"] == REFUSALS_LOGGED.burst + 31

    run(main())
    refused = [r for r in caplog.records if r.getMessage() == "refused upgrade"]
    assert len(refused) == REFUSALS_LOGGED.burst + 1
    assert all(len(r.__dict__["reason"]) < 120 for r in refused)
    assert refused[-1].__dict__["unlogged"] == 30 and "unlogged" not in refused[0].__dict__
