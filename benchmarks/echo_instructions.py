"""The instructions an echo server runs per message, sohbet against its peers, counted by callgrind.

    python benchmarks/echo_instructions.py                          # sohbet and picows, 64 B
    python benchmarks/echo_instructions.py --servers sohbet,picows --size 4096 --connections 100
    python benchmarks/echo_instructions.py --servers baseline,sohbet --baseline ../before

Each server runs under valgrind's callgrind with counting off; C connections echo a warm-up, then
counting is turned on and each connection sends --messages messages, one after the other's echo,
and counting is dumped. The result is the server's user-space instructions per message: unlike
its CPU time the same for the same tree and load whatever else the machine runs, so the part of
the echo ratio that is each server's own code (the kernel's is not counted: it is the same work,
a read and a send per message, for both) is measured without the noise of a shared machine.
Bounded (every connection sends a fixed count) and loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import uvloop
from loadgen import Client, close_clients, free_port, open_clients, wait_listening  # benchmarks/ on sys.path
from run_echo import SERVERS, baseline


class Counted:
    """Each connection echoes its messages one after another, *left* of them."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.left: dict[Client, int] = {}
        self.done: dict[Client, asyncio.Future[None]] = {}

    def start(self, clients: list[Client], n: int) -> asyncio.Future[list[None]]:
        loop = asyncio.get_running_loop()
        for c in clients:
            self.left[c] = n
            self.done[c] = loop.create_future()
            c.send_text(self.payload)
        return asyncio.gather(*self.done.values())

    def on_echo(self, client: Client, payload: bytes) -> None:
        left = self.left[client] - 1
        self.left[client] = left
        if left:
            client.send_text(self.payload)
        else:
            self.done[client].set_result(None)


def count(name: str, size: int, connections: int, messages: int, keep: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out_dir:
        out = Path(out_dir) / "callgrind.out"
        port = free_port()
        wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        server = subprocess.Popen([*wrap, *SERVERS[name], str(port)], stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, server, timeout=120)

            async def main() -> None:
                run = Counted(b"x" * size)
                clients = await open_clients("127.0.0.1", port, "/", connections, run=run)  # type: ignore[arg-type]
                await run.start(clients, 20)  # warm-up, not counted
                for verb in ("--instr=on", "--zero"):
                    subprocess.run(["callgrind_control", verb, str(server.pid)], check=True, capture_output=True)
                await asyncio.wait_for(run.start(clients, messages), 600)
                subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True, capture_output=True)
                await close_clients(clients)

            uvloop.run(main())
        finally:
            server.terminate()
            server.wait(timeout=60)
        dump = sorted(Path(out_dir).glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)[0]
        total = next(int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:"))
        if keep is not None:  # for callgrind_annotate
            shutil.copyfile(dump, Path(keep) / f"callgrind.{name}.{size}.out")
    return {
        "server": name,
        "size": size,
        "connections": connections,
        "instructions_per_message": total / (connections * messages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servers", default="sohbet,picows")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200, help="counted messages a connection")
    parser.add_argument("--callgrind-out", metavar="DIR", help="keep each server's profile in DIR")
    parser.add_argument("--baseline", metavar="DIR", type=Path, help="the checkout the server 'baseline' runs from")
    args = parser.parse_args()
    if args.baseline is not None:
        SERVERS["baseline"] = baseline(args.baseline)
    for name in args.servers.split(","):
        print(json.dumps(count(name, args.size, args.connections, args.messages, args.callgrind_out)), flush=True)


if __name__ == "__main__":
    main()
