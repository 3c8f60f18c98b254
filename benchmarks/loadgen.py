"""A bounded loopback load generator for any WebSocket echo server.

Modes (each stops by itself; targets must be on 127.0.0.0/8):

- `echo`: N connections, each keeping K text messages in flight; reports acknowledged
  messages/s, p50/p99 round-trip latency, and the server's CPU seconds per million messages
  (read from /proc/<pid>/stat, so the figure holds even when this generator is the bottleneck).
- `handshake`: fresh connections opened, upgraded and closed as fast as C workers can.
- `idle`: N connections opened and left idle; reports the server's resident memory per
  connection (from /proc/<pid>/status).

The client side is raw uvloop protocols framing with `sohbet.ws._frames`: no per-message Python
object beyond the frame, so the generator is as light as a Python one can be.

    python benchmarks/loadgen.py echo --port 9001 --server-pid 1234 --size 64 --connections 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import uvloop

from sohbet.ws import _frames

CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_cpu_split_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, apart: its own code's, and the kernel's for it."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def server_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Wait until a server started by a runner accepts connections (or its process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def upgrade_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Client(asyncio.Protocol):
    """One WebSocket client connection: handshake, then echo traffic or nothing."""

    def __init__(self, run: EchoRun | None, request: bytes) -> None:
        self.run = run
        self.request = request
        self.transport: Any = None
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.head = b""
        self.parser = _frames.FrameParser(client=True, max_frame_bytes=1 << 24)
        self.mask = os.urandom(4)

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(self.head[:200].decode(errors="replace")))
                return
            data = self.head[end + 4 :]
            self.head = b""
            self.upgraded.set_result(None)
            if not data:
                return
        run = self.run
        for frame in self.parser.feed(data):
            if frame.opcode == 1 and run is not None:
                run.on_echo(self, frame.payload)
            elif frame.opcode == 8 and self.transport is not None:
                self.transport.close()

    def send_text(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_frames.build_frame(1, payload, mask=self.mask))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frames.build_close(1000, mask=self.mask))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


class EchoRun:
    """Keeps K messages in flight per connection; counts echoes inside the measured window."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.measuring = False
        self.stopping = False
        self.count = 0
        self.latencies_ns: list[int] = []

    def payload(self) -> bytes:
        stamp = str(time.perf_counter_ns()).encode()
        return stamp + b"." + b"x" * max(0, self.size - len(stamp) - 1)

    def on_echo(self, client: Client, payload: bytes) -> None:
        if self.measuring:
            self.count += 1
            self.latencies_ns.append(time.perf_counter_ns() - int(payload[: payload.index(b".")]))
        if not self.stopping:
            client.send_text(self.payload())


async def open_clients(
    host: str, port: int, path: str, n: int, *, run: EchoRun | None, concurrency: int = 200
) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            _, client = await loop.create_connection(lambda: Client(run, upgrade_request(host, port, path)), host, port)
            await asyncio.wait_for(client.upgraded, 10)
            clients.append(client)

    await asyncio.gather(*(one() for _ in range(n)))
    return clients


async def close_clients(clients: list[Client]) -> None:
    for c in clients:
        c.close()
    done = [c.closed for c in clients]
    await asyncio.wait(done, timeout=10)
    for c in clients:
        if c.transport is not None and not c.closed.done():
            c.transport.abort()


async def echo(args: argparse.Namespace) -> dict[str, Any]:
    run = EchoRun(args.size)
    clients = await open_clients(args.host, args.port, args.path, args.connections, run=run)
    for client in clients:
        for _ in range(args.inflight):
            client.send_text(run.payload())
    await asyncio.sleep(args.warmup)
    cpu0 = server_cpu_s(args.server_pid) if args.server_pid else 0.0
    t0 = time.perf_counter()
    run.measuring = True
    await asyncio.sleep(args.duration)
    run.measuring = False
    elapsed = time.perf_counter() - t0
    cpu1 = server_cpu_s(args.server_pid) if args.server_pid else 0.0
    run.stopping = True
    await asyncio.sleep(0.2)
    await close_clients(clients)
    lat = sorted(run.latencies_ns)
    result: dict[str, Any] = {
        "mode": "echo",
        "size": args.size,
        "connections": args.connections,
        "inflight": args.inflight,
        "msgs_per_s": run.count / elapsed,
        "p50_us": lat[len(lat) // 2] / 1000 if lat else None,
        "p99_us": lat[int(len(lat) * 0.99)] / 1000 if lat else None,
    }
    if args.server_pid and run.count:
        result["server_cpu_s_per_million"] = (cpu1 - cpu0) / run.count * 1e6
        result["server_cpu_share"] = (cpu1 - cpu0) / elapsed
    return result


async def handshake(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = time.perf_counter() + args.duration
    count = 0
    cpu0 = server_cpu_s(args.server_pid) if args.server_pid else 0.0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            request = upgrade_request(args.host, args.port, args.path)
            _, client = await loop.create_connection(lambda r=request: Client(None, r), args.host, args.port)
            await asyncio.wait_for(client.upgraded, 10)
            client.close()
            await asyncio.wait_for(client.closed, 10)
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {"mode": "handshake", "handshakes_per_s": count / elapsed, "count": count}
    if args.server_pid and count:
        result["server_cpu_us_per_handshake"] = (server_cpu_s(args.server_pid) - cpu0) / count * 1e6
    return result


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    before = server_rss_kib(args.server_pid)
    clients = await open_clients(args.host, args.port, args.path, args.connections, run=None)
    await asyncio.sleep(args.duration)
    after = server_rss_kib(args.server_pid)
    await close_clients(clients)
    return {
        "mode": "idle",
        "connections": len(clients),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / len(clients),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["echo", "handshake", "idle"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8, help="handshake workers")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("loadgen only targets loopback addresses")
    args.duration = min(args.duration, 120.0)  # bounded, whatever the caller asks
    args.connections = min(args.connections, 15_000)
    result = uvloop.run({"echo": echo, "handshake": handshake, "idle": idle}[args.mode](args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
