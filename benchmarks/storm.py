"""A reconnect storm: N users, the server killed with -9 and started again at once, every client
reconnecting at the same moment and syncing. Bounded, loopback only.

    python -P benchmarks/storm.py                                  # 10,000 users on Postgres
    python -P benchmarks/storm.py --users 2000 --database sqlite
    python -P benchmarks/storm.py --max-admitting 200 --rate 100   # shed harder, send more

`sohbet-server` runs pinned to CPU 0 on a fresh database (a new Postgres one, dropped at the end,
or SQLite in a temporary directory), with the per-user send and frame limits and the per-address
limits off (every client comes from 127.0.0.1). The clients, `sohbet.client.ChatClient`s in
groups of 10-100, are spread over worker processes on CPU 1 (a process may hold 20,000 files
here). Senders send throughout and record every acked message; the server is killed and
restarted; every client reconnects at once (waiting out 503 + `Retry-After` when the server
sheds handshakes) and syncs from its last seen seqs.

Reported: the time from the restart until every client is connected and until every one is
caught up, the refusals waited out (and the server's own count of handshakes by result), the
server's peak RSS and CPU, and whether anything was lost: every acked message must have been seen
by every member of its group exactly once, the seqs gap-free. The JSON goes to stdout and to
benchmarks/results/storm-<time>.json. Exits 1 on any loss, a server that died, a traceback in
its log, or a client that did not come back in time. The machinery is tests/stormkit.py, which
CI's short version (tests/integration/test_storm.py) runs too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run with -P: the tests package is imported from the checkout

from tests.stormkit import MAX_USERS, StormConfig, run_storm  # noqa: E402  # after the path is set

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000, help=f"users, at most {MAX_USERS} (default 10,000)")
    parser.add_argument("--workers", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--max-admitting", type=int, default=1000, help="the server's --max-admitting (default 1000)")
    parser.add_argument("--rate", type=float, default=50.0, help="sends per second, all senders (default 50)")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before the kill (default 5)")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after the storm (default 5)")
    parser.add_argument("--timeout", type=float, default=180.0, help="bound on the storm, seconds (default 180)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and clients to CPUs")
    args = parser.parse_args(argv)
    cfg = StormConfig(
        users=min(args.users, MAX_USERS),
        workers=max(1, min(args.workers, 16)),
        database=args.database,
        max_admitting=args.max_admitting,
        send_rate_per_s=min(args.rate, 2000.0),
        before_s=min(args.before, 60.0),
        after_s=min(args.after, 60.0),
        timeout_s=min(args.timeout, 600.0),
        seed=args.seed,
        pin=not args.no_pin,
    )
    report = run_storm(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    text = json.dumps(report.to_dict(), indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"storm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(text + "\n")
    print(f"written to {out}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
