"""The dependency direction of docs/architecture.md ("Layers"), checked on every module's imports.

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

#: (module or package, layer), the first match wins: `ws.server` before the rest of `ws`.
LAYERS: tuple[tuple[str, str], ...] = (
    ("errors", "base"),
    ("ws.codes", "base"),
    ("ws.server", "ws-transport"),
    ("ws.websocket", "ws-transport"),
    ("ws.http_phase", "ws-transport"),
    ("ws._send_py", "ws-transport"),
    ("ws", "ws"),
    ("chat", "domain"),
    ("auth", "domain"),
    ("config", "domain"),
    ("store", "storage"),
    ("broker", "broker"),
    ("service", "service"),
    ("api", "transport"),
    ("client", "transport"),
    ("echo", "transport"),
    ("app", "entry"),
    ("__init__", "entry"),  # the package only re-exports the public API, lazily
    ("__main__", "entry"),
)

#: Standard-library modules that do I/O or schedule: the sans-I/O layers never touch them.
NO_IO = {"asyncio", "socket", "selectors", "sqlite3", "threading"}
ALL_LAYERS = {layer for _, layer in LAYERS}

# layer -> (sohbet layers it may import, third-party packages it may import, stdlib it may not)
RULES: dict[str, tuple[set[str], set[str], set[str]]] = {
    "base": ({"base"}, set(), NO_IO),
    "ws": ({"base", "ws"}, {"httptools", "orjson", "typing_extensions"}, NO_IO),
    "ws-transport": ({"base", "ws", "ws-transport"}, {"httptools", "uvloop", "typing_extensions"}, set()),
    "domain": ({"base", "ws", "domain"}, {"orjson", "jwt", "typing_extensions"}, NO_IO),
    "storage": ({"base", "domain", "storage"}, {"asyncpg", "orjson", "typing_extensions"}, set()),
    "broker": ({"base", "domain", "broker"}, {"redis", "orjson", "typing_extensions"}, set()),
    "service": (
        {"base", "ws", "domain", "storage", "broker", "service"},
        {"orjson", "typing_extensions"},
        {"socket", "selectors", "sqlite3", "threading"},  # its I/O goes through the store and broker
    ),
    "transport": (
        {"base", "ws", "ws-transport", "domain", "service", "transport"},
        {"orjson", "uvloop", "httptools", "prometheus_client", "typing_extensions"},
        set(),
    ),
    "entry": (ALL_LAYERS, {"orjson", "uvloop", "prometheus_client", "typing_extensions"}, set()),
}

#: Packages whose implementations only the composition root (and the package itself) may pick:
#: everyone else sees the interface in the package's `__init__`.
INTERFACES = {"store", "broker"}

#: Third-party packages one package may import beyond its layer's: the HTTP faces toward the
#: application backend (`api/`) are the ones that speak HTTP as a client (the webhook).
EXTRA_THIRD_PARTY: dict[str, set[str]] = {"api": {"aiohttp"}}


def layer_of(name: str) -> str:
    for prefix, layer in LAYERS:
        if name == prefix or name.startswith(prefix + "."):
            return layer
    raise AssertionError(f"module sohbet.{name} has no layer in tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    """Whether `sohbet.<dotted>` is a module or package (and not a name inside one)."""
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or path.is_dir() or any(path.parent.glob(f"{path.name}.*.so"))


def imports_of(path: Path) -> set[str]:
    if path.suffix == ".pyx":
        pattern = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import|c?import\s+([\w.]+))", re.MULTILINE)
        return {a or b for a, b in pattern.findall(path.read_text())}
    found: set[str] = set()
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["sohbet", *package[: len(package) - node.level + 1]]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module == "sohbet" or module.startswith("sohbet."):
                # `from sohbet.ws import server`: a submodule if one has that name, else the package.
                inner = module.removeprefix("sohbet").removeprefix(".")
                for alias in node.names:
                    dotted = f"{inner}.{alias.name}" if inner else alias.name
                    found.add(f"sohbet.{dotted}" if _is_module(dotted) else module)
            else:
                found.add(module)
    return found


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(name: str, imported: set[str]) -> list[str]:
    """Every import of module *name* that its layer forbids."""
    layer = layer_of(name)
    allowed_own, allowed_third, banned_std = RULES[layer]
    allowed_third = allowed_third | EXTRA_THIRD_PARTY.get(name.split(".", maxsplit=1)[0], set())
    found = []
    for target in sorted(imported):
        top = target.split(".")[0]
        if top == "sohbet":
            own = target.removeprefix("sohbet").removeprefix(".") or "__init__"
            parts = own.split(".")
            if layer_of(own) not in allowed_own:
                found.append(f"{name} ({layer}) may not import sohbet.{own}")
            elif (
                parts[0] in INTERFACES
                and len(parts) > 1
                and layer != "entry"
                and name.split(".", maxsplit=1)[0] != parts[0]
            ):
                found.append(f"{name} may use only the {parts[0]} interface, not {target}")
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
    assert violations("ws.frames", {"asyncio", "sohbet.ws.server", "uvloop", "hashlib", "sohbet.errors"}) == [
        "ws.frames (ws) may not import asyncio",
        "ws.frames (ws) may not import sohbet.ws.server",
        "ws.frames (ws) may not import uvloop",
    ]
    assert violations("ws.server", {"sohbet.chat", "sohbet.ws.protocol"}) == [
        "ws.server (ws-transport) may not import sohbet.chat"
    ]
    assert violations("service", {"sohbet.store.postgres", "sohbet.store", "sohbet.broker.redis"}) == [
        "service may use only the broker interface, not sohbet.broker.redis",
        "service may use only the store interface, not sohbet.store.postgres",
    ]
    assert violations("service.dispatch", {"asyncio", "sqlite3", "socket"}) == [
        "service.dispatch (service) may not import socket",
        "service.dispatch (service) may not import sqlite3",
    ]
    assert violations("client", {"sohbet.service", "sohbet.store"}) == [
        "client (transport) may not import sohbet.store"
    ]
    assert violations("store.sqlite", {"sohbet.store", "sohbet.service"}) == [
        "store.sqlite (storage) may not import sohbet.service"
    ]
    assert violations("api.webhook", {"aiohttp", "sohbet.config", "sohbet.store"}) == [
        "api.webhook (transport) may not import sohbet.store"
    ]
    assert violations("client", {"aiohttp"}) == ["client (transport) may not import aiohttp"]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("mystery")


def test_imports_name_the_submodule_they_reach() -> None:
    found = imports_of(PACKAGE / "ws" / "handshake.py")
    assert {"sohbet.ws.deflate", "sohbet.ws.frames", "sohbet.ws.http11", "sohbet.errors"} <= found
