"""The webhook to the application: signed, batched, in order, retried for a bounded time, and never
in chat's way. Every test POSTs to a real aiohttp.web receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

import sohbet
from sohbet.api.webhook import (
    MAX_RECIPIENTS,
    SIGNATURE_HEADER,
    WebhookSender,
    backoff_s,
    signature,
    verify_signature,
)
from sohbet.config import WebhookConfig
from sohbet.errors import ConfigError, InvalidState

from .receiver import HANG, Answer, Receiver, receiving

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SECRET = "whsec-" + "k" * 32
#: Slack for lower bounds on waits: uvloop's timers tick in milliseconds.
EPSILON_S = 0.005


def receiver_verify(secret: bytes, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    # The receiving side's check as docs/operations.md shows it, without sohbet: keep them the same.
    if len(header) > 1024:
        return False
    fields = [item.strip().partition("=") for item in header.split(",")]
    stamps = [v for k, _, v in fields if k == "t"]
    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()):
        return False
    if abs(time.time() - int(stamps[0])) > tolerance_s:
        return False
    expected = hmac.new(secret, stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest().encode()
    return any(hmac.compare_digest(expected, v.encode()) for k, _, v in fields if k == "v1")


def config(url: str, **overrides: Any) -> WebhookConfig:
    """Quick to retry and not waiting for company, unless a test says otherwise."""
    settings: dict[str, Any] = {"batch_wait_s": 0.0, "backoff_first_s": 0.01, "backoff_max_s": 0.04}
    return WebhookConfig(url=url, secret=SECRET, **(settings | overrides))


def message(content: str, seq: int = 1) -> dict[str, Any]:
    return {"id": f"m{seq}", "conversation_id": 7, "seq": seq, "sender_id": "alice", "content": content}


def contents(receiver: Receiver) -> list[str]:
    return [event["message"]["content"] for event in receiver.events]


# --- the signature ----------------------------------------------------------------------------


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body() -> None:
    # The expected value comes from `openssl dgst -sha256 -hmac`, not from Python's hmac.
    assert signature("s" * 32, b'{"events":[]}', 1700000000) == (
        "t=1700000000,v1=4f7b9976169ad19bdb6e4f29ef4646feeee5657dc952aeddbc28bd9fbb9b0300"
    )


NOW = 1_700_000_000
BODY = b'{"events":[{"type":"chat:message"}]}'
GOOD = signature(SECRET, BODY, NOW)
MAC = GOOD.partition(",v1=")[2]
OTHER = signature("another-secret-" + "x" * 32, BODY, NOW).partition(",v1=")[2]


@pytest.mark.parametrize(
    ("header", "body", "now", "ok"),
    [
        (GOOD, BODY, NOW, True),
        (GOOD, BODY, NOW + 300, True),
        (GOOD, BODY, NOW - 300, True),
        (f"t={NOW}, v1={MAC}", BODY, NOW, True),
        (f"v1={MAC},t={NOW}", BODY, NOW, True),
        (f"t={NOW},v1={OTHER},v1={MAC}", BODY, NOW, True),  # mid-rotation: one of them matches
        (f"t={NOW},v1={MAC},v1={OTHER}", BODY, NOW, True),
        (f"t={NOW},v0=whatever,v1={MAC}", BODY, NOW, True),  # other schemes are ignored
        (GOOD, BODY + b" ", NOW, False),  # tampered body
        (GOOD, BODY.replace(b"chat", b"chaT"), NOW, False),
        (GOOD, BODY, NOW + 301, False),  # a replay, too old
        (GOOD, BODY, NOW - 301, False),  # from the future
        (f"t={NOW},v1={OTHER}", BODY, NOW, False),  # another secret
        (f"t={NOW + 1},v1={MAC}", BODY, NOW, False),  # the timestamp is signed too
        ("", BODY, NOW, False),
        (f"t={NOW}", BODY, NOW, False),
        (f"v1={MAC}", BODY, NOW, False),
        (f"t={NOW},t={NOW},v1={MAC}", BODY, NOW, False),
        (f"t=+{NOW},v1={MAC}", BODY, NOW, False),
        (f"t=,v1={MAC}", BODY, NOW, False),
        ("t=" + "1" * 13 + f",v1={MAC}", BODY, NOW, False),
        (f"t=1²,v1={MAC}", BODY, NOW, False),
        (f"t={NOW};v1={MAC}", BODY, NOW, False),
        (f"t={NOW},v1={MAC},junk", BODY, NOW, False),
        (f"t={NOW},v1={MAC.upper()}", BODY, NOW, False),
        (f"t={NOW},v1={MAC[:-1]}", BODY, NOW, False),
        (f"t={NOW},v1={MAC[:-1]}é", BODY, NOW, False),
        (f"t={NOW},v1={MAC}" + ",v0=x" * 300, BODY, NOW, False),  # too long to read
    ],
)
def test_verify_signature(header: str, body: bytes, now: int, ok: bool) -> None:
    assert verify_signature(SECRET, header, body, now) is ok


@pytest.mark.parametrize(
    ("make_header", "body", "ok"),
    [
        (lambda now: signature(SECRET, BODY, now), BODY, True),
        (lambda now: signature(SECRET, BODY, now), BODY + b"x", False),
        (lambda now: signature(SECRET, BODY, now - 400), BODY, False),
        (lambda now: signature(SECRET + "x", BODY, now), BODY, False),
        (lambda now: f"t={now},v1={OTHER},v1={signature(SECRET, BODY, now)[-64:]}", BODY, True),
        (lambda now: f"t={now},v1=é", BODY, False),
        (lambda now: f"t=x{now},v1=00", BODY, False),
        (lambda now: f"t={now},t={now}", BODY, False),
        (lambda now: "t=" + "9" * 5000, BODY, False),
    ],
)
def test_the_documented_receiver_check_agrees(make_header: Callable[[int], str], body: bytes, ok: bool) -> None:
    header = make_header(int(time.time()))
    assert receiver_verify(SECRET.encode(), header, body) is ok
    assert verify_signature(SECRET, header, body, time.time()) is ok


def test_backoff_doubles_up_to_its_cap_and_jitters_within_the_upper_half() -> None:
    caps = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for attempt, cap in enumerate(caps, start=1):
        assert backoff_s(attempt, 0.5, 30.0, 0.0) == cap / 2
        assert backoff_s(attempt, 0.5, 30.0, 0.5) == cap * 3 / 4
        assert cap / 2 <= backoff_s(attempt, 0.5, 30.0, 0.999999) < cap
    assert backoff_s(100_000, 0.5, 30.0, 0.0) == 15.0  # no overflow however long it retried


def test_a_sender_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="webhook URL and secret"):
        WebhookSender(WebhookConfig())


# --- delivery ---------------------------------------------------------------------------------


def test_each_post_is_signed_json_of_chat_message_events(run: Run) -> None:
    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url))
            await sender.start()
            sender.notify(["bob", "carol"], message("hello", 1))
            sender.notify(("dave",), message("again", 2))
            await receiver.wait_for(1)
            await sender.stop(timeout_s=5.0)
        [request] = receiver.requests
        assert request.path == "/hook"
        assert orjson.loads(request.body) == {
            "events": [
                {"type": "chat:message", "recipients": ["bob", "carol"], "message": message("hello", 1)},
                {"type": "chat:message", "recipients": ["dave"], "message": message("again", 2)},
            ]
        }
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"] == f"sohbet/{sohbet.__version__}"
        header = request.headers[SIGNATURE_HEADER]
        assert verify_signature(SECRET, header, request.body, time.time())
        assert receiver_verify(SECRET.encode(), header, request.body)
        assert not verify_signature("another-secret-" + "x" * 32, header, request.body, time.time())
        assert not verify_signature(SECRET, header, request.body.replace(b"hello", b"hellO"), time.time())
        assert abs(int(header.split(",")[0].removeprefix("t=")) - time.time()) < 5
        stats = sender.stats
        assert (stats.queued, stats.delivered, stats.batches, stats.retries, stats.failed, stats.dropped) == (
            2,
            2,
            1,
            0,
            0,
            0,
        )

    run(main())


def test_batches_are_bounded_in_order_one_at_a_time_and_never_repeated(run: Run) -> None:
    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_max=100))
            await sender.start()
            receiver.gate.clear()  # the receiver is slow: chat goes on meanwhile
            sender.notify(["bob"], message("0", 0))
            await receiver.wait_for(1)
            for i in range(1, 251):
                sender.notify(["bob"], message(str(i), i))
            assert sender.stats.queue_length == 250
            receiver.gate.set()
            await receiver.wait_for_event("250")
            await sender.stop(timeout_s=5.0)
        assert [len(r.events) for r in receiver.requests] == [1, 100, 100, 50]
        assert contents(receiver) == [str(i) for i in range(251)]
        assert receiver.most_in_flight == 1
        assert (sender.stats.delivered, sender.stats.batches, sender.stats.queue_length) == (251, 4, 0)

    run(main())


def test_a_message_for_a_large_group_is_told_in_events_of_bounded_size(run: Run) -> None:
    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_max=100))
            await sender.start()
            everyone = [f"u{n}" for n in range(2 * MAX_RECIPIENTS + 5)]
            sender.notify(everyone, message("big", 1))
            await receiver.wait_for_event("big")
            await sender.stop(timeout_s=5.0)
        told = [e["recipients"] for e in receiver.events]
        assert [len(r) for r in told] == [MAX_RECIPIENTS, MAX_RECIPIENTS, 5]
        assert [u for part in told for u in part] == everyone  # each once, in order
        assert sender.stats.queued == sender.stats.delivered == 3

    run(main())


def test_an_idle_sender_waits_a_little_for_company(run: Run) -> None:
    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_max=3, batch_wait_s=10.0))
            await sender.start()
            started = time.monotonic()
            sender.notify(["bob"], message("a"))
            for _ in range(5):
                await asyncio.sleep(0)  # the sender wakes and starts waiting for company
            sender.notify(["bob"], message("b"))
            sender.notify(["bob"], message("c"))  # a full batch: sent without waiting out the 10 s
            await receiver.wait_for(1)
            assert time.monotonic() - started < 5.0
            await sender.stop(timeout_s=5.0)
        assert [r.events for r in receiver.requests] == [
            [{"type": "chat:message", "recipients": ["bob"], "message": message(c)} for c in "abc"],
        ]

        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_wait_s=0.1))
            await sender.start()
            for _ in range(5):
                await asyncio.sleep(0)  # the sender starts, finds nothing to do, and waits
            notified = time.monotonic()
            sender.notify(["bob"], message("alone"))
            await receiver.wait_for(1)
            assert receiver.requests[0].at - notified >= 0.1 - EPSILON_S
            await sender.stop(timeout_s=5.0)

    run(main())


# --- retries ----------------------------------------------------------------------------------


def test_server_errors_are_retried_with_growing_jittered_backoff(run: Run) -> None:
    failures = [500, 503, 502, 500]

    async def main() -> None:
        async with receiving(lambda i, body: failures[i] if i < len(failures) else 200) as receiver:
            sender = WebhookSender(config(receiver.url, backoff_first_s=0.02, backoff_max_s=0.08))
            await sender.start()
            sender.notify(["bob"], message("persist"))
            await receiver.wait_for(5)
            await sender.stop(timeout_s=5.0)
        gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
        for gap, cap in zip(gaps, [0.02, 0.04, 0.08, 0.08], strict=True):
            assert gap >= cap / 2 - EPSILON_S  # equal jitter: at least half the cap
        assert sum(gaps) < 5.0
        assert len({r.body for r in receiver.requests}) == 1  # the same batch each time
        for r in receiver.requests:
            assert verify_signature(SECRET, r.headers[SIGNATURE_HEADER], r.body, time.time())
        stats = sender.stats
        assert (stats.delivered, stats.batches, stats.retries, stats.failed) == (1, 1, 4, 0)

    run(main())


def test_too_many_requests_waits_at_least_its_retry_after(run: Run) -> None:
    answers: list[Answer] = [(429, {"Retry-After": "2"}), 200]

    async def main() -> None:
        async with receiving(lambda i, body: answers[i]) as receiver:
            sender = WebhookSender(config(receiver.url, backoff_max_s=5.0))
            await sender.start()
            sender.notify(["bob"], message("later"))
            await receiver.wait_for(2)
            await sender.stop(timeout_s=5.0)
        first, second = receiver.requests
        assert second.at - first.at >= 2.0 - EPSILON_S
        # Each attempt is signed anew with its own time: two seconds apart, whatever the fractions.
        stamps = [int(r.headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t=")) for r in (first, second)]
        assert stamps[1] > stamps[0]
        for request, stamp in zip((first, second), stamps, strict=True):
            assert int(request.wall) - 1 <= stamp <= int(request.wall)
        assert sender.stats.delivered == 1

    run(main())


def test_retry_after_is_capped_by_the_longest_backoff_and_a_date_is_ignored(run: Run) -> None:
    answers: list[Answer] = [
        (429, {"Retry-After": "3600"}),
        (503, {"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}),
        (408, {"Retry-After": "soon"}),
        200,
    ]

    async def main() -> None:
        async with receiving(lambda i, body: answers[i]) as receiver:
            sender = WebhookSender(config(receiver.url, backoff_max_s=0.1))
            await sender.start()
            sender.notify(["bob"], message("capped"))
            await receiver.wait_for(4)
            await sender.stop(timeout_s=5.0)
        first, second, *_ = receiver.requests
        assert 0.1 - EPSILON_S <= second.at - first.at < 5.0
        assert (sender.stats.delivered, sender.stats.retries) == (1, 3)

    run(main())


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 301])
def test_other_refusals_are_not_retried(run: Run, status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sohbet.webhook")

    async def main() -> None:
        answer = lambda i, body: (status, {"Location": "/elsewhere"}) if b"refused" in body else 200  # noqa: E731
        async with receiving(answer) as receiver:
            sender = WebhookSender(config(receiver.url))
            await sender.start()
            sender.notify(["bob"], message("refused"))
            await receiver.wait_for(1)
            sender.notify(["bob"], message("next"))  # the marker: it goes only after "refused" is done
            await receiver.wait_for_event("next")
            await sender.stop(timeout_s=5.0)
        assert contents(receiver) == ["refused", "next"]  # once, and no redirect followed
        assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
        assert (sender.stats.failed, sender.stats.delivered, sender.stats.retries) == (1, 1, 0)

    run(main())
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"refused a batch of 1 events with HTTP {status}: not retried" in warning.getMessage()


def test_a_batch_is_given_up_after_retry_for_s(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sohbet.webhook")

    async def main() -> None:
        async with receiving(lambda i, body: 500 if b"doomed" in body else 200) as receiver:
            sender = WebhookSender(config(receiver.url, retry_for_s=0.3, backoff_first_s=0.02, backoff_max_s=0.05))
            await sender.start()
            sender.notify(["bob"], message("doomed"))
            await receiver.wait_for(1)
            sender.notify(["bob"], message("next"))  # waits behind the doomed batch
            await receiver.wait_for_event("next")
            await sender.stop(timeout_s=5.0)
        doomed = [r for r in receiver.requests if b"doomed" in r.body]
        assert len(doomed) >= 4
        assert doomed[-1].at - doomed[0].at <= 0.3 + 0.05  # no attempt starts after retry_for_s (+ timer lag)
        assert not any(b"doomed" in r.body for r in receiver.requests[len(doomed) :])
        stats = sender.stats
        assert (stats.failed, stats.delivered, stats.retries) == (1, 1, len(doomed) - 1)

    run(main())
    [warning] = caplog.records
    assert "gave up on a batch of 1 events after" in warning.getMessage()
    assert warning.getMessage().endswith("last: HTTP 500")


def test_an_unreachable_receiver_is_retried_then_given_up(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sohbet.webhook")
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        sender = WebhookSender(config(f"http://127.0.0.1:{port}/hook", retry_for_s=0.2))
        await sender.start()
        sender.notify(["bob"], message("nobody there"))
        started = time.monotonic()
        await sender.stop(timeout_s=10.0)  # returns when the batch is given up, well before
        assert time.monotonic() - started < 5.0
        assert (sender.stats.failed, sender.stats.dropped, sender.stats.delivered) == (1, 0, 0)
        assert sender.stats.retries >= 2

    run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "last: ClientConnectorError" in warnings[0]


def test_a_post_that_times_out_is_retried(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sohbet.webhook")

    async def main() -> None:
        async with receiving(lambda i, body: HANG if i == 0 else 200) as receiver:
            sender = WebhookSender(config(receiver.url, timeout_s=0.2))
            await sender.start()
            sender.notify(["bob"], message("slowly"))
            await receiver.wait_for(2)
            await sender.stop(timeout_s=5.0)
        first, second = receiver.requests
        assert second.at - first.at >= 0.2 - EPSILON_S
        assert (sender.stats.delivered, sender.stats.retries) == (1, 1)

    run(main())
    assert any("attempt 1 failed (TimeoutError)" in r.getMessage() for r in caplog.records)


# --- never in chat's way ----------------------------------------------------------------------


def test_a_full_queue_drops_counts_and_warns_once_without_content(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sohbet.webhook")

    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_max=2, queue_max=5))
            await sender.start()
            receiver.gate.clear()
            sender.notify(["carol-the-recipient"], message("secret words 0"))
            await receiver.wait_for(1)
            for i in range(1, 21):
                sender.notify(["carol-the-recipient"], message(f"secret words {i}"))
            assert (sender.stats.queued, sender.stats.dropped, sender.stats.queue_length) == (6, 15, 5)
            during = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert during == ["webhook dropped 1 events since the last warning (1 in all): 5 are queued already; "
                              "the receiver is slower than chat or down"]  # fmt: skip
            receiver.gate.set()
            await receiver.wait_for_event("secret words 5")
            await sender.stop(timeout_s=5.0)
        assert contents(receiver) == [f"secret words {i}" for i in range(6)]
        assert sender.stats.delivered == 6

    run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[1].startswith("webhook dropped 14 events since the last warning (15 in all)")  # at stop
    assert len(warnings) == 2
    assert not any("secret words" in line or "carol" in line for line in caplog.messages)


def test_a_hanging_receiver_blocks_neither_notify_nor_stop(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sohbet.webhook")

    async def main() -> None:
        async with receiving(lambda i, body: HANG) as receiver:
            sender = WebhookSender(config(receiver.url, timeout_s=60.0))
            await sender.start()
            sender.notify(["bob"], message("stuck"))
            await receiver.wait_for(1)
            started = time.perf_counter()
            for i in range(10_000):
                sender.notify(["bob"], message("queued", i))
            assert time.perf_counter() - started < 1.0  # about 10 ms: nothing waits on the receiver
            assert sender.stats.queue_length == 10_000 and sender.stats.dropped == 0
            started = time.monotonic()
            await sender.stop(timeout_s=0.3)
            assert 0.3 - EPSILON_S <= time.monotonic() - started < 2.0
            sender.notify(["bob"], message("after the end"))
        stats = sender.stats
        assert (stats.dropped, stats.delivered, stats.failed, stats.queue_length) == (10_002, 0, 0, 0)

    run(main())
    assert "webhook stopped with 10001 events undelivered" in caplog.messages[0]
    assert "the sender has stopped" in caplog.messages[1]


def test_stop_does_not_wait_out_a_backoff(run: Run) -> None:
    async def main() -> None:
        async with receiving(lambda i, body: 503) as receiver:
            sender = WebhookSender(config(receiver.url, backoff_first_s=20.0, backoff_max_s=20.0))
            await sender.start()
            sender.notify(["bob"], message("backing off"))
            await receiver.wait_for(1)
            started = time.monotonic()
            await sender.stop(timeout_s=0.2)
            assert time.monotonic() - started < 2.0
        assert (sender.stats.dropped, sender.stats.failed, len(receiver.requests)) == (1, 0, 1)

    run(main())


def test_stop_delivers_what_is_queued(run: Run) -> None:
    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_max=1000, batch_wait_s=30.0))
            for i in range(250):  # before start: they go first
                sender.notify(["bob"], message(str(i), i))
            await sender.start()
            started = time.monotonic()
            await sender.stop(timeout_s=10.0)  # not waiting out batch_wait_s for a full batch
            assert time.monotonic() - started < 5.0
        assert [len(r.events) for r in receiver.requests] == [250]
        assert contents(receiver) == [str(i) for i in range(250)]
        assert (sender.stats.delivered, sender.stats.dropped) == (250, 0)

    run(main())


def test_a_batch_that_cannot_be_encoded_fails_alone(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sohbet.webhook")

    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, batch_max=1))
            await sender.start()
            sender.notify(["bob"], {"content": object()})  # a caller's bug, not the receiver's
            sender.notify(["bob"], message("fine"))
            await receiver.wait_for(1)
            await sender.stop(timeout_s=5.0)
        assert contents(receiver) == ["fine"]
        assert (sender.stats.failed, sender.stats.delivered) == (1, 1)

    run(main())
    assert "gave up on a batch of 1 events after an unexpected error" in caplog.messages[0]


def test_logs_name_the_url_without_credentials_and_never_the_secret(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sohbet.webhook")

    async def main() -> None:
        answer = lambda i, body: 500 if b"retried" in body else 400  # noqa: E731
        async with receiving(answer) as receiver:
            url = receiver.url.replace("http://", "http://user:pa55word@") + "?token=t0ken#frag"
            sender = WebhookSender(config(url, retry_for_s=0.1, batch_max=1))
            await sender.start()
            sender.notify(["carol-the-recipient"], message("retried words"))
            sender.notify(["carol-the-recipient"], message("refused words"))
            await sender.stop(timeout_s=5.0)
        assert receiver.requests[0].headers["Authorization"].startswith("Basic ")  # the URL's userinfo is used
        assert (sender.stats.failed, sender.stats.retries > 0) == (2, True)
        return receiver.url

    plain = run(main())
    text = "\n".join(caplog.messages)
    assert f"webhook {plain} refused a batch" in text and f"webhook {plain}: gave up" in text
    for leak in (SECRET, "pa55word", "user:", "t0ken", "frag", "v1=", "words", "carol"):
        assert leak not in text


def test_start_and_stop_are_used_once(run: Run) -> None:
    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url))
            await sender.start()
            with pytest.raises(InvalidState, match="already started"):
                await sender.start()
            await sender.stop(timeout_s=1.0)
            await sender.stop(timeout_s=1.0)  # a second stop returns at once
            with pytest.raises(InvalidState, match="already started"):
                await sender.start()
            never_started = WebhookSender(config(receiver.url))
            never_started.notify(["bob"], message("never sent"))
            await never_started.stop(timeout_s=1.0)
            assert never_started.stats.dropped == 1
        assert receiver.requests == []

    run(main())


def test_no_one_sender_takes_more_than_its_share(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone may put anyone in a group: one user sending to large groups of people who are not
    connected must not fill the queue for everyone else."""

    async def main() -> None:
        async with receiving() as receiver:
            sender = WebhookSender(config(receiver.url, sender_rate_per_s=0.001, sender_burst=30))
            await sender.start()
            sender.notify([f"u{n}" for n in range(30)], message("mallory 1"))  # a burst's worth
            sender.notify(["u1"], message("mallory 2"))  # over the share: dropped
            sender.notify(["bob"], {**message("from carol"), "sender_id": "carol"})  # another sender
            await receiver.wait_for_event("from carol")
            await sender.stop(timeout_s=5.0)
        assert contents(receiver) == ["mallory 1", "from carol"]
        assert sender.stats.dropped == 1
        warned = [r.getMessage() for r in caplog.records if r.name == "sohbet.webhook"]
        assert any("a sender's messages were for more than 0.001 recipients a second" in m for m in warned)
        assert not any("mallory" in m or "u1" in m for m in warned)  # counts only

    run(main())
