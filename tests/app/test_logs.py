"""The two log formats, and the records held until the format is known."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from sohbet.app import logs


def record(msg: str, *, exc: bool = False, **fields: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("sohbet.conn", logging.INFO, __file__, 1, msg, None, exc_info)
    made.__dict__.update(fields)
    return made


def test_text_appends_fields_as_literals_that_cannot_forge_a_line() -> None:
    line = logs.TextFormatter().format(record("connection closed", conn=7, user="al\nice", code=1000))
    assert line.endswith("INFO sohbet.conn connection closed conn=7 user='al\\nice' code=1000")
    assert "\n" not in line
    assert logs.TextFormatter().format(record("plain")).endswith("INFO sohbet.conn plain")


def test_text_keeps_a_traceback_below_the_line_and_its_fields() -> None:
    first, *rest = logs.TextFormatter().format(record("failed", exc=True, conn=3)).splitlines()
    assert first.endswith("failed conn=3") and rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"


def test_json_is_one_object_per_line_whose_fields_cannot_hide_the_message() -> None:
    event = json.loads(logs.JsonFormatter().format(record("connection opened", conn=7, user="alice", msg2=b"x")))
    assert event["msg"] == "connection opened" and event["conn"] == 7 and event["user"] == "alice"
    assert event["level"] == "info" and event["logger"] == "sohbet.conn" and event["ts"].endswith("Z")
    assert event["msg2"] == "b'x'"  # anything orjson cannot write is written as str
    forged = json.loads(logs.JsonFormatter().format(record("real", level="forged")))
    assert forged["level"] == "info"
    failed = json.loads(logs.JsonFormatter().format(record("failed", exc=True)))
    assert failed["exc"].endswith("ValueError: boom")
    odd = logs.JsonFormatter().format(record("odd", user="sur\ud800"))  # no UTF-8 encoder writes it
    assert json.loads(odd)["user"] == "sur\ud800" and "\\ud800" in odd


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_records_held_before_the_configuration_come_out_in_its_format_and_level(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    try:
        held = logs.hold_early_records()
        logging.getLogger("sohbet").warning("a key file is readable by others")
        logging.getLogger("sohbet").info("below the level asked for")
        logs.configure("warning", fmt, held)
        logging.getLogger("sohbet").warning("after")
        lines = out.getvalue().splitlines()
        assert len(lines) == 2
        assert "a key file is readable by others" in lines[0] and "after" in lines[1]
        if fmt == "json":
            assert [json.loads(line)["msg"] for line in lines] == ["a key file is readable by others", "after"]
        assert held not in root.handlers and root.level == logging.WARNING
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
