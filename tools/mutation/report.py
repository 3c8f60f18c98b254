"""Summarise a cosmic-ray session: mutants per package and module, the sample's outcomes, the score.

    python tools/mutation/report.py SESSION [--survivors]

Score = killed / (sampled - equivalent). Mutants in annotations (see sample.py) are counted, not
sampled. "Timed out" counts as killed (a mutant that hangs the
suite is caught) but is shown apart. Equivalent mutants are listed in equivalent.txt beside this
file, one a line as `module operator occurrence  # why`, keyed by the source position
cosmic-ray gives them, which stays the same across inits of the same source.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome, WorkResult
from sample import EQUIVALENT, equivalents, in_annotation

PACKAGES = ("sohbet/chat", "sohbet/service", "sohbet/store")
COLUMNS = ("mutants", "in annotations", "sampled", "killed", "timed out", "survived", "equivalent", "other")


def key(mutation: MutationSpec) -> tuple[str, str, int]:
    return (str(mutation.module_path), mutation.operator_name, mutation.occurrence)


def outcome(result: WorkResult | None) -> str:
    if result is None:
        return "pending"
    if result.worker_outcome == WorkerOutcome.SKIPPED:
        return "unsampled"
    if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome == TestOutcome.INCOMPETENT:
        return "other"
    if result.test_outcome == TestOutcome.SURVIVED:
        return "survived"
    return "timed out" if result.output == "timeout" else "killed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("session", type=Path)
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT)
    args = parser.parse_args()
    equivalent = equivalents(args.equivalent) if args.equivalent.exists() else set()

    with use_db(args.session, WorkDB.Mode.open) as db:
        results = dict(db.results)
        items = db.work_items

    rows: dict[str, Counter[str]] = defaultdict(Counter)
    survivors = []
    for item in items:
        (mutation,) = item.mutations
        result = results.get(item.job_id)
        kind = "in annotations" if in_annotation(item) else outcome(result)
        if kind == "survived" and key(mutation) in equivalent:
            kind = "equivalent"
        module = str(mutation.module_path)
        package = next(p for p in PACKAGES if module.startswith(p))
        for row in (package, module, "total"):
            rows[row]["mutants"] += 1
            if kind not in ("unsampled", "in annotations"):
                rows[row]["sampled"] += 1
            rows[row][kind] += 1
        if kind == "survived":
            survivors.append((mutation, result))

    print("| | " + " | ".join(COLUMNS) + " | score |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    modules = sorted(r for r in rows if r not in (*PACKAGES, "total"))
    for row in [*(r for p in PACKAGES for r in (p, *(m for m in modules if m.startswith(p + "/")))), "total"]:
        c = rows[row]
        caught = c["killed"] + c["timed out"]
        denominator = c["sampled"] - c["equivalent"]
        score = f"{100 * caught / denominator:.1f}%" if denominator else "-"
        name = f"**{row}**" if row in (*PACKAGES, "total") else row
        print(f"| {name} | " + " | ".join(str(c[col]) for col in COLUMNS) + f" | {score} |")
    if rows["total"]["pending"]:
        print(f"\n{rows['total']['pending']} sampled mutants not yet run")

    print(f"\n{len(survivors)} survivors (not listed as equivalent):")
    for mutation, result in sorted(survivors, key=lambda s: key(s[0])):
        print(f"- {' '.join(map(str, key(mutation)))}  (line {mutation.start_pos[0]})")
        if args.survivors and result is not None and result.diff:
            print("  " + "\n  ".join(result.diff.splitlines()[2:]))


if __name__ == "__main__":
    main()
