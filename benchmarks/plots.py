"""Draw the step-9 plots (PNG, into docs/) from a directory of benchmark outputs.

    python benchmarks/plots.py benchmarks/results/step9-20261207

The directory holds what the tools printed, one file per run:
    echo-sizes.json               run_echo.py --sizes ... --json
    fanout-<members>-<run>.json   chat_bench.py fanout (sohbet and picows in the same run)
    send-<db>-<run>.json          chat_bench.py send, 64 senders
    send-postgres-s<N>.json       chat_bench.py send --senders N
    send-postgres-before-*.json   the same, another checkout's server (--sohbet DIR), drawn beside
    postgres-rate<R>-gather<G>-run<N>.json   chat_bench.py send --rate R --write-gather G
    instructions-<after|before>-s<N>.json   chat_bench.py send --instructions --senders N [--sohbet DIR]
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
import matplotlib.ticker

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
    points: dict[str, dict[int, list[dict[str, Any]]]] = {"after": {}, "before": {}}
    for path in results.glob("send-postgres-*.json"):
        m = re.fullmatch(r"send-postgres-(before-)?(s(\d+)|\d+)\.json", path.name)
        if m:
            series = points["before" if m.group(1) else "after"]
            series.setdefault(int(m.group(3) or 64), []).append(printed_json(path))
    after, before = points["after"], points["before"]
    senders = sorted(after)
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))

    def of(series: dict[int, list[dict[str, Any]]], key: str, scale: float = 1.0) -> list[list[float]]:
        return [[r[key] * scale for r in series[n]] for n in senders]

    line(rate, senders, of(after, "acked_per_s", 1e-3), "sohbet chat:send, acked (Postgres)", COLOURS["sohbet"])
    if before and sorted(before) == senders:
        line(rate, senders, of(before, "acked_per_s", 1e-3), "sohbet before (each run beside it)", "lightsteelblue",
             style=":o")  # fmt: skip
    line(rate, senders, of(after, "pgbench_insert_tps", 1e-3), "pgbench one-row INSERT, same clients",
         COLOURS["pgbench"], style="--s")  # fmt: skip
    line(cpu, senders, of(after, "server_cpu_us_per_send"), "sohbet server", COLOURS["sohbet"])
    if all("postgres_cpu_us_per_send" in r for n in senders for r in after[n]):
        line(cpu, senders, of(after, "postgres_cpu_us_per_send"), "Postgres, per sohbet message", COLOURS["pgbench"],
             style="-s")  # fmt: skip
    if all("pgbench_postgres_cpu_us_per_tx" in r for n in senders for r in after[n]):
        line(cpu, senders, of(after, "pgbench_postgres_cpu_us_per_tx"), "Postgres, per pgbench INSERT",
             COLOURS["pgbench"], style="--^")  # fmt: skip
    if before and sorted(before) == senders:
        line(cpu, senders, of(before, "postgres_cpu_us_per_send"), "Postgres, per sohbet message before",
             "darkseagreen", style=":s")  # fmt: skip
    rate.set(xscale="log", xlabel="concurrent senders (each waits for its ack)", ylabel="thousand per second",
             title="Persisted sends against pgbench")  # fmt: skip
    cpu.set(xscale="log", yscale="log", xlabel="concurrent senders", ylabel="CPU µs per acked message",
            title="CPU per message (all of Postgres's processes)")  # fmt: skip
    for ax in (rate, cpu):
        ax.set_xticks(senders, [str(n) for n in senders])
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    rate.set_ylim(bottom=0)
    cpu.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    cpu.set_yticks([10, 20, 50, 100, 200, 500], ["10", "20", "50", "100", "200", "500"])
    fig.tight_layout()
    fig.savefig(DOCS / "send.png", dpi=110)


def gather(results: Path) -> None:
    runs: dict[int, dict[int, list[dict[str, Any]]]] = {}
    for path in results.glob("postgres-rate*-gather*-run*.json"):
        m = re.fullmatch(r"postgres-rate(\d+)-gather(\d+)-run\d+\.json", path.name)
        if m:
            runs.setdefault(int(m.group(2)), {}).setdefault(int(m.group(1)), []).append(printed_json(path))
    fig, (cpu, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    shades = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for colour, ms in zip(shades, sorted(runs), strict=False):
        rates = sorted(runs[ms])
        of = runs[ms]
        line(cpu, rates, [[r["server_cpu_us_per_send"] + r["postgres_cpu_us_per_send"] for r in of[n]] for n in rates],
             f"{ms} ms", colour)  # fmt: skip
        line(latency, rates, [[r["ack_p50_ms"] for r in of[n]] for n in rates], f"{ms} ms", colour)
    cpu.set(xscale="log", xlabel="sends a second into one process (an open loop)",
            ylabel="CPU µs per message, server + Postgres", title="A message, by --write-gather-ms")  # fmt: skip
    latency.set(xscale="log", xlabel="sends a second", ylabel="ack latency, median ms", title="And in latency")
    for ax in (cpu, latency):
        ax.set_xticks(sorted(runs[0]), [f"{n:,}" for n in sorted(runs[0])])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(title="gathering", fontsize="small")
    fig.tight_layout()
    fig.savefig(DOCS / "send-gather.png", dpi=110)


def instructions(results: Path) -> None:
    """Counted instructions are the same every run: one point per tree and sender count."""
    points: dict[str, dict[int, float]] = {"after": {}, "before": {}}
    for path in results.glob("instructions-*-s*.json"):
        m = re.fullmatch(r"instructions-(after|before)-s(\d+)\.json", path.name)
        if m:
            points[m.group(1)][int(m.group(2))] = printed_json(path)["server_instructions_per_send"] / 1000
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for tree, colour, style in (("before", "lightsteelblue", ":o"), ("after", COLOURS["sohbet"], "-o")):
        senders = sorted(points[tree])
        ax.plot(senders, [points[tree][n] for n in senders], style, color=colour, label=tree)
    senders = sorted(points["after"])
    ax.set(xscale="log", xlabel="concurrent senders (each waits for its ack)", ylabel="thousand instructions per send",
           title="The server's user-space instructions per persisted send (Postgres)")  # fmt: skip
    ax.set_xticks(senders, [str(n) for n in senders])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(DOCS / "send-instructions.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    # Each plot from the files it needs; a directory may hold one kind only.
    if any(args.results.glob("fanout-*-*.json")):
        fanout(args.results)
    if (args.results / "echo-sizes.json").exists():
        echo(args.results)
    if any(args.results.glob("send-postgres-*.json")):
        send(args.results)
    if any(args.results.glob("postgres-rate*-gather*-run*.json")):
        gather(args.results)
    if any(args.results.glob("instructions-*-s*.json")):
        instructions(args.results)


if __name__ == "__main__":
    main()
