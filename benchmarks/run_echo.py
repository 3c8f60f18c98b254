"""Run the echo server benchmarks side by side and print a Markdown table.

Each server (sohbet, picows, websockets, optionally aiohttp) runs pinned to CPU 0 with taskset;
the load generator (loadgen.py) runs pinned to CPU 1. Everything is on 127.0.0.1, bounded in
time, and every process started here is stopped here, by PID.

    python benchmarks/run_echo.py                  # all scenarios, ~3 minutes
    python benchmarks/run_echo.py --quick          # shorter runs
    python benchmarks/run_echo.py --baseline ../before --servers sohbet,baseline,picows
                                                   # another checkout's echo server beside this one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadgen import free_port, wait_listening  # benchmarks/ is the script's directory

HERE = Path(__file__).resolve().parent
PY = sys.executable

SERVERS = {
    "sohbet": [PY, "-m", "sohbet.echo", "--no-compression", "--port"],
    "picows": [PY, str(HERE / "echo_peers.py"), "picows", "--port"],
    "websockets": [PY, str(HERE / "echo_peers.py"), "websockets", "--port"],
    "aiohttp": [PY, str(HERE / "echo_peers.py"), "aiohttp", "--port"],
}


def baseline(checkout: Path) -> list[str]:
    """The echo server of another checkout, run by its .venv's Python; `-P` keeps the current
    directory's sohbet/ from shadowing the one installed there."""
    return [str(checkout.resolve() / ".venv/bin/python"), "-P", "-m", "sohbet.echo", "--no-compression", "--port"]


def scenario(name: str, mode: str, args: list[str]) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", *SERVERS[name], str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, server)
        out = subprocess.run(
            ["taskset", "-c", "1", PY, str(HERE / "loadgen.py"), mode, "--port", str(port), "--server-pid",
             str(server.pid), *args],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="sohbet,picows,websockets")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each echo scenario, interleaving servers")
    parser.add_argument("--baseline", metavar="DIR", type=Path, help="the checkout the server 'baseline' runs from")
    parser.add_argument("--only-echo", action="store_true", help="skip the handshake and idle scenarios")
    parser.add_argument("--sizes", help="echo these message sizes (bytes, comma-separated; 100 conns x 1) instead")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every result to FILE")
    args = parser.parse_args()
    if args.baseline is not None:
        SERVERS["baseline"] = baseline(args.baseline)
    servers = args.servers.split(",")
    duration = "3" if args.quick else "6"
    echo_cases = [("64 B, 100 conns x 1", ["--size", "64", "--connections", "100", "--inflight", "1"]),
                  ("64 B, 16 conns x 8", ["--size", "64", "--connections", "16", "--inflight", "8"]),
                  ("4 KiB, 100 conns x 1", ["--size", "4096", "--connections", "100", "--inflight", "1"])]  # fmt: skip
    if args.sizes:
        echo_cases = [(f"{n} B, 100 conns x 1", ["--size", n, "--connections", "100", "--inflight", "1"])
                      for n in args.sizes.split(",")]  # fmt: skip
    results: list[dict[str, Any]] = []
    print(f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} CPUs · Python {platform.python_version()}\n")  # fmt: skip
    print("| scenario | server | msgs/s | p50 µs | p99 µs | server CPU s / 1M msgs | server CPU share |")
    print("|---|---|---|---|---|---|---|")
    for label, extra in echo_cases:
        for _ in range(args.rounds):
            for name in servers:
                r = scenario(name, "echo", ["--duration", duration, *extra])
                results.append({"scenario": label, "server": name, "mode": "echo", **r})
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
                print(f"| {label} | {name} | {r['msgs_per_s']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                      f"{r['server_cpu_s_per_million']:.2f} | {r['server_cpu_share']:.0%} |", flush=True)  # fmt: skip
    if args.only_echo:
        return
    print("\n| server | handshakes/s | server CPU µs / handshake |\n|---|---|---|")
    for name in servers:
        r = scenario(name, "handshake", ["--duration", duration, "--concurrency", "8"])
        results.append({"server": name, "mode": "handshake", **r})
        print(f"| {name} | {r['handshakes_per_s']:,.0f} | {r['server_cpu_us_per_handshake']:.0f} |", flush=True)
    print("\n| server | idle connections | RSS before → after | KiB per idle connection |\n|---|---|---|---|")
    for name in servers:
        r = scenario(name, "idle", ["--connections", "10000", "--duration", "3"])
        results.append({"server": name, "mode": "idle", **r})
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        before, after = r["rss_before_kib"] / 1024, r["rss_after_kib"] / 1024
        print(f"| {name} | {r['connections']:,} | {before:.1f} → {after:.1f} MiB | {r['kib_per_connection']:.2f} |")


if __name__ == "__main__":
    main()
