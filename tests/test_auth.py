"""JWT verification: the algorithm is pinned by configuration, never chosen by the token."""

from __future__ import annotations

import datetime
import json
import time
import warnings

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.warnings import InsecureKeyLengthWarning

from sohbet.auth import Identity, Verifier, issue_token
from sohbet.config import AuthConfig
from sohbet.errors import SHOWN_CHARS, TokenExpired, TokenInvalid

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
        ({"sub": "alice", "exp": str(2**40)}, "exp must be a number"),  # pyjwt takes digits; we do not
        ({"sub": "sur\ud800", "exp": 2**40}, "lone surrogates"),  # valid JSON, no UTF-8
    ],
    ids=[
        "no-exp",
        "no-sub",
        "sub-not-string",
        "sub-empty",
        "sub-too-long",
        "not-yet-valid",
        "exp-string",
        "sub-surrogate",
    ],
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


# --- keys by kid: PEM files and a JWKS -------------------------------------------------------

from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402  # grouped with their tests

from sohbet.auth import MAX_JWKS_BYTES, KeySet, parse_jwks  # noqa: E402
from sohbet.errors import ConfigError  # noqa: E402

RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_P256 = ec.generate_private_key(ec.SECP256R1())
EC_P384 = ec.generate_private_key(ec.SECP384R1())
ED = ed25519.Ed25519PrivateKey.generate()
OCT = "an-oct-key-of-at-least-thirty-two-bytes"


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


def jwk(key: object, kid: str | None, **members: object) -> dict[str, object]:
    """The public JWK of a private key (or an `oct` one of a string), with a kid and more members."""
    if isinstance(key, str):
        found: dict[str, object] = {"kty": "oct", "k": jwt.utils.base64url_encode(key.encode()).decode()}
    elif isinstance(key, rsa.RSAPrivateKey):
        found = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        found = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        found = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        found["kid"] = kid
    return {**found, **members}


def jwks(*keys: object) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def signed(key: object, alg: str, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode({"sub": "alice", "exp": future()}, key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


def test_a_jwks_gives_keys_by_kid() -> None:
    keyset = parse_jwks(jwks(jwk(RSA_A, "a", use="sig", alg="RS256"), jwk(RSA_B, "b", key_ops=["verify"])), "RS256")
    assert sorted(keyset.keys) == ["a", "b"] and keyset.skipped == ()
    verifier = Verifier(AuthConfig(algorithm="RS256", jwks_file="keys.json"))
    verifier.use_jwks(keyset)
    assert verifier.kids == ("a", "b")
    assert verifier.verify(signed(RSA_A, "RS256", "a")).user_id == "alice"
    assert verifier.verify(signed(RSA_B, "RS256", "b")).user_id == "alice"
    with pytest.raises(TokenInvalid, match="Signature verification failed"):
        verifier.verify(signed(RSA_A, "RS256", "b"))  # the kid picks the key: another key's token fails
    with pytest.raises(TokenInvalid, match="no key for kid 'c'"):
        verifier.verify(signed(RSA_A, "RS256", "c"))
    with pytest.raises(TokenInvalid, match="no key for kid None"):
        verifier.verify(signed(RSA_A, "RS256"))  # two keys: a token without a kid picks none
    assert "BEGIN" not in repr(keyset) and "n=" not in repr(keyset)  # key material stays out of reprs


@pytest.mark.parametrize(
    ("alg", "key", "ok"),
    [("ES256", EC_P256, jwk(EC_P256, "e")), ("EdDSA", ED, jwk(ED, "e")), ("HS256", OCT, jwk(OCT, "e"))],
    ids=["ES256", "EdDSA", "HS256"],
)
def test_a_jwks_of_each_key_kind(alg: str, key: object, ok: dict[str, object]) -> None:
    verifier = Verifier(AuthConfig(algorithm=alg, jwks_file="keys.json"))
    with pytest.raises(TokenInvalid, match="no key for kid 'e'"):
        verifier.verify(signed(key, alg, "e"))  # no key until the entry layer has loaded the file
    verifier.use_jwks(parse_jwks(jwks(ok), alg))
    assert verifier.verify(signed(key, alg, "e")).user_id == "alice"
    assert verifier.verify(signed(key, alg)).user_id == "alice"  # one key: a token without kid uses it


OTHER = jwk(RSA_B, "usable")  # keeps each set below from being refused for want of a key


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (jwk(RSA_A, "x", alg="RS512"), "kid 'x': alg 'RS512' is not the configured RS256, skipped"),
        (jwk(RSA_A, "x", use="enc"), "kid 'x': use 'enc' is not 'sig', skipped"),
        (jwk(RSA_A, "x", key_ops=["encrypt"]), "kid 'x': key_ops ['encrypt'] lack 'verify', skipped"),
        (jwk(RSA_A, "x", key_ops="verify"), "kid 'x': key_ops 'verify' lack 'verify', skipped"),
        (jwk(EC_P256, "x"), "kid 'x': kty 'EC' is not a usable RS256 key, skipped"),
        (jwk(OCT, "x"), "kid 'x': kty 'oct' is not a usable RS256 key, skipped"),
        ({"kid": "x", "kty": "RSA", "e": "AQAB"}, "kid 'x': kty 'RSA' is not a usable RS256 key, skipped"),
        ({"kid": "x", "kty": "RSA", "n": 5, "e": "AQAB"}, "kid 'x': kty 'RSA' is not a usable RS256 key, skipped"),
        ({"kid": "x"}, "kid 'x': kty None is not a usable RS256 key, skipped"),
        (
            {**RSAAlgorithm.to_jwk(RSA_A, as_dict=True), "kid": "x", "key_ops": ["verify"]},
            "kid 'x': a private key: give the server only the public key, skipped",
        ),
        (jwk(RSA_A, "x", alg="R" * 100), f"kid 'x': alg '{'R' * (SHOWN_CHARS - 4)}... is not"),
    ],
    ids=[
        "other-alg", "use-enc", "key-ops", "key-ops-not-list", "other-kty", "oct", "no-n", "bad-n", "no-kty",
        "private", "long-value",
    ],
)  # fmt: skip
def test_keys_for_something_else_are_skipped_naming_their_kid(entry: dict[str, object], why: str) -> None:
    keyset = parse_jwks(jwks(OTHER, entry), "RS256")
    assert list(keyset.keys) == ["usable"]
    assert len(keyset.skipped) == 1 and keyset.skipped[0].startswith(why)
    for material in ("n", "d", "k"):  # no key material in what is logged
        value = entry.get(material)
        assert not isinstance(value, str) or value not in keyset.skipped[0]


def test_a_key_on_the_wrong_curve_is_skipped() -> None:
    keyset = parse_jwks(jwks(jwk(EC_P256, "p256"), jwk(EC_P384, "p384")), "ES256")
    assert list(keyset.keys) == ["p256"]
    assert keyset.skipped == ("kid 'p384': kty 'EC' is not a usable ES256 key, skipped",)


@pytest.mark.parametrize(
    ("data", "alg", "match"),
    [
        (b" " * (MAX_JWKS_BYTES + 1), "RS256", "is more than a JWKS of 1048576 bytes"),
        (b'{"keys": "\xff"}', "RS256", "^not UTF-8 text$"),
        (b'{"keys": [}', "RS256", "^not JSON: Expecting value at line 1 column 11$"),
        (b"[" * 100_000, "RS256", "^not JSON: nested too deeply$"),
        (b"[]", "RS256", 'expected an object with a non-empty "keys" array'),
        (b"{}", "RS256", "not a JWK Set"),
        (b'{"keys": []}', "RS256", "not a JWK Set"),
        (b'{"keys": {"a": 1}}', "RS256", "not a JWK Set"),
        (jwks(OTHER, "a string"), "RS256", r"^key 1 has no kid \(a string of 1-256 characters\)$"),
        (jwks({**OTHER, "kid": None}), "RS256", "^key 0 has no kid"),
        (jwks({**OTHER, "kid": ""}), "RS256", "^key 0 has no kid"),
        (jwks({**OTHER, "kid": 7}), "RS256", "^key 0 has no kid"),
        (jwks({**OTHER, "kid": "k" * 257}), "RS256", "^key 0 has no kid"),
        (jwks(jwk(RSA_A, "a"), jwk(RSA_B, "a")), "RS256", "^kid 'a' is given to more than one key$"),
        (jwks(jwk(EC_P256, "a"), jwk(RSA_B, "a")), "RS256", "^kid 'a' is given to more than one key$"),
        (jwks(jwk(EC_P256, "a")), "RS256", "^no key in the set verifies RS256 tokens$"),
        (jwks(jwk("short-secret-of-23-bytes", "s")), "HS256", "^kid 's': oct key of 24 bytes is shorter than 32$"),
    ],
    ids=[
        "too-large", "not-utf8", "not-json", "too-deep", "array", "no-keys", "empty-keys", "keys-not-array",
        "entry-not-object", "kid-null", "kid-empty", "kid-number", "kid-too-long", "kid-twice", "kid-twice-skipped",
        "none-usable", "oct-too-short",
    ],
)  # fmt: skip
def test_a_set_that_is_not_a_usable_jwks_is_refused(data: bytes, alg: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_jwks(data, alg)
    assert "AQAB" not in str(info.value) and "c2hvcnQ" not in str(info.value)  # no key material


def test_a_jwks_swap_is_whole_and_keeps_the_configured_keys() -> None:
    config = AuthConfig(algorithm="RS256", public_keys=(("pem", pem(RSA_A)),), jwks_file="keys.json")
    verifier = Verifier(config)
    assert verifier.kids == ("pem",)
    verifier.use_jwks(parse_jwks(jwks(jwk(RSA_B, "old")), "RS256"))
    old = signed(RSA_B, "RS256", "old")
    assert verifier.verify(old).user_id == "alice"
    verifier.use_jwks(parse_jwks(jwks(jwk(RSA_B, "new")), "RS256"))
    assert verifier.kids == ("pem", "new")
    with pytest.raises(TokenInvalid, match="no key for kid 'old'"):
        verifier.verify(old)  # a removed kid is refused from now on
    assert verifier.verify(signed(RSA_B, "RS256", "new")).user_id == "alice"
    assert verifier.verify(signed(RSA_A, "RS256", "pem")).user_id == "alice"
    with pytest.raises(ConfigError, match="kid 'pem' is both in the JWKS and a --jwt-public-key"):
        verifier.use_jwks(parse_jwks(jwks(jwk(RSA_B, "pem"), jwk(RSA_B, "newer")), "RS256"))
    assert verifier.kids == ("pem", "new")  # refused: the keys in use stay


def test_a_jwks_beside_the_secret_of_hs256() -> None:
    verifier = Verifier(AuthConfig(secret=SECRET, jwks_file="keys.json"))
    verifier.use_jwks(KeySet({"rotated": OCT.encode()}))
    assert verifier.kids == (None, "rotated")
    assert verifier.verify(hs({"sub": "alice", "exp": future()})).user_id == "alice"  # no kid: the secret
    assert verifier.verify(hs({"sub": "bob", "exp": future()}, OCT, headers={"kid": "rotated"})).user_id == "bob"


def test_issue_token_needs_the_secret_not_a_jwks() -> None:
    with pytest.raises(TokenInvalid, match="without a JWT secret"):
        issue_token(AuthConfig(jwks_file="keys.json"), "alice", 60, time.time())
