"""Keys by kid and a JWKS file rotated under a running `sohbet-server`, as real processes.

Every server is its own process, reached over a real WebSocket (the `websockets` library), and
stopped here by PID. A reload is awaited by asking the server until it answers the new way (it
polls its file every 2 s), never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..chatkit import WsChat
from .test_processes import cli, server_process

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
RELOAD_WAIT_S = 15.0  # the server polls every 2 s; a loaded machine may take a few more


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_A, KEY_B = rsa_key(), rsa_key()


def write_pem(path: Path, key: PrivateKey) -> str:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return str(path)


def jwks_text(*kids_and_keys: tuple[str, PrivateKey]) -> str:
    keys = []
    for kid, key in kids_and_keys:
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        keys.append({**jwk, "kid": kid, "use": "sig"})
    return json.dumps({"keys": keys})


def replace_file(path: Path, text: str) -> None:
    """Write beside *path*, then rename over it: what a deploy tool does (a new inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def token(key: PrivateKey, alg: str, kid: str | None, user: str = "alice") -> str:
    headers = None if kid is None else {"kid": kid}
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, key, algorithm=alg, headers=headers)


async def upgrade_status(port: int, jwt_token: str) -> int:
    """101 when the server upgrades with this token (and says hello), else the HTTP status it answers."""
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={jwt_token}") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "hello", hello
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def status(port: int, jwt_token: str) -> int:
    return asyncio.run(upgrade_status(port, jwt_token))


def eventually(check: Callable[[], bool], what: str) -> None:
    """Ask until *check* holds; each ask is a real connection, so the pause only spaces them out."""
    deadline = time.monotonic() + RELOAD_WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {RELOAD_WAIT_S} s: {what}"
        time.sleep(0.1)


class Output:
    """The server's output (stderr is merged into stdout), read by a thread so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        try:
            for line in stream:  # type: ignore[attr-defined]  # a text pipe
                self._new.put(line)
        except (ValueError, OSError):  # closed under us when the process is stopped
            pass

    def wait_for(self, text: str) -> str:
        """The first line (from now on, or already read) that holds *text*."""
        deadline = time.monotonic() + RELOAD_WAIT_S
        while True:
            found = next((line for line in self.lines if text in line), None)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"no line with {text!r} within {RELOAD_WAIT_S} s; output:\n{''.join(self.lines)}"
            with contextlib.suppress(queue.Empty):
                self.lines.append(self._new.get(timeout=left))


def test_help_shows_the_key_flags() -> None:
    result = cli("--help")
    for text in (
        "--jwt-public-key",
        "[KID=]PATH",
        "SOHBET_JWT_PUBLIC_KEY",
        "--jwks-file",
        "SOHBET_JWKS_FILE",
        "SIGHUP",
    ):
        assert text in result.stdout, text


def test_two_public_keys_by_kid(tmp_path: Path) -> None:
    args = ["--jwt-algorithm", "RS256", "--jwt-audience", "chat", "--data-dir", str(tmp_path)]
    args += ["--jwt-public-key", f"a={write_pem(tmp_path / 'a.pem', KEY_A)}"]
    args += ["--jwt-public-key", f"b={write_pem(tmp_path / 'b.pem', KEY_B)}"]

    def signed(key: PrivateKey, kid: str | None) -> str:
        claims = {"sub": "alice", "aud": "chat", "exp": int(time.time()) + 3600}
        return jwt.encode(claims, key, algorithm="RS256", headers=None if kid is None else {"kid": kid})

    with server_process(*args, cwd=tmp_path) as (_, port):
        assert status(port, signed(KEY_A, "a")) == 101
        assert status(port, signed(KEY_B, "b")) == 101
        assert status(port, signed(KEY_A, "c")) == 401  # an unknown kid
        assert status(port, signed(KEY_A, "b")) == 401  # a kid names its key: another's signature fails
        assert status(port, signed(KEY_A, None)) == 401  # two keys: a token without a kid picks none


def test_a_jwks_file_rotated_by_rename_without_a_restart(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(jwks_text(("a", KEY_A)))
    args = ["--jwt-algorithm", "RS256", "--jwks-file", str(keys), "--data-dir", str(tmp_path)]
    with server_process(*args, cwd=tmp_path) as (proc, port):
        output = Output(proc)
        assert status(port, token(KEY_A, "RS256", "a")) == 101
        assert status(port, token(KEY_B, "RS256", "b")) == 401

        async def refresh_across_the_rotation() -> None:
            # Opened with kid a; the rotation leaves it open, but a's tokens no longer refresh it.
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token(KEY_A, 'RS256', 'a')}") as ws:
                client = WsChat(ws, "alice")
                await client.expect("hello")
                assert (await client.request("auth:refresh", {"token": token(KEY_A, "RS256", "a")}))["type"] == (
                    "auth:refreshed"
                )
                replace_file(keys, jwks_text(("b", KEY_B)))
                deadline = time.monotonic() + RELOAD_WAIT_S
                while (await upgrade_status(port, token(KEY_A, "RS256", "a"))) != 401:
                    assert time.monotonic() < deadline, "kid a still accepted"
                    await asyncio.sleep(0.1)
                refused = await client.request("auth:refresh", {"token": token(KEY_A, "RS256", "a")})
                assert refused["type"] == "error" and refused["payload"]["code"] == "unauthorized", refused
                refreshed = await client.request("auth:refresh", {"token": token(KEY_B, "RS256", "b")})
                assert refreshed["type"] == "auth:refreshed", refreshed

        asyncio.run(refresh_across_the_rotation())
        assert status(port, token(KEY_B, "RS256", "b")) == 101
        assert proc.poll() is None  # the same process, never restarted
        assert "kids now active: 'b'" in output.wait_for("reloaded (changed on disk)")


def test_a_jwks_file_reloaded_on_sighup(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(jwks_text(("a", KEY_A)))
    args = ["--jwt-algorithm", "RS256", "--jwks-file", str(keys), "--data-dir", str(tmp_path)]
    with server_process(*args, cwd=tmp_path) as (proc, port):
        output = Output(proc)
        assert status(port, token(KEY_A, "RS256", "a")) == 101
        # Rewritten in place, to the same size and modification time: the poll sees no change,
        # so only the signal can make the server read it.
        before = keys.stat()
        with keys.open("r+") as f:
            f.write(jwks_text(("b", KEY_B)))
        os.utime(keys, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = keys.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: status(port, token(KEY_A, "RS256", "a")) == 401, "kid a refused after SIGHUP")
        assert status(port, token(KEY_B, "RS256", "b")) == 101
        assert proc.poll() is None
        assert "kids now active: 'b'" in output.wait_for("reloaded (SIGHUP)")


def test_a_broken_jwks_keeps_the_keys_in_use_and_says_why(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(jwks_text(("a", KEY_A)))
    args = ["--jwt-algorithm", "RS256", "--jwks-file", str(keys), "--data-dir", str(tmp_path)]
    with server_process(*args, cwd=tmp_path) as (proc, port):
        output = Output(proc)
        replace_file(keys, jwks_text(("b", KEY_B))[:-20])  # cut short, as by a failed copy
        line = output.wait_for("ERROR sohbet.auth")
        assert f"JWKS file {keys}: not JSON" in line and "keeping the keys in use, kids 'a'" in line
        assert status(port, token(KEY_A, "RS256", "a")) == 101  # the old keys stay
        assert status(port, token(KEY_B, "RS256", "b")) == 401
        replace_file(keys, jwks_text(("a", KEY_A), ("b", KEY_B)))  # repaired: taken on the next poll
        eventually(lambda: status(port, token(KEY_B, "RS256", "b")) == 101, "kid b accepted after the repair")
        assert status(port, token(KEY_A, "RS256", "a")) == 101
        assert proc.poll() is None
        everything = "".join(output.lines)
        assert json.loads(jwks_text(("b", KEY_B)))["keys"][0]["n"][:16] not in everything  # no key material


def test_eddsa_keys_from_a_pem_file_and_a_jwks_together(tmp_path: Path) -> None:
    pem_key, jwks_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    keys = tmp_path / "keys.json"
    keys.write_text(jwks_text(("rotating", jwks_key)))
    args = ["--jwt-algorithm", "EdDSA", "--jwks-file", str(keys), "--data-dir", str(tmp_path)]
    args += ["--jwt-public-key", f"fixed={write_pem(tmp_path / 'ed.pem', pem_key)}"]
    with server_process(*args, cwd=tmp_path) as (_, port):
        assert status(port, token(pem_key, "EdDSA", "fixed")) == 101
        assert status(port, token(jwks_key, "EdDSA", "rotating")) == 101
        assert status(port, token(jwks_key, "EdDSA", "fixed")) == 401
        assert status(port, token(KEY_A, "RS256", "rotating")) == 401  # the algorithm is pinned


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--jwt-public-key", "a={a}", "--jwt-public-key", "a={b}"], {}, "JWT public key kid 'a' is given twice"),
        (["--jwt-public-key", "{a}", "--jwt-public-key", "{b}"], {}, "two JWT public keys without a kid"),
        ([], {"SOHBET_JWT_PUBLIC_KEY": "=x.pem"}, "--jwt-public-key '=x.pem' has an empty kid"),
        (["--jwt-public-key", "a={dir}/missing.pem"], {}, "cannot read JWT public key of kid 'a': [Errno 2]"),
        (["--jwt-public-key", "a={keys}"], {}, "the JWT public key of kid 'a' is not a RS256 public key"),
        (["--jwks-file", "{dir}/missing.json"], {}, "cannot read JWKS file {dir}/missing.json: No such file"),
        (["--jwks-file", "{a}"], {}, "JWKS file {a}: not JSON"),
        (["--jwks-file", "{keys}", "--jwt-public-key", "a={a}"], {}, "kid 'a' is both in the JWKS and"),
    ],
    ids=["kid-twice", "no-kid-twice", "empty-kid", "unreadable-pem", "not-a-pem", "no-jwks", "bad-jwks", "kid-clash"],
)
def test_refuses_to_start_on_a_bad_key(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(jwks_text(("a", KEY_A)))
    names = {"a": write_pem(tmp_path / "a.pem", KEY_A), "b": write_pem(tmp_path / "b.pem", KEY_B)}
    names |= {"keys": str(keys), "dir": str(tmp_path)}
    argv = [arg.format(**names) for arg in args]
    result = cli("token", "alice", "--jwt-algorithm", "RS256", "--data-dir", str(tmp_path), *argv, env=env)
    assert result.returncode == 2, result
    assert result.stderr.startswith("sohbet-server: ") and result.stderr.count("\n") == 1, result.stderr
    assert message.format(**names) in result.stderr


def test_hs256_keys_from_a_jwks_need_no_generated_secret(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    secret = "an-oct-key-of-at-least-thirty-two-bytes"
    oct_key = {"kty": "oct", "kid": "h1", "k": jwt.utils.base64url_encode(secret.encode()).decode()}
    keys.write_text(json.dumps({"keys": [oct_key]}))
    result = cli("token", "alice", "--jwks-file", str(keys), "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "cannot sign HS256 tokens without a JWT secret" in result.stderr
    assert not (tmp_path / "sohbet.secret").exists()  # the file's keys verify: nothing generated
    with server_process("--jwks-file", str(keys), "--data-dir", str(tmp_path), cwd=tmp_path) as (_, port):
        assert (
            status(port, jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, headers={"kid": "h1"}))
            == 101
        )
        assert not (tmp_path / "sohbet.secret").exists()
