"""Keep a uniform random sample of a cosmic-ray session's mutants; mark the rest skipped.

Every mutant costs a test run (seconds when the fast stage kills it, a minute and more when the
real-socket stage must), and the three packages make thousands, so a run tests a sample. The
sample is the first N of a seeded shuffle of all mutants in a stable order (module, operator,
occurrence), so the same seed and source give the same sample, and a larger N extends a smaller
one: a timing probe on the first few is part of the full run.

Mutants inside type annotations are left out of the population before sampling: every module
here has `from __future__ import annotations`, so an annotation is a string that is never
evaluated, and `int | None` -> `int ** None` is equivalent by construction (about a quarter of
cosmic-ray's mutants here; only mypy could see them).

    python tools/mutation/sample.py SESSION --size N [--seed S] [--retest-survivors]

--retest-survivors makes the sample's survivors pending again, so that `cosmic-ray exec` runs
them against tests written since (run.sh: MUTATION_RESUME=1 MUTATION_RETEST=1).
"""

from __future__ import annotations

import argparse
import ast
import functools
import random
from pathlib import Path

from cosmic_ray.work_db import WorkDB, WorkResultStorage, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkItem, WorkResult

DEFAULT_SEED = 20261201
EQUIVALENT = Path(__file__).parent / "equivalent.txt"


def equivalents(path: Path) -> set[tuple[str, str, int]]:
    """The (module, operator, occurrence) keys listed as equivalent in *path*."""
    keys = set()
    for line in path.read_text().splitlines():
        body = line.split("#", 1)[0].split()
        if body:
            module, operator, occurrence = body
            keys.add((module, operator, int(occurrence)))
    return keys


def stable_key(item: WorkItem) -> tuple[str, str, int]:
    """Job ids are fresh uuids on every init; this order depends only on the source."""
    (mutation,) = item.mutations
    return (str(mutation.module_path), mutation.operator_name, mutation.occurrence)


@functools.cache
def annotation_spans(module: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions, as cosmic-ray gives them (line from 1, column from 0), of every
    annotation in *module*; [] unless the module postpones their evaluation."""
    tree = ast.parse(module.read_text())
    postponed = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    if not postponed:
        return []
    annotations: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
    return [((a.lineno, a.col_offset), (a.end_lineno or a.lineno, a.end_col_offset or 0)) for a in annotations]


def in_annotation(item: WorkItem) -> bool:
    """Whether *item* mutates an annotation that is never evaluated."""
    (mutation,) = item.mutations
    return any(start <= mutation.start_pos < end for start, end in annotation_spans(Path(mutation.module_path)))


def sample(items: list[WorkItem], size: int, seed: int) -> list[WorkItem]:
    """The first *size* of a seeded shuffle of *items* (outside annotations) in their stable order."""
    ordered = sorted((i for i in items if not in_annotation(i)), key=stable_key)
    random.Random(seed).shuffle(ordered)
    return ordered[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("session", type=Path)
    parser.add_argument("--size", type=int, required=True, help="how many mutants to test")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--retest-survivors", action="store_true", help="run the survivors again")
    args = parser.parse_args()

    with use_db(args.session, WorkDB.Mode.open) as db:
        items = list(db.work_items)
        keep = {item.job_id for item in sample(items, args.size, args.seed)}
        results = dict(db.results)
        if args.retest_survivors:
            judged = equivalents(EQUIVALENT)  # stay survivors: no test can kill them
            by_job = {i.job_id: i for i in items}
            survivors = [
                job
                for job, r in results.items()
                if job in keep and r.test_outcome == TestOutcome.SURVIVED and stable_key(by_job[job]) not in judged
            ]
            with db._session_maker.begin() as session:
                session.query(WorkResultStorage).filter(WorkResultStorage.job_id.in_(survivors)).delete(
                    synchronize_session=False
                )
            results = {job: r for job, r in results.items() if job not in survivors}
            print(f"{len(survivors)} survivors to test again")
        done = {job_id for job_id, result in results.items() if result.worker_outcome != WorkerOutcome.SKIPPED}
        # Everything outside the sample is skipped (so the report counts the sample only); what
        # is inside and was skipped by a smaller sample becomes pending again.
        skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
        db.set_multiple_results([i.job_id for i in items if i.job_id not in keep], skipped)
        with db._session_maker.begin() as session:  # WorkDB has no "clear one result"
            session.query(WorkResultStorage).filter(
                WorkResultStorage.job_id.in_(keep - done),
                WorkResultStorage.worker_outcome == WorkerOutcome.SKIPPED,
            ).delete(synchronize_session=False)
        population = sum(not in_annotation(i) for i in items)
        print(
            f"{len(items)} mutants, {len(items) - population} in annotations, {len(keep)} of the other {population}"
            f" sampled (seed {args.seed}), {len(keep & done)} already tested"
        )


if __name__ == "__main__":
    main()
