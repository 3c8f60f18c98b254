"""The webhook: messages for members with no open connection, POSTed to the application in batches.

Layer: transport. Imports aiohttp (the HTTP client), orjson, and the domain's names and
configuration; never a store, never the entry layer.

The application turns these into push notifications (docs/protocol.md, "HTTP API"). One POST
carries `{"events": [{"type": "chat:message", "recipients": [user_id, ...], "message": {...}}]}`
and the header `Sohbet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed
with the webhook secret. A receiver recomputes the HMAC over the raw body and refuses a `t` far
from its own clock, so a captured request cannot be replayed later (`verify_signature`).

Chat never waits for the application: `WebhookSender.notify` appends to a bounded queue and
returns; one task sends what is queued, one POST at a time so events arrive in order, and retries
a failed batch with exponential backoff and jitter for a bounded time. A batch whose answer was
lost may arrive twice: receivers deduplicate by the message's `id`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.metadata
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from sohbet.chat.wire import EventType
from sohbet.config import WebhookConfig
from sohbet.errors import ConfigError, InvalidState
from sohbet.ws.rates import Rate, RateLimiter

__all__ = [
    "MAX_RECIPIENTS",
    "SIGNATURE_HEADER",
    "WebhookSender",
    "WebhookStats",
    "backoff_s",
    "signature",
    "verify_signature",
]

log = logging.getLogger("sohbet.webhook")

SIGNATURE_HEADER: Final = "Sohbet-Signature"
#: How far a signature's `t` may be from the receiver's clock, either way, by default.
SIGNATURE_TOLERANCE_S: Final = 300.0
#: A longer `Sohbet-Signature` is refused unread: room for a `t` and a few `v1` entries.
MAX_SIGNATURE_HEADER_CHARS: Final = 1024
_MAX_TIMESTAMP_DIGITS: Final = 12
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_SHA256_HEX_CHARS: Final = 64
#: The queue-full warning is logged at most this often; the `dropped` counter sees every drop.
DROP_WARNING_INTERVAL_S: Final = 10.0
#: Backoff exponents beyond this would only overflow: the cap is reached long before.
_MAX_EXPONENT: Final = 62

_MESSAGE: Final = EventType.MESSAGE.value


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """Sign *body* as sent at *timestamp* (unix seconds): the `Sohbet-Signature` header's value.

    Returns:
        `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with secret's UTF-8>`.
    """
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str, header: str, body: bytes, now: float, tolerance_s: float = SIGNATURE_TOLERANCE_S
) -> bool:
    """Whether *header* (a `Sohbet-Signature` value) signs *body* with *secret*, recently.

    The receiving side's check, in Python (docs/operations.md shows it without sohbet). The
    header is `t=<unix seconds>` and one or more `v1=<hex>` entries, comma-separated; it is
    accepted when any `v1` matches, which is how a secret is rotated at Stripe-like services: a
    sender mid-rotation signs with the old and the new secret, and a receiver holding either
    accepts. Entries of other schemes (`v0=`, say) are ignored, so new ones can be added.

    Args:
        secret: the webhook secret.
        header: the header's value, as received (peer input: anything at all).
        body: the raw request body, exactly as received, before any JSON parsing.
        now: the receiver's clock, in unix seconds.
        tolerance_s: how far `t` may be from *now*, either way; older requests are refused as
            replays, later ones as forged.

    Returns:
        True only for a well-formed header with a timely `t` and a matching `v1`; a malformed
        header is False, never an exception.
    """
    if len(header) > MAX_SIGNATURE_HEADER_CHARS:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not _is_decimal(value):
                return False
            timestamp = int(value)
        elif key == "v1":
            if len(value) != _SHA256_HEX_CHARS or not set(value) <= _HEX_DIGITS:
                return False
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, body, timestamp)
    # Every candidate is compared, in constant time each: when the loop ends says nothing either.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _is_decimal(text: str) -> bool:
    # str.isdigit alone accepts "²" and other non-ASCII digits, which int() refuses.
    return 0 < len(text) <= _MAX_TIMESTAMP_DIGITS and text.isascii() and text.isdigit()


def backoff_s(attempt: int, first_s: float, max_s: float, jitter: float) -> float:
    """The wait before retry number *attempt* (1, 2, ...), with "equal jitter".

    The cap doubles from *first_s* up to *max_s*; half of it is waited for sure, the other half
    scaled by *jitter* (in [0, 1)), so senders that failed together do not retry together, and
    none waits less than half the schedule.
    """
    cap = min(max_s, first_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return cap / 2 + cap / 2 * jitter


def _retry_after_s(value: str | None) -> float | None:
    """A `Retry-After` in seconds (RFC 9110 §10.2.3), or None for an HTTP-date or nonsense."""
    if value is None:
        return None
    value = value.strip()
    return float(value) if value.isascii() and value.isdigit() else None


def _loggable(url: str) -> str:
    """*url* without its userinfo, query and fragment, which may hold credentials."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _user_agent() -> str:
    try:
        return f"sohbet/{importlib.metadata.version('sohbet')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover  # a source tree never installed
        return "sohbet"


def _is_retryable(status: int) -> bool:
    """5xx, 408 and 429 may pass; any other refusal would only be repeated."""
    return status >= HTTPStatus.INTERNAL_SERVER_ERROR or status in {
        HTTPStatus.REQUEST_TIMEOUT,
        HTTPStatus.TOO_MANY_REQUESTS,
    }


#: Recipients in one event: a message for more offline members is told in several events.
MAX_RECIPIENTS: Final = 1000
#: Seconds between two sweeps of the senders' buckets (full ones are dropped).
_FORGET_EVERY_S: Final = 60.0


class WebhookStats:
    """Counters since the sender was made, in events unless named otherwise: exported as metrics.

    `queued` counts events accepted by `notify`; each of them ends up `delivered` (a 2xx
    answer), `failed` (given up after `retry_for_s`, or refused with a status no retry can
    change) or `dropped` (left at `stop`), or is still waiting. `dropped` also counts events
    `notify` refused because the queue was full or the sender stopped. `batches` counts POSTs
    answered with a 2xx, `retries` every POST after a batch's first.
    """

    __slots__ = ("_queue", "batches", "delivered", "dropped", "failed", "queued", "retries")

    def __init__(self, queue: deque[dict[str, Any]]) -> None:
        self._queue = queue
        self.queued = 0
        self.delivered = 0
        self.batches = 0
        self.retries = 0
        self.failed = 0
        self.dropped = 0

    @property
    def queue_length(self) -> int:
        """Events waiting for a batch now (the batch in flight is no longer in the queue)."""
        return len(self._queue)


class WebhookSender:
    """The queue of events for the application and the task that POSTs them.

    sender = WebhookSender(config.webhook)
    await sender.start()
    sender.notify(["bob"], message)    # from the chat service: returns at once
    await sender.stop(timeout_s=5.0)   # at shutdown: delivers what it can in the time
    """

    def __init__(self, config: WebhookConfig) -> None:
        if config.url is None or config.secret is None:
            raise ConfigError("a webhook sender needs a webhook URL and secret")
        self._config = config
        self._url: str = config.url
        self._secret: str = config.secret
        self._log_url = _loggable(config.url)
        self._queue: deque[dict[str, Any]] = deque()
        self.stats = WebhookStats(self._queue)
        self._inflight: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._stopped = False
        self._random = random.Random()  # jitter: no secret, so no need for the secrets module
        self._unreported_drops = 0
        self._next_drop_warning = 0.0
        self._sender_rate = Rate(config.sender_rate_per_s, config.sender_burst)
        self._drop_why: str | None = None
        self._senders: RateLimiter[str] = RateLimiter()
        self._next_forget = 0.0

    def notify(self, recipients: Sequence[str], message: dict[str, Any]) -> None:
        """Queue one `chat:message` event for *recipients*, who had no open connection.

        Never awaits and never raises: the chat service calls it on its hot path. When the
        queue is full (the application is slower than chat, or down) or the sender has stopped,
        the event is dropped and counted; a warning says how many, at most every 10 s.

        Args:
            recipients: user ids; a list or tuple, which the sender keeps (do not change it).
            message: the stored message as the protocol sends it (`wire.message_object`).
        """
        queue = self._queue
        now = time.monotonic()
        # Each sender's share: one user sending to large groups of people who are not connected
        # (anyone may put anyone in a group) must not fill the queue for everyone else.
        if self._senders.take(str(message.get("sender_id")), now, self._sender_rate, len(recipients)):
            self._drop(f"a sender's messages were for more than {self._sender_rate.per_s:g} recipients a second")
            return
        if now >= self._next_forget:
            self._senders.forget(now)
            self._next_forget = now + _FORGET_EVERY_S
        # A message to a large group is told in events of at most `MAX_RECIPIENTS` recipients,
        # so no one event (and no batch of them) grows with the size of a group.
        for start in range(0, len(recipients), MAX_RECIPIENTS):
            if self._closing or len(queue) >= self._config.queue_max:
                self._drop()
                continue
            part = recipients if len(recipients) <= MAX_RECIPIENTS else recipients[start : start + MAX_RECIPIENTS]
            queue.append({"type": _MESSAGE, "recipients": part, "message": message})
            self.stats.queued += 1
            n = len(queue)
            # Wake the task only when it can act: the first event ends an idle wait, a full batch
            # ends the wait for company. In between nobody is waiting for this event.
            if n in (1, self._config.batch_max):
                self._wake.set()

    def _drop(self, why: str | None = None) -> None:
        self._drop_why = why
        self.stats.dropped += 1
        self._unreported_drops += 1
        now = time.monotonic()
        if now >= self._next_drop_warning:
            self._next_drop_warning = now + DROP_WARNING_INTERVAL_S
            self._report_drops()

    def _report_drops(self) -> None:
        # Counts only: never a recipient or a message.
        log.warning(
            "webhook dropped %d events since the last warning (%d in all): %s",
            self._unreported_drops,
            self.stats.dropped,
            self._drop_why
            or (
                "the sender has stopped"
                if self._closing
                else f"{self._config.queue_max} are queued already; the receiver is slower than chat or down"
            ),
        )
        self._unreported_drops = 0

    async def start(self) -> None:
        """Open the HTTP client and start sending, beginning with the events queued before.

        Raises:
            InvalidState: started twice.
        """
        if self._task is not None or self._stopped:
            raise InvalidState("the webhook sender was already started")
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": _user_agent()},
            timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
            # The receiver's cookies are not ours to keep: a jar would grow with every new name.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sohbet-webhook")

    async def stop(self, timeout_s: float) -> None:
        """Deliver what is queued within *timeout_s*, then give up on the rest and close.

        From the call on, `notify` drops. Events still queued or in flight when the time is up
        are counted as dropped and logged (a count, no content). A receiver that hangs, or a
        backoff longer than the time left, holds this no longer than *timeout_s*. A second call
        returns at once.
        """
        if self._stopped:
            return
        if self._unreported_drops:  # the queue was full: said before `notify` drops for stopping
            self._report_drops()
        self._stopped = self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                await asyncio.wait({task})  # unlike `await task`, not raising its CancelledError
        left = len(self._queue) + len(self._inflight)
        self._queue.clear()
        self._inflight = []
        if left:
            self.stats.dropped += left
            log.warning("webhook stopped with %d events undelivered (%d dropped in all)", left, self.stats.dropped)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        """Send batches until stopped with an empty queue; survives any one batch's failure."""
        loop = asyncio.get_running_loop()
        queue, batch_max = self._queue, self._config.batch_max
        idle = True
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if idle:
                # The first event after an idle spell waits a little for company; events that
                # queued up during a POST go at once: they have waited already.
                idle = False
                await self._gather(loop)
            batch = [queue.popleft() for _ in range(min(batch_max, len(queue)))]
            self._inflight = batch
            try:
                await self._deliver(batch, loop)
            except Exception:  # the sender outlives a bad batch (a message orjson cannot encode, say)
                self.stats.failed += len(batch)
                log.exception("webhook gave up on a batch of %d events after an unexpected error", len(batch))
            self._inflight = []
            idle = not queue

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to `batch_wait_s` for a full batch: one POST, not many (cut short by `stop`)."""
        deadline = loop.time() + self._config.batch_wait_s
        while len(self._queue) < self._config.batch_max and not self._closing:
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _deliver(self, batch: list[dict[str, Any]], loop: asyncio.AbstractEventLoop) -> None:
        """POST *batch* until a 2xx, a final refusal, or `retry_for_s` after the first attempt."""
        config, n = self._config, len(batch)
        body = orjson.dumps({"events": batch})  # once per batch; each attempt only signs it anew
        first_at = loop.time()
        give_up_at = first_at + config.retry_for_s
        attempt = 0
        while True:
            status, retry_after_s, outcome = await self._post(body)
            if status is not None and HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
                self.stats.delivered += n
                self.stats.batches += 1
                return
            if status is not None and not _is_retryable(status):
                self.stats.failed += n
                log.warning("webhook %s refused a batch of %d events with %s: not retried", self._log_url, n, outcome)
                return
            attempt += 1
            wait_s = backoff_s(attempt, config.backoff_first_s, config.backoff_max_s, self._random.random())
            if retry_after_s is not None:
                wait_s = max(wait_s, min(retry_after_s, config.backoff_max_s))
            if loop.time() + wait_s > give_up_at:
                self.stats.failed += n
                log.warning(
                    "webhook %s: gave up on a batch of %d events after %d attempts in %.1f s; last: %s",
                    self._log_url,
                    n,
                    attempt,
                    loop.time() - first_at,
                    outcome,
                )
                return
            log.debug("webhook %s: attempt %d failed (%s); retrying in %.2f s", self._log_url, attempt, outcome, wait_s)
            await asyncio.sleep(wait_s)
            self.stats.retries += 1

    async def _post(self, body: bytes) -> tuple[int | None, float | None, str]:
        """One attempt, freshly signed: (status or None, Retry-After in s or None, what to log)."""
        assert self._session is not None  # started before `_run`
        headers = {
            SIGNATURE_HEADER: signature(self._secret, body, int(time.time())),
            "Content-Type": "application/json",
        }
        try:
            # aiohttp's own timeout covers the request; this one also the release afterwards.
            async with (
                asyncio.timeout(self._config.timeout_s),
                self._session.post(self._url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                # The answer's body is not read: nothing in it matters, and it is the peer's to size.
                status = response.status
                return status, _retry_after_s(response.headers.get("Retry-After")), f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The class name, not the text: some aiohttp errors quote the whole URL.
            reason = getattr(exc, "strerror", None)
            return None, None, type(exc).__name__ + (f" ({reason})" if reason else "")
