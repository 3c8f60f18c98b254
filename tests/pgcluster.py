"""A private PostgreSQL cluster that failure tests may stop, kill and freeze.

The shared server at 127.0.0.1:5432 serves every other test (and other people): it is never
stopped or paused. Outage tests start their own cluster with the distribution's binaries, as the
`postgres` user (the server refuses to run as root), in a temporary directory, on a free port of
127.0.0.1, and signal only the processes of that cluster: the postmaster named in its
`postmaster.pid` and that postmaster's descendants, found through /proc.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

BIN_DIR: Final = Path("/usr/lib/postgresql/15/bin")
RUNUSER: Final = "/usr/sbin/runuser"
OWNER: Final = "postgres"
#: pg_ctl's own wait for start and stop; a loaded 2-core machine replays WAL slowly after a kill.
PG_CTL_WAIT_S: Final = 60
#: Settings for a throwaway cluster: only loopback TCP and a socket in the cluster's own
#: directory (never /var/run/postgresql, which the shared server uses); no durability, since a
#: test cluster outlives no machine crash (`pg_ctl stop -m immediate` is a crash of the server,
#: not of the kernel: the page cache keeps every write, so nothing committed is lost).
SETTINGS: Final[Mapping[str, str]] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "'16MB'",
    "logging_collector": "off",
}

StopMode = Literal["smart", "fast", "immediate"]


class ClusterUnavailable(Exception):
    """This machine cannot run a private cluster (no binaries, no `runuser`, not root)."""


def missing_requirement() -> str | None:
    """Why a private cluster cannot run here, or None when it can."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN_DIR / tool).is_file():
            return f"{BIN_DIR / tool} is missing (install postgresql-15)"
    if not Path(RUNUSER).is_file():
        return f"{RUNUSER} is missing"
    if os.geteuid() != 0:
        return f"running as uid {os.geteuid()}, and only root may start a cluster as {OWNER!r} through runuser"
    try:
        pwd.getpwnam(OWNER)
    except KeyError:
        return f"there is no {OWNER!r} user"
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivatePostgres:
    """One throwaway cluster: `init()` it, then `start`, `stop`, `pause`, `resume`; `destroy()`."""

    def __init__(self) -> None:
        reason = missing_requirement()
        if reason is not None:
            raise ClusterUnavailable(reason)
        # Not pytest's tmp_path: that lives under a root-only 0700 directory the postgres user
        # cannot enter. /tmp itself is world-traversable; the directory is then handed over.
        self.root = Path(tempfile.mkdtemp(prefix="sohbet-pg-"))
        owner = pwd.getpwnam(OWNER)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._paused: list[tuple[int, str]] = []

    @property
    def url(self) -> str:
        """The cluster's maintenance database, as its superuser (trust authentication)."""
        return f"postgresql://{OWNER}@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        """The URL of database *name* on this cluster."""
        return f"postgresql://{OWNER}@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # fixed binaries and arguments built here; no shell
            [RUNUSER, "-u", OWNER, "--", *args],
            cwd=self.root,  # the postgres user cannot enter root's working directory
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PG_CTL_WAIT_S + 30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            check=False,
        )

    def _check(self, what: str, done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    def init(self) -> None:
        """Create the cluster (trust authentication: it listens on loopback only) and start it."""
        done = self._run(
            str(BIN_DIR / "initdb"), "-D", str(self.data), "--auth=trust", "-U", OWNER,
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        self._check("initdb", done)
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# sohbet tests: a private throwaway cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.start()

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after crash recovery, if any)."""
        done = self._run(str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                         "-w", "-t", str(PG_CTL_WAIT_S), "start")  # fmt: skip
        self._check("pg_ctl start", done)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: `fast` ends sessions cleanly, `immediate` kills every process at once
        (crash recovery runs at the next start). A paused server is resumed first, since a frozen
        postmaster cannot be asked to stop."""
        self.resume()
        done = self._run(str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-m", mode,
                         "-w", "-t", str(PG_CTL_WAIT_S), "stop")  # fmt: skip
        self._check(f"pg_ctl stop -m {mode}", done)

    def postmaster_pid(self) -> int | None:
        """The running postmaster's PID (first line of `postmaster.pid`), or None."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        pid = int(first)
        return pid if _start_time(pid) is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the postmaster process is alive (it may be paused)."""
        return self.postmaster_pid() is not None

    @property
    def is_paused(self) -> bool:
        """Whether `pause` froze the cluster and `resume` has not thawed it yet."""
        return bool(self._paused)

    def pause(self) -> None:
        """Freeze the whole cluster with SIGSTOP: the kernel still accepts connections and
        packets, but nothing answers, as when a database host hangs or a network drops silently.

        The postmaster is frozen first, so it forks no process after its children are listed;
        then its descendants, listed again until a pass finds no new one.
        """
        if self._paused:
            return
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError("the cluster is not running: nothing to pause")
        self._freeze(pid)
        seen = {pid}
        while fresh := [p for p in _descendants(pid) if p not in seen]:
            seen.update(fresh)
            for child in fresh:
                self._freeze(child)

    def _freeze(self, pid: int) -> None:
        started = _start_time(pid)
        if started is None:
            return  # it exited (or is a zombie) before we got to it
        os.kill(pid, signal.SIGSTOP)
        self._paused.append((pid, started))

    def resume(self) -> None:
        """Thaw what `pause` froze: exactly those processes, checked by their start time so a
        reused PID is never signalled."""
        for pid, started in reversed(self._paused):
            if _start_time(pid) == started:
                os.kill(pid, signal.SIGCONT)
        self._paused.clear()

    def destroy(self) -> None:
        """Stop the server if it runs (immediately: its data is thrown away) and delete it all."""
        try:
            if self.is_running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), None if it is gone or a zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":  # state; a zombie no longer runs
        return None
    return fields[19]  # field 22 of stat(5): starttime


def _descendants(root: int) -> list[int]:
    """Every live descendant of *root*, from /proc (parent PID is field 4 of stat(5)); zombies,
    which a frozen postmaster cannot reap, run no more and are left out."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
