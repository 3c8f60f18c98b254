"""`sohbet-server`, plus a timer around every broadcast: for chat_bench.py only.

It prints `delivered <ms> <connections>` for each delivery to more than 100 connections: the
time from the first to the last `transport.write` of one message's fan-out, inside the server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from sohbet.app import cli, compose
from sohbet.app.gateway import ServerOutbox
from sohbet.service import Socket


class TimedOutbox(ServerOutbox):
    def deliver(self, sockets: Iterable[Socket], data: bytes, *, skip: Socket | None = None) -> int:
        start = time.perf_counter()
        count = super().deliver(sockets, data, skip=skip)
        if count > 100:
            print(f"delivered {(time.perf_counter() - start) * 1000:.3f} {count}", flush=True)
        return count


if __name__ == "__main__":
    compose.ServerOutbox = TimedOutbox  # type: ignore[misc]  # the benchmark's own instrumentation
    cli.main(sys.argv[1:])
