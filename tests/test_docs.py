"""The docs say what the code does: the table of every setting is the code's, and the webhook's
signature checks shown to application developers accept what the server signs, and only that.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from sohbet.api.webhook import signature

from .conftest import required_program

ROOT = Path(__file__).parent.parent
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def test_the_settings_table_is_the_codes() -> None:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "tools" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    documented = OPERATIONS.split("<!-- settings:", 1)[1].split("-->", 1)[1].split("<!-- /settings -->", 1)[0]
    expected = module.table()
    assert documented.strip() == expected, f"regenerate with tools/settings_table.py:\n{expected}"


def snippet(language: str) -> str:
    """The one code block of *language* under "The webhook"."""
    section = OPERATIONS.split("## The webhook", 1)[1]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, blocks
    return str(blocks[0])


SECRET = "the-receivers-copy-of-the-webhook-secret"
BODY = b'{"events":[{"type":"chat:message","recipients":["bob"],"message":{"id":1}}]}'


def cases() -> list[tuple[str, bytes, bool]]:
    now = int(time.time())
    good = signature(SECRET, BODY, now)
    rotated = f"{good},v1={'0' * 64}"
    return [
        (good, BODY, True),
        (f"t={now},v1={'0' * 64},{good.split(',')[1]}", BODY, True),  # any v1 may match (rotation)
        (rotated, BODY, True),
        (good, BODY + b" ", False),  # another body
        (signature("another-secret-entirely-of-32-bytes!!", BODY, now), BODY, False),
        (signature(SECRET, BODY, now - 301), BODY, False),  # too old: a replay
        (f"t={now},t={now},{good.split(',')[1]}", BODY, False),
        ("v1=" + "0" * 64, BODY, False),
        (good + "," + "x" * 1100, BODY, False),
    ]


def test_the_python_check_accepts_what_the_server_signs_and_nothing_else() -> None:
    scope: dict[str, Any] = {}
    exec(snippet("python"), scope)  # the documented code itself
    verify = scope["verify"]
    for header, body, ok in cases():
        assert verify(SECRET.encode(), header, body) is ok, header


def test_the_node_check_accepts_what_the_server_signs_and_nothing_else() -> None:
    node = required_program("node", "the documented Node check")
    script = snippet("js") + (
        "\nconst cases = JSON.parse(process.argv[1]);"
        "\nconsole.log(JSON.stringify(cases.map(([h, b]) => verify(process.argv[2], h, Buffer.from(b, 'latin1')))));"
    )
    given = [(header, body.decode("latin-1")) for header, body, _ in cases()]
    done = subprocess.run(
        [node, "-e", script, json.dumps(given), SECRET], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(done.stdout) == [ok for _, _, ok in cases()]
