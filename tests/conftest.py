"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

from .pgcluster import ClusterUnavailable, PrivatePostgres

IN_CI = os.environ.get("CI") == "true"


def required_program(name: str, needed_for: str) -> str:
    """The path of program *name*; missing, it fails the test under CI (which must run it:
    *needed_for*) and skips it loudly elsewhere."""
    found = shutil.which(name)
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is missing: CI must run {needed_for}")
        pytest.skip(f"SKIPPING {needed_for.upper()}: {name} is missing")
    return found


# Deadlines fail runs on a loaded 2-core machine for no fault of the code; speed is measured in
# benchmarks/, never here.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if IN_CI else "default")

#: Branch coverage every module of the package must reach in a full run; the pure layers are held
#: to 100% by pyproject's `fail_under`, over the files its `include` names.
MODULE_COVERAGE_FLOOR = 95.0


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """Fail the run when any one module falls under the floor, not only the pure layers' total.

    This wraps pytest-cov's own wrapper, so it runs after the data of the server processes the
    tests started has been combined; with `--no-cov` there is nothing to check.
    """
    result = yield
    plugin = session.config.pluginmanager.getplugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    if controller is None or session.testsfailed or session.config.option.collectonly:
        return result
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "coverage.json")
        controller.cov.json_report(outfile=out, include=["*/sohbet/*"], omit=["*/sohbet/ws/_frames.pyx"])
        with open(out, encoding="utf-8") as f:
            files = json.load(f)["files"]
    percent = {name: data["summary"]["percent_covered"] for name, data in files.items()}
    low = {name: value for name, value in percent.items() if value < MODULE_COVERAGE_FLOOR}
    if low:
        reporter = session.config.pluginmanager.getplugin("terminalreporter")
        for name, value in sorted(low.items()):
            message = f"{name} has {value:.1f}% branch coverage, under {MODULE_COVERAGE_FLOOR}%"
            reporter.write(f"\nERROR: {message}", red=True)
        reporter.write("\n")
        session.testsfailed += 1
    return result


def load_compiled_core() -> ModuleType:
    """Import `sohbet.ws._frames`; outside CI a missing build skips, in CI it fails the run."""
    try:
        return importlib.import_module("sohbet.ws._frames")
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the compiled core is not built, and CI must test it: {exc}")
        pytest.skip(f"the compiled core is not built: {exc}")


@pytest.fixture(scope="session", params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each `_frames` implementation in turn: every core test runs against both."""
    if request.param == "python":
        return importlib.import_module("sohbet.ws._frames_py")
    return load_compiled_core()


POSTGRES_URL = os.environ.get("SOHBET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def pg_admin(sql: str) -> None:
    """Run one statement on the server's maintenance database (create, drop, lock out databases)."""
    import asyncpg  # noqa: PLC0415  # only the Postgres half of the suite needs it

    con = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, empty database for this test run; dropped at the end.

    Where no Postgres answers, tests that need it skip with a loud reason, except under
    CI=true, where they fail: CI must never pass by skipping.
    """
    import asyncpg  # noqa: PLC0415  # only the Postgres half of the suite needs it

    name = f"sohbet_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable ({exc}); set SOHBET_TEST_POSTGRES_URL"
        if IN_CI:
            pytest.fail(message)
        pytest.skip("SKIPPING THE POSTGRES HALF OF THE SUITE: " + message)
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage backend in turn: the same tests run on SQLite and on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sohbet.db"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, which it may stop, kill, pause and restart.

    Outage tests use it instead of the shared server, which must never be stopped or paused. It
    is made fresh for each test (initdb takes about a second) and destroyed after it, whatever
    state the test left it in. Where the binaries, `runuser` or root are missing, tests that
    need it skip with a loud reason, except under CI=true, where they fail.
    """
    try:
        cluster = PrivatePostgres()
    except ClusterUnavailable as exc:
        message = f"cannot start a private PostgreSQL cluster: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip("SKIPPING THE POSTGRES OUTAGE TESTS: " + message)
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()
