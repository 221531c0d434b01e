"""The HTTP proxy adapter: Centrifugo's JSON proxy requests over Twisted's HTTP client.

One :class:`HTTPProxy` per configured endpoint; all of them share one persistent
:class:`~twisted.web.client.HTTPConnectionPool` (keep-alive), created by the service and
closed when it stops (those with ``http.tls`` one pool per TLS object). An ``https://``
endpoint's TLS comes from :mod:`rtserver.tlsclient` with ``http.tls``, else from the
system's trust store. Requests go straight to the ``Agent`` that treq wraps: treq's
``HTTPClient`` re-parses and IDNA-normalises the URL on every request, which cost about
as much as the rest of the call (measured with ``bench/proxy.py``); endpoints are made
once per backend for the same reason. The core applies the timeout by cancelling the
call, which aborts the request or the body being read; the connection is then closed,
never returned to the pool. Non-200 answers, connection errors, oversized or invalid
bodies fail the call with :class:`~rtserver.core.proxy.ProxyFailure`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from rtserver.config import ClientTLSConfig, ProxyConfig
from rtserver.core.proxy import (
    ConnectProxyRequest,
    ConnectProxyResult,
    IProxy,
    ProxyFailure,
    ProxyRequest,
    PublishProxyRequest,
    PublishProxyResult,
    RefreshProxyRequest,
    RefreshProxyResult,
    RPCProxyRequest,
    RPCProxyResult,
    SubRefreshProxyRequest,
    SubRefreshProxyResult,
    SubscribeProxyRequest,
    SubscribeProxyResult,
)
from rtserver.proxy import codec
from rtserver.tlsclient import load_tls_material, tls_connection_creator, tls_failure

__all__ = ["MAX_RESPONSE_BYTES", "HTTPProxy", "make_pool", "request_headers"]

#: A backend answer larger than this fails the call (and closes its connection).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_T = TypeVar("_T")


def make_pool(reactor: Any, max_idle_per_host: int = 128) -> HTTPConnectionPool:
    """A keep-alive pool for every HTTP proxy of a server.

    ``reactor``: the server's reactor (TCP and time); the pool keeps up to
    ``max_idle_per_host`` idle connections per backend between calls.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_idle_per_host
    return pool


def request_headers(config: ProxyConfig, request: ProxyRequest) -> Headers:
    """The headers of a proxy request (as Centrifugo, docs/proxies.rst "Headers").

    ``http.static_headers`` first; then the client's emulated headers listed in
    ``emulated_headers``; then the connection request's headers listed in
    ``http_headers``, or a ``uni_grpc`` call's metadata listed in ``grpc_metadata``
    (the transport value wins over an emulated one); JSON content type. A binary
    (``-bin``) metadata value travels base64-encoded, as on the GRPC wire.
    """
    out: dict[str, str] = {}
    for name, value in config.http.static_headers.items():
        out[name.lower()] = value
    emulated = {h.lower() for h in config.emulated_headers}
    for name, value in request.emulated_headers.items():
        if name.lower() in emulated:
            out[name.lower()] = value
    allowed = {h.lower() for h in config.http_headers}
    for name, value in request.headers.items():
        if name.lower() in allowed:
            out[name.lower()] = value
    if request.grpc_metadata:
        listed = {k.lower() for k in config.grpc_metadata}
        for name, meta in request.grpc_metadata.items():
            if name in listed:
                out[name] = (
                    base64.b64encode(meta).decode("ascii") if isinstance(meta, bytes) else meta
                )
    out["content-type"] = "application/json"
    headers = Headers()
    for name, value in out.items():
        headers.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1", "replace")])
    return headers


class _Body(Protocol):
    """Collects a response body up to a limit; a cancel aborts the connection.

    The outcome is reported from ``connectionLost`` only, once the HTTP client is done
    with the connection (reused when the body was complete, else aborted).
    """

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self._size > self._limit:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._parts.clear()
            self._abort()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        if self._finished.called:
            return
        if self._size > self._limit:
            self._finished.errback(ProxyFailure("response body too large"))
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(ProxyFailure(f"response body lost: {reason.value!r}"))

    def _abort(self) -> None:
        if self.transport is not None:
            # a response body's transport is a push producer: stopping it aborts the
            # connection (twisted.web.client.Response.deliverBody)
            cast(IPushProducer, self.transport).stopProducing()


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Endpoints per backend, made once.

    A new ``HostnameEndpoint`` per request would IDNA-encode the host name every time,
    even when a pooled connection is used.
    """

    def __init__(self, reactor: Any, tls: ClientTLSConfig, key: str) -> None:
        self._reactor = reactor
        self._policy = BrowserLikePolicyForHTTPS()
        #: ``http.tls`` when enabled (else the system's trust store, as Go's default).
        self._tls = tls if tls.enabled else None
        self._key = key
        self._made: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def _creator(self, host: bytes, port: int) -> Any:
        if self._tls is None:
            return self._policy.creatorForNetloc(host, port)
        return tls_connection_creator(self._tls, host.decode("ascii"), self._key)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._creator(uri.host, uri.port), endpoint)
            self._made[key] = endpoint
        return endpoint


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        """Nothing to pause: the body is written at once."""

    def resumeProducing(self) -> None:  # noqa: N802
        """Nothing to resume."""

    def stopProducing(self) -> None:  # noqa: N802
        """Nothing to stop."""


def _read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    collector: _Body

    def cancel(d: Deferred[bytes]) -> None:
        collector._abort()

    finished: Deferred[bytes] = Deferred(cancel)
    collector = _Body(finished, limit)
    response.deliverBody(collector)
    return finished


@implementer(IProxy)
class HTTPProxy:
    """An HTTP endpoint answering proxy events (any of them; the config picks which)."""

    def __init__(
        self,
        name: str,
        config: ProxyConfig,
        *,
        reactor: Any,
        pool: HTTPConnectionPool,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """Post to ``config.endpoint`` through ``pool``.

        An ``https://`` endpoint is verified with ``config.http.tls`` when it is enabled
        (its own CA, client certificate, server name), else with the system's trust
        store. Proxies with different TLS objects must not share a pool: a pooled
        connection carries the client certificate it was made with.

        Args:
            name: The proxy's name in log lines.
            config: Endpoint and header rules (the timeout is applied by the core).
            reactor: The server's reactor.
            pool: The shared keep-alive pool (:func:`make_pool`).
            max_response_bytes: Larger answers fail the call.
        """
        self.name = name
        self._config = config
        self._endpoint = config.endpoint.encode("ascii")
        tls_key = f"proxy {name}: http.tls"
        if config.http.tls.enabled:
            load_tls_material(config.http.tls, tls_key)  # a PEM that does not load fails now
        endpoints = _Endpoints(reactor, config.http.tls, tls_key)
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        self._limit = max_response_bytes

    def _post(self, request: ProxyRequest, decode: Callable[[bytes], _T]) -> Deferred[_T]:
        return Deferred.fromCoroutine(self._exchange(request, decode))

    async def _exchange(self, request: ProxyRequest, decode: Callable[[bytes], _T]) -> _T:
        body = codec.encode_request(request)
        headers = request_headers(self._config, request)
        try:
            producer = _BytesProducer(body)
            response = await self._agent.request(b"POST", self._endpoint, headers, producer)
        except CancelledError:
            raise
        except Exception as e:
            raise ProxyFailure(f"request failed: {_describe(e)}") from None
        raw = await _read_body(response, self._limit)
        if response.code != 200:
            raise ProxyFailure(f"unexpected HTTP status {response.code}")
        return decode(raw)

    def connect(self, request: ConnectProxyRequest) -> Deferred[ConnectProxyResult | None]:
        """POST a connect request."""
        return self._post(request, codec.decode_connect)

    def refresh(self, request: RefreshProxyRequest) -> Deferred[RefreshProxyResult | None]:
        """POST a refresh request."""
        return self._post(request, codec.decode_refresh)

    def subscribe(self, request: SubscribeProxyRequest) -> Deferred[SubscribeProxyResult | None]:
        """POST a subscribe request."""
        return self._post(request, codec.decode_subscribe)

    def publish(self, request: PublishProxyRequest) -> Deferred[PublishProxyResult | None]:
        """POST a publish request."""
        return self._post(request, codec.decode_publish)

    def sub_refresh(
        self, request: SubRefreshProxyRequest
    ) -> Deferred[SubRefreshProxyResult | None]:
        """POST a sub_refresh request."""
        return self._post(request, codec.decode_sub_refresh)

    def rpc(self, request: RPCProxyRequest) -> Deferred[RPCProxyResult | None]:
        """POST an rpc request."""
        return self._post(request, codec.decode_rpc)


def _describe(exc: BaseException) -> str:
    """A short reason for a log line (twisted.web wraps the cause in a list)."""
    reasons: Any = getattr(exc, "reasons", None)
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], Failure):
        tls = tls_failure(reasons[0])
        if tls is not None:
            return f"TLS handshake failed: {tls}"
        return f"{type(reasons[0].value).__name__}: {reasons[0].value}"
    return f"{type(exc).__name__}: {exc}"
