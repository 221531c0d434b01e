"""Tests for rtserver.auth.jwt: keys, algorithm pinning, signature and claim checks."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from typing import Any

import jwt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from zope.interface.verify import verifyObject

from rtserver.auth.jwt import JWTVerifier
from rtserver.config import ClientConfig, SubscriptionTokenConfig, TokenConfig
from rtserver.core.ports import ITokenVerifier
from rtserver.core.types import (
    ConnectionToken,
    InvalidToken,
    Overrides,
    SubscriptionGrant,
    SubscriptionToken,
    TokenExpired,
)

NOW = 1_700_000_000.0
SECRET = "s3cr3t-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTU"  # 64+ bytes
OTHER_SECRET = "another-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKL"


# --- helpers -----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return base64.b64encode(raw).decode()


def forge(header: dict[str, Any], payload: Any, secret: bytes | None = None) -> str:
    """Build a compact JWS by hand; HMAC-SHA256 with ``secret``, else no signature."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(body)}"
    sig = b""
    if secret is not None:
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def hs(claims: Any, secret: str = SECRET, alg: str = "HS256") -> str:
    """HMAC-signed token; claims are not checked (PyJWT's encode rejects odd types)."""
    return jwt.api_jws.encode(orjson.dumps(claims), secret, algorithm=alg)


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ec384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def hmac_verifier() -> JWTVerifier:
    return JWTVerifier(TokenConfig(hmac_secret_key=SECRET))


def conn(verifier: JWTVerifier, token: str, now: float = NOW) -> ConnectionToken:
    return verifier.verify_connection_token(token, now)


def sub(verifier: JWTVerifier, token: str, now: float = NOW) -> SubscriptionToken:
    return verifier.verify_subscription_token(token, now)


# --- algorithms and keys -------------------------------------------------------------------


def test_provides_interface(hmac_verifier: JWTVerifier) -> None:
    assert verifyObject(ITokenVerifier, hmac_verifier)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_success(hmac_verifier: JWTVerifier, alg: str) -> None:
    token = conn(hmac_verifier, hs({"sub": "42", "exp": NOW + 60}, alg=alg))
    assert token == ConnectionToken(user="42", expire_at=int(NOW + 60))


def test_short_hmac_secret_works_without_warnings() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key="secret"))
    token = forge({"alg": "HS256", "typ": "JWT"}, {"sub": "u"}, b"secret")
    assert conn(verifier, token).user == "u"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
def test_rsa_success(rsa_key: rsa.RSAPrivateKey, alg: str) -> None:
    verifier = JWTVerifier(TokenConfig(rsa_public_key=pem(rsa_key)))
    token = jwt.encode({"sub": "alice"}, rsa_key, algorithm=alg)
    assert conn(verifier, token) == ConnectionToken(user="alice")


def test_ecdsa_success(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = JWTVerifier(TokenConfig(ecdsa_public_key=pem(ec_key)))
    token = jwt.encode({"sub": "bob"}, ec_key, algorithm="ES256")
    assert conn(verifier, token).user == "bob"


def test_ecdsa_alg_pinned_to_curve(
    ec_key: ec.EllipticCurvePrivateKey, ec384_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = JWTVerifier(TokenConfig(ecdsa_public_key=pem(ec384_key)))
    assert conn(verifier, jwt.encode({"sub": "b"}, ec384_key, algorithm="ES384")).user == "b"
    with pytest.raises(InvalidToken, match="disabled"):
        conn(verifier, jwt.encode({"sub": "b"}, ec_key, algorithm="ES256"))


def test_x509_certificate_accepted_as_rsa_key(rsa_key: rsa.RSAPrivateKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(rsa_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    verifier = JWTVerifier(TokenConfig(rsa_public_key=cert_pem))
    assert conn(verifier, jwt.encode({"sub": "c"}, rsa_key, algorithm="RS256")).user == "c"


def test_several_key_types_pick_by_alg(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = JWTVerifier(
        TokenConfig(
            hmac_secret_key=SECRET, rsa_public_key=pem(rsa_key), ecdsa_public_key=pem(ec_key)
        )
    )
    assert conn(verifier, hs({"sub": "h"})).user == "h"
    assert conn(verifier, jwt.encode({"sub": "r"}, rsa_key, algorithm="RS256")).user == "r"
    assert conn(verifier, jwt.encode({"sub": "e"}, ec_key, algorithm="ES256")).user == "e"


def test_alg_confusion_rsa_pem_as_hmac_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem(rsa_key)
    forged = forge({"alg": "HS256", "typ": "JWT"}, {"sub": "admin"}, public_pem.encode())
    only_rsa = JWTVerifier(TokenConfig(rsa_public_key=public_pem))
    with pytest.raises(InvalidToken, match="disabled JWT algorithm"):
        conn(only_rsa, forged)
    both = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, rsa_public_key=public_pem))
    with pytest.raises(InvalidToken, match="bad signature"):
        conn(both, forged)


def test_rsa_token_rejected_when_only_hmac(
    hmac_verifier: JWTVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(InvalidToken, match="disabled JWT algorithm"):
        conn(hmac_verifier, jwt.encode({"sub": "x"}, rsa_key, algorithm="RS256"))


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "typ": "JWT"},
        {"alg": "None"},
        {"alg": "PS256"},
        {"alg": "EdDSA"},
        {"alg": ["HS256"]},
        {"alg": ""},
        {"typ": "JWT"},
    ],
)
def test_unsupported_algorithms(hmac_verifier: JWTVerifier, header: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken, match="unsupported JWT algorithm"):
        conn(hmac_verifier, forge(header, {"sub": "admin"}))


def test_alg_none_with_pyjwt(hmac_verifier: JWTVerifier) -> None:
    token = jwt.encode({"sub": "admin"}, None, algorithm="none")
    with pytest.raises(InvalidToken):
        conn(hmac_verifier, token)
    with pytest.raises(InvalidToken):
        sub(hmac_verifier, jwt.encode({"sub": "a", "channel": "c"}, None, algorithm="none"))


def test_crit_and_unencoded_payload_rejected(hmac_verifier: JWTVerifier) -> None:
    for header in ({"alg": "HS256", "crit": ["exp"], "exp": 1}, {"alg": "HS256", "b64": False}):
        token = forge(header, {"sub": "a"}, SECRET.encode())
        with pytest.raises(InvalidToken, match="unsupported JWS extension"):
            conn(hmac_verifier, token)


def test_kid_and_typ_headers_ignored(hmac_verifier: JWTVerifier) -> None:
    token = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, {"sub": "a"}, SECRET.encode())
    assert conn(hmac_verifier, token).user == "a"


def test_wrong_secret_is_bad_signature(hmac_verifier: JWTVerifier) -> None:
    with pytest.raises(InvalidToken, match="bad signature"):
        conn(hmac_verifier, hs({"sub": "a"}, secret=OTHER_SECRET))


def _tamper_payload(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url(orjson.dumps({'sub': 'admin'}))}.{signature}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: "not-a-jwt",
        lambda t: "a.b",
        lambda t: t + ".extra",
        lambda t: t[:-4],
        lambda t: t + "=",
        lambda t: t.replace(".", ".!", 1),
        lambda t: t + "é",
        lambda t: "x" + t[1:],
        lambda t: b64url(b"[1]") + t[t.index(".") :],
        lambda t: b64url(b"not json") + t[t.index(".") :],
        _tamper_payload,
    ],
)
def test_malformed_tokens(hmac_verifier: JWTVerifier, mangle: Any) -> None:
    token = hs({"sub": "a"})
    bad = mangle(token)
    with pytest.raises(InvalidToken) as info:
        conn(hmac_verifier, bad)
    message = str(info.value)
    assert message
    assert SECRET not in message
    assert (not bad or bad not in message) and token not in message


@pytest.mark.parametrize("body", [b"[1, 2]", b'"sub"', b'{"sub": "a", "exp": NaN}', b"{"])
def test_payload_must_be_strict_json_object(hmac_verifier: JWTVerifier, body: bytes) -> None:
    token = forge({"alg": "HS256"}, body, SECRET.encode())
    with pytest.raises(InvalidToken, match="payload"):
        conn(hmac_verifier, token)


def test_signature_checked_before_claims(hmac_verifier: JWTVerifier) -> None:
    # Expired and carrying a channel, but signed with the wrong key: "bad signature" wins.
    token = hs({"sub": "a", "exp": NOW - 10, "channel": "x"}, secret=OTHER_SECRET)
    with pytest.raises(InvalidToken, match="bad signature"):
        conn(hmac_verifier, token)


def test_non_string_token_is_invalid(hmac_verifier: JWTVerifier) -> None:
    with pytest.raises(InvalidToken):
        hmac_verifier.verify_connection_token(b"a.b.c", NOW)  # type: ignore[arg-type]


# --- key configuration errors --------------------------------------------------------------


def test_bad_rsa_pem_names_key() -> None:
    with pytest.raises(ValueError, match=r"^client\.token\.rsa_public_key: not a valid PEM"):
        JWTVerifier(TokenConfig(rsa_public_key="-----BEGIN PUBLIC KEY-----\nAAAA\n"))


def test_bad_ecdsa_pem_names_key() -> None:
    with pytest.raises(ValueError, match=r"^client\.token\.ecdsa_public_key: not a valid PEM"):
        JWTVerifier(TokenConfig(ecdsa_public_key="garbage"))


def test_bad_subscription_pem_names_key() -> None:
    config = SubscriptionTokenConfig(enabled=True, rsa_public_key="garbage")
    with pytest.raises(ValueError, match=r"^client\.subscription_token\.rsa_public_key"):
        JWTVerifier(TokenConfig(hmac_secret_key=SECRET), config)


def test_wrong_key_type_rejected(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ValueError, match=r"rsa_public_key: not an RSA public key"):
        JWTVerifier(TokenConfig(rsa_public_key=pem(ec_key)))
    with pytest.raises(ValueError, match=r"ecdsa_public_key: not an ECDSA public key"):
        JWTVerifier(TokenConfig(ecdsa_public_key=pem(rsa_key)))


def test_unsupported_curve_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError, match=r"ecdsa_public_key: unsupported curve"):
        JWTVerifier(TokenConfig(ecdsa_public_key=pem(key)))


def test_pem_as_hmac_secret_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match=r"^client\.token\.hmac_secret_key"):
        JWTVerifier(TokenConfig(hmac_secret_key=pem(rsa_key)))


def test_private_key_error_does_not_leak_key() -> None:
    secretish = "-----BEGIN PUBLIC KEY-----\nTOPSECRETMATERIAL\n-----END PUBLIC KEY-----"
    with pytest.raises(ValueError) as info:
        JWTVerifier(TokenConfig(rsa_public_key=secretish))
    assert "TOPSECRET" not in str(info.value)


def test_bad_user_id_claim_path() -> None:
    with pytest.raises(ValueError, match=r"client\.token\.user_id_claim"):
        JWTVerifier(TokenConfig(hmac_secret_key=SECRET, user_id_claim="a..b"))


def test_subscription_enabled_without_key() -> None:
    with pytest.raises(ValueError, match=r"^client\.subscription_token: enabled but no"):
        JWTVerifier(TokenConfig(hmac_secret_key=SECRET), SubscriptionTokenConfig(enabled=True))


def test_from_config_none_without_keys() -> None:
    assert JWTVerifier.from_config(ClientConfig()) is None
    disabled_sub_keys = ClientConfig(
        subscription_token=SubscriptionTokenConfig(hmac_secret_key=SECRET)
    )
    assert JWTVerifier.from_config(disabled_sub_keys) is None


def test_from_config_builds_verifier() -> None:
    verifier = JWTVerifier.from_config(ClientConfig(token=TokenConfig(hmac_secret_key=SECRET)))
    assert verifier is not None
    assert conn(verifier, hs({"sub": "a"})).user == "a"


def test_from_config_with_subscription_keys_only() -> None:
    client = ClientConfig(
        subscription_token=SubscriptionTokenConfig(enabled=True, hmac_secret_key=OTHER_SECRET)
    )
    verifier = JWTVerifier.from_config(client)
    assert verifier is not None
    assert sub(verifier, hs({"sub": "a", "channel": "c"}, OTHER_SECRET)).channel == "c"
    with pytest.raises(InvalidToken, match="disabled"):
        conn(verifier, hs({"sub": "a"}, OTHER_SECRET))


def test_repr_hides_keys() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=SECRET))
    assert SECRET not in repr(verifier)
    assert SECRET not in repr(vars(verifier))


# --- exp / nbf / expire_at -------------------------------------------------------------------


def test_expired(hmac_verifier: JWTVerifier) -> None:
    with pytest.raises(TokenExpired):
        conn(hmac_verifier, hs({"sub": "a", "exp": NOW - 1}))
    with pytest.raises(TokenExpired):
        conn(hmac_verifier, hs({"sub": "a", "exp": NOW}))  # exp <= now, no leeway
    with pytest.raises(TokenExpired):
        conn(hmac_verifier, hs({"sub": "a", "exp": NOW + 0.5}), now=NOW + 0.5)
    assert conn(hmac_verifier, hs({"sub": "a", "exp": NOW + 1})).expire_at == int(NOW + 1)


def test_expired_subscription_token(hmac_verifier: JWTVerifier) -> None:
    with pytest.raises(TokenExpired):
        sub(hmac_verifier, hs({"sub": "a", "channel": "c", "exp": NOW}))


def test_verification_is_pure_given_now(hmac_verifier: JWTVerifier) -> None:
    token = hs({"sub": "a", "exp": 100})
    assert conn(hmac_verifier, token, now=99).expire_at == 100
    with pytest.raises(TokenExpired):
        conn(hmac_verifier, token, now=100)


def test_nbf(hmac_verifier: JWTVerifier) -> None:
    with pytest.raises(InvalidToken, match="not valid yet"):
        conn(hmac_verifier, hs({"sub": "a", "nbf": NOW + 1}))
    with pytest.raises(InvalidToken, match="not valid yet"):
        sub(hmac_verifier, hs({"sub": "a", "channel": "c", "nbf": NOW + 1}))
    assert conn(hmac_verifier, hs({"sub": "a", "nbf": NOW})).user == "a"
    assert conn(hmac_verifier, hs({"sub": "a", "nbf": NOW - 5, "iat": NOW - 5})).user == "a"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1700000100", True, [1], {"t": 1}])
def test_numeric_dates_must_be_numbers(hmac_verifier: JWTVerifier, claim: str, value: Any) -> None:
    with pytest.raises(InvalidToken, match=claim):
        conn(hmac_verifier, hs({"sub": "a", claim: value}))


def test_float_exp(hmac_verifier: JWTVerifier) -> None:
    assert conn(hmac_verifier, hs({"sub": "a", "exp": NOW + 10.7})).expire_at == int(NOW + 10)


def test_expire_at_semantics(hmac_verifier: JWTVerifier) -> None:
    assert conn(hmac_verifier, hs({"sub": "a"})).expire_at == 0
    assert conn(hmac_verifier, hs({"sub": "a", "exp": NOW + 60})).expire_at == NOW + 60
    never = hs({"sub": "a", "exp": NOW + 60, "expire_at": 0})
    assert conn(hmac_verifier, never).expire_at == 0
    later = hs({"sub": "a", "exp": NOW + 60, "expire_at": int(NOW) + 3600})
    assert conn(hmac_verifier, later).expire_at == int(NOW) + 3600
    no_exp = hs({"sub": "a", "expire_at": int(NOW) + 5})
    assert conn(hmac_verifier, no_exp).expire_at == int(NOW) + 5
    # A past expire_at is returned as is: the caller answers it with error 110.
    past = hs({"sub": "a", "exp": NOW + 60, "expire_at": int(NOW) - 5})
    assert conn(hmac_verifier, past).expire_at == int(NOW) - 5
    # exp still validates the token even when expire_at is set.
    with pytest.raises(TokenExpired):
        conn(hmac_verifier, hs({"sub": "a", "exp": NOW - 1, "expire_at": 0}))


@pytest.mark.parametrize("value", [-1, 1.5, "10", True])
def test_expire_at_type(hmac_verifier: JWTVerifier, value: Any) -> None:
    with pytest.raises(InvalidToken, match="expire_at"):
        conn(hmac_verifier, hs({"sub": "a", "expire_at": value}))
    with pytest.raises(InvalidToken, match="expire_at"):
        sub(hmac_verifier, hs({"sub": "a", "channel": "c", "expire_at": value}))


def raw_hs(payload: bytes) -> str:
    """HS256 over a raw JSON payload: integers of any size, exactly as written."""
    return forge({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "expire_at"])
@pytest.mark.parametrize(
    "value", [b"18446744073709551616", b"9223372036854775808", b"1e300", b"-1e300"]
)
def test_integer_claims_beyond_int64_are_invalid(
    hmac_verifier: JWTVerifier, claim: str, value: bytes
) -> None:
    with pytest.raises(InvalidToken, match=claim):
        conn(hmac_verifier, raw_hs(b'{"sub":"a","%s":%s}' % (claim.encode(), value)))
    with pytest.raises(InvalidToken, match=claim):
        sub(hmac_verifier, raw_hs(b'{"sub":"a","channel":"c","%s":%s}' % (claim.encode(), value)))


def test_integer_claims_at_int64_bounds_are_valid(hmac_verifier: JWTVerifier) -> None:
    top = b"9223372036854775807"
    token = conn(hmac_verifier, raw_hs(b'{"sub":"a","exp":%s,"iat":%s}' % (top, top)))
    assert token.expire_at == 2**63 - 1
    token = conn(hmac_verifier, raw_hs(b'{"sub":"a","expire_at":%s}' % top))
    assert token.expire_at == 2**63 - 1
    with pytest.raises(TokenExpired):  # the int64 minimum is a (long past) date
        conn(hmac_verifier, raw_hs(b'{"sub":"a","exp":-9223372036854775808}'))


def test_deep_info_is_kept_byte_for_byte(hmac_verifier: JWTVerifier) -> None:
    """``info`` nested past orjson's encoder limit (254) is accepted, as in Centrifugo."""
    deep = b"[" * 1000 + b"]" * 1000
    token = conn(hmac_verifier, raw_hs(b'{"sub":"a","info":%s}' % deep))
    assert token.info == deep
    token = conn(hmac_verifier, hs({"sub": "a", "b64info": b64(deep)}))
    assert token.info == deep


def test_subscription_expire_at(hmac_verifier: JWTVerifier) -> None:
    assert sub(hmac_verifier, hs({"sub": "a", "channel": "c"})).expire_at == 0
    assert sub(hmac_verifier, hs({"sub": "a", "channel": "c", "exp": NOW + 9})).expire_at == (
        NOW + 9
    )
    token = hs({"sub": "a", "channel": "c", "exp": NOW + 9, "expire_at": 0})
    assert sub(hmac_verifier, token).expire_at == 0


# --- audience / issuer -----------------------------------------------------------------------


def test_audience() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, audience="rt"))
    assert conn(verifier, hs({"sub": "a", "aud": "rt"})).user == "a"
    assert conn(verifier, hs({"sub": "a", "aud": ["other", "rt"]})).user == "a"
    for aud in ("other", ["other"], None, 5, ["rt", 5], "RT"):
        claims: dict[str, Any] = {"sub": "a"} if aud is None else {"sub": "a", "aud": aud}
        with pytest.raises(InvalidToken, match="audience mismatch"):
            conn(verifier, hs(claims))
    with pytest.raises(InvalidToken, match="audience mismatch"):
        sub(verifier, hs({"sub": "a", "channel": "c", "aud": "x"}))


def test_issuer() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, issuer="https://auth"))
    assert conn(verifier, hs({"sub": "a", "iss": "https://auth"})).user == "a"
    for claims in ({"sub": "a"}, {"sub": "a", "iss": "https://evil"}, {"sub": "a", "iss": 1}):
        with pytest.raises(InvalidToken, match="issuer mismatch"):
            conn(verifier, hs(claims))


def test_aud_iss_unchecked_when_not_configured(hmac_verifier: JWTVerifier) -> None:
    token = hs({"sub": "a", "aud": 5, "iss": ["x"]})
    assert conn(hmac_verifier, token).user == "a"


# --- connection token claims ----------------------------------------------------------------


def test_channel_claim_rejected_in_connection_token(hmac_verifier: JWTVerifier) -> None:
    for channel in ("news", 1, ["news"]):
        with pytest.raises(InvalidToken, match="channel"):
            conn(hmac_verifier, hs({"sub": "a", "channel": channel}))
    # An empty channel is tolerated, as Centrifugo does.
    assert conn(hmac_verifier, hs({"sub": "a", "channel": ""})).user == "a"


def test_user(hmac_verifier: JWTVerifier) -> None:
    assert conn(hmac_verifier, hs({})).user == ""
    assert conn(hmac_verifier, hs({"sub": ""})).user == ""
    assert conn(hmac_verifier, hs({"sub": None})).user == ""
    for value in (42, True, ["a"]):
        with pytest.raises(InvalidToken, match="sub"):
            conn(hmac_verifier, hs({"sub": value}))


def test_info(hmac_verifier: JWTVerifier) -> None:
    info = {"name": "Alice", "tags": [1, 2], "nested": {"ok": True}}
    token = conn(hmac_verifier, hs({"sub": "a", "info": info}))
    assert token.info == b'{"name":"Alice","tags":[1,2],"nested":{"ok":true}}'
    assert conn(hmac_verifier, hs({"sub": "a", "info": "plain"})).info == b'"plain"'
    assert conn(hmac_verifier, hs({"sub": "a", "info": 0})).info == b"0"
    assert conn(hmac_verifier, hs({"sub": "a", "info": None})).info is None
    assert conn(hmac_verifier, hs({"sub": "a"})).info is None


def test_b64info(hmac_verifier: JWTVerifier) -> None:
    encoded = b64(b'{ "x" : [1, 2] }')
    assert conn(hmac_verifier, hs({"sub": "a", "b64info": encoded})).info == b'{"x":[1,2]}'
    both = hs({"sub": "a", "info": {"y": 1}, "b64info": b64({"x": 1})})
    assert conn(hmac_verifier, both).info == b'{"x":1}'
    empty = hs({"sub": "a", "info": {"y": 1}, "b64info": ""})
    assert conn(hmac_verifier, empty).info == b'{"y":1}'


@pytest.mark.parametrize("value", ["!!!", b64(b"\xff\x00binary"), "eyJ4IjoxfQ", 5])
def test_bad_b64info(hmac_verifier: JWTVerifier, value: Any) -> None:
    with pytest.raises(InvalidToken, match="b64info"):
        conn(hmac_verifier, hs({"sub": "a", "b64info": value}))


def test_channels(hmac_verifier: JWTVerifier) -> None:
    token = conn(hmac_verifier, hs({"sub": "a", "channels": ["news", "chat:1"]}))
    assert token.channels == ("news", "chat:1")
    assert conn(hmac_verifier, hs({"sub": "a", "channels": None})).channels == ()
    for bad in ("news", [1], ["ok", ""], {"news": 1}):
        with pytest.raises(InvalidToken, match="channels"):
            conn(hmac_verifier, hs({"sub": "a", "channels": bad}))


def test_subs(hmac_verifier: JWTVerifier) -> None:
    subs = {
        "news": {
            "info": {"role": "reader"},
            "data": {"welcome": True},
            "override": {
                "presence": {"value": True},
                "join_leave": {"value": False},
                "force_push_join_leave": {"value": True},
                "force_recovery": {"value": True},
                "force_positioning": {"value": False},
                "unknown_option": {"value": True},
            },
        },
        "b64": {"b64info": b64({"i": 1}), "b64data": b64({"d": 2}), "info": {"ignored": 1}},
        "plain": {},
        "null": None,
    }
    token = conn(hmac_verifier, hs({"sub": "a", "subs": subs}))
    assert token.subs == {
        "news": SubscriptionGrant(
            info=b'{"role":"reader"}',
            data=b'{"welcome":true}',
            overrides=Overrides(
                presence=True,
                join_leave=False,
                force_push_join_leave=True,
                force_recovery=True,
                force_positioning=False,
            ),
        ),
        "b64": SubscriptionGrant(info=b'{"i":1}', data=b'{"d":2}'),
        "plain": SubscriptionGrant(),
        "null": SubscriptionGrant(),
    }


@pytest.mark.parametrize(
    "subs",
    [
        ["news"],
        "news",
        {"": {}},
        {"news": "x"},
        {"news": {"b64data": "%%%"}},
        {"news": {"b64info": b64(b"\x00\x01")}},
        {"news": {"override": "yes"}},
        {"news": {"override": {"presence": True}}},
        {"news": {"override": {"presence": {"value": "true"}}}},
    ],
)
def test_bad_subs(hmac_verifier: JWTVerifier, subs: Any) -> None:
    with pytest.raises(InvalidToken, match="subs"):
        conn(hmac_verifier, hs({"sub": "a", "subs": subs}))


def test_override_empty_object_means_false(hmac_verifier: JWTVerifier) -> None:
    token = conn(hmac_verifier, hs({"sub": "a", "subs": {"c": {"override": {"presence": {}}}}}))
    assert token.subs["c"].overrides == Overrides(presence=False)


def test_meta(hmac_verifier: JWTVerifier) -> None:
    token = conn(hmac_verifier, hs({"sub": "a", "meta": {"plan": "pro", "n": [1]}}))
    assert token.meta == {"plan": "pro", "n": [1]}
    assert conn(hmac_verifier, hs({"sub": "a"})).meta is None
    for bad in ("x", [1], 3):
        with pytest.raises(InvalidToken, match="meta"):
            conn(hmac_verifier, hs({"sub": "a", "meta": bad}))


def test_standard_claims_accepted(hmac_verifier: JWTVerifier) -> None:
    token = hs({"sub": "a", "iat": NOW, "jti": "id-1", "aud": "x", "iss": "y", "extra": 1})
    assert conn(hmac_verifier, token) == ConnectionToken(user="a")


def test_full_connection_token(hmac_verifier: JWTVerifier) -> None:
    claims = {
        "sub": "user-1",
        "exp": NOW + 100,
        "info": {"n": 1},
        "channels": ["a"],
        "subs": {"b": {"data": [1]}},
        "meta": {"m": 1},
    }
    assert conn(hmac_verifier, hs(claims)) == ConnectionToken(
        user="user-1",
        expire_at=int(NOW + 100),
        info=b'{"n":1}',
        channels=("a",),
        subs={"b": SubscriptionGrant(data=b"[1]")},
        meta={"m": 1},
    )


# --- user_id_claim ---------------------------------------------------------------------------


def test_user_id_claim_top_level() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, user_id_claim="user_id"))
    assert conn(verifier, hs({"sub": "ignored", "user_id": "u7"})).user == "u7"
    assert conn(verifier, hs({"sub": "ignored"})).user == ""


def test_user_id_claim_dotted_path() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, user_id_claim="ext.user.id"))
    token = hs({"sub": "x", "ext": {"user": {"id": "deep"}}})
    assert conn(verifier, token).user == "deep"
    assert sub(verifier, hs({"channel": "c", "ext": {"user": {"id": "deep"}}})).user == "deep"
    assert conn(verifier, hs({"ext": {"user": "flat"}})).user == ""
    assert conn(verifier, hs({"ext": 5})).user == ""
    with pytest.raises(InvalidToken, match=r"ext\.user\.id"):
        conn(verifier, hs({"ext": {"user": {"id": 5}}}))


# --- subscription tokens ---------------------------------------------------------------------


def test_subscription_token(hmac_verifier: JWTVerifier) -> None:
    claims = {
        "sub": "a",
        "channel": "$private",
        "exp": NOW + 30,
        "info": {"i": 1},
        "data": {"d": 2},
        "override": {"force_recovery": {"value": True}, "presence": None},
        "client": "client-id",
    }
    assert sub(hmac_verifier, hs(claims)) == SubscriptionToken(
        user="a",
        channel="$private",
        expire_at=int(NOW + 30),
        info=b'{"i":1}',
        data=b'{"d":2}',
        overrides=Overrides(force_recovery=True),
        client="client-id",
    )


def test_subscription_token_b64_claims(hmac_verifier: JWTVerifier) -> None:
    token = hs(
        {
            "sub": "a",
            "channel": "c",
            "info": {"x": 0},
            "b64info": b64({"x": 1}),
            "data": "x",
            "b64data": b64([1, 2]),
        }
    )
    result = sub(hmac_verifier, token)
    assert (result.info, result.data) == (b'{"x":1}', b"[1,2]")
    with pytest.raises(InvalidToken, match="b64data"):
        sub(hmac_verifier, hs({"sub": "a", "channel": "c", "b64data": b64(b"\x80")}))


def test_subscription_token_defaults(hmac_verifier: JWTVerifier) -> None:
    assert sub(hmac_verifier, hs({"channel": "c"})) == SubscriptionToken(user="", channel="c")


@pytest.mark.parametrize("claims", [{"sub": "a"}, {"sub": "a", "channel": ""}, {"channel": 5}])
def test_subscription_token_requires_channel(
    hmac_verifier: JWTVerifier, claims: dict[str, Any]
) -> None:
    with pytest.raises(InvalidToken, match="channel"):
        sub(hmac_verifier, hs(claims))


def test_connection_token_never_works_as_subscription_token(
    hmac_verifier: JWTVerifier,
) -> None:
    connection_token = hs({"sub": "a", "exp": NOW + 60, "channels": ["c"]})
    assert conn(hmac_verifier, connection_token).user == "a"
    with pytest.raises(InvalidToken):
        sub(hmac_verifier, connection_token)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("client", 5),
        ("override", []),
        ("override", {"join_leave": {"value": 1}}),
        ("info", None),  # fine: no info
    ],
)
def test_subscription_claim_types(hmac_verifier: JWTVerifier, claim: str, value: Any) -> None:
    token = hs({"sub": "a", "channel": "c", claim: value})
    if value is None:
        assert sub(hmac_verifier, token).info is None
        return
    with pytest.raises(InvalidToken, match=claim):
        sub(hmac_verifier, token)


def test_separate_subscription_keys_when_enabled(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JWTVerifier(
        TokenConfig(hmac_secret_key=SECRET, audience="conn"),
        SubscriptionTokenConfig(
            enabled=True,
            rsa_public_key=pem(rsa_key),
            audience="subs",
            issuer="iss",
            user_id_claim="uid",
        ),
    )
    sub_claims = {"uid": "u", "channel": "c", "aud": "subs", "iss": "iss"}
    assert sub(verifier, jwt.encode(sub_claims, rsa_key, algorithm="RS256")).user == "u"
    # The connection key no longer verifies subscription tokens.
    with pytest.raises(InvalidToken, match="disabled"):
        sub(verifier, hs(sub_claims))
    # The subscription audience/issuer apply.
    with pytest.raises(InvalidToken, match="audience"):
        sub(verifier, jwt.encode({**sub_claims, "aud": "conn"}, rsa_key, algorithm="RS256"))
    with pytest.raises(InvalidToken, match="issuer"):
        sub(verifier, jwt.encode({**sub_claims, "iss": "x"}, rsa_key, algorithm="RS256"))
    # Connection tokens still use the connection block (and its user claim, ``sub``).
    assert conn(verifier, hs({"sub": "a", "uid": "b", "aud": "conn"})).user == "a"
    with pytest.raises(InvalidToken, match="disabled"):
        conn(verifier, jwt.encode({"sub": "a", "aud": "conn"}, rsa_key, algorithm="RS256"))


def test_subscription_keys_ignored_when_disabled() -> None:
    verifier = JWTVerifier(
        TokenConfig(hmac_secret_key=SECRET),
        SubscriptionTokenConfig(enabled=False, hmac_secret_key=OTHER_SECRET, audience="x"),
    )
    assert sub(verifier, hs({"sub": "a", "channel": "c"})).channel == "c"
    with pytest.raises(InvalidToken, match="bad signature"):
        sub(verifier, hs({"sub": "a", "channel": "c"}, OTHER_SECRET))


def test_from_config_uses_subscription_block() -> None:
    client = ClientConfig(
        token=TokenConfig(hmac_secret_key=SECRET),
        subscription_token=SubscriptionTokenConfig(enabled=True, hmac_secret_key=OTHER_SECRET),
    )
    verifier = JWTVerifier.from_config(client)
    assert verifier is not None
    assert sub(verifier, hs({"sub": "a", "channel": "c"}, OTHER_SECRET)).channel == "c"
    with pytest.raises(InvalidToken, match="bad signature"):
        sub(verifier, hs({"sub": "a", "channel": "c"}))
    assert conn(verifier, hs({"sub": "a"})).user == "a"
