"""The JWKS file: read at start, re-read when it changes on disk or on SIGHUP, for key rotation.

Layer: entry. Reads the file and owns the signal; what the file means (which keys, which
refusals) is `sohbet.auth.parse_jwks`, and the swap is `Verifier.use_jwks`.

The file is polled, not watched with inotify: one `stat` every two seconds costs nothing, works
on every filesystem (a Kubernetes Secret volume swaps a symlink, a deploy tool renames a new
file over the old), and needs no thread. The inode is part of what is compared, so an atomic
rename is seen even when the new file has the old one's size and modification time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Final

from sohbet.auth import MAX_JWKS_BYTES, KeySet, Verifier, parse_jwks
from sohbet.config import AuthConfig
from sohbet.errors import ConfigError

__all__ = ["POLL_INTERVAL_S", "KeyWatcher", "check_keys", "read_jwks", "watch_keys"]

log = logging.getLogger("sohbet.auth")
#: Seconds between two looks at the JWKS file; a rotation is seen within about this long.
POLL_INTERVAL_S: Final = 2.0

#: What identifies one version of the file: device, inode, size, modification time (ns).
_Signature = tuple[int, int, int, int]


def read_jwks(path: str, algorithm: str) -> KeySet:
    """Read the JWKS file at *path* and take its keys for *algorithm*.

    Raises:
        ConfigError: the file cannot be read or is refused, with the file's name and why.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)  # one byte more: parse_jwks says the file is too large
    except OSError as exc:
        raise ConfigError(f"cannot read JWKS file {path}: {exc.strerror or exc}") from None
    try:
        return parse_jwks(data, algorithm)
    except ConfigError as exc:
        raise ConfigError(f"JWKS file {path}: {exc}") from None


def check_keys(auth: AuthConfig) -> None:
    """Prepare every configured key once, so a bad one stops the process before anything opens.

    Raises:
        ConfigError: a public key or the JWKS file that cannot be used.
    """
    verifier = Verifier(auth)
    if auth.jwks_file is not None:
        verifier.use_jwks(read_jwks(auth.jwks_file, auth.algorithm))


def _kids(verifier: Verifier) -> str:
    return ", ".join("(no kid)" if kid is None else repr(kid) for kid in verifier.kids) or "none"


class KeyWatcher:
    """Keep a `Verifier`'s JWKS keys those of the file: re-read it when it changes, or on SIGHUP.

    A reload that fails (the file missing, not a JWKS, no usable key) keeps the keys in use and
    logs why, once per version of the file; a good one logs the kids now active.
    """

    def __init__(
        self, verifier: Verifier, path: str | None, algorithm: str, *, interval_s: float = POLL_INTERVAL_S
    ) -> None:
        self._verifier = verifier
        self._path = path
        self._algorithm = algorithm
        self._interval_s = interval_s
        self._seen: _Signature | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Load the file and watch it from now on; and take SIGHUP, with a file or without.

        Raises:
            ConfigError: the file cannot be used now: a server does not start without its keys.
        """
        loop = asyncio.get_running_loop()
        if self._path is not None:
            self._seen = self._signature(self._path)  # before reading: a change after the read is seen
            keys = read_jwks(self._path, self._algorithm)
            self._verifier.use_jwks(keys)
            self._log_loaded(keys, "loaded")
            self._task = loop.create_task(self._poll_forever(), name="jwks-watch")
        # SIGHUP is handled with a file or without: its default action ends the process, and
        # logrotate or a service manager's reload sends it to servers that expect nothing of it.
        try:
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
            self._loop = loop  # to remove the handler at stop
        except (RuntimeError, ValueError):  # a loop off the main thread (an embedded server) takes no signals
            if self._path is not None:
                log.warning("SIGHUP cannot reload the JWKS file here (not the main thread); it is polled still")

    async def stop(self) -> None:
        """Stop watching: no more reloads, and SIGHUP is no longer handled."""
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def reload(self, cause: str) -> bool:
        """Re-read the file now and use its keys; on failure keep those in use.

        Returns:
            Whether the file's keys are now in use.
        """
        assert self._path is not None  # start() watches only a configured file
        try:
            keys = read_jwks(self._path, self._algorithm)
            self._verifier.use_jwks(keys)
        except ConfigError as exc:
            # The message names the file and why; never key material (parse_jwks sees to that).
            log.error("%s (%s): keeping the keys in use, kids %s", exc, cause, _kids(self._verifier))
            return False
        except Exception as exc:  # a file no check foresaw must not end the watching (its text may be a key)
            log.error(
                "JWKS file %s could not be read (%s, %s): keeping the keys in use, kids %s",
                self._path, type(exc).__name__, cause, _kids(self._verifier),
            )  # fmt: skip
            return False
        self._log_loaded(keys, f"reloaded ({cause})")
        return True

    def _log_loaded(self, keys: KeySet, what: str) -> None:
        for line in keys.skipped:
            log.warning("JWKS file %s: %s", self._path, line)
        log.info("JWKS file %s %s: kids now active: %s", self._path, what, _kids(self._verifier))

    def _hangup(self) -> None:
        if self._path is None:
            log.info("SIGHUP: nothing to reload (no --jwks-file)")
            return
        self._seen = self._signature(self._path)
        self.reload("SIGHUP")

    def poll(self) -> None:
        """Look at the file once (a `stat`), and reload it if it is another version than last time."""
        assert self._path is not None  # start() polls only a configured file
        seen = self._signature(self._path)
        if seen != self._seen:
            self._seen = seen  # a version that fails is reported once, not at every look
            self.reload("changed on disk" if seen is not None else "gone")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.poll()

    @staticmethod
    def _signature(path: str) -> _Signature | None:
        try:
            st = os.stat(path)
        except OSError:
            return None  # reading it will say why
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def watch_keys(auth: AuthConfig, verifier: Verifier) -> KeyWatcher:
    """Give *verifier* the JWKS file's keys and keep them current; stop with `KeyWatcher.stop`.

    Without a JWKS file the watcher only answers SIGHUP (with a log line, instead of the signal's
    default of ending the process), so the caller need not ask.

    Raises:
        ConfigError: the JWKS file cannot be used now.
    """
    watcher = KeyWatcher(verifier, auth.jwks_file, auth.algorithm)
    watcher.start()
    return watcher
