"""A secret a bearer credential is compared with: the API key, the metrics token.

Layer: transport. Imports the standard library only.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["KnownSecret"]


class KnownSecret:
    """A configured secret, kept as its digest."""

    __slots__ = ("_digest",)

    def __init__(self, secret: str) -> None:
        self._digest = hashlib.sha256(secret.encode()).digest()

    def matches(self, credential: str) -> bool:
        """Whether *credential* is the secret, in constant time: digests are compared, so
        `compare_digest` takes the same time for any two, where the raw strings' lengths would show."""
        return hmac.compare_digest(hashlib.sha256(credential.encode()).digest(), self._digest)
