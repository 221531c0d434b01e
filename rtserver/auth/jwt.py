"""JWT verification for connection and subscription tokens.

The rules are documented in docs/client-protocol.rst ("Connecting", "Token checks").
Owns the whole token check: loading the configured keys, pinning the algorithm to the
configured key type (no alg confusion, no ``none``), the signature,
``aud``/``iss``/``exp``/``nbf``, the ranges of integer claims, and turning claims into
:class:`~rtserver.core.types.ConnectionToken` / :class:`~rtserver.core.types.SubscriptionToken`.
The server and ``rtserver checktoken``/``checksubtoken`` both verify with this module.

Verification is pure given ``now``: the clock is never read. The compact JWS is split and
base64url-decoded here (strictly), and the signature is checked with PyJWT's algorithm
objects against keys prepared once at construction, before the payload is decoded.
Exception messages are short reasons; they never contain the token or a key.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from rtserver.auth.jwks import Fetch, JWKSKeys
from rtserver.config import ClientConfig, SubscriptionTokenConfig, TokenConfig
from rtserver.core.ports import ITokenVerifier
from rtserver.core.types import (
    ConnectionToken,
    InvalidToken,
    KeysLoading,
    Overrides,
    SubscriptionGrant,
    SubscriptionToken,
    TokenExpired,
)
from rtserver.protocol.fields import compact_json, has_control_characters

__all__ = ["MAX_INT64", "MIN_INT64", "JWTVerifier"]

#: Numeric-date claims (``exp``, ``nbf``, ``iat``) and ``expire_at`` are int64 unix
#: seconds, as in Centrifugo; anything outside is an invalid token.
MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1

#: PyJWT's algorithm objects by family; a family is enabled only by its configured key.
_PYJWT_ALGS = get_default_algorithms()
_HMAC_ALGS: dict[str, Algorithm] = {a: _PYJWT_ALGS[a] for a in ("HS256", "HS384", "HS512")}
_RSA_ALGS: dict[str, Algorithm] = {a: _PYJWT_ALGS[a] for a in ("RS256", "RS384", "RS512")}
_EC_ALGS: dict[str, Algorithm] = {a: _PYJWT_ALGS[a] for a in ("ES256", "ES384", "ES512")}
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_KNOWN_ALGS = {**_HMAC_ALGS, **_RSA_ALGS, **_EC_ALGS}
#: Algorithms of keys from a JWKS (never HMAC: a key set holds public keys).
_JWKS_ALGS: dict[str, Algorithm] = {**_RSA_ALGS, **_EC_ALGS, "EdDSA": _PYJWT_ALGS["EdDSA"]}
#: The config key that enables each algorithm family.
_KEY_NAMES = {"HS": "hmac_secret_key", "RS": "rsa_public_key", "ES": "ecdsa_public_key"}

_OVERRIDE_FIELDS = (
    "presence",
    "join_leave",
    "force_push_join_leave",
    "force_recovery",
    "force_positioning",
)

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class _Policy:
    """Keys and claim checks for one kind of token."""

    #: alg name -> (algorithm object, prepared key); only configured families.
    keys: Mapping[str, tuple[Algorithm, Any]] = field(repr=False)
    #: HS alg name -> (algorithm, prepared ``hmac_previous_secret_key``); empty if unset.
    previous: Mapping[str, tuple[Algorithm, Any]] = field(default_factory=dict, repr=False)
    #: Unix seconds after which the previous HMAC key no longer verifies (0 = never).
    previous_until: float = 0
    audience: str = ""
    audience_regex: re.Pattern[str] | None = None
    issuer: str = ""
    issuer_regex: re.Pattern[str] | None = None
    #: Path of the user claim; ``("sub",)`` unless ``user_id_claim`` is set.
    user_path: tuple[str, ...] = ("sub",)
    #: Config section of the keys (``client.token``...), named in error messages.
    section: str = ""
    #: ``jwks_public_endpoint`` when set; ``jwks`` holds its keys unless nothing may
    #: fetch them (``rtserver checktoken``).
    jwks_url: str = ""
    jwks: JWKSKeys | None = None


@implementer(ITokenVerifier)
class JWTVerifier:
    """Verifies connection and subscription JWTs with the configured keys.

    Args:
        token: ``client.token``: keys and checks for connection tokens (and for
            subscription tokens unless ``subscription_token.enabled``).
        subscription_token: ``client.subscription_token``: separate keys and checks
            for subscription tokens, used only when ``enabled``.

    Raises:
        ValueError: a key cannot be loaded, or ``subscription_token`` is enabled
            without a key; the message names the config key.
    """

    def __init__(
        self,
        token: TokenConfig,
        subscription_token: SubscriptionTokenConfig | None = None,
        *,
        clock: IReactorTime | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        def keys(url: str) -> JWKSKeys | None:
            if not url or clock is None or fetch is None:
                return None
            return JWKSKeys(url, fetch, clock)

        self._connection = _policy(token, "client.token", keys(token.jwks_public_endpoint))
        if subscription_token is not None and subscription_token.enabled:
            if not _has_key(subscription_token):
                raise ValueError(
                    "client.subscription_token: enabled but no hmac_secret_key, "
                    "rsa_public_key or ecdsa_public_key is set"
                )
            self._subscription = _policy(
                subscription_token,
                "client.subscription_token",
                keys(subscription_token.jwks_public_endpoint),
            )
        else:
            self._subscription = self._connection

    @classmethod
    def from_config(
        cls,
        client: ClientConfig,
        *,
        clock: IReactorTime | None = None,
        fetch: Fetch | None = None,
    ) -> JWTVerifier | None:
        """Build the verifier for ``client`` config, or None when no key is configured.

        Raises:
            ValueError: as the constructor.
        """
        if not _has_key(client.token) and not client.subscription_token.enabled:
            return None
        return cls(client.token, client.subscription_token, clock=clock, fetch=fetch)

    def verify_connection_token(self, token: str, now: float) -> ConnectionToken:
        """Verify a connection JWT at unix time ``now``.

        Raises:
            TokenExpired: ``exp`` is at or before ``now``.
            InvalidToken: malformed, badly signed, disabled algorithm, wrong
                ``aud``/``iss``, ``nbf`` after ``now``, a non-empty ``channel`` claim, or
                a claim of the wrong type or out of range.
        """
        return self.check_connection_token(token, now)[0]

    def check_connection_token(
        self, token: str, now: float
    ) -> tuple[ConnectionToken, dict[str, Any]]:
        """As :meth:`verify_connection_token`, also returning the verified claims.

        ``rtserver checktoken`` prints the claims; the verdict is the server's.
        """
        policy = self._connection
        claims = _decode(token, policy, now)
        # Tokens are not interchangeable: only subscription tokens carry a channel
        # (an empty one is tolerated, as in Centrifugo).
        if claims.get("channel") not in (None, ""):
            raise InvalidToken("connection token must not have a channel claim")
        user = _user(claims, policy.user_path)
        info = _raw_json(claims, "info", "b64info", "")
        channels = _channels(claims.get("channels"))
        subs = _subs(claims.get("subs"))
        meta = claims.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise InvalidToken("claim 'meta' must be an object")
        exp = _check_times(claims, now)
        verified = ConnectionToken(
            user=user,
            expire_at=_expire_at(claims, exp),
            info=info,
            channels=channels,
            subs=subs,
            meta=meta,
        )
        return verified, claims

    def verify_subscription_token(self, token: str, now: float) -> SubscriptionToken:
        """Verify a subscription JWT at unix time ``now``.

        The caller still checks that ``channel``, ``user`` and ``client`` match the
        subscribe request and the connection.

        Raises:
            TokenExpired: ``exp`` is at or before ``now``.
            InvalidToken: as for connection tokens, or no non-empty ``channel`` claim.
        """
        return self.check_subscription_token(token, now)[0]

    def check_subscription_token(
        self, token: str, now: float
    ) -> tuple[SubscriptionToken, dict[str, Any]]:
        """As :meth:`verify_subscription_token`, also returning the verified claims."""
        policy = self._subscription
        claims = _decode(token, policy, now)
        channel = claims.get("channel")
        if not isinstance(channel, str) or not channel:
            raise InvalidToken("subscription token needs a channel claim")
        if has_control_characters(channel):
            raise InvalidToken("claim 'channel' has control characters")
        user = _user(claims, policy.user_path)
        info = _raw_json(claims, "info", "b64info", "")
        data = _raw_json(claims, "data", "b64data", "")
        overrides = _overrides(claims.get("override"), "override")
        client = claims.get("client")
        if client is None:
            client = ""
        elif not isinstance(client, str):
            raise InvalidToken("claim 'client' must be a string")
        exp = _check_times(claims, now)
        verified = SubscriptionToken(
            user=user,
            channel=channel,
            expire_at=_expire_at(claims, exp),
            info=info,
            data=data,
            overrides=overrides,
            client=client,
        )
        return verified, claims


# --- keys ------------------------------------------------------------------------------


def _has_key(config: TokenConfig) -> bool:
    return bool(
        config.hmac_secret_key
        or config.rsa_public_key
        or config.ecdsa_public_key
        or config.jwks_public_endpoint
    )


def _policy(config: TokenConfig, prefix: str, jwks: JWKSKeys | None = None) -> _Policy:
    """Prepare the keys of one config block (``prefix`` names it in errors)."""
    keys: dict[str, tuple[Algorithm, Any]] = {}
    previous: dict[str, tuple[Algorithm, Any]] = {}
    if config.hmac_secret_key:
        keys.update(_hmac_keys(config.hmac_secret_key, f"{prefix}.hmac_secret_key"))
    if config.hmac_previous_secret_key:
        name = f"{prefix}.hmac_previous_secret_key"
        if not config.hmac_secret_key:
            raise ValueError(f"{name}: set without hmac_secret_key")
        previous.update(_hmac_keys(config.hmac_previous_secret_key, name))
    if config.rsa_public_key:
        name = f"{prefix}.rsa_public_key"
        rsa_key = _load_pem(config.rsa_public_key, name)
        if not isinstance(rsa_key, rsa.RSAPublicKey):
            raise ValueError(f"{name}: not an RSA public key")
        for alg, obj in _RSA_ALGS.items():
            keys[alg] = (obj, rsa_key)
    if config.ecdsa_public_key:
        name = f"{prefix}.ecdsa_public_key"
        ec_key = _load_pem(config.ecdsa_public_key, name)
        if not isinstance(ec_key, ec.EllipticCurvePublicKey):
            raise ValueError(f"{name}: not an ECDSA public key")
        # Each ES alg takes one curve (RFC 7518 §3.4): enable the one matching the key.
        for alg, obj in _EC_ALGS.items():
            if isinstance(ec_key.curve, _EC_CURVES[alg]):
                keys[alg] = (obj, ec_key)
        if not any(alg in keys for alg in _EC_ALGS):
            raise ValueError(
                f"{name}: unsupported curve {ec_key.curve.name} (use P-256, P-384 or P-521)"
            )
    user_path: tuple[str, ...] = ("sub",)
    if config.user_id_claim:
        user_path = tuple(config.user_id_claim.split("."))
        if not all(user_path):
            raise ValueError(f"{prefix}.user_id_claim: empty segment in claim path")
    if config.jwks_public_endpoint and not config.jwks_public_endpoint.startswith(
        ("http://", "https://")
    ):
        raise ValueError(f"{prefix}.jwks_public_endpoint: must be an http:// or https:// URL")
    return _Policy(
        keys=keys,
        previous=previous,
        previous_until=config.hmac_previous_secret_key_valid_until,
        audience=config.audience,
        audience_regex=_regex(config.audience_regex, f"{prefix}.audience_regex"),
        issuer=config.issuer,
        issuer_regex=_regex(config.issuer_regex, f"{prefix}.issuer_regex"),
        user_path=user_path,
        section=prefix,
        jwks_url=config.jwks_public_endpoint,
        jwks=jwks,
    )


def _hmac_keys(secret: str, name: str) -> dict[str, tuple[Algorithm, Any]]:
    keys: dict[str, tuple[Algorithm, Any]] = {}
    for alg, obj in _HMAC_ALGS.items():
        try:
            keys[alg] = (obj, obj.prepare_key(secret))
        except InvalidKeyError:
            raise ValueError(
                f"{name}: looks like a public key or JWK, not an HMAC secret"
            ) from None
    return keys


def _regex(pattern: str, name: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{name}: not a valid regular expression ({e})") from None


def _load_pem(pem: str, name: str) -> Any:
    """Load a PEM public key (SubjectPublicKeyInfo or PKCS#1) or an X.509 certificate."""
    data = pem.strip().encode("utf-8", "replace")
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    try:
        return x509.load_pem_x509_certificate(data).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{name}: not a valid PEM public key") from None


# --- token -----------------------------------------------------------------------------


def _b64url(segment: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2); raises InvalidToken."""
    if len(segment) % 4 == 1 or not _B64URL_RE.fullmatch(segment):
        raise InvalidToken("malformed token")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the regex rules it out
        raise InvalidToken("malformed token") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidToken(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what} is not a JSON object")
    return value


def _decode(token: str, policy: _Policy, now: float) -> dict[str, Any]:
    """Check the signature with the key the header's alg selects; return the claims.

    An HMAC token that fails the current key is tried with ``hmac_previous_secret_key``
    (while ``now`` is before its ``valid_until``, if that is set).
    """
    if not isinstance(token, str) or not token.isascii():
        raise InvalidToken("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    header = _json_object(_b64url(parts[0]), "header")
    alg = header.get("alg")
    if "crit" in header or header.get("b64", True) is not True:
        raise InvalidToken("unsupported JWS extension")
    kid = header.get("kid")
    if policy.jwks_url and isinstance(kid, str) and kid and alg not in _HMAC_ALGS:
        # a key set holds public keys only: HS tokens always use hmac_secret_key
        algorithm, key = _jwks_key(policy, kid, alg)
    else:
        if not isinstance(alg, str) or alg not in _KNOWN_ALGS:
            raise InvalidToken("unsupported JWT algorithm")
        entry = policy.keys.get(alg)
        if entry is None:
            if policy.jwks_url and alg not in _HMAC_ALGS:
                raise InvalidToken("token has no kid header to pick a key of the JWKS")
            raise InvalidToken(
                f"disabled JWT algorithm {alg}: {policy.section}.{_KEY_NAMES[alg[:2]]} is not"
                " set (or holds a key of another type or curve)"
            )
        algorithm, key = entry
    signature = _b64url(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    valid = _verify(algorithm, signing_input, key, signature)
    if not valid and isinstance(alg, str) and alg in policy.previous:
        if not policy.previous_until or now < policy.previous_until:
            algorithm, key = policy.previous[alg]
            valid = _verify(algorithm, signing_input, key, signature)
    if not valid:
        raise InvalidToken("bad signature")
    claims = _json_object(_b64url(parts[1]), "payload")
    _check_audience_issuer(claims, policy)
    return claims


def _verify(algorithm: Algorithm, signing_input: bytes, key: Any, signature: bytes) -> bool:
    try:
        return bool(algorithm.verify(signing_input, key, signature))
    except (ValueError, TypeError):
        return False


def _jwks_key(policy: _Policy, kid: str, alg: object) -> tuple[Algorithm, Any]:
    """The algorithm and key of ``kid`` in the JWKS, pinned to the key's type and curve.

    Raises:
        KeysLoading: ``kid`` is not cached and a fetch is under way (wait, retry).
        InvalidToken: unknown ``kid`` (no fetch allowed now, or fetched and absent),
            or ``alg`` does not fit the key.
    """
    if policy.jwks is None:
        raise InvalidToken("keys of jwks_public_endpoint are not fetched here")
    entry = policy.jwks.get(kid)
    if entry is None:
        ready = policy.jwks.refetch()
        if ready is None:
            raise InvalidToken("unknown key id")
        raise KeysLoading(ready)
    if not isinstance(alg, str) or alg not in _JWKS_ALGS:
        raise InvalidToken("unsupported JWT algorithm")
    if entry.alg and entry.alg != alg:
        raise InvalidToken(f"key {kid} is for {entry.alg}, not {alg}")
    key = entry.jwk.key
    if hasattr(key, "public_key"):  # a set that (wrongly) publishes private parts
        key = key.public_key()
    fits = (
        (isinstance(key, rsa.RSAPublicKey) and alg in _RSA_ALGS)
        or (
            isinstance(key, ec.EllipticCurvePublicKey)
            and alg in _EC_CURVES
            and isinstance(key.curve, _EC_CURVES[alg])
        )
        or (isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and alg == "EdDSA")
    )
    if not fits:
        raise InvalidToken(f"key {kid} does not fit algorithm {alg}")
    return _JWKS_ALGS[alg], key


def _check_audience_issuer(claims: dict[str, Any], policy: _Policy) -> None:
    if policy.audience:
        aud = claims.get("aud")
        if isinstance(aud, str):
            ok = aud == policy.audience
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            ok = policy.audience in aud
        else:
            ok = False
        if not ok:
            raise InvalidToken("audience mismatch")
    if policy.audience_regex is not None:
        aud = claims.get("aud")
        values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        pattern = policy.audience_regex
        if not any(isinstance(a, str) and pattern.search(a) for a in values):
            raise InvalidToken("audience mismatch")
    if policy.issuer and claims.get("iss") != policy.issuer:
        raise InvalidToken("issuer mismatch")
    if policy.issuer_regex is not None:
        iss = claims.get("iss")
        if not isinstance(iss, str) or not policy.issuer_regex.search(iss):
            raise InvalidToken("issuer mismatch")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim: a number of seconds within the int64 range."""
    value = claims.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not MIN_INT64 <= value <= MAX_INT64
    ):
        raise InvalidToken(f"claim '{name}' must be a number of seconds in the int64 range")
    return value


def _check_times(claims: dict[str, Any], now: float) -> float | None:
    """Check ``exp`` and ``nbf`` against ``now`` without leeway; return ``exp``."""
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    _numeric_date(claims, "iat")
    if exp is not None and exp <= now:
        raise TokenExpired("token expired")
    if nbf is not None and nbf > now:
        raise InvalidToken("token not valid yet")
    return exp


def _expire_at(claims: dict[str, Any], exp: float | None) -> int:
    """``expire_at`` if present (0 = never), else ``exp``, else 0."""
    value = claims.get("expire_at")
    if value is None:
        return int(exp) if exp is not None else 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT64:
        raise InvalidToken("claim 'expire_at' must be an integer in [0, 2^63-1]")
    return value


def _user(claims: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            value = None
            break
        value = value.get(part)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidToken(f"claim '{'.'.join(path)}' must be a string")
    return value


# --- claim values ----------------------------------------------------------------------


def _raw_json(obj: dict[str, Any], name: str, b64_name: str, where: str) -> bytes | None:
    """Compact JSON bytes from ``b64_name`` (base64 of JSON) or else ``name`` (any JSON)."""
    encoded = obj.get(b64_name)
    if encoded is not None and encoded != "":
        if not isinstance(encoded, str):
            raise InvalidToken(f"claim '{where}{b64_name}' must be a base64 string")
        try:
            decoded = base64.b64decode(encoded, validate=True)
            return compact_json(orjson.loads(decoded))
        except (binascii.Error, ValueError):
            raise InvalidToken(f"claim '{where}{b64_name}' must be base64 of JSON") from None
    value = obj.get(name)
    if value is None:
        return None
    return compact_json(value)


def _channels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(_channel_name(c) for c in value):
        raise InvalidToken("claim 'channels' must be a list of channel names")
    return tuple(value)


def _channel_name(value: object) -> bool:
    """A non-empty channel name without control characters."""
    return isinstance(value, str) and bool(value) and not has_control_characters(value)


def _subs(value: Any) -> dict[str, SubscriptionGrant]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidToken("claim 'subs' must be an object")
    out: dict[str, SubscriptionGrant] = {}
    for channel, options in value.items():
        if not _channel_name(channel):
            raise InvalidToken("claim 'subs' has an empty or invalid channel name")
        if options is None:
            options = {}
        elif not isinstance(options, dict):
            raise InvalidToken("claim 'subs' values must be objects")
        where = "subs.<channel>."
        out[channel] = SubscriptionGrant(
            info=_raw_json(options, "info", "b64info", where),
            data=_raw_json(options, "data", "b64data", where),
            overrides=_overrides(options.get("override"), where + "override"),
        )
    return out


def _overrides(value: Any, where: str) -> Overrides:
    """Parse ``{"presence": {"value": true}, ...}``; unknown keys are ignored."""
    if value is None:
        return Overrides()
    if not isinstance(value, dict):
        raise InvalidToken(f"claim '{where}' must be an object")
    flags: dict[str, bool] = {}
    for name in _OVERRIDE_FIELDS:
        item = value.get(name)
        if item is None:
            continue
        flag = item.get("value", False) if isinstance(item, dict) else None
        if not isinstance(flag, bool):
            raise InvalidToken(f"claim '{where}.{name}' must be {{\"value\": bool}}")
        flags[name] = flag
    return Overrides(**flags)
