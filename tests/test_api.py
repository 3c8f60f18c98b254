"""The public API of `import sohbet`: every name it promises, loaded on first use."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sohbet
from sohbet.client import ChatClient
from sohbet.ws import frames, server


def test_every_exported_name_resolves_to_its_definition() -> None:
    for name in sohbet.__all__:
        assert getattr(sohbet, name) is not None, name
    assert sohbet.serve is server.serve
    assert sohbet.WebSocket is server.WebSocket
    assert sohbet.ChatClient is ChatClient
    assert sohbet.FrameParser is frames.FrameParser
    assert sohbet.CloseCode.TOKEN_EXPIRED == 4001
    assert set(sohbet.__all__) <= set(dir(sohbet))
    assert set(sohbet._EXPORTS) | {"__version__"} == set(
        sohbet.__all__
    )  # nothing exported unlisted, or listed unloaded


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = sohbet.nope  # type: ignore[attr-defined]  # the point of the test


def test_importing_the_frame_core_does_not_load_the_server() -> None:
    code = "import sys, sohbet.ws.frames; print('asyncio' in sys.modules, 'sohbet.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split() == ["False", "False"]


def unbuilt_checkout(tmp_path: Path) -> Path:
    """A copy of the package's source without its compiled core, as in a checkout never built in place."""
    shutil.copytree(Path(sohbet.__file__).parent, tmp_path / "sohbet", ignore=shutil.ignore_patterns("*.so", "*.c"))
    return tmp_path


def python_in(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run Python in *root*, whose sohbet/ comes first on sys.path, as in a checkout's root.

    Coverage is off in there: the copy is not the package the suite measures.
    """
    drop = {"SOHBET_NO_EXTENSIONS", "COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"}
    environ = {k: v for k, v in os.environ.items() if k not in drop} | env
    return subprocess.run([sys.executable, *args], cwd=root, env=environ, capture_output=True, text=True, check=False)


def test_a_source_tree_without_the_compiled_core_says_what_to_do(tmp_path: Path) -> None:
    """`python -m sohbet.echo` from a checkout whose sohbet/ was never built in place."""
    root = unbuilt_checkout(tmp_path)
    run = python_in(root, "-m", "sohbet.echo", "--help")
    assert run.returncode == 1
    assert "compiled frame core (sohbet.ws._frames) is not built in" in run.stderr
    assert "`python -P`" in run.stderr and "pip install -e ." in run.stderr
    assert "circular import" not in run.stderr.splitlines()[-1]
    twin = python_in(root, "-m", "sohbet.echo", "--help", SOHBET_NO_EXTENSIONS="1")
    assert twin.returncode == 0, twin.stderr


def test_a_compiled_core_that_fails_to_load_says_why(tmp_path: Path) -> None:
    root = unbuilt_checkout(tmp_path)
    (root / "sohbet" / "ws" / f"_frames{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not a library")
    run = python_in(root, "-c", "import sohbet.ws.frames")
    assert run.returncode == 1
    assert "is not built" not in run.stderr  # it is built; the loader's own reason is the one to read
    assert "_frames" in run.stderr.splitlines()[-1]
