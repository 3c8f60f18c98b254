"""The fuzz corpus, replayed: every input in `fuzz/corpus/` and `fuzz/crashes/` through every
fuzz target's property, without atheris (docs/fuzzing.md).

A crash the fuzzer found is fixed and its input kept in one of those folders, so this test is
the crash's regression test; the seeds and what the fuzzer kept exercise each property on
inputs the fuzzer knows reach deep. Every file goes through every target, since an input that
is a frame stream for one target is a fine hostile input for the next.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz_modules() -> Iterator[dict[str, ModuleType]]:
    """The runner, the seed writer and every target, imported as plain modules (no atheris)."""
    sys.path.insert(0, str(FUZZ))  # the targets import their shared `_harness` as a sibling
    try:
        run = _load("run")
        yield {"run": run, "seeds": _load("seeds"), **{t: _load(t) for t in run.TARGETS}}
    finally:
        sys.path.remove(str(FUZZ))


def _inputs() -> list[Path]:
    return sorted(p for folder in ("corpus", "crashes") for p in (FUZZ / folder).glob("*/*") if p.is_file())


def test_every_target_has_a_property_and_seeds(fuzz_modules: dict[str, ModuleType]) -> None:
    targets = fuzz_modules["run"].TARGETS
    modules = {p.stem for p in FUZZ.glob("*.py")} - {"_harness", "run", "seeds"}
    assert sorted(targets) == sorted(modules)  # every target runs, and runs only targets
    for target in targets:
        assert callable(fuzz_modules[target].TestOneInput), target
        assert any((FUZZ / "corpus" / target).glob("seed-*")), f"{target} has no seeds"


TARGETS = ["frames", "utf8", "inflater", "http11", "envelope", "protocol"]  # as fuzz/run.py lists them


def test_the_replay_runs_every_target(fuzz_modules: dict[str, ModuleType]) -> None:
    assert list(fuzz_modules["run"].TARGETS) == TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_without_a_failure(fuzz_modules: dict[str, ModuleType], target: str) -> None:
    test_one_input: Callable[[bytes], None] = fuzz_modules[target].TestOneInput
    inputs = _inputs()
    assert len(inputs) > 50  # the seeds alone are more; an empty glob must not pass
    for path in inputs:
        try:
            test_one_input(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{target} fails on {path.relative_to(FUZZ)}: {exc!r}") from exc


def test_committed_seeds_are_what_the_seed_writer_writes(fuzz_modules: dict[str, ModuleType]) -> None:
    for target, make in fuzz_modules["seeds"].TARGETS.items():
        written = {f"seed-{name}": data for name, data in make().items()}
        committed = {p.name: p.read_bytes() for p in (FUZZ / "corpus" / target).glob("seed-*")}
        assert committed == written, f"fuzz/corpus/{target}: run `python fuzz/seeds.py`"


def test_runner_reads_libfuzzer_figures(fuzz_modules: dict[str, ModuleType]) -> None:
    run = fuzz_modules["run"]
    log = "#2\tINITED cov: 10 ft: 12 corp: 3/40b exec/s: 0 rss: 40Mb\n#4096\tpulse  cov: 153 ft: 798 corp: 9/1b\n"
    assert run._PROGRESS.findall(log)[-1] == ("4096", "153", "798")
    assert run._EXECUTED.search("stat::number_of_executed_units: 90758\n").group(1) == "90758"
