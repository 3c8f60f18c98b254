"""What the chat service counts, for the metrics endpoint: plain integers and bucket arrays.

Layer: service. Imports only the standard library and the chat domain.

Counting must not cost the paths it counts: an increment of an attribute or of a dict entry
that already exists, in loops that already run (per message, per batch, per fan-out), never a
metrics library's labelled lookup and lock per event. `sohbet.api.metrics` reads these when
Prometheus scrapes, and builds its families then.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Final

from sohbet.chat.wire import RequestType
from sohbet.errors import ErrorCode

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS_S", "ChatStats", "Histogram"]

#: Seconds: from half a millisecond (an SQLite commit) to ten seconds (storage in trouble).
LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Messages per batch: powers of two up to the largest batch a writer takes by default.
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Observations counted into buckets with upper bounds (Prometheus's `le`), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound, and one for what is above them all (`+Inf`); not cumulative.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation: a binary search and two additions."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations in all."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """The buckets as Prometheus states them: each bound with everything at or below it."""
        found, total = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            found.append((bound, total))
        return found


class ChatStats:
    """The chat service's counters."""

    __slots__ = ("ack_latency", "acked", "batch_size", "commit_seconds", "deliveries", "errors", "received")

    def __init__(self) -> None:
        #: WebSocket requests by type, every known type present from the start (so counting is a
        #: plain `+= 1`), and "unknown" for the rest: a peer cannot grow the label set.
        self.received: dict[str, int] = dict.fromkeys([*RequestType, "unknown"], 0)
        #: `chat:ack`s sent (stored messages and answered retries).
        self.acked = 0
        #: Events handed to connections by fan-out: one per recipient connection.
        self.deliveries = 0
        #: `error` answers by code.
        self.errors: dict[str, int] = dict.fromkeys(ErrorCode, 0)
        #: Seconds a batch took to commit, and its size.
        self.commit_seconds = Histogram(LATENCY_BUCKETS_S)
        self.batch_size = Histogram(BATCH_BUCKETS)
        #: Seconds from a `chat:send` accepted to its ack.
        self.ack_latency = Histogram(LATENCY_BUCKETS_S)
