"""Wire values have names (docs/architecture.md, "Conventions"): no bare close code, opcode, HTTP
status, error code or message type in sohbet/ outside the one place each is defined.

ruff's magic-value rule sees only comparisons; this reads every module's syntax tree for the
places a wire value is passed: the arguments of the calls that send or raise one, and string
constants equal to a protocol name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import sohbet
from sohbet.chat.model import ConversationKind
from sohbet.chat.wire import EventType, RequestType
from sohbet.errors import ErrorCode

PACKAGE = Path(sohbet.__file__).parent

#: Calls whose first argument is a close code, an HTTP status or an opcode.
CLOSE_CALLS = {"close", "_fail", "ProtocolViolation", "ConnectionClosed", "build_close", "_report_close", "_ended"}
STATUS_CALLS = {"InvalidHandshake", "Response", "error_body", "error_response", "http_response"}
OPCODE_CALLS = {"build_frame", "_frame", "Frame"}
CLOSE_CODES = set(range(1000, 1016)) | set(range(3000, 5000))

#: Each protocol name, and the module that defines it (where it may stand as a literal).
NAMES = {
    **{code.value: "errors.py" for code in ErrorCode},
    **{kind.value: "chat/wire.py" for kind in (*RequestType, *EventType)},
    **{kind.value: "chat/model.py" for kind in ConversationKind},
}
#: Literals that only look like a protocol name: (module, value), each with its reason.
NOT_WIRE = {
    ("config.py", "error"),  # a log level
    ("config.py", "sync"),  # the family of the sync_rate/sync_burst settings, a config name
}


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def bare_values(source: str, module: str) -> list[str]:
    """Every wire value written as a literal in *source* (the module at *module*, relative to sohbet/)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):  # keys are field names ("forbidden" in sync:done), not codes
            skip.update(id(k) for k in node.keys if isinstance(k, ast.Constant))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _called(node)
            first = node.args[0] if node.args else None
            for kw in node.keywords:
                if kw.arg == "code":
                    first = kw.value
            if isinstance(first, ast.Constant) and isinstance(first.value, int) and not isinstance(first.value, bool):
                value = first.value
                if name in CLOSE_CALLS and value in CLOSE_CODES:
                    found.append(f"{module}:{node.lineno}: close code {value} in {name}()")
                elif name in STATUS_CALLS and 100 <= value <= 599:  # HTTP's status range
                    found.append(f"{module}:{node.lineno}: HTTP status {value} in {name}()")
                elif name in OPCODE_CALLS:
                    found.append(f"{module}:{node.lineno}: opcode {value} in {name}()")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
            defaults += node.args.kw_defaults
            for arg, default in zip(args, defaults, strict=True):
                if arg.arg == "code" and isinstance(default, ast.Constant) and default.value in CLOSE_CODES:
                    found.append(f"{module}:{node.lineno}: close code {default.value} as the default of {node.name}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            home = NAMES.get(node.value)
            if home is not None and home != module and (module, node.value) not in NOT_WIRE:
                found.append(f"{module}:{node.lineno}: {node.value!r} is a name of {home}")
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_no_bare_wire_values(path: Path) -> None:
    assert bare_values(path.read_text(), str(path.relative_to(PACKAGE))) == []


def test_the_compiled_core_raises_with_names() -> None:
    pyx = (PACKAGE / "ws" / "_frames.pyx").read_text()
    assert re.findall(r"(?:ProtocolViolation|_die)\(\s*\d+", pyx) == []
    assert re.findall(r"(?:opcode|code|c)\s*[<>=!]=?\s*(?:1\d{3}|[34]\d{3})\b", pyx) == []


def test_the_checker_finds_what_it_looks_for() -> None:
    source = '''
"""The module's docstring may say 1008 and "forbidden"."""
def close(code=1000): ...
ws.close(1008, "bye")
raise ProtocolViolation(1002, "bad")
raise InvalidHandshake(401, "no token")
frame = build_frame(1, data)
reply = {"code": "forbidden", "type": "chat:message", "forbidden": []}
ws.close(CloseCode.POLICY_VIOLATION, "fine")
limit = _int(payload, "limit", high=1000)
'''
    assert bare_values(source, "x.py") == [
        "x.py:3: close code 1000 as the default of close()",
        "x.py:4: close code 1008 in close()",
        "x.py:5: close code 1002 in ProtocolViolation()",
        "x.py:6: HTTP status 401 in InvalidHandshake()",
        "x.py:7: opcode 1 in build_frame()",
        "x.py:8: 'forbidden' is a name of errors.py",
        "x.py:8: 'chat:message' is a name of chat/wire.py",
    ]
