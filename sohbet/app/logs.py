"""The log's two forms: one readable line per event (the default), or one JSON object per line
(`--log-format json`) for a log pipeline.

Layer: entry. Imports the standard library and orjson.

Events carry their facts as fields (`extra={"conn": 17, "user": "alice", "code": 1000}`): the
text form appends them as `key=value` (values quoted as Python literals, so a newline or a
quote a peer sent cannot forge a line), the JSON form as keys. No field ever holds a token, a
key, a secret or a message's content: the code that logs passes ids, codes and reasons only,
and a test reads a whole run's log for them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from typing import Any, Final

import orjson

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure", "hold_early_records"]

#: The attributes every LogRecord has: anything else on a record is a field of the event.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The event's own fields (what `extra=` gave), in the order given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """`2026-12-06 22:07:29,017 INFO sohbet.conn connection opened conn=17 user='alice'`."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:  # logging's contract
        line = super().format(record)
        fields = fields_of(record)
        if not fields:
            return line
        head, sep, trace = line.partition("\n")  # a traceback stays below the line
        pairs = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        return f"{head} {pairs}{sep}{trace}"


class JsonFormatter(logging.Formatter):
    """`{"ts": "2026-12-06T22:07:29.017Z", "level": "info", "logger": "sohbet.conn",
    "msg": "connection opened", "conn": 17, "user": "alice"}`, one per line."""

    def format(self, record: logging.LogRecord) -> str:  # logging's contract
        created = record.created
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"
        event: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            event.setdefault(key, value)  # a field never hides one of the four above
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(event, default=str).decode()
        except TypeError:  # a lone surrogate somewhere (orjson writes only UTF-8): escape it instead
            return json.dumps(event, default=str, ensure_ascii=True)


FORMATS: Final[dict[str, type[logging.Formatter]]] = {"text": TextFormatter, "json": JsonFormatter}


def hold_early_records() -> logging.handlers.MemoryHandler:
    """Hold what is logged before the configuration (and so the format) is known; `configure`
    writes it out in the format chosen."""
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(held)
    root.setLevel(logging.INFO)
    return held


class _Instance(logging.Filter):
    """Names the instance on every line (in a cluster, several write to one log store)."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:  # logging's contract
        record.instance = self.instance
        return True


def configure(
    level: str, fmt: str, held: logging.handlers.MemoryHandler | None = None, *, instance: str | None = None
) -> None:
    """Log to stderr at *level* in format *fmt* (`text` or `json`), after what was *held*; each
    line names *instance*, if given."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATS[fmt]())
    if instance is not None:
        handler.addFilter(_Instance(instance))
    threshold = logging.getLevelName(level.upper())
    root = logging.getLogger()
    for old in list(root.handlers):
        if old is not held:
            root.removeHandler(old)
    root.addHandler(handler)
    if held is not None:
        root.removeHandler(held)
        for early in held.buffer:
            if early.levelno >= threshold:  # held before the level was known
                handler.handle(early)
        held.close()
    root.setLevel(threshold)
