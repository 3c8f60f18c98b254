"""Draw the step-9 plots (PNG, into docs/) from a directory of benchmark outputs.

    python benchmarks/plots.py benchmarks/results/step9-20261207

The directory holds what the tools printed, one file per run:
    echo-sizes.json               run_echo.py --sizes ... --json
    fanout-<members>-<run>.json   chat_bench.py fanout (sohbet and picows in the same run)
    send-<db>-<run>.json          chat_bench.py send, 64 senders
    send-postgres-s<N>.json       chat_bench.py send --senders N
Where a point has several runs, the plot shows their median and a bar from the lowest to the
highest, so the spread a shared machine gives is visible rather than hidden.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after the backend is chosen

DOCS = Path(__file__).resolve().parent.parent / "docs"
COLOURS = {"sohbet": "tab:blue", "picows": "tab:orange", "pgbench": "tab:green"}


def printed_json(path: Path) -> Any:
    """The JSON a tool printed last (its earlier lines may be progress or warnings)."""
    text = path.read_text()
    start = text.find("{\n")
    return json.loads(text[start if start >= 0 else text.index("{") :])


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, and how far below and above it the lowest and highest runs are."""
    mid = statistics.median(values)
    return mid, mid - min(values), max(values) - mid


def line(ax: Any, xs: list[float], runs: list[list[float]], label: str, colour: str, *, style: str = "-o") -> None:
    mids, lows, highs = zip(*(spread(r) for r in runs), strict=True)
    ax.errorbar(xs, mids, yerr=[lows, highs], fmt=style, color=colour, label=label, capsize=3)


def fanout(results: Path) -> None:
    by_members: dict[int, list[dict[str, Any]]] = {}
    for path in results.glob("fanout-*-*.json"):
        m = re.fullmatch(r"fanout-(\d+)-(\d+)\.json", path.name)
        if m:
            by_members.setdefault(int(m.group(1)), []).append(printed_json(path))
    members = sorted(by_members)
    fig, (last, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in ("sohbet", "picows"):
        line(last, members, [[r[server]["last_member_read_ms_median"] for r in by_members[n]] for n in members],
             server, COLOURS[server])  # fmt: skip
        line(cpu, members, [[r[server]["server_cpu_us_per_delivery"] for r in by_members[n]] for n in members],
             server, COLOURS[server])  # fmt: skip
    last.set(xscale="log", yscale="log", xlabel="group members (all connected)",
             ylabel="ms until the last member has read it", title="One message to a group")  # fmt: skip
    cpu.set(xscale="log", xlabel="group members", ylabel="server CPU µs per delivery", title="Server CPU per delivery")
    cpu.set_ylim(bottom=0)
    for ax in (last, cpu):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "fanout.png", dpi=110)


def echo(results: Path) -> None:
    rows = json.loads((results / "echo-sizes.json").read_text())
    sizes = sorted({int(r["scenario"].split()[0]) for r in rows})
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in ("sohbet", "picows"):

        def of(size: int, key: str, scale: float = 1.0, server: str = server) -> list[float]:
            return [r[key] * scale for r in rows if r["server"] == server and int(r["scenario"].split()[0]) == size]

        line(rate, sizes, [of(n, "msgs_per_s", 1e-3) for n in sizes], server, COLOURS[server])
        line(cpu, sizes, [of(n, "server_cpu_s_per_million") for n in sizes], server, COLOURS[server])
    rate.set(xscale="log", xlabel="message size, bytes", ylabel="thousand messages/s",
             title="Echo, 100 connections, 1 in flight each")  # fmt: skip
    cpu.set(xscale="log", xlabel="message size, bytes", ylabel="server CPU µs per message",
            title="Server CPU per echoed message")  # fmt: skip
    for ax in (rate, cpu):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "echo.png", dpi=110)


def send(results: Path) -> None:
    points: dict[int, list[dict[str, Any]]] = {}
    for path in results.glob("send-postgres-*.json"):
        m = re.fullmatch(r"send-postgres-(s(\d+)|\d+)\.json", path.name)
        if m:
            points.setdefault(int(m.group(2) or 64), []).append(printed_json(path))
    senders = sorted(points)
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    line(rate, senders, [[r["acked_per_s"] / 1000 for r in points[n]] for n in senders],
         "sohbet chat:send, acked (Postgres)", COLOURS["sohbet"])  # fmt: skip
    line(rate, senders, [[r["pgbench_insert_tps"] / 1000 for r in points[n]] for n in senders],
         "pgbench one-row INSERT, same clients", COLOURS["pgbench"], style="--s")  # fmt: skip
    line(cpu, senders, [[r["server_cpu_us_per_send"] for r in points[n]] for n in senders],
         "sohbet server", COLOURS["sohbet"])  # fmt: skip
    if all("postgres_cpu_us_per_send" in r for n in senders for r in points[n]):
        line(cpu, senders, [[r["postgres_cpu_us_per_send"] for r in points[n]] for n in senders],
             "Postgres (all its processes)", COLOURS["pgbench"], style="--s")  # fmt: skip
    rate.set(xscale="log", xlabel="concurrent senders (each waits for its ack)", ylabel="thousand per second",
             title="Persisted sends against pgbench")  # fmt: skip
    cpu.set(xscale="log", xlabel="concurrent senders", ylabel="CPU µs per acked message", title="CPU per message")
    for ax in (rate, cpu):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "send.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    fanout(args.results)
    echo(args.results)
    send(args.results)


if __name__ == "__main__":
    main()
