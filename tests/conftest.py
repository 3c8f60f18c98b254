"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

IN_CI = os.environ.get("CI") == "true"

# Deadlines fail runs on a loaded 2-core machine for no fault of the code; speed is measured in
# benchmarks/, never here.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if IN_CI else "default")


def load_compiled_core() -> ModuleType:
    """Import `sohbet._frames`; outside CI a missing build skips, in CI it fails the run."""
    try:
        return importlib.import_module("sohbet._frames")
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the compiled core is not built, and CI must test it: {exc}")
        pytest.skip(f"the compiled core is not built: {exc}")


@pytest.fixture(scope="session", params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each `_frames` implementation in turn: every core test runs against both."""
    if request.param == "python":
        return importlib.import_module("sohbet._frames_py")
    return load_compiled_core()
