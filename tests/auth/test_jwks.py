"""JWKS keys (``jwks_public_endpoint``) against a real JWKS server on a local port.

The server is a twisted.web resource started by the test; it counts requests, rotates
keys and can go down. Tokens go through the same verification path the client uses
(``core/tokens.py``), so a token whose ``kid`` is not cached waits for one fetch.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from rtserver.auth.jwks import MAX_DOCUMENT, MIN_REFETCH_INTERVAL, parse_jwks, treq_fetcher
from rtserver.auth.jwt import JWTVerifier
from rtserver.config import SubscriptionTokenConfig, TokenConfig
from rtserver.core.tokens import verify_connection_token, verify_subscription_token
from rtserver.core.types import ConnectionToken, InvalidToken, KeysLoading
from rtserver.protocol.codes import Disconnect, Error
from rtserver.testing import RecordingSink, make_node

NOW = 1_700_000_000.0


def _b64(n: int, size: int = 0) -> str:
    """base64url of ``n``, big-endian in ``size`` bytes (EC coordinates) or as few as fit."""
    raw = n.to_bytes(size or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk(kid: str, key: Any) -> dict[str, Any]:
    """The public JWK of a private key (RSA, EC P-256 or Ed25519)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "kid": kid, "n": _b64(numbers.n), "e": _b64(numbers.e)}
    if isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        return {"kty": "EC", "kid": kid, "crv": "P-256", "x": _b64(point.x, 32),
                "y": _b64(point.y, 32)}
    raw = public.public_bytes_raw()
    return {"kty": "OKP", "kid": kid, "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def sign(key: Any, kid: str, alg: str, user: str = "u", **claims: Any) -> str:
    return jwt.encode({"sub": user, **claims}, key, algorithm=alg, headers={"kid": kid})


class JWKSResource(Resource):
    """``GET /jwks``: the current key set; counts requests; 500 while ``broken``."""

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.broken = False

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        if self.broken:
            request.setResponseCode(500)
            return b"down"
        request.setHeader(b"Content-Type", b"application/json")
        return orjson.dumps({"keys": self.keys})


class Provider:
    """A listening JWKS server plus the keys it can publish."""

    def __init__(self) -> None:
        self.resource = JWKSResource()
        self.port = reactor.listenTCP(0, Site(self.resource), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/jwks"
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()

    def publish(self, **keys: Any) -> None:
        self.resource.keys = [jwk(kid, key) for kid, key in keys.items()]


@pytest_twisted.async_yield_fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    yield p
    await p.port.stopListening()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


def verifier_for(url: str, clock: Clock, **token: Any) -> JWTVerifier:
    config = TokenConfig(jwks_public_endpoint=url, **token)
    return JWTVerifier(config, clock=clock, fetch=treq_fetcher(reactor))


async def connect(verifier: JWTVerifier, token: str) -> ConnectionToken:
    return await verify_connection_token(verifier, token, NOW, Error.TOKEN_EXPIRED, "c1")


@pytest_twisted.ensureDeferred
async def test_rs_es_and_eddsa_tokens_verify_with_one_fetch(
    provider: Provider, clock: Clock
) -> None:
    """RS256, ES256 and EdDSA tokens verify by ``kid``; the set is fetched once."""
    provider.publish(r1=provider.rsa, e1=provider.ec, d1=provider.ed)
    verifier = verifier_for(provider.url, clock)
    assert (await connect(verifier, sign(provider.rsa, "r1", "RS256", "alice"))).user == "alice"
    assert (await connect(verifier, sign(provider.ec, "e1", "ES256", "bob"))).user == "bob"
    assert (await connect(verifier, sign(provider.ed, "d1", "EdDSA", "eve"))).user == "eve"
    assert provider.resource.requests == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_unknown_kid_costs_one_request(provider: Provider, clock: Clock) -> None:
    """Many connections with a not-yet-cached ``kid`` wait for the same single fetch."""
    provider.publish(r1=provider.rsa)
    verifier = verifier_for(provider.url, clock)
    token = sign(provider.rsa, "r1", "RS256")
    waits = [Deferred.fromCoroutine(connect(verifier, token)) for _ in range(20)]
    results = [await d for d in waits]
    assert {r.user for r in results} == {"u"}
    assert provider.resource.requests == 1


@pytest_twisted.ensureDeferred
async def test_rotation_new_kid_triggers_a_refetch(provider: Provider, clock: Clock) -> None:
    """A new ``kid`` is fetched when a token names it; a retired key stops verifying."""
    provider.publish(old=provider.rsa)
    verifier = verifier_for(provider.url, clock)
    assert (await connect(verifier, sign(provider.rsa, "old", "RS256"))).user == "u"
    provider.publish(new=provider.rsa2)
    clock.advance(MIN_REFETCH_INTERVAL)
    assert (await connect(verifier, sign(provider.rsa2, "new", "RS256"))).user == "u"
    assert provider.resource.requests == 2
    with pytest.raises(Disconnect) as refused:
        await connect(verifier, sign(provider.rsa, "old", "RS256"))
    assert refused.value.code == 3500


@pytest_twisted.ensureDeferred
async def test_unknown_kid_is_rate_limited(provider: Provider, clock: Clock) -> None:
    """Made-up ``kid`` values cause at most one fetch per interval, and are refused."""
    provider.publish(r1=provider.rsa)
    verifier = verifier_for(provider.url, clock)
    for i in range(10):
        with pytest.raises(Disconnect) as refused:
            await connect(verifier, sign(provider.rsa, f"made-up-{i}", "RS256"))
        assert refused.value.code == 3500
    assert provider.resource.requests == 1
    clock.advance(MIN_REFETCH_INTERVAL)
    with pytest.raises(Disconnect):
        await connect(verifier, sign(provider.rsa, "made-up-again", "RS256"))
    assert provider.resource.requests == 2


@pytest_twisted.ensureDeferred
async def test_provider_down_keeps_cached_keys(provider: Provider, clock: Clock) -> None:
    """With the endpoint down (500, then not listening) cached keys keep working.

    Unknown ``kid`` values are refused cleanly meanwhile: 3500 on connect, 103 on
    subscribe.
    """
    provider.publish(r1=provider.rsa)
    sub_config = SubscriptionTokenConfig(enabled=True, jwks_public_endpoint=provider.url)
    verifier = JWTVerifier(
        TokenConfig(jwks_public_endpoint=provider.url),
        sub_config,
        clock=clock,
        fetch=treq_fetcher(reactor),
    )
    good = sign(provider.rsa, "r1", "RS256")
    assert (await connect(verifier, good)).user == "u"
    sub = sign(provider.rsa, "r1", "RS256", channel="news")
    sub_token = await verify_subscription_token(
        verifier, sub, NOW, channel="news", user="u", client_id="c1"
    )
    assert sub_token.channel == "news"
    provider.resource.broken = True
    clock.advance(MIN_REFETCH_INTERVAL)
    with pytest.raises(Disconnect) as refused:
        await connect(verifier, sign(provider.rsa2, "r2", "RS256"))
    assert refused.value.code == 3500
    await provider.port.stopListening()
    clock.advance(MIN_REFETCH_INTERVAL)
    with pytest.raises(Error) as denied:
        await verify_subscription_token(
            verifier, sign(provider.rsa2, "r2", "RS256", channel="news"), NOW,
            channel="news", user="u", client_id="c1",
        )
    assert denied.value.code == 103
    assert (await connect(verifier, good)).user == "u"  # the cache still serves
    provider.port = reactor.listenTCP(0, Site(provider.resource), interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_old_keys_refresh_in_the_background(provider: Provider, clock: Clock) -> None:
    """Keys older than an hour keep serving while a refetch runs; then the new set rules."""
    provider.publish(r1=provider.rsa)
    verifier = verifier_for(provider.url, clock)
    token = sign(provider.rsa, "r1", "RS256")
    await connect(verifier, token)
    provider.publish(r2=provider.rsa2)
    clock.advance(3600)
    assert (await connect(verifier, token)).user == "u"  # from cache; refresh starts
    # a token with the new kid waits for that same refresh instead of starting one
    assert (await connect(verifier, sign(provider.rsa2, "r2", "RS256"))).user == "u"
    assert provider.resource.requests == 2
    with pytest.raises(Disconnect):  # r1 was retired by the provider
        await connect(verifier, token)


# --- without a network --------------------------------------------------------------------


def test_key_pinning_and_bad_sets(clock: Clock) -> None:
    """The header's alg must fit the key; odd keys and malformed sets are ignored.

    No HMAC with a public key, no RS with an EC key, no alg other than the one a key
    pins; ``oct`` keys and keys for encryption are never loaded.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = orjson.dumps(
        {"keys": [jwk("r1", key), jwk("e1", ec_key), {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
                  {**jwk("enc", key), "use": "enc"}, {**jwk("pinned", key), "alg": "RS512"}]}
    )
    assert set(parse_jwks(document)) == {"r1", "e1", "pinned"}
    for bad in (b"nope", b"[]", b'{"keys": 1}'):
        with pytest.raises(ValueError):
            parse_jwks(bad)
    fetched: list[Deferred[bytes]] = []

    def fetch(url: str) -> Deferred[bytes]:
        fetched.append(Deferred())
        return fetched[-1]

    verifier = JWTVerifier(TokenConfig(jwks_public_endpoint="http://idp/jwks"), clock=clock,
                           fetch=fetch)
    with pytest.raises(KeysLoading) as loading:
        verifier.verify_connection_token(sign(key, "r1", "RS256"), NOW)
    fetched[0].callback(document)
    assert loading.value.ready.called
    assert verifier.verify_connection_token(sign(key, "r1", "RS256"), NOW).user == "u"
    confused = jwt.api_jws.encode(
        b'{"sub":"x"}', "k" * 32, algorithm="HS256", headers={"kid": "r1"}
    )
    for token, reason in (
        (confused, "disabled JWT algorithm HS256"),
        (sign(key, "r1", "PS256"), "unsupported JWT algorithm"),
        (sign(ec_key, "r1", "ES256"), "does not fit"),
        (sign(key, "e1", "RS256"), "does not fit"),
        (sign(key, "pinned", "RS256"), "is for RS512"),
        (sign(key, "h", "RS256"), "unknown key id"),
    ):
        with pytest.raises(InvalidToken, match=reason):
            verifier.verify_connection_token(token, NOW)
    assert len(fetched) == 1  # the unknown "h" within the interval fetched nothing


def test_hmac_tokens_with_a_kid_use_the_static_secret(clock: Clock) -> None:
    """An HS256 token carrying a ``kid`` is checked with ``hmac_secret_key``, no fetch."""
    fetched: list[str] = []

    def fetch(url: str) -> Deferred[bytes]:
        fetched.append(url)
        return Deferred()

    secret = "s" * 40
    verifier = JWTVerifier(
        TokenConfig(jwks_public_endpoint="http://idp/jwks", hmac_secret_key=secret),
        clock=clock,
        fetch=fetch,
    )
    token = jwt.encode({"sub": "h"}, secret, algorithm="HS256", headers={"kid": "any"})
    assert verifier.verify_connection_token(token, NOW).user == "h"
    assert fetched == []


def test_without_a_fetcher_kid_tokens_are_refused(clock: Clock) -> None:
    """``rtserver checktoken`` builds no fetcher: a JWKS token is refused, not hung."""
    verifier = JWTVerifier(TokenConfig(jwks_public_endpoint="https://idp/jwks"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidToken, match="not fetched here"):
        verifier.verify_connection_token(sign(key, "r1", "RS256"), NOW)
    with pytest.raises(ValueError, match="http:// or https://"):
        JWTVerifier(TokenConfig(jwks_public_endpoint="ftp://idp/jwks"))


# --- through a client ----------------------------------------------------------------------


def test_client_connect_waits_for_the_keys_and_a_close_meanwhile_leaks_nothing() -> None:
    """A connect waits for the keys its ``kid`` needs; a close meanwhile leaks nothing.

    The connection closed while waiting is not registered once the keys arrive.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = orjson.dumps({"keys": [jwk("r1", key)]})
    node_clock = Clock()
    node_clock.advance(NOW)
    manual_fetch: list[Deferred[bytes]] = []

    def fetch(url: str) -> Deferred[bytes]:
        manual_fetch.append(Deferred())
        return manual_fetch[-1]

    verifier = JWTVerifier(
        TokenConfig(jwks_public_endpoint="http://idp/jwks"), clock=node_clock, fetch=fetch
    )
    node, clock = make_node({}, clock=node_clock, verifier=verifier)
    waiting, waiting_sink = RecordingSink(), RecordingSink()
    closing = node.make_client(waiting_sink)
    client = node.make_client(waiting)
    token = sign(key, "r1", "RS256", "alice")
    client.receive(orjson.dumps({"id": 1, "connect": {"token": token}}))
    closing.receive(orjson.dumps({"id": 1, "connect": {"token": token}}))
    clock.advance(0)
    assert waiting.messages() == [] and len(manual_fetch) == 1
    closing.close(Disconnect.SHUTDOWN)
    manual_fetch[0].callback(document)
    clock.advance(0)
    (reply,) = waiting.messages()
    assert reply["id"] == 1 and "client" in reply["connect"]
    assert node.node_info().num_clients == 1
    assert node.node_info().num_users == 1
    node.stop()
    clock.advance(10)


@pytest_twisted.ensureDeferred
async def test_the_server_wiring_fetches_with_treq(provider: Provider) -> None:
    """``service.build_verifier`` gives a verifier that fetches the configured endpoint."""
    from rtserver import config as rtconfig
    from rtserver.service import build_verifier

    provider.publish(r1=provider.rsa)
    cfg = rtconfig.from_mapping({"client": {"token": {"jwks_public_endpoint": provider.url}}})
    verifier = build_verifier(cfg, reactor)
    assert verifier is not None
    assert (await connect(verifier, sign(provider.rsa, "r1", "RS256", "w"))).user == "w"
    assert provider.resource.requests == 1


# --- a misbehaving endpoint ----------------------------------------------------------------


class _StallingResource(Resource):
    """Answers 200 with headers and ``first`` body bytes, then ``more`` chunks or silence."""

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, first: bytes, length: int | None, chunks: int = 0) -> None:
        super().__init__()
        self.first, self.length, self.chunks = first, length, chunks
        self.open: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        from twisted.web.server import NOT_DONE_YET

        if self.length is not None:
            request.setHeader(b"Content-Length", str(self.length).encode())
        request.write(self.first)
        for _ in range(self.chunks):  # chunked: no length announced
            request.write(b" " * 65536)
        self.open.append(request)
        return NOT_DONE_YET


class _TimedReactor:
    """The real reactor for the network, ``clock`` for time (so a test controls deadlines)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self._clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


async def _stalled_fetch(resource: _StallingResource, clock: Clock) -> Failure:
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        fetch = treq_fetcher(_TimedReactor(clock), timeout=5.0)
        done = fetch(f"http://127.0.0.1:{port.getHost().port}/jwks")
        outcome: list[Any] = []
        done.addBoth(outcome.append)
        while not resource.open:  # the headers and the first bytes are out
            await deferLater(reactor, 0.01, lambda: None)
        for _ in range(20):  # the client reads them (real network: a few turns)
            await deferLater(reactor, 0.01, lambda: None)
        clock.advance(5.0)
        for _ in range(200):
            if outcome:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert outcome, "the fetch is still waiting"
        (result,) = outcome
        assert isinstance(result, Failure), result
        return result
    finally:
        for request in resource.open:
            request.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_body_that_stalls_after_the_headers_times_out() -> None:
    """The deadline covers the whole fetch, body included, not only the headers."""
    clock = Clock()
    failure = await _stalled_fetch(_StallingResource(b'{"keys": [', 1000), clock)
    assert failure.check(DeferredTimeout), failure


@pytest_twisted.ensureDeferred
async def test_an_unannounced_body_over_the_limit_is_refused() -> None:
    """A chunked answer (no Content-Length) is cut off at MAX_DOCUMENT bytes."""
    chunks = MAX_DOCUMENT // 65536 + 2
    failure = await _stalled_fetch(_StallingResource(b"{", None, chunks), Clock())
    assert failure.check(ValueError), failure
    assert "too large" in failure.getErrorMessage()
