"""The dependency direction of STYLE.md §2, checked on every module's imports.

A module that is not in the table fails the test, so a new module must be given a layer.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import sohbet

PACKAGE = Path(sohbet.__file__).parent
STDLIB = set(sys.stdlib_module_names)

CORE = {
    "_frames",
    "_frames_py",
    "frames",
    "handshake",
    "protocol",
    "events",
    "messages",
    "hub",
    "auth",
    "errors",
    "config",
    "deflate",
    "__init__",
}
STORAGE = {"store", "broker"}
SERVICE = {"chat"}
TRANSPORT = {"server", "http_api", "client", "echo", "gateway"}
ENTRY = {"cli", "__main__"}

# layer -> (sohbet modules it may import, third-party packages it may import, stdlib it may not)
RULES: dict[str, tuple[set[str], set[str], set[str]]] = {
    "core": (CORE, {"orjson", "jwt", "httptools", "typing_extensions"}, {"asyncio", "socket", "sqlite3", "threading"}),
    "storage": (CORE | STORAGE, {"orjson", "asyncpg", "aiosqlite", "redis", "typing_extensions"}, set()),
    "service": (CORE | {"store", "chat"}, {"orjson", "typing_extensions"}, {"socket", "sqlite3"}),
    "transport": (CORE | STORAGE | SERVICE | TRANSPORT, {"orjson", "uvloop", "httptools", "typing_extensions"}, set()),
    "entry": (CORE | STORAGE | SERVICE | TRANSPORT | ENTRY, {"orjson", "uvloop", "typing_extensions"}, set()),
}


def layer_of(name: str) -> str:
    top = name.split(".", maxsplit=1)[0]
    for layer, members in (
        ("core", CORE),
        ("storage", STORAGE),
        ("service", SERVICE),
        ("transport", TRANSPORT),
        ("entry", ENTRY),
    ):
        if top in members:
            return layer
    raise AssertionError(f"module sohbet.{name} has no layer in tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir() or any(PACKAGE.glob(f"{name}.*.so"))


def imports_of(path: Path) -> set[str]:
    if path.suffix == ".pyx":
        pattern = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import|c?import\s+([\w.]+))", re.MULTILINE)
        return {a or b for a, b in pattern.findall(path.read_text())}
    found: set[str] = set()
    package = module_name(path).split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["sohbet", *package[: len(package) - node.level + 1]]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module == "sohbet":
                # `from sohbet import x`: a submodule if one has that name, else the package.
                found.update(f"sohbet.{a.name}" if _is_module(a.name) else "sohbet" for a in node.names)
            else:
                found.add(node.module or "")
    return found


def violations(name: str, imported: set[str]) -> list[str]:
    """Every import of module *name* that its layer forbids."""
    layer = layer_of(name)
    allowed_own, allowed_third, banned_std = RULES[layer]
    found = []
    for target in sorted(imported):
        top = target.split(".")[0]
        if top == "sohbet":
            own = target.split(".")[1] if "." in target else "__init__"
            if own not in allowed_own:
                found.append(f"{name} ({layer}) may not import sohbet.{own}")
            elif layer == "service" and own == "store" and target != "sohbet.store":
                found.append(f"{name} may use only the store interface, not {target}")
        elif top in STDLIB or top in {"cpython", "libc"}:
            if top in banned_std:
                found.append(f"{name} ({layer}) may not import {top}")
        elif top not in allowed_third:
            found.append(f"{name} ({layer}) may not import {top}")
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*") if p.suffix in {".py", ".pyx"})


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_imports_follow_the_layers(path: Path) -> None:
    assert violations(module_name(path), imports_of(path)) == []


def test_the_checker_catches_forbidden_imports() -> None:
    assert violations("frames", {"asyncio", "sohbet.server", "uvloop", "hashlib", "sohbet.errors"}) == [
        "frames (core) may not import asyncio",
        "frames (core) may not import sohbet.server",
        "frames (core) may not import uvloop",
    ]
    assert violations("chat", {"sohbet.store.postgres"}) == [
        "chat may use only the store interface, not sohbet.store.postgres"
    ]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("mystery")
