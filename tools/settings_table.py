"""Print the table of every setting for docs/operations.md ("Every setting"), from the code.

    python -P tools/settings_table.py > /tmp/table.md    (then paste it between the markers)

tests/test_docs.py fails when the table in the docs differs from what this prints.
"""

from __future__ import annotations

from sohbet.config import SETTINGS, Setting


def default_of(setting: Setting) -> str:
    value = setting.default
    if value is None or value in ("", ()):
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table() -> str:
    """The Markdown table: flag, environment variable, default, what it does."""
    rows = ["| flag | environment | default | what |", "|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`{s.flag}`" if s.has_flag else "—"
        rows.append(f"| {flag} | `{s.env}` | {default_of(s)} | {s.help.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
