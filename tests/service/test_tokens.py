"""Verified tokens remembered: the signature is checked once per token while its keys stay the
same and its `exp` has not passed; refusals are never remembered; memory stays bounded."""

from __future__ import annotations

import time

import jwt
import pytest

from sohbet.auth import Identity, KeySet, Verifier
from sohbet.config import AuthConfig
from sohbet.errors import TokenInvalid
from sohbet.service.tokens import VerifiedTokens

from .conftest import FakeClock

SECRET = "a-secret-for-the-token-cache-tests-32b!"


class Counting(Verifier):
    """The real verifier, counting the tokens it was asked to check."""

    __slots__ = ("calls",)

    def __init__(self, config: AuthConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def verify(self, token: str) -> Identity:
        self.calls += 1
        return super().verify(token)


def token(user: str, exp_in: float = 600, key: str = SECRET, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode({"sub": user, "exp": int(time.time() + exp_in)}, key, algorithm="HS256", headers=headers)


def test_a_token_is_checked_once_while_it_lasts() -> None:
    verifier, clock = Counting(AuthConfig(secret=SECRET, leeway_s=5)), FakeClock()
    clock.epoch = time.time()
    tokens = VerifiedTokens(verifier, clock, leeway_s=5)
    alice = token("alice", exp_in=60)
    assert [tokens.verify(alice).user_id for _ in range(3)] == ["alice"] * 3
    assert verifier.calls == 1
    clock.advance(60)  # exp has passed, the leeway has not: still good
    tokens.verify(alice)
    assert verifier.calls == 1
    clock.advance(6)  # beyond exp and the leeway: back to the verifier
    tokens.verify(alice)  # (pyjwt reads the real clock, for which it has not expired)
    assert verifier.calls == 2


def test_refusals_are_never_remembered() -> None:
    verifier = Counting(AuthConfig(secret=SECRET))
    tokens = VerifiedTokens(verifier, FakeClock(), leeway_s=5)
    forged = token("alice", key="x" * 40)
    for _ in range(2):
        with pytest.raises(TokenInvalid):
            tokens.verify(forged)
    assert verifier.calls == 2 and len(tokens) == 0


def test_new_keys_send_every_token_back_to_the_verifier() -> None:
    verifier = Counting(AuthConfig(secret=SECRET))
    clock = FakeClock()
    clock.epoch = time.time()
    tokens = VerifiedTokens(verifier, clock, leeway_s=5)
    by_secret = token("alice")
    tokens.verify(by_secret)
    verifier.use_jwks(KeySet({"k1": b"k" * 32}, ()))  # a JWKS loaded: the key set changed
    tokens.verify(by_secret)
    assert verifier.calls == 2
    rotated = token("bob", key="k" * 32, kid="k1")
    tokens.verify(rotated)
    verifier.use_jwks(KeySet({"k2": b"j" * 32}, ()))  # k1 is gone
    with pytest.raises(TokenInvalid, match="no key for kid 'k1'"):
        tokens.verify(rotated)


def test_memory_is_bounded_least_recently_used_first() -> None:
    verifier = Counting(AuthConfig(secret=SECRET))
    clock = FakeClock()
    clock.epoch = time.time()
    tokens = VerifiedTokens(verifier, clock, leeway_s=5, most=2)
    a, b, c = token("a"), token("b"), token("c")
    tokens.verify(a)
    tokens.verify(b)
    tokens.verify(a)  # a is the most recent now
    tokens.verify(c)  # b goes
    assert len(tokens) == 2 and verifier.calls == 3
    tokens.verify(a)
    assert verifier.calls == 3
    tokens.verify(b)
    assert verifier.calls == 4
