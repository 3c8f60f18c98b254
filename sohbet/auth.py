"""JWT verification: a token in, an `Identity` out, with the algorithm pinned by configuration.

Layer: domain. Imports pyjwt, the standard library, `sohbet.config` and the chat ids; no I/O:
a JWKS file's bytes come in from the entry layer (`sohbet.app.keys`), which reads and watches
the file. pyjwt's own `exp`/`nbf` check is the one clock read in the pure layers
(docs/architecture.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import jwt

from sohbet.chat.ids import UserId, is_user_id
from sohbet.config import HMAC_ALGORITHMS, MAX_KID_CHARS, MIN_SECRET_BYTES, AuthConfig
from sohbet.errors import ConfigError, TokenExpired, TokenInvalid, shown

#: The largest `exp` taken (2^53 - 1 seconds, the largest integer a JSON peer represents exactly).
_LATEST_EXP: Final = 2**53 - 1
#: The largest JWKS file read: a few hundred keys; anything larger is a wrong file.
MAX_JWKS_BYTES: Final = 1 << 20
#: The one `use` a verification key may declare (RFC 7517 §4.2); and its `key_ops` entry (§4.3).
_SIGNATURE_USE: Final = "sig"
_VERIFY_OP: Final = "verify"
#: What pyjwt's JWK parsing raises for a key it cannot build (a KeyError for an `oct` key without `k`).
_JWK_ERRORS: Final = (jwt.PyJWTError, KeyError, TypeError, ValueError)

#: A key as pyjwt's `prepare_key` returns it: bytes for HMAC, a `cryptography` public key otherwise.
PreparedKey: TypeAlias = Any

__all__ = ["MAX_JWKS_BYTES", "Identity", "KeySet", "Verifier", "issue_token", "parse_jwks"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and until when (epoch seconds)."""

    user_id: UserId
    exp: float


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys of a JWKS that verify the configured algorithm, by kid, and why the others did not."""

    keys: Mapping[str, PreparedKey] = field(repr=False)
    #: One line per key left out, naming its kid and why (never its material): logged as warnings.
    skipped: tuple[str, ...] = ()


def parse_jwks(data: bytes, algorithm: str) -> KeySet:
    """Take from a JSON Web Key Set (RFC 7517 §5) the keys that can verify *algorithm* tokens.

    A key meant for something else is skipped, as §5 asks: another `alg`, a `kty` or curve that does
    not fit, a `use` other than `sig`, `key_ops` without `verify`, a private key (whose file should
    not be on this server), or material pyjwt cannot build a key from. The set as a whole is refused
    when it is not a JWKS, when a key has no kid or one another key has (the kid picks the key, so
    it must be unambiguous), when an `oct` key is shorter than a configured secret may be, or when no
    key is left.

    Raises:
        ConfigError: why the set is refused; the message never holds key material.
    """
    if len(data) > MAX_JWKS_BYTES:
        raise ConfigError(f"{len(data)} bytes is more than a JWKS of {MAX_JWKS_BYTES} bytes may be")
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # its msg and position, never the document's text
        raise ConfigError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ConfigError("not JSON: nested too deeply") from None
    except ValueError:  # a number of more digits than Python converts (4300), say
        raise ConfigError("not JSON this server reads: a number too long") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError('not a JWK Set: expected an object with a non-empty "keys" array')
    hmac = algorithm in HMAC_ALGORITHMS
    keys: dict[str, PreparedKey] = {}
    kids: set[str] = set()
    skipped: list[str] = []
    for n, entry in enumerate(entries):
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS:
            raise ConfigError(f"key {n} has no kid (a string of 1-{MAX_KID_CHARS} characters)")
        if kid in kids:  # skipped or not: a kid names one key
            raise ConfigError(f"kid {kid!r} is given to more than one key")
        kids.add(kid)
        why = _unfit(entry, algorithm)
        if why is None:
            try:
                key = jwt.PyJWK(entry, algorithm).key  # pinned: the key's own `alg` was checked above
                key = jwt.get_algorithm_by_name(algorithm).prepare_key(key)  # an EC key's curve, say
            except _JWK_ERRORS:  # not quoted: pyjwt's message may hold the key
                why = f"kty {shown(entry.get('kty'))} is not a usable {algorithm} key"
        if why is not None:
            skipped.append(f"kid {kid!r}: {why}, skipped")
            continue
        if hmac and len(key) < MIN_SECRET_BYTES:
            raise ConfigError(f"kid {kid!r}: oct key of {len(key)} bytes is shorter than {MIN_SECRET_BYTES}")
        keys[kid] = key
    if not keys:
        raise ConfigError(f"no key in the set verifies {algorithm} tokens")
    return KeySet(keys, tuple(skipped))


def _unfit(entry: dict[str, Any], algorithm: str) -> str | None:
    """Why a JWK's own members say it is not for verifying *algorithm* tokens, if they do."""
    alg, use, ops = entry.get("alg"), entry.get("use"), entry.get("key_ops")
    if alg is not None and alg != algorithm:
        return f"alg {shown(alg)} is not the configured {algorithm}"
    if use is not None and use != _SIGNATURE_USE:
        return f"use {shown(use)} is not {_SIGNATURE_USE!r}"
    if ops is not None and (not isinstance(ops, list) or _VERIFY_OP not in ops):
        return f"key_ops {shown(ops)} lack {_VERIFY_OP!r}"
    if entry.get("kty") != "oct" and "d" in entry:
        return "a private key: give the server only the public key"
    return None


class Verifier:
    """Verify tokens against the configured algorithm, keys and claims (docs/protocol.md, "Connecting").

    The keys are the configured secret or public keys, and the keys of a JWKS file once
    `use_jwks` has been given them: until then, a configuration with only a JWKS file refuses
    every token.
    """

    __slots__ = ("_config", "_fixed", "_keys", "generation")

    def __init__(self, config: AuthConfig) -> None:
        """Prepare the configured keys.

        Raises:
            ConfigError: a public key that is not one of the configured algorithm, or a private key.
        """
        self._config = config
        self._fixed: dict[str | None, PreparedKey] = {}
        if config.secret is not None:
            self._fixed[None] = config.secret.encode()
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
            self._fixed[kid] = key
        self._keys = self._fixed
        #: Counts the key sets used so far: what was verified with an earlier one is verified again.
        self.generation = 0

    @property
    def kids(self) -> tuple[str | None, ...]:
        """The kids of the keys in use now (None: the key of tokens without a kid)."""
        return tuple(self._keys)

    def use_jwks(self, jwks: KeySet) -> None:
        """Verify with the configured keys and *jwks* from now on, instead of the previous JWKS.

        One assignment swaps the whole set, so a `verify` running on the event loop sees the old set
        or the new one, never a mixture. Tokens of a kid no longer present are refused from then on;
        connections they opened stay open until their `exp`.

        Raises:
            ConfigError: a kid of *jwks* is also a configured key's; the keys in use stay as they were.
        """
        clash = sorted(kid for kid in jwks.keys if kid in self._fixed)
        if clash:
            raise ConfigError(f"kid {clash[0]!r} is both in the JWKS and a --jwt-public-key")
        keys = dict(self._fixed)
        for kid, key in jwks.keys.items():
            keys[kid] = key
        self._keys = keys  # the swap: built aside, assigned once
        self.generation += 1

    def verify(self, token: str) -> Identity:
        """Return the identity a token proves.

        Raises:
            TokenExpired: `exp` (plus leeway) has passed.
            TokenInvalid: anything else: malformed, wrong algorithm or key, missing claims, a
                `sub` that is not a string of 1-128 characters.
        """
        config, keys = self._config, self._keys  # one read: a swap by `use_jwks` does not split it
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = keys.get(kid)
            if key is None and len(keys) == 1 and (kid is None or None in keys):
                key = next(iter(keys.values()))  # one key: a kid cannot pick another
            if key is None:
                raise TokenInvalid(f"no key for kid {shown(kid)}")
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
        # pyjwt (>= 2.10) has already checked that sub is a string; exp it takes as a number or
        # a string of digits ("1796600000"), which the protocol does not: a NumericDate is a number.
        sub = str(claims["sub"])
        if not is_user_id(sub):
            raise TokenInvalid("sub must be a string of 1-128 characters, without U+0000 or lone surrogates")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenInvalid("exp must be a number (a NumericDate)")
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
    if config.algorithm not in HMAC_ALGORITHMS:
        raise TokenInvalid(f"cannot sign {config.algorithm} tokens: the server holds only public keys")
    if config.secret is None:
        raise TokenInvalid(
            f"cannot sign {config.algorithm} tokens without a JWT secret (a JWKS file's keys are not used)"
        )
    if not is_user_id(user_id):
        raise TokenInvalid("user id must be 1-128 characters, without U+0000")
    claims: dict[str, Any] = {"sub": user_id, "iat": int(now), "exp": int(now + ttl_s)}
    if config.audience is not None:
        claims["aud"] = config.audience
    if config.issuer is not None:
        claims["iss"] = config.issuer
    return jwt.encode(claims, config.secret.encode(), algorithm=config.algorithm)
