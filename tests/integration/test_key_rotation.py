"""Keys by kid under a running `sohbet-server`, as real processes.

Every server is its own process, reached over a real WebSocket (the `websockets` library), and
stopped here by PID.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .test_processes import cli, server_process

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_A, KEY_B = rsa_key(), rsa_key()


def write_pem(path: Path, key: PrivateKey) -> str:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return str(path)


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


def test_help_shows_the_key_flags() -> None:
    result = cli("--help")
    for text in ("--jwt-public-key", "[KID=]PATH", "SOHBET_JWT_PUBLIC_KEY"):
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


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--jwt-public-key", "a={a}", "--jwt-public-key", "a={b}"], {}, "JWT public key kid 'a' is given twice"),
        (["--jwt-public-key", "{a}", "--jwt-public-key", "{b}"], {}, "two JWT public keys without a kid"),
        ([], {"SOHBET_JWT_PUBLIC_KEY": "=x.pem"}, "--jwt-public-key '=x.pem' has an empty kid"),
        (["--jwt-public-key", "a={dir}/missing.pem"], {}, "cannot read JWT public key of kid 'a': [Errno 2]"),
        (["--jwt-public-key", "a={keys}"], {}, "the JWT public key of kid 'a' is not a RS256 public key"),
    ],
    ids=["kid-twice", "no-kid-twice", "empty-kid", "unreadable-pem", "not-a-pem"],
)
def test_refuses_to_start_on_a_bad_key(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    (tmp_path / "not.pem").write_text("not a key")
    names = {"a": write_pem(tmp_path / "a.pem", KEY_A), "b": write_pem(tmp_path / "b.pem", KEY_B)}
    names |= {"keys": str(tmp_path / "not.pem"), "dir": str(tmp_path)}
    argv = [arg.format(**names) for arg in args]
    result = cli("token", "alice", "--jwt-algorithm", "RS256", "--data-dir", str(tmp_path), *argv, env=env)
    assert result.returncode == 2, result
    assert result.stderr.startswith("sohbet-server: ") and result.stderr.count("\n") == 1, result.stderr
    assert message.format(**names) in result.stderr
