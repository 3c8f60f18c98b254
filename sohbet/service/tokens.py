"""Tokens verified recently, so a client that sends the same token again (each HTTP API call,
each reconnect) is not made to pay for its signature check again.

Layer: service. Imports the standard library, `sohbet.auth` and the service's clock.

Checking a JWT's signature is most of the cost of an HTTP API call (pyjwt, measured: about a
third of the server's time on a send over HTTP). A token that verified stays good until its
`exp` (plus the leeway) while the keys stay the same, so its identity is remembered, keyed by
the token's SHA-256: a changed key set (`Verifier.generation`, a JWKS reload) or a passed `exp`
sends it back to the verifier. The memory is bounded: the least recently used go first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final

from sohbet.auth import Identity, Verifier
from sohbet.service.session import Clock

__all__ = ["MAX_REMEMBERED", "VerifiedTokens"]

#: Tokens remembered: about 200 bytes each (a digest and an identity), whatever the token's size.
MAX_REMEMBERED: Final = 10_000


class VerifiedTokens:
    """A verifier in front of which the tokens that verified lately are remembered."""

    def __init__(self, verifier: Verifier, clock: Clock, leeway_s: float, most: int = MAX_REMEMBERED) -> None:
        self.verifier = verifier
        self._clock = clock
        self._leeway_s = leeway_s
        self._most = most
        self._known: OrderedDict[bytes, tuple[Identity, int]] = OrderedDict()

    def verify(self, token: str) -> Identity:
        """The identity *token* proves (see `Verifier.verify`).

        Raises:
            AuthError: the token is refused (refusals are not remembered: they cost the sender).
        """
        digest = hashlib.sha256(token.encode()).digest()
        known = self._known.get(digest)
        generation = self.verifier.generation
        if known is not None:
            identity, verified_with = known
            if verified_with == generation and identity.exp > self._clock.wall() - self._leeway_s:
                self._known.move_to_end(digest)
                return identity
            del self._known[digest]
        identity = self.verifier.verify(token)
        self._known[digest] = (identity, generation)
        if len(self._known) > self._most:
            self._known.popitem(last=False)
        return identity

    def __len__(self) -> int:
        return len(self._known)
