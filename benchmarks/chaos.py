"""The chaos checker of tests/chaoskit.py, for as long as you like:

    python -P benchmarks/chaos.py --duration 300 --seed 7
    python -P benchmarks/chaos.py --duration 120 --seed 3 --users 9 --groups 3 --interval 0.1 --json out.json

Three `sohbet-server` instances on a private Postgres cluster (made and destroyed here: it needs
root, `runuser` and the postgresql-15 binaries) and a private `redis-server`; a few users chat
while a nemesis kills instances (-9), restarts Redis, freezes Postgres and drops connections.
Then everything is healed and the history is checked against storage (the invariants are listed
in tests/chaoskit.py). It prints the report as JSON, then a short summary, and exits 1 when an
invariant did not hold. The instances' logs stay in the work directory it names.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run with -P: the tests package is imported from the checkout

from tests.chaoskit import run_chaos  # noqa: E402  # after the path is set


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the schedule and the workload (default 1)")
    parser.add_argument("--users", type=int, default=6, help="users in groups (default 6), plus one outsider")
    parser.add_argument("--groups", type=int, default=3, help="groups (default 3)")
    parser.add_argument("--interval", type=float, default=0.25, help="mean seconds between a user's sends")
    parser.add_argument("--storage-timeout", type=float, default=1.0, help="the servers' --storage-timeout")
    parser.add_argument(
        "--faults",
        default="kill,redis,pg,drop",
        help="of kill, redis, pg, drop and redis-pause (Redis frozen), comma-separated (default: all but redis-pause)",
    )
    parser.add_argument("--overlap", action="store_true", help="server-side faults may coincide (default: in turn)")
    parser.add_argument("--workdir", type=Path, help="for the instances' logs (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--quiet", action="store_true", help="do not print the nemesis' events as they happen")
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - {"kill", "redis", "pg", "drop", "redis-pause"}
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sohbet-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: seed {args.seed}, {args.duration:g} s of faults, logs in {workdir}", file=sys.stderr)
    report = asyncio.run(
        run_chaos(
            args.duration,
            args.seed,
            workdir=workdir,
            users=args.users,
            groups=args.groups,
            send_interval_s=args.interval,
            storage_timeout_s=args.storage_timeout,
            faults=faults,
            overlap=args.overlap,
            progress=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True),
        )
    )
    text = report.to_json()
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
