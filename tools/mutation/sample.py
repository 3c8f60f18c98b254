"""Keep a uniform random sample of a cosmic-ray session's mutants; mark the rest skipped.

Every mutant costs a test run (seconds when the fast stage kills it, a minute and more when the
real-socket stage must), and the three packages make thousands, so a run tests a sample. The
sample is the first N of a seeded shuffle of all mutants in a stable order (module, operator,
occurrence), so the same seed and source give the same sample, and a larger N extends a smaller
one: a timing probe on the first few is part of the full run.

    python tools/mutation/sample.py SESSION --size N [--seed S]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from cosmic_ray.work_db import WorkDB, WorkResultStorage, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkItem, WorkResult

DEFAULT_SEED = 20261201


def stable_key(item: WorkItem) -> tuple[str, str, int]:
    """Job ids are fresh uuids on every init; this order depends only on the source."""
    (mutation,) = item.mutations
    return (str(mutation.module_path), mutation.operator_name, mutation.occurrence)


def sample(items: list[WorkItem], size: int, seed: int) -> list[WorkItem]:
    """The first *size* of a seeded shuffle of *items* in their stable order."""
    ordered = sorted(items, key=stable_key)
    random.Random(seed).shuffle(ordered)
    return ordered[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("session", type=Path)
    parser.add_argument("--size", type=int, required=True, help="how many mutants to test")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()

    with use_db(args.session, WorkDB.Mode.open) as db:
        items = list(db.work_items)
        keep = {item.job_id for item in sample(items, args.size, args.seed)}
        done = {job_id for job_id, result in db.results if result.worker_outcome != WorkerOutcome.SKIPPED}
        # Everything outside the sample is skipped (so the report counts the sample only); what
        # is inside and was skipped by a smaller sample becomes pending again.
        skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
        db.set_multiple_results([i.job_id for i in items if i.job_id not in keep], skipped)
        with db._session_maker.begin() as session:  # WorkDB has no "clear one result"
            session.query(WorkResultStorage).filter(
                WorkResultStorage.job_id.in_(keep - done),
                WorkResultStorage.worker_outcome == WorkerOutcome.SKIPPED,
            ).delete(synchronize_session=False)
        print(f"{len(items)} mutants, {len(keep)} sampled (seed {args.seed}), {len(keep & done)} already tested")


if __name__ == "__main__":
    main()
