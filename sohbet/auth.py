"""JWT verification: a token in, an `Identity` out, with the algorithm pinned by configuration.

Layer: domain. Imports pyjwt, the standard library, `sohbet.config` and the chat ids. pyjwt's
own `exp`/`nbf` check is the one clock read in the pure layers (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import jwt

from sohbet.chat.ids import UserId, is_user_id
from sohbet.config import HMAC_ALGORITHMS, AuthConfig
from sohbet.errors import ConfigError, TokenExpired, TokenInvalid

#: The largest `exp` taken (2^53 - 1 seconds, the largest integer a JSON peer represents exactly).
_LATEST_EXP: Final = 2**53 - 1

__all__ = ["Identity", "Verifier", "issue_token"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and until when (epoch seconds)."""

    user_id: UserId
    exp: float


class Verifier:
    """Verify tokens against the configured algorithm, keys and claims (docs/protocol.md, "Connecting")."""

    __slots__ = ("_config", "_keys")

    def __init__(self, config: AuthConfig) -> None:
        """Prepare the configured keys.

        Raises:
            ConfigError: a public key that is not one of the configured algorithm, or a private key.
        """
        self._config = config
        self._keys: dict[str | None, Any] = {}
        if config.secret is not None:
            self._keys[None] = config.secret.encode()
        algorithm = jwt.get_algorithm_by_name(config.algorithm)
        for kid, pem in config.public_keys:
            name = "without a kid" if kid is None else f"of kid {kid!r}"
            try:
                key = algorithm.prepare_key(pem)
            except (jwt.PyJWTError, TypeError, ValueError):  # pyjwt's message on a key of another kind is unhelpful
                raise ConfigError(f"the JWT public key {name} is not a {config.algorithm} public key (PEM)") from None
            # pyjwt takes a private key too, and then fails on every token (RSA, ECDSA verify with the public half).
            if hasattr(key, "private_bytes"):
                raise ConfigError(f"the JWT public key {name} is a private key: give the server only the public key")
            self._keys[kid] = key

    def verify(self, token: str) -> Identity:
        """Return the identity a token proves.

        Raises:
            TokenExpired: `exp` (plus leeway) has passed.
            TokenInvalid: anything else: malformed, wrong algorithm or key, missing claims, a
                `sub` that is not a string of 1-128 characters.
        """
        config = self._config
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid)
            if key is None and len(self._keys) == 1 and (kid is None or None in self._keys):
                key = next(iter(self._keys.values()))  # one key: a kid cannot pick another
            if key is None:
                raise TokenInvalid(f"no key for kid {kid!r}")
            claims = jwt.decode(
                token,
                key,
                algorithms=[config.algorithm],  # pinned: the token never chooses
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": config.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from None
        # pyjwt (>= 2.10) has already checked that sub is a string and exp a number.
        sub = str(claims["sub"])
        if not is_user_id(sub):
            raise TokenInvalid("sub must be a string of 1-128 characters, without U+0000")
        exp = claims["exp"]
        # pyjwt accepts any number, 10**400 too, which no float holds: bound it like every id.
        if not -_LATEST_EXP <= exp <= _LATEST_EXP:
            raise TokenInvalid("exp is out of range")
        return Identity(UserId(sub), float(exp))


def issue_token(config: AuthConfig, user_id: str, ttl_s: float, now: float) -> str:
    """Sign a token for *user_id* with the configured HMAC secret (for `sohbet-server token`).

    Raises:
        TokenInvalid: the configuration verifies with a public key, whose private half the
            server does not hold, or the user id is not 1-128 characters without U+0000.
    """
    if config.algorithm not in HMAC_ALGORITHMS or config.secret is None:
        raise TokenInvalid(f"cannot sign {config.algorithm} tokens: the server holds only public keys")
    if not is_user_id(user_id):
        raise TokenInvalid("user id must be 1-128 characters, without U+0000")
    claims: dict[str, Any] = {"sub": user_id, "iat": int(now), "exp": int(now + ttl_s)}
    if config.audience is not None:
        claims["aud"] = config.audience
    if config.issuer is not None:
        claims["iss"] = config.issuer
    return jwt.encode(claims, config.secret.encode(), algorithm=config.algorithm)
