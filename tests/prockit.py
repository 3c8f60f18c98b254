"""What the load kits read of the processes they start: a free port, and a process's CPU time
and memory from /proc (Linux). Shared by `soakkit.py` and `stormkit.py` (and through them the
benchmarks' soak and storm tools)."""

from __future__ import annotations

import os
import socket
from typing import Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def rss_kib(pid: int) -> int:
    """The process's resident set now."""
    return _status_kib(pid, "VmRSS:")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set so far (VmHWM): the kernel keeps it, so no sample misses it."""
    return _status_kib(pid, "VmHWM:")
