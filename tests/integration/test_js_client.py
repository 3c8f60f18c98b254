"""The browser client (clients/js) from the Python suite, so that the README's one test command
covers it: its own tests (Node's test runner against real `sohbet-server` processes, the React
hooks in jsdom) run through `npm test`, and the module the Python package ships is checked to be
the build of the TypeScript sources beside it.

The second check needs no node: the shipped module's first line names the sha256 of the sources
it was built from (clients/js/scripts/build.mjs writes it), recomputed here.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import required_program

ROOT = Path(__file__).parent.parent.parent
PACKAGE = ROOT / "clients" / "js"
SHIPPED = ROOT / "sohbet" / "app" / "static" / "sohbet.mjs"
#: The suite starts and kills server processes: minutes at most, even on a loaded machine.
NPM_TIMEOUT_S = 900


def sources_digest(*dirs: str) -> str:
    """As `sourcesDigest` in clients/js/scripts/build.mjs: every file of *dirs*, by name."""
    digest = hashlib.sha256()
    for folder in dirs:
        for path in sorted((PACKAGE / folder).iterdir(), key=lambda p: p.name):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("shipped", "dirs"), [("sohbet.mjs", ("src",)), ("demo.mjs", ("demo", "src"))], ids=["client", "demo"]
)
def test_the_shipped_modules_are_built_from_the_sources_beside_them(shipped: str, dirs: tuple[str, ...]) -> None:
    path = SHIPPED.parent / shipped
    first_line = path.read_text(encoding="utf-8").partition("\n")[0]
    found = re.search(r"sources sha256 ([0-9a-f]{64})", first_line)
    assert found is not None, f"{path} does not say what it was built from: {first_line!r}"
    assert found[1] == sources_digest(*dirs), (
        f"{path.relative_to(ROOT)} is stale: clients/js/{' and '.join(dirs)} changed since it was built; "
        "run `npm run build` in clients/js and commit the result"
    )


def installed() -> bool:
    """Whether node_modules holds what package-lock.json says (npm writes its own copy there)."""
    copy = PACKAGE / "node_modules" / ".package-lock.json"
    return copy.exists() and copy.stat().st_mtime >= (PACKAGE / "package-lock.json").stat().st_mtime


def test_the_js_client_suite_against_real_servers() -> None:
    command = required_program("npm", "the browser client's tests (install node >= 20)")
    if not installed():  # a fresh clone: the lockfile's packages, exactly
        subprocess.run([command, "ci", "--no-audit", "--no-fund"], cwd=PACKAGE, check=True, timeout=NPM_TIMEOUT_S)
    server = Path(sys.executable).parent / "sohbet-server"
    assert server.exists(), f"{server} is missing: install the package (pip install .)"
    result = subprocess.run(
        [command, "test"],
        cwd=PACKAGE,
        env={**os.environ, "SOHBET_SERVER": str(server)},
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    report = result.stdout + result.stderr
    # The failing tests first (their name, place and error), then the end of the report.
    failures = [m[0] for m in re.finditer(r"^ *not ok .*(?:\n(?! *(?:ok|not ok) ).*){0,24}", report, re.MULTILINE)]
    assert result.returncode == 0, "\n".join(failures)[:20_000] + "\n...\n" + report[-5_000:]
    assert re.search(r"^# fail 0$", report, re.MULTILINE), report[-20_000:]
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    assert passed is not None and int(passed[1]) > 0, report[-20_000:]
    # The build npm test just made is what the Python package ships, byte for byte.
    assert (PACKAGE / "dist" / "sohbet.mjs").read_bytes() == SHIPPED.read_bytes(), (
        "sohbet/app/static/sohbet.mjs differs from a fresh build: run `npm run build` in clients/js"
    )
