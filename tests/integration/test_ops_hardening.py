"""What an operator can rely on, with real server processes: one server per database, private
data files, secrets kept out of the process list and the log, warnings for risky settings; and
the member cache staying right while a load from storage is in flight.

Every process started here is stopped here, by PID, within the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import ConversationKind
from sohbet.store import MessageStore

from ..chatkit import HeldRemovals, WsChat, chat_server, open_store, with_chat
from ..conftest import POSTGRES_URL, pg_admin
from .test_processes import SECRET, SERVER, cli, create, data_dir_token, free_port, send_all, server_process

Run = Callable[[Coroutine[Any, Any, Any]], Any]
LOCKED = "is already served by another sohbet-server"
#: A second server that wrongly starts is killed after this long (it would serve forever).
REFUSAL_TIMEOUT_S = 20.0


@pytest.fixture
def fresh_postgres(postgres_database: str) -> Iterator[str]:
    """A database of this test's own (the session's one skips or fails loudly if Postgres is
    down): the advisory lock is per database, and the session's database serves other tests."""
    name = f"sohbet_ops_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def start_refused(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `sohbet-server` with *args*, expecting it to exit by itself (killed if it serves)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
    return subprocess.run(
        [*SERVER, "--port", str(free_port()), *args], capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_S,
        check=False, cwd=cwd, env={**environ, **(env or {})},
    )  # fmt: skip


def assert_one_clear_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in result.stderr


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the server; return everything it logged."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    return out


async def hello(port: int, token: str) -> dict[str, Any]:
    """The `hello` payload of a fresh connection, after a request answered (the server serves)."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
        client = WsChat(ws, "")
        payload = (await client.expect("hello"))["payload"]
        await client.ok("conversation:list", {})
        return dict(payload)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_second_server_on_the_same_database_refuses_to_start(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgres":
        args = ["--database-url", request.getfixturevalue("fresh_postgres"), "--jwt-secret", SECRET]
        alice = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    else:
        args = ["--data-dir", str(tmp_path)]
        alice = data_dir_token("alice", tmp_path)
    with server_process(*args, cwd=tmp_path) as (first, port):
        second = start_refused(*args, cwd=tmp_path)
        assert_one_clear_line(second, LOCKED)
        assert asyncio.run(hello(port, alice))["user_id"] == "alice"  # the first one serves on, untouched
        stop(first)
    # Once the first has stopped, the database is free again.
    with server_process(*args, cwd=tmp_path) as (third, port):
        assert asyncio.run(hello(port, alice))["user_id"] == "alice"
        stop(third)


def test_the_lock_goes_with_a_killed_server(tmp_path: Path) -> None:
    """A kill -9 leaves no stale lock behind: the kernel drops the flock with the process."""
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path) as (first, _):
        first.kill()
        first.wait()
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path) as (second, _):
        stop(second)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_redis_url_on_sqlite_refuses_to_start_rather_than_being_ignored(tmp_path: Path, how: str) -> None:
    """Instances share their messages through one Postgres: a SQLite file is one process's."""
    url = "redis://127.0.0.1:6379"
    args, env = (["--redis-url", url], {}) if how == "flag" else ([], {"SOHBET_REDIS_URL": url})
    result = start_refused("--data-dir", str(tmp_path), *args, cwd=tmp_path, env=env)
    assert_one_clear_line(result, "--redis-url needs Postgres")
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []  # refused before any file was made: no secret, no database


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_its_wal_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with umask(0o022):  # the usual umask, which leaves new files world-readable
        tokens = {u: data_dir_token(u, data) for u in ("alice", "bob")}
        with server_process("--data-dir", str(data), cwd=tmp_path) as (proc, port):

            async def main() -> None:
                conversation = await create(port, tokens["alice"], ["bob"])
                await send_all(port, tokens["alice"], conversation, "m", 3)

            asyncio.run(main())
            files = {p.name: mode(p) for p in data.iterdir()}  # while it runs: the WAL and SHM exist
            log = stop(proc)
    assert files == {n: 0o600 for n in ("sohbet.secret", "sohbet.db", "sohbet.db-wal", "sohbet.db-shm")}
    assert mode(data) == 0o700
    assert "readable by group or others" not in log
    migrated = tmp_path / "migrated"  # `migrate` makes the database without serving it
    with umask(0o022):
        result = cli("migrate", "--data-dir", str(migrated), "--jwt-secret", SECRET)
    assert result.returncode == 0, result.stderr
    assert mode(migrated / "sohbet.db") == 0o600 and mode(migrated) == 0o700


def test_a_secret_file_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt.key"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o644)
    with server_process("--jwt-secret-file", str(secret_file), "--data-dir", str(tmp_path), cwd=tmp_path) as (p, _):
        log = stop(p)
    assert f"{secret_file} is readable by group or others (mode 0644)" in log
    assert SECRET not in log
    generated = tmp_path / "other"
    data_dir_token("alice", generated)  # makes sohbet.secret there, 0600
    (generated / "sohbet.secret").chmod(0o640)
    with server_process("--data-dir", str(generated), cwd=tmp_path) as (p, _):
        log = stop(p)
    assert "sohbet.secret is readable by group or others (mode 0640)" in log
    (generated / "sohbet.db").chmod(0o644)  # a database made before files were private
    (generated / "sohbet.secret").chmod(0o600)
    with server_process("--data-dir", str(generated), cwd=tmp_path) as (p, _):
        log = stop(p)
    assert "sohbet.db is readable by group or others (mode 0644)" in log
    assert "sohbet.secret is readable" not in log


@pytest.mark.parametrize("how", ["flag", "env"])
def test_jwt_secret_file_signs_in_over_a_real_socket(tmp_path: Path, how: str) -> None:
    key = "a-key-only-the-file-holds-" + uuid.uuid4().hex
    secret_file = tmp_path / "jwt.key"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (key + "\n").encode())
    os.close(fd)
    args, env = (["--jwt-secret-file", str(secret_file)], {}) if how == "flag" else (
        [], {"SOHBET_JWT_SECRET_FILE": str(secret_file)})  # fmt: skip
    with server_process("--data-dir", str(tmp_path), *args, cwd=tmp_path, env=env) as (proc, port):
        signed = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, key, algorithm="HS256")
        assert asyncio.run(hello(port, signed))["user_id"] == "alice"
        wrong = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")

        async def refused() -> int:
            with pytest.raises(websockets.InvalidStatus) as info:
                await hello(port, wrong)
            return info.value.response.status_code

        assert asyncio.run(refused()) == 401
        log = stop(proc)
    assert key not in log and "readable by group" not in log
    assert not (tmp_path / "sohbet.secret").exists()  # the file's key, not a generated one


def test_a_secret_and_a_secret_file_together_are_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt.key"
    secret_file.write_text(SECRET)
    result = start_refused("--jwt-secret-file", str(secret_file), cwd=tmp_path, env={"SOHBET_JWT_SECRET": SECRET})
    assert_one_clear_line(result, "not both")
    missing = start_refused("--jwt-secret-file", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert_one_clear_line(missing, "cannot read JWT secret file")


def test_a_public_key_without_an_audience_is_warned_about(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    args = ["--jwt-algorithm", "ES256", "--jwt-public-key", str(pem), "--data-dir", str(tmp_path)]
    with server_process(*args, cwd=tmp_path) as (proc, port):
        signed = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, private, algorithm="ES256")
        assert asyncio.run(hello(port, signed))["user_id"] == "alice"  # a warning, not a refusal
        log = stop(proc)
    assert "ES256 tokens are accepted whatever their `aud`" in log and "--jwt-audience" in log
    with server_process(*args, "--jwt-audience", "chat", cwd=tmp_path) as (proc, _):
        log = stop(proc)
    assert "whatever their `aud`" not in log and "listening" in log


class HeldMembersLoad:
    """A real store whose first `members` read, once done, is held until the test releases it:
    the result is what storage said before whatever the test does meanwhile."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def members(self, conversation_id: ConversationId) -> list[UserId]:
        found = await self._store.members(conversation_id)
        if not self.read.is_set():
            self.read.set()
            await self.release.wait()
        return found


def test_a_leave_being_stored_survives_a_reload_of_the_members(run: Run, database_url: str) -> None:
    """Bob leaves; while his removal is being stored, the group's members are evicted from the
    cache (a small `member_cache_size`, another group) and loaded again for Alice's send: the
    load reads storage, which still lists Bob, and must not put him back."""

    async def main() -> None:
        real = await open_store(database_url)
        held = HeldRemovals(real)  # until its gate opens, storage still lists the leaver
        try:
            async with chat_server(database_url, store=held, chat=with_chat(member_cache_size=3)) as h:  # type: ignore[arg-type]
                alice, bob, carol = await h.connect("alice"), await h.connect("bob"), await h.connect("carol")
                group = await alice.create("bob", "carol", title="three")
                await bob.expect("conversation:created")
                await bob.send_raw({"type": "conversation:leave", "ref": "bye", "payload": {"conversation_id": group}})
                await asyncio.wait_for(held.waiting.wait(), 5)
                await alice.create("w", "x", "y", title="four")  # caching its 4 members evicts the first
                assert h.app.chat.hub.members(ConversationId(group)) is None
                during = await alice.send(group, "while bob's leave is stored")
                held.gate.set()
                await bob.expect("conversation:left", ref="bye")
                after = await alice.send(group, "after")
                for sent in (during, after):
                    got = await carol.expect("chat:message")
                    assert got["payload"]["message"]["seq"] == sent["seq"]
                assert "chat:message" not in [e["type"] for e in [*bob.backlog, *await bob.nothing_pending()]]
        finally:
            await real.close()

    run(main())


class EvictingAfterLoad:
    """A real store whose `members` reads, from the *arm*ed one on, each evict every cached
    member set right after the load lands (as loads of other groups landing just after it
    would, with a small `member_cache_size`), before the waiting writer resumes."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.armed = False
        self.hub: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def members(self, conversation_id: ConversationId) -> list[UserId]:
        found = await self._store.members(conversation_id)
        if self.armed:
            asyncio.get_running_loop().call_soon(self.hub.drop_cached_members)
        return found


def test_a_message_committed_while_its_members_were_evicted_reaches_them(run: Run, database_url: str) -> None:
    """The writer reloads a group's members evicted while its message committed; if they are
    evicted again before it resumes, it must deliver with the set it loaded, not to nobody."""

    async def main() -> None:
        real = await open_store(database_url)
        store = EvictingAfterLoad(real)
        try:
            async with chat_server(database_url, store=store) as h:  # type: ignore[arg-type]
                store.hub = h.app.chat.hub
                alice, bob, carol = await h.connect("alice"), await h.connect("bob"), await h.connect("carol")
                group = await alice.create("bob", "carol", title="three")
                store.armed = True
                h.app.chat.hub.drop_cached_members()  # evicted before the send: it loads them
                sent = await alice.send(group, "to both")
                for other in (bob, carol):
                    assert (await other.expect("chat:message"))["payload"]["message"]["seq"] == sent["seq"]
        finally:
            await real.close()

    run(main())


def test_a_member_added_while_the_members_load_is_in_flight_is_kept(run: Run, database_url: str) -> None:
    """A direct conversation asked for again re-adds the side who had left, while a read of its
    members (begun before) is held: when the read lands, the cache must keep the newcomer."""

    async def main() -> None:
        real = await open_store(database_url)
        held = HeldMembersLoad(real)
        try:
            direct, _ = await real.create_conversation(
                [UserId("alice"), UserId("bob")], None, ConversationKind.DIRECT, 0
            )
            await real.remove_member(direct.id, UserId("bob"))  # bob left: alice alone
            async with chat_server(database_url, store=held) as h:  # type: ignore[arg-type]
                alice = await h.connect("alice")
                bob = await h.connect("bob")
                payload = {"conversation_id": direct.id, "content": "first", "client_id": "c1"}
                await alice.send_raw({"type": "chat:send", "payload": payload, "ref": "first"})
                await asyncio.wait_for(held.read.wait(), 5)  # storage said: alice only
                created = await alice.ok("conversation:create", {"members": ["bob"]})
                assert created["conversation"]["id"] == direct.id
                await bob.expect("conversation:created")
                held.release.set()
                await alice.expect("chat:ack", ref="first")
                await alice.send(direct.id, "second")
                # bob is in the cache the load filled: the message after his return reaches him.
                got = await bob.expect("chat:message")
                if got["payload"]["message"]["content"] == "first":
                    got = await bob.expect("chat:message")
                assert got["payload"]["message"]["content"] == "second"
        finally:
            await real.close()

    run(main())
