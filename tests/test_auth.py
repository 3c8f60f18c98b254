"""JWT verification: the algorithm is pinned by configuration, never chosen by the token."""

from __future__ import annotations

import datetime
import time
import warnings

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.warnings import InsecureKeyLengthWarning

from sohbet.auth import Identity, Verifier, issue_token
from sohbet.config import AuthConfig
from sohbet.errors import TokenExpired, TokenInvalid

SECRET = "a-secret-that-is-thirty-two-bytes-long"
HS = AuthConfig(secret=SECRET, leeway_s=0)


def hs(
    claims: dict[str, object], secret: str = SECRET, alg: str = "HS256", headers: dict[str, str] | None = None
) -> str:
    return jwt.encode(claims, secret, algorithm=alg, headers=headers)


def future() -> int:
    return int(time.time()) + 3600


def test_a_valid_token_names_its_user() -> None:
    exp = future()
    assert Verifier(HS).verify(hs({"sub": "alice", "exp": exp})) == Identity("alice", float(exp))


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"sub": "alice"}, "exp"),
        ({"exp": 2**40}, "sub"),
        ({"sub": 7, "exp": 2**40}, "(?i)subject must be a string"),
        ({"sub": "", "exp": 2**40}, "1-128"),
        ({"sub": "x" * 129, "exp": 2**40}, "1-128"),
        ({"sub": "alice", "exp": 2**40, "nbf": 2**40}, "not yet valid"),
    ],
    ids=["no-exp", "no-sub", "sub-not-string", "sub-empty", "sub-too-long", "not-yet-valid"],
)
def test_claims_are_required_and_checked(claims: dict[str, object], match: str) -> None:
    with pytest.raises(TokenInvalid, match=match):
        Verifier(HS).verify(hs(claims))


def test_expired_tokens_and_leeway() -> None:
    expired = hs({"sub": "alice", "exp": int(time.time()) - 3})
    with pytest.raises(TokenExpired):
        Verifier(HS).verify(expired)
    lenient = AuthConfig(secret=SECRET, leeway_s=10)
    assert Verifier(lenient).verify(expired).user_id == "alice"


NOW = 1_700_000_000  # the fixed clock of the leeway tests (epoch seconds)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop pyjwt's clock at `NOW`: a leeway test must not depend on how long it runs."""

    class Stopped(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Stopped:
            return cls.fromtimestamp(NOW, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", Stopped)


@pytest.mark.parametrize(
    ("claims", "outcome"),
    [
        ({"exp": NOW - 29}, None),  # expired, by less than the leeway: still accepted
        ({"exp": NOW - 31}, TokenExpired),  # expired by more
        ({"exp": NOW + 3600, "nbf": NOW + 29}, None),  # not valid yet, by less than the leeway
        ({"exp": NOW + 3600, "nbf": NOW + 31}, TokenInvalid),
        ({"exp": NOW + 3600, "iat": NOW + 29}, None),  # issued by a clock a little ahead
        ({"exp": NOW + 3600, "iat": NOW + 31}, TokenInvalid),
    ],
    ids=["exp-within", "exp-beyond", "nbf-within", "nbf-beyond", "iat-within", "iat-beyond"],
)
def test_the_leeway_widens_each_time_claim_by_its_amount(
    fixed_clock: None, claims: dict[str, int], outcome: type[Exception] | None
) -> None:
    verifier = Verifier(AuthConfig(secret=SECRET, leeway_s=30))
    token = hs({"sub": "alice", **claims})
    if outcome is None:
        assert verifier.verify(token).user_id == "alice"
    else:
        with pytest.raises(outcome):
            verifier.verify(token)
    strict = Verifier(HS)  # without a leeway, every one of these is refused
    with pytest.raises(TokenExpired if "nbf" not in claims and "iat" not in claims else TokenInvalid):
        strict.verify(token)


def hs384_with_our_key(claims: dict[str, object]) -> str:
    """Signed with the configured key, by HS384; pyjwt's warning that HS384 wants 48 bytes is moot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return hs(claims, alg="HS384")


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": "alice", "exp": 2**40}, None, algorithm="none"),
        hs384_with_our_key({"sub": "alice", "exp": 2**40}),  # the right key: only the algorithm is wrong
        hs({"sub": "alice", "exp": 2**40}, secret="another-secret-of-thirty-two-bytes!!"),
        "not.a.jwt",
        "garbage",
    ],
    ids=["alg-none", "other-hmac", "wrong-secret", "bad-parts", "garbage"],
)
def test_the_token_never_chooses_the_algorithm(token: str) -> None:
    with pytest.raises(TokenInvalid):
        Verifier(HS).verify(token)


def test_audience_and_issuer_when_configured() -> None:
    config = AuthConfig(secret=SECRET, audience="chat", issuer="https://auth.example")
    good = hs({"sub": "alice", "exp": future(), "aud": "chat", "iss": "https://auth.example"})
    assert Verifier(config).verify(good).user_id == "alice"
    for claims in [
        {"sub": "alice", "exp": future(), "aud": "other", "iss": "https://auth.example"},
        {"sub": "alice", "exp": future(), "aud": "chat", "iss": "https://evil.example"},
        {"sub": "alice", "exp": future()},
    ]:
        with pytest.raises(TokenInvalid):
            Verifier(config).verify(hs(claims))


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return raw.decode()


def test_public_keys_by_kid_for_rotation() -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    config = AuthConfig(algorithm="ES256", public_keys=(("2025", pem(old)), ("2026", pem(new))))
    verifier = Verifier(config)
    for kid, key in (("2025", old), ("2026", new)):
        token = jwt.encode({"sub": "alice", "exp": future()}, key, algorithm="ES256", headers={"kid": kid})
        assert verifier.verify(token).user_id == "alice"
    crossed = jwt.encode({"sub": "alice", "exp": future()}, old, algorithm="ES256", headers={"kid": "2026"})
    with pytest.raises(TokenInvalid):
        verifier.verify(crossed)
    unknown = jwt.encode({"sub": "alice", "exp": future()}, new, algorithm="ES256", headers={"kid": "1999"})
    with pytest.raises(TokenInvalid, match="no key for kid"):
        verifier.verify(unknown)
    no_kid = jwt.encode({"sub": "alice", "exp": future()}, new, algorithm="ES256")
    with pytest.raises(TokenInvalid, match="no key for kid"):
        verifier.verify(no_kid)


def test_a_single_key_serves_tokens_with_any_kid() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = Verifier(AuthConfig(algorithm="RS256", public_keys=((None, pem(key)),)))
    token = jwt.encode({"sub": "alice", "exp": future()}, key, algorithm="RS256", headers={"kid": "whatever"})
    assert verifier.verify(token).user_id == "alice"
    hs_token = hs({"sub": "alice", "exp": future()})
    with pytest.raises(TokenInvalid):
        verifier.verify(hs_token)


def test_issue_token() -> None:
    now = time.time()
    token = issue_token(HS, "alice", 60, now)
    assert Verifier(HS).verify(token) == Identity("alice", float(int(now + 60)))
    scoped = AuthConfig(secret=SECRET, audience="chat", issuer="me")
    assert Verifier(scoped).verify(issue_token(scoped, "bob", 60, now)).user_id == "bob"
    with pytest.raises(TokenInvalid, match="1-128"):
        issue_token(HS, "", 60, now)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenInvalid, match="public keys"):
        issue_token(AuthConfig(algorithm="RS256", public_keys=((None, pem(key)),)), "alice", 60, now)


@pytest.mark.parametrize("exp", [10**400, float("nan"), float("inf"), -(10**400)], ids=["huge", "nan", "inf", "-huge"])
def test_an_exp_no_float_holds_is_refused_not_a_crash(exp: float) -> None:
    token = jwt.encode({"sub": "alice", "exp": exp}, SECRET.encode(), algorithm="HS256")
    with pytest.raises((TokenInvalid, TokenExpired)):
        Verifier(HS).verify(token)


# --- keys by kid ----------------------------------------------------------------------------

from sohbet.errors import ConfigError  # noqa: E402  # grouped with the tests that use it

RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_P384 = ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize(
    ("alg", "text", "match"),
    [
        ("RS256", "not a key", "the JWT public key of kid 'k' is not a RS256 public key"),
        ("ES256", "not a key", "not a ES256 public key"),
        ("ES256", pem(EC_P384), "not a ES256 public key"),
        ("EdDSA", pem(RSA_A), "not a EdDSA public key"),
        (
            "RS256",
            RSA_A.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "of kid 'k' is a private key: give the server only the public key",
        ),
    ],
    ids=["rs-garbage", "es-garbage", "es-wrong-curve", "ed-rsa-key", "private"],
)
def test_a_configured_key_that_cannot_verify_stops_the_start(alg: str, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Verifier(AuthConfig(algorithm=alg, public_keys=(("k", text),)))
    with pytest.raises(ConfigError, match="the JWT public key without a kid"):
        Verifier(AuthConfig(algorithm=alg, public_keys=((None, text),)))
