"""Token buckets: bursts, refill, refunds, and forgetting full buckets."""

from __future__ import annotations

from sohbet.ws.rates import Rate, RateLimiter, Sampler

RATE = Rate(per_s=2, burst=3)


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    limiter: RateLimiter[str] = RateLimiter()
    assert [limiter.take("a", 0.0, RATE) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a", 0.0, RATE) == 500
    assert limiter.take("a", 0.25, RATE) == 250  # half a token back after 0.25 s
    assert limiter.take("b", 0.0, RATE) == 0  # each key its own bucket
    limiter.refund("a", RATE)  # work that cost nothing gives its token back
    assert limiter.take("a", 0.25, RATE) == 0
    limiter.refund("c", RATE)  # no bucket: nothing to refund
    assert limiter.take("c", 0.0, Rate(0, 1)) == 0 and "c" not in limiter._buckets  # 0: unlimited
    limiter.refund("a", Rate(0, 1))  # an unlimited rate spent nothing, so gives nothing back
    assert limiter.take("a", 0.25, RATE) == 250  # half a token left, as before the refund
    assert not Rate(0, 1).is_limited and RATE.is_limited


def test_full_buckets_are_forgotten() -> None:
    limiter: RateLimiter[str] = RateLimiter()
    limiter.take("a", 0.0, RATE)  # full again at 0.5
    for _ in range(3):
        limiter.take("b", 0.0, RATE)  # full again at 1.5
    limiter.forget(now=1.0)
    assert len(limiter) == 1 and limiter.take("b", 1.0, RATE) == 0  # b kept its state: 2 tokens, now 1
    assert limiter.take("b", 1.0, RATE) == 0 and limiter.take("b", 1.0, RATE) == 500
    limiter.forget(now=10.0)
    assert len(limiter) == 0


def test_a_refunded_bucket_is_kept_until_it_is_really_full() -> None:
    # At 0.75 tokens/s, a bucket of 3 left holding 1 token is full again 2/0.75 = 2.67 s later,
    # not 2 s: forgetting it at 2.5 s would hand out a fresh burst a third of a second early.
    rate = Rate(per_s=0.75, burst=3)
    limiter: RateLimiter[str] = RateLimiter()
    assert [limiter.take("a", 0.0, rate) for _ in range(3)] == [0, 0, 0]
    limiter.refund("a", rate)
    limiter.forget(now=2.5)
    assert len(limiter) == 1
    limiter.forget(now=2.7)
    assert len(limiter) == 0


def test_a_take_may_cost_several_tokens_at_most_a_burst() -> None:
    limiter: RateLimiter[str] = RateLimiter()
    rate = Rate(10, 20)
    assert limiter.take("a", 0.0, rate, cost=15) == 0
    assert limiter.take("a", 0.0, rate, cost=6) == 100  # 5 left, one more comes in 0.1 s
    assert limiter.take("a", 0.1, rate, cost=6) == 0
    assert limiter.take("b", 0.0, rate, cost=500) == 0  # more than a burst: charged as a full bucket
    assert limiter.take("b", 0.0, rate) == 100


def test_a_sampler_lets_a_rate_through_and_says_how_many_it_held_back() -> None:
    sampler = Sampler(Rate(per_s=2.0, burst=3))
    assert [sampler.take(0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert sampler.held == 2
    assert sampler.take(0.5) == 2  # one token back: the line that goes says two did not
    assert sampler.take(0.5) is None and sampler.take(1.0) == 1
