"""Token buckets: how often each user may ask for each kind of work, and each address may open
a connection.

Layer: ws (sans-I/O). Imports only the standard library. Pure and synchronous; time comes in
as an argument. It lives in the lowest layer that needs it: the server counts connections per
address with it, the chat service requests per user.

The chat service keeps one bucket per (user, kind), shared by all the user's connections, so
opening more connections buys no more work. A bucket that has refilled is the same as no
bucket, so `forget` drops it and an idle server holds none.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

__all__ = ["Rate", "RateLimiter", "Sampler"]

K = TypeVar("K")  # what a bucket is keyed by, e.g. (user, kind)


class Rate(NamedTuple):
    """A sustained rate and the burst allowed above it; a rate of 0 turns the limit off."""

    per_s: float
    burst: int

    @property
    def is_limited(self) -> bool:
        """Whether this rate limits anything (0 means unlimited)."""
        return self.per_s > 0


class RateLimiter(Generic[K]):
    """Token buckets by key; each bucket remembers when it will be full again."""

    def __init__(self) -> None:
        # key -> (tokens, when they were counted, when the bucket is full again)
        self._buckets: dict[K, tuple[float, float, float]] = {}

    def take(self, key: K, now: float, rate: Rate, cost: int = 1) -> int:
        """Spend *cost* tokens (at most a burst's: a cost above it is charged as a full bucket).

        Returns:
            0 when allowed; otherwise the milliseconds until they are available (at least 1).
        """
        if rate.per_s <= 0:
            return 0
        burst = float(rate.burst)
        need = min(float(cost), burst)
        bucket = self._buckets.get(key)
        tokens = burst if bucket is None else min(burst, bucket[0] + (now - bucket[1]) * rate.per_s)
        if tokens < need:
            self._buckets[key] = (tokens, now, now + (burst - tokens) / rate.per_s)
            return max(1, int((need - tokens) / rate.per_s * 1000 + 0.999))
        tokens -= need
        self._buckets[key] = (tokens, now, now + (burst - tokens) / rate.per_s)
        return 0

    def refund(self, key: K, rate: Rate) -> None:
        """Give back a token spent on work that turned out to cost nothing (a replay, a refusal)."""
        bucket = self._buckets.get(key)
        if bucket is not None and rate.per_s > 0:
            tokens = min(float(rate.burst), bucket[0] + 1.0)
            self._buckets[key] = (tokens, bucket[1], bucket[1] + (rate.burst - tokens) / rate.per_s)

    def forget(self, now: float) -> None:
        """Drop the buckets that are full again by *now*: a full bucket is the default."""
        self._buckets = {k: b for k, b in self._buckets.items() if b[2] > now}

    def __len__(self) -> int:
        return len(self._buckets)


class Sampler:
    """Lets a rate of events through and counts the rest: a flood of one log line (refused
    upgrades, say, from one busy client) costs a few lines a second, and the next line let
    through says how many were held back."""

    __slots__ = ("_bucket", "_rate", "held")

    def __init__(self, rate: Rate) -> None:
        self._bucket: RateLimiter[None] = RateLimiter()
        self._rate = rate
        #: Events held back since the last one let through.
        self.held = 0

    def take(self, now: float) -> int | None:
        """None: hold this event back (counted); else how many were held back before it."""
        if self._bucket.take(None, now, self._rate):
            self.held += 1
            return None
        held, self.held = self.held, 0
        return held
