"""Keys from a JSON Web Key Set endpoint (``client.token.jwks_public_endpoint``).

The rules are documented in docs/client-protocol.rst ("Tokens"): a token names its key
with the ``kid`` header; keys are fetched from the endpoint (treq, never blocking),
cached by ``kid`` and refetched when a token names a ``kid`` the cache lacks, at most
once per :data:`MIN_REFETCH_INTERVAL` however many tokens ask. While the endpoint is
down the cached keys keep working; a refetch that fails keeps them too. Keys older than
:data:`MAX_AGE` are refreshed in the background while still in use, so a key the
provider retired stops verifying soon after (rotation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from rtserver.logs import Logger

__all__ = [
    "MAX_AGE",
    "MIN_REFETCH_INTERVAL",
    "Fetch",
    "JWKSKey",
    "JWKSKeys",
    "parse_jwks",
    "treq_fetcher",
]

_log = Logger()

#: Seconds between two fetches caused by unknown ``kid`` values (a flood of made-up
#: ``kid`` values costs the provider one request per interval, not one per token).
MIN_REFETCH_INTERVAL = 10.0
#: Seconds after which cached keys are refreshed in the background.
MAX_AGE = 3600.0
#: Seconds a fetch may take.
FETCH_TIMEOUT = 5.0
#: The largest JWKS document read, in bytes.
MAX_DOCUMENT = 1024 * 1024

Fetch = Callable[[str], "Deferred[bytes]"]


class JWKSKey:
    """One key of a set: PyJWT's key object and the ``alg`` the set pins it to ("" if none)."""

    __slots__ = ("alg", "jwk")

    def __init__(self, jwk: PyJWK, alg: str) -> None:
        self.jwk = jwk
        self.alg = alg


#: Key types usable for token signatures (never ``oct``: a shared secret is no public key).
_KEY_TYPES = ("RSA", "EC", "OKP")


def parse_jwks(document: bytes) -> dict[str, JWKSKey]:
    """The signature keys of a JWKS document by ``kid``.

    Keys without ``kid``, for another ``use``, of type ``oct`` or of a type or curve
    this server cannot use are skipped.

    Raises:
        ValueError: the document is not a JSON object with a ``keys`` list.
    """
    try:
        value = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise ValueError("JWKS is not JSON") from None
    keys = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, list):
        raise ValueError("JWKS has no keys list")
    out: dict[str, JWKSKey] = {}
    for item in keys:
        if not isinstance(item, dict) or item.get("kty") not in _KEY_TYPES:
            continue
        kid = item.get("kid")
        alg = item.get("alg", "")
        if not isinstance(kid, str) or not kid or item.get("use", "sig") != "sig":
            continue
        if not isinstance(alg, str):
            continue
        try:
            out[kid] = JWKSKey(PyJWK(item), alg)
        except (PyJWKError, ValueError, TypeError, KeyError):
            continue  # a key type or curve this server cannot use
    return out


class JWKSKeys:
    """The cached keys of one JWKS endpoint.

    Args:
        url: the endpoint.
        fetch: GETs a URL, firing with the body of a 200 answer (fails otherwise).
        clock: time of fetches (rate limit, age).
        min_refetch_interval: see :data:`MIN_REFETCH_INTERVAL`.
        max_age: see :data:`MAX_AGE`.
    """

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        clock: IReactorTime,
        *,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
        max_age: float = MAX_AGE,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._min_interval = min_refetch_interval
        self._max_age = max_age
        self._keys: dict[str, JWKSKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch started
        self._waiters: list[Deferred[None]] | None = None  # a fetch is under way
        #: Fetches started (``/metrics`` and tests count them).
        self.fetches = 0

    def get(self, kid: str) -> JWKSKey | None:
        """The cached key ``kid``; starts a background refresh when the cache is old."""
        if self._fetched_at is not None and self._waiters is None:
            if self._clock.seconds() - self._fetched_at >= self._max_age:
                self.refetch()
        return self._keys.get(kid)

    def refetch(self) -> Deferred[None] | None:
        """Fetch the keys again unless one was started too recently.

        Returns:
            A Deferred firing (never failing) when the fetch under way or started now
            ends, or None when the rate limit allows no fetch now.
        """
        if self._waiters is None:
            now = self._clock.seconds()
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
                return None
            self._attempted_at = now
            self._waiters = []
            self.fetches += 1
            d = self._fetch(self.url)
            d.addCallbacks(self._fetched, self._failed)
            d.addErrback(self._bug)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _fetched(self, body: bytes) -> None:
        try:
            keys = parse_jwks(body)
        except ValueError as e:
            _log.warn("JWKS {url}: {error}; keeping the cached keys", url=self.url, error=e)
        else:
            self._keys = keys
            self._fetched_at = self._clock.seconds()
            _log.info("JWKS {url}: {n} keys loaded", url=self.url, n=len(keys))
        self._wake()

    def _failed(self, failure: Failure) -> None:
        _log.warn(
            "JWKS {url}: fetch failed ({error}); keeping {n} cached keys",
            url=self.url,
            error=failure.getErrorMessage() or repr(failure.value),
            n=len(self._keys),
        )
        self._wake()

    def _bug(self, failure: Failure) -> None:
        _log.failure("JWKS {url}: bookkeeping failed", failure, url=self.url)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.callback(None)


def treq_fetcher(reactor: Any, timeout: float = FETCH_TIMEOUT) -> Fetch:
    """A :data:`Fetch` over treq on ``reactor``: 200 answers of at most 1 MiB.

    ``timeout`` bounds the whole fetch, body included (treq's own timeout ends with the
    headers, so a body that stalls would otherwise wait forever); a body over
    :data:`MAX_DOCUMENT`, announced or not (chunked), is refused as it arrives and the
    connection closed.

    ``reactor: Any``: treq needs the TCP, TLS and time interfaces of a full reactor.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    def fetch(url: str) -> Deferred[bytes]:
        d: Deferred[bytes] = client.get(url, reactor=reactor).addCallback(_body)
        return d.addTimeout(timeout, reactor)

    def _body(response: Any) -> Deferred[bytes]:
        if response.code != 200:
            response.deliverBody(_Discard())
            return fail(ValueError(f"HTTP {response.code}"))
        if isinstance(response.length, int) and response.length > MAX_DOCUMENT:
            response.deliverBody(_Discard())
            return fail(ValueError("document too large"))
        body = _Body()
        response.deliverBody(body)
        return body.done

    return fetch


class _Body(Protocol):
    """Collects an answer's body up to :data:`MAX_DOCUMENT` bytes.

    ``done`` fires with the body; it fails when the body grows too large or the
    connection ends early, and cancelling it (the fetch's deadline) closes the connection.
    """

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.done.called:
            return
        self._size += len(data)
        if self._size > MAX_DOCUMENT:
            self._close()
            self.done.errback(ValueError("document too large"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[bytes]) -> None:
        self._close()

    def _close(self) -> None:
        self._parts = []
        if self.transport is not None:
            self.transport.loseConnection()


class _Discard(Protocol):
    """Drops a refused answer's body and closes its connection."""

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        if self.transport is not None:
            self.transport.loseConnection()
