"""The JWKS file watcher: a real file, a real event loop, the keys swapped without a restart.

The process tests (tests/integration/test_key_rotation.py) drive the same watcher through
`sohbet-server`, SIGHUP included; these run it in-process, with a poll interval short enough to
test every path of it quickly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sohbet.app.keys import KeyWatcher, check_keys, read_jwks, watch_keys
from sohbet.auth import MAX_JWKS_BYTES, Verifier
from sohbet.config import AuthConfig
from sohbet.errors import ConfigError, TokenInvalid

KEY_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FAST_S = 0.02  # the poll interval here: the server's is 2 s
WAIT_S = 10.0


def jwks_text(*kids_and_keys: tuple[str, rsa.RSAPrivateKey]) -> str:
    keys = [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid} for kid, key in kids_and_keys]
    return json.dumps({"keys": keys})


def replace_file(path: Path, text: str) -> None:
    """Write *text* beside *path* and rename it over it, as a deploy tool does (a new inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def token(key: rsa.RSAPrivateKey, kid: str) -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, key, algorithm="RS256", headers={"kid": kid})


def accepts(verifier: Verifier, key: rsa.RSAPrivateKey, kid: str) -> bool:
    try:
        verifier.verify(token(key, kid))
    except TokenInvalid:
        return False
    return True


async def until(check: Callable[[], bool]) -> None:
    """Return once *check* holds; fail after `WAIT_S` (the watcher polls every `FAST_S`)."""
    async with asyncio.timeout(WAIT_S):
        while not check():
            await asyncio.sleep(FAST_S / 2)


async def bounded(coro: Coroutine[Any, Any, None]) -> None:
    async with asyncio.timeout(WAIT_S * 2):  # a watcher that cannot stop fails, not hangs
        await coro


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sohbet.auth" and r.levelno == level]


def test_each_look_reloads_a_new_version_and_keeps_the_keys_a_bad_one_would_lose(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Driven one look at a time (`poll`), so what a look must not do is checked without waiting."""
    caplog.set_level(logging.INFO, logger="sohbet.auth")
    path = tmp_path / "keys.json"
    path.write_text(jwks_text(("a", KEY_A)))
    verifier = Verifier(AuthConfig(algorithm="RS256", jwks_file=str(path)))

    def errors() -> list[str]:
        return messages(caplog, logging.ERROR)

    async def main() -> None:
        watcher = KeyWatcher(verifier, str(path), "RS256", interval_s=3600)  # no look but ours
        watcher.start()
        assert accepts(verifier, KEY_A, "a")
        assert messages(caplog, logging.INFO) == [f"JWKS file {path} loaded: kids now active: 'a'"]
        watcher.poll()
        assert len(messages(caplog, logging.INFO)) == 1  # the same version: not read again

        # Same size, same modification time, another inode: only the rename tells them apart.
        before = path.stat()
        replace_file(path, jwks_text(("b", KEY_A)))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        watcher.poll()
        assert verifier.kids == ("b",)
        assert not accepts(verifier, KEY_A, "a") and accepts(verifier, KEY_A, "b")
        assert messages(caplog, logging.INFO)[-1] == (
            f"JWKS file {path} reloaded (changed on disk): kids now active: 'b'"
        )

        replace_file(path, '{"keys": [], "x": ' + "1" * 5000 + "}")  # a number Python will not read
        watcher.poll()
        assert errors() == [
            f"JWKS file {path}: not JSON this server reads: a number too long (changed on disk): "
            "keeping the keys in use, kids 'b'"
        ]
        replace_file(path, '{"keys": [')  # a broken version: the keys in use stay
        watcher.poll()
        watcher.poll()
        assert errors()[1:] == [
            f"JWKS file {path}: not JSON: Expecting value at line 1 column 11 (changed on disk): "
            "keeping the keys in use, kids 'b'"
        ]  # once, however often it is looked at
        path.unlink()
        watcher.poll()
        watcher.poll()
        assert errors()[2:] == [
            f"cannot read JWKS file {path}: No such file or directory (gone): keeping the keys in use, kids 'b'"
        ]
        assert accepts(verifier, KEY_A, "b")
        replace_file(path, jwks_text(("a", KEY_A), ("b", KEY_B)))  # back: every kid in it is active
        watcher.poll()
        assert verifier.kids == ("a", "b")
        assert accepts(verifier, KEY_A, "a") and accepts(verifier, KEY_B, "b")
        assert len(messages(caplog, logging.INFO)) == 3 and len(errors()) == 3
        await watcher.stop()

    asyncio.run(bounded(main()))


def test_the_watcher_looks_by_itself_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(jwks_text(("a", KEY_A)))
    verifier = Verifier(AuthConfig(algorithm="RS256", jwks_file=str(path)))

    async def main() -> None:
        watcher = KeyWatcher(verifier, str(path), "RS256", interval_s=FAST_S)
        watcher.start()
        replace_file(path, jwks_text(("b", KEY_A)))
        await until(lambda: verifier.kids == ("b",))
        await watcher.stop()
        replace_file(path, jwks_text(("c", KEY_A)))
        await asyncio.sleep(FAST_S * 5)  # nothing to wait for: a stopped watcher must not act
        assert verifier.kids == ("b",)
        await watcher.stop()  # twice is harmless

    asyncio.run(bounded(main()))


def test_skipped_keys_are_warned_about_by_kid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sohbet.auth")
    path = tmp_path / "keys.json"
    entries = json.loads(jwks_text(("a", KEY_A), ("enc", KEY_B)))
    entries["keys"][1]["use"] = "enc"
    path.write_text(json.dumps(entries))
    verifier = Verifier(AuthConfig(algorithm="RS256", jwks_file=str(path)))

    async def main() -> None:
        watcher = watch_keys(AuthConfig(algorithm="RS256", jwks_file=str(path)), verifier)
        assert messages(caplog, logging.WARNING) == [f"JWKS file {path}: kid 'enc': use 'enc' is not 'sig', skipped"]
        assert watcher.reload("by hand")
        assert messages(caplog, logging.INFO)[-1] == f"JWKS file {path} reloaded (by hand): kids now active: 'a'"
        await watcher.stop()

    asyncio.run(bounded(main()))


def test_a_file_that_cannot_be_used_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(jwks_text(("pem", KEY_A)))
    pem = KEY_B.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    clashing = AuthConfig(algorithm="RS256", public_keys=(("pem", pem.decode()),), jwks_file=str(path))
    with pytest.raises(ConfigError, match="kid 'pem' is both in the JWKS and a --jwt-public-key"):
        check_keys(clashing)
    missing = AuthConfig(algorithm="RS256", jwks_file=str(tmp_path / "none.json"))
    with pytest.raises(ConfigError, match=f"cannot read JWKS file {tmp_path}/none.json: No such file or directory"):
        check_keys(missing)

    async def main() -> None:
        with pytest.raises(ConfigError, match="cannot read JWKS file"):
            watch_keys(missing, Verifier(missing))

    asyncio.run(bounded(main()))
    check_keys(AuthConfig(algorithm="RS256", jwks_file=str(path)))  # alone, the file is fine


def test_a_file_too_large_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(jwks_text(("a", KEY_A)) + " " * MAX_JWKS_BYTES)
    with pytest.raises(ConfigError, match=f"^JWKS file {path}: 1048577 bytes is more than a JWKS of"):
        read_jwks(str(path), "RS256")


def test_without_a_jwks_file_the_watcher_only_takes_sighup(caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP's default action ends the process; logrotate and service managers send it."""
    caplog.set_level(logging.INFO, logger="sohbet.auth")
    verifier = Verifier(AuthConfig(secret="s" * 32))

    async def main() -> None:
        watcher = watch_keys(AuthConfig(secret="s" * 32), verifier)
        got = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, got.set)
        os.kill(os.getpid(), signal.SIGHUP)  # this process's own: handled, not fatal
        await got.wait()
        await until(lambda: "SIGHUP: nothing to reload (no --jwks-file)" in messages(caplog, logging.INFO))
        await watcher.stop()

    asyncio.run(bounded(main()))
    assert verifier.kids == (None,)


def test_off_the_main_thread_it_polls_without_sighup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server embedded in another program, on a loop in a thread, cannot take signals."""
    caplog.set_level(logging.INFO, logger="sohbet.auth")
    path = tmp_path / "keys.json"
    path.write_text(jwks_text(("a", KEY_A)))
    verifier = Verifier(AuthConfig(algorithm="RS256", jwks_file=str(path)))
    failures: list[BaseException] = []

    async def main() -> None:
        watcher = KeyWatcher(verifier, str(path), "RS256", interval_s=FAST_S)
        watcher.start()
        replace_file(path, jwks_text(("b", KEY_A)))
        await until(lambda: verifier.kids == ("b",))
        await watcher.stop()

    def thread() -> None:
        try:
            asyncio.run(bounded(main()))
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join(WAIT_S * 2)
    assert not worker.is_alive() and failures == []
    assert "SIGHUP cannot reload the JWKS file here (not the main thread); it is polled still" in messages(
        caplog, logging.WARNING
    )


def test_a_reload_failing_in_a_way_no_check_foresaw_keeps_the_watch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sohbet.auth")
    path = tmp_path / "keys.json"
    path.write_text(jwks_text(("a", KEY_A)))

    class Breaking(Verifier):
        """A verifier whose second key set fails to install, as no check of the file foresaw."""

        __slots__ = ("installs",)

        def use_jwks(self, jwks: Any) -> None:
            self.installs = getattr(self, "installs", 0) + 1
            if self.installs == 2:
                raise RuntimeError("unforeseen")
            super().use_jwks(jwks)

    verifier = Breaking(AuthConfig(algorithm="RS256", jwks_file=str(path)))

    async def main() -> None:
        watcher = KeyWatcher(verifier, str(path), "RS256", interval_s=3600)
        watcher.start()
        replace_file(path, jwks_text(("b", KEY_A)))
        watcher.poll()
        assert verifier.kids == ("a",)  # kept
        assert messages(caplog, logging.ERROR)[-1] == (
            f"JWKS file {path} could not be read (RuntimeError, changed on disk): keeping the keys in use, kids 'a'"
        )
        replace_file(path, jwks_text(("c", KEY_A)))
        watcher.poll()  # still watched
        assert verifier.kids == ("c",)
        await watcher.stop()

    asyncio.run(bounded(main()))
