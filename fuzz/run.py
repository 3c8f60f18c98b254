"""Run the fuzz targets for a given time: `python fuzz/run.py --seconds N [targets...]`.

Each target runs in its own process under atheris (libFuzzer), reading its seeds in
`fuzz/corpus/<target>/` and keeping what it discovers in `fuzz/.work/<target>/` (not in git).
A crashing input is written to `fuzz/crashes/<target>/`, and the run exits non-zero. Per target
it prints the executions, the coverage libFuzzer reached (`cov`: edges, `ft`: features) and the
crashes. `--merge` afterwards folds the discoveries that add coverage into the seed folder,
minimized, so the committed corpus stays small (docs/fuzzing.md).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("frames", "utf8", "inflater", "http11", "envelope", "protocol")
_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
_PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)", re.MULTILINE)
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
#: Seconds one input may take before libFuzzer reports it as a hang (a crash of its own).
INPUT_TIMEOUT_S = 20
#: Memory one target process may use before libFuzzer reports an out-of-memory crash.
RSS_LIMIT_MB = 2048


@dataclass
class Result:
    """What one target's run reached."""

    target: str
    executions: int
    cov: int
    ft: int
    crashes: list[Path]
    returncode: int
    seconds: float

    @property
    def failed(self) -> bool:
        return bool(self.crashes) or self.returncode != 0

    def line(self) -> str:
        found = ", ".join(str(p.relative_to(HERE.parent)) for p in self.crashes) or "none"
        return (
            f"{self.target:<9} {self.executions:>10,} executions in {self.seconds:6.0f} s  "
            f"cov {self.cov:>5}  ft {self.ft:>6}  crashes: {found}"
            + (f"  (exit {self.returncode})" if self.returncode and not self.crashes else "")
        )


def _paths(target: str) -> tuple[Path, Path, Path]:
    return HERE / "corpus" / target, HERE / ".work" / target, HERE / "crashes" / target


def fuzz(target: str, seconds: int, log_dir: Path) -> Result:
    """Run one target for *seconds*; its libFuzzer output goes to `log_dir/<target>.log`."""
    seeds, work, crashes = _paths(target)
    for folder in (seeds, work, crashes):
        folder.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in crashes.iterdir()}
    command = [
        sys.executable,
        str(HERE / f"{target}.py"),
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        str(work),  # the first folder receives what the run discovers
        str(seeds),
    ]
    log = log_dir / f"{target}.log"
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    text = log.read_text(errors="replace")
    progress = _PROGRESS.findall(text)
    executed = _EXECUTED.search(text)
    new = sorted(p for p in crashes.iterdir() if p.name not in before and p.name.startswith(_ARTIFACTS) and p.is_file())
    return Result(
        target=target,
        executions=int(executed.group(1)) if executed else int(progress[-1][0]) if progress else 0,
        cov=int(progress[-1][1]) if progress else 0,
        ft=int(progress[-1][2]) if progress else 0,
        crashes=new,
        returncode=done.returncode,
        seconds=time.monotonic() - start,
    )


def merge(target: str) -> int:
    """Minimize seeds and discoveries into the seed folder; return how many files it holds.

    Hand-written seeds (`seed-*`) and crash regressions (`crash-*`) always stay; everything
    else is replaced by libFuzzer's minimal set that keeps the coverage of all of it.
    """
    seeds, work, _ = _paths(target)
    work.mkdir(parents=True, exist_ok=True)
    kept = {p.read_bytes() for p in seeds.iterdir() if p.name.startswith(("seed-", "crash-"))}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, str(HERE / f"{target}.py"), "-merge=1", tmp, str(seeds), str(work)],
            capture_output=True,
            text=True,
            check=False,
        )
        # libFuzzer reports a merge whose inner runs failed as a success that added nothing:
        # refuse an empty result rather than replace the corpus by it.
        if done.returncode != 0 or not any(Path(tmp).iterdir()):
            raise RuntimeError(f"merging {target} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        for p in seeds.iterdir():
            if not p.name.startswith(("seed-", "crash-")):
                p.unlink()
        for p in Path(tmp).iterdir():
            data = p.read_bytes()
            if data not in kept:
                (seeds / hashlib.sha1(data).hexdigest()).write_bytes(data)
    shutil.rmtree(work, ignore_errors=True)
    return sum(1 for _ in seeds.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"targets to run, of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default: 60)")
    parser.add_argument("--jobs", type=int, default=1, help="targets run at the same time (default: 1)")
    parser.add_argument("--merge", action="store_true", help="afterwards, minimize discoveries into the seeds")
    parser.add_argument("--logs", type=Path, default=HERE / ".work", help="where each target's log goes")
    args = parser.parse_args(argv)
    targets = args.targets or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"no such target: {', '.join(unknown)}")
    args.logs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda t: fuzz(t, args.seconds, args.logs), targets))
    for result in results:
        print(result.line(), flush=True)
    failed = [r for r in results if r.failed]
    if args.merge:
        for result in results:
            if not result.failed:
                print(f"{result.target:<9} corpus now {merge(result.target)} files", flush=True)
    for result in failed:
        print(f"FAILED {result.target}: see {args.logs / (result.target + '.log')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
