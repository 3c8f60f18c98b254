"""`sohbet-server` as real processes: the command line, a second writer on one Postgres, a kill -9.

Every process started here is stopped here, by PID, within the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.typing import Subprotocol

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage
from sohbet.config import DEMO_WARNING, AuthConfig
from sohbet.store.postgres import PostgresStore

from ..chatkit import WsChat, token
from ..test_auth import jwk, jwks, pem

SECRET = "a-shared-secret-of-at-least-32-bytes!!"
SERVER = [sys.executable, "-I", "-m", "sohbet.app.cli"]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
    return subprocess.run(
        [*SERVER, *args], capture_output=True, text=True, timeout=60, check=False, env={**environ, **(env or {})},
        cwd=cwd,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
    proc = subprocess.Popen(
        [*SERVER, "--port", str(port), *args], cwd=cwd, env={**environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}") from None
                time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_help_names_every_setting() -> None:
    result = cli("--help")
    assert result.returncode == 0
    names = "--host --port --database-url --jwt-secret --jwt-public-key --jwt-algorithm --redis-url --send-rate"
    names += " --send-burst --frame-rate --presence-grace --max-connections --max-message-bytes --compression"
    names += " --http-lifetime --max-pipelined-requests /readyz"
    for name in [*names.split(), "SOHBET_PORT", "SOHBET_API_KEY"]:
        assert name in result.stdout, name


def test_generated_secret_and_token_command(tmp_path: Path) -> None:
    first = cli("token", "alice", "--ttl", "60", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    secret_file = tmp_path / "sohbet.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text().strip()) >= 32
    assert "generated a random secret" in first.stderr
    second = cli("token", "bob", "--data-dir", str(tmp_path))
    assert "generated" not in second.stderr  # the same secret is reused

    import jwt  # noqa: PLC0415

    claims = jwt.decode(first.stdout.strip(), secret_file.read_text().strip(), algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--database-url", "postgresql://x@127.0.0.1/db"], {}, "set SOHBET_JWT_SECRET"),
        (["--redis-url", "redis://127.0.0.1"], {}, "--redis-url needs Postgres"),
        ([], {"SOHBET_JWT_SECRET": "too short"}, "shorter than 32"),
        ([], {"SOHBET_PORT": "http"}, "SOHBET_PORT: 'http' is not a valid int"),
        (["--jwt-algorithm", "RS256"], {}, "at least one public key"),
    ],
    ids=["postgres-needs-key", "redis-needs-postgres", "short-secret", "bad-env", "rs256-needs-key"],
)
def test_refuses_to_start(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    result = cli("token", "alice", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "sohbet.secret").exists()  # refused before anything was written


def test_log_level_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "sohbet.toml"
    config.write_text(f'jwt-secret = "{SECRET}"\nlog-level = "warning"\n')
    quiet = cli("migrate", "--config", str(config), "--data-dir", str(tmp_path))
    assert quiet.returncode == 0, quiet.stderr
    assert "migrations applied" not in quiet.stderr  # info, below the file's level
    loud = cli("migrate", "--config", str(config), "--log-level", "info", "--data-dir", str(tmp_path))
    assert "INFO sohbet migrations applied" in loud.stderr  # the flag wins over the file


def test_precedence_of_flags_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "sohbet.toml"
    config.write_text(f'jwt-secret = "{SECRET}"\nport = 1111\nsend-rate = 3.5\n')
    from sohbet.app.cli import build_config  # noqa: PLC0415

    built = build_config({"config": str(config), "port": 3333}, {"SOHBET_PORT": "2222", "SOHBET_SEND_BURST": "7"})
    assert (built.port, built.chat.send_rate_per_s, built.chat.send_burst) == (3333, 3.5, 7)
    from_env = build_config({"config": str(config)}, {"SOHBET_PORT": "2222"})
    assert from_env.port == 2222
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1")
    result = cli("token", "x", "--config", str(bad))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


@asynccontextmanager
async def chat(port: int, token: str) -> AsyncIterator[WsChat]:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}", max_queue=None) as ws:
        client = WsChat(ws, "")
        await client.expect("hello")
        yield client


async def send_all(port: int, token: str, conversation: int, prefix: str, count: int) -> list[int]:
    async with chat(port, token) as client:
        seqs = []
        for i in range(count):
            ref = f"{prefix}{i}"
            payload = {"conversation_id": conversation, "content": f"{prefix} {i}", "client_id": ref}
            reply = await client.request("chat:send", payload, ref=ref)
            assert reply["type"] == "chat:ack", reply
            seqs.append(reply["payload"]["message"]["seq"])
        return seqs


async def create(port: int, token: str, members: list[str]) -> int:
    async with chat(port, token) as client:
        return await client.create(*members)


def env_secret_token(user: str) -> str:
    """A token from `sohbet-server token`, signed with SOHBET_JWT_SECRET."""
    result = cli("token", user, env={"SOHBET_JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def data_dir_token(user: str, data_dir: Path) -> str:
    """A token signed with the secret `sohbet-server` generated in *data_dir*."""
    result = cli("token", user, "--data-dir", str(data_dir), env={})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_second_writer_on_one_postgres_keeps_seqs_gapless(tmp_path: Path, postgres_database: str) -> None:
    """One server process and, beside it, this process writing straight to the same database
    (one server per database is enforced, but the store's seqs must not depend on it)."""
    args = ["--database-url", postgres_database, "--jwt-secret", SECRET, "--send-rate", "0"]
    users = [f"user{i}" for i in range(10)]
    tokens = {u: token(u, auth=AuthConfig(secret=SECRET)) for u in users[1:]}
    tokens[users[0]] = env_secret_token(users[0])  # the command line's own tokens work too
    with server_process(*args, cwd=tmp_path) as (proc, port):

        async def main() -> list[int]:
            conversation = await create(port, tokens[users[0]], users[1:])
            store = PostgresStore(postgres_database, pool_size=4)
            try:

                async def write_beside(user: str) -> list[int]:
                    seqs = []
                    for i in range(10):
                        batch = [NewMessage(ConversationId(conversation), UserId(user), f"b{user}{i}", "beside")]
                        (stored,) = await store.append(batch, int(time.time() * 1000))
                        assert stored is not None
                        seqs.append(stored.seq)
                    return seqs

                runs = [send_all(port, tokens[u], conversation, u, 10) for u in users]
                runs += [write_beside(u) for u in users]
                return [s for seqs in await asyncio.gather(*runs) for s in seqs]
            finally:
                await store.close()

        seqs = asyncio.run(main())
        # One thread, after all that: a second one (libuv's resolver pool, say) would make the
        # kernel count a reference at every socket call (`ws.server.numeric_listener`).
        assert os.listdir(f"/proc/{proc.pid}/task") == [str(proc.pid)]
    assert sorted(seqs) == list(range(1, 201))


def test_nothing_acked_is_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    tokens = {u: data_dir_token(u, tmp_path) for u in ("alice", "bob")}
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path) as (proc, port):

        async def before_the_kill() -> tuple[int, list[int]]:
            conversation = await create(port, tokens["alice"], ["bob"])
            return conversation, await send_all(port, tokens["alice"], conversation, "m", 25)

        conversation, acked = asyncio.run(before_the_kill())
        proc.kill()  # SIGKILL: no shutdown, no flush, no goodbye
        proc.wait()
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path) as (_, port):

        async def after_the_restart() -> list[int]:
            async with chat(port, tokens["bob"]) as client:
                history = await client.ok("chat:history", {"conversation_id": conversation, "limit": 100})
                return [m["seq"] for m in history["messages"]]

        stored = asyncio.run(after_the_restart())
    assert acked == list(range(1, 26))
    assert stored == acked


def test_sigterm_closes_connections_with_1001(tmp_path: Path) -> None:
    alice = data_dir_token("alice", tmp_path)
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path) as (proc, port):

        async def main() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={alice}") as ws:
                await ws.recv()
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10)
                return info.value.rcvd.code if info.value.rcvd else None

        assert asyncio.run(main()) == 1001
        assert proc.wait(timeout=15) == 0


#: The browser client as the package ships it: what every server sends at /client/sohbet.mjs.
SHIPPED_CLIENT = files("sohbet.app").joinpath("static", "sohbet.mjs").read_bytes()


def fetch(url: str, body: dict[str, Any] | None = None) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of a GET, or of a JSON POST of *body*."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.headers["Content-Type"], refused.read()


def test_a_real_process_serves_the_client_and_no_demo_unless_asked(tmp_path: Path) -> None:
    with server_process("--data-dir", str(tmp_path), cwd=tmp_path) as (proc, port):
        base = f"http://127.0.0.1:{port}"
        assert fetch(f"{base}/client/sohbet.mjs") == (200, "text/javascript; charset=utf-8", SHIPPED_CLIENT)
        assert fetch(f"{base}/")[0] == 404
        assert fetch(f"{base}/demo/token", {"user_id": "alice"})[0] == 404
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert DEMO_WARNING not in log


def test_the_demo_in_a_real_process_warns_and_mints_tokens_the_websocket_takes(tmp_path: Path) -> None:
    with server_process("--data-dir", str(tmp_path), "--demo", cwd=tmp_path) as (proc, port):
        base = f"http://127.0.0.1:{port}"
        assert fetch(f"{base}/client/sohbet.mjs") == (200, "text/javascript; charset=utf-8", SHIPPED_CLIENT)
        status, content_type, page = fetch(f"{base}/")
        assert (status, content_type) == (200, "text/html; charset=utf-8")
        assert page == files("sohbet.app").joinpath("static", "demo.html").read_bytes()
        status, _, answer = fetch(f"{base}/demo/token", {"user_id": "deniz"})
        assert status == 200
        minted = json.loads(answer)["token"]

        async def hello() -> dict[str, Any]:
            protocols = [Subprotocol("sohbet.v1"), Subprotocol(f"bearer.{minted}")]
            async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=protocols) as ws:
                return await WsChat(ws, "deniz").expect("hello")

        assert asyncio.run(hello())["payload"]["user_id"] == "deniz"
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert f"WARNING sohbet {DEMO_WARNING}" in log


@pytest.mark.parametrize("keys", ["rs256-public-key", "hs256-jwks-file-only"])
def test_the_demo_refuses_to_start_on_a_server_that_cannot_sign(tmp_path: Path, keys: str) -> None:
    if keys == "rs256-public-key":
        (tmp_path / "key.pem").write_text(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        args = ["--jwt-algorithm", "RS256", "--jwt-public-key", str(tmp_path / "key.pem"), "--demo"]
        held = "holds only RS256 public keys"
    else:
        (tmp_path / "keys.json").write_bytes(jwks(jwk("an-oct-key-of-at-least-32-bytes!!", "k1")))
        args = ["--jwks-file", str(tmp_path / "keys.json"), "--demo"]
        held = "holds only the keys of a JWKS file"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
    # A server that started anyway would serve until the timeout: the test fails then too.
    result = subprocess.run(
        [*SERVER, "--port", str(free_port()), "--data-dir", str(tmp_path), *args], capture_output=True, text=True,
        timeout=30, check=False, env=environ, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "sohbet-server: --demo mints tokens with the server's own key" in result.stderr
    assert held in result.stderr and "run the demo with an HS256 --jwt-secret" in result.stderr
    assert not (tmp_path / "sohbet.db").exists()  # refused before storage was opened
