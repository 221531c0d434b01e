"""The backend proxy port: the application decides connects, subscriptions, publications, RPC.

Centrifugo's proxy events (docs/proxies.rst) as typed values and one zope interface,
:class:`IProxy`. Adapters implement it: ``rtserver/proxy/http.py`` (JSON over HTTP with
Twisted's Agent) and ``rtserver/proxy/hooks.py`` (in-process Python callables). The client state
machine (``core/client.py``) calls the port through :class:`Proxies` and never knows which
adapter answers.

An adapter's method returns a Deferred that fires with the event's result value, or
``None`` when the backend sent no ``result``; it fails with

* :class:`~rtserver.protocol.codes.Error` for the backend's ``error`` (sent to the
  client as the reply's error),
* :class:`~rtserver.protocol.codes.Disconnect` for the backend's ``disconnect``
  (the connection closes with it),
* :class:`ProxyFailure` when the backend could not be asked or answered nonsense
  (connection refused, non-200 status, invalid JSON). The client logs one line naming
  the proxy and answers with error 100 (temporary, so SDKs retry).

Timeouts are the core's: :meth:`Proxies.call` cancels a call after its proxy's
``timeout`` on the injected clock, which aborts the adapter's request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar

import orjson
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from rtserver.config import RPCConfig, RPCOptions
from rtserver.core.types import Overrides, SubscriptionGrant
from rtserver.protocol.codes import Error

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.python.failure import Failure

__all__ = [
    "MAX_VERSION",
    "ConnectProxyRequest",
    "ConnectProxyResult",
    "IProxy",
    "Proxies",
    "ProxyCommon",
    "ProxyEntry",
    "ProxyFailure",
    "ProxyRequest",
    "PublishProxyRequest",
    "PublishProxyResult",
    "RPCProxyRequest",
    "RPCProxyResult",
    "RefreshProxyRequest",
    "RefreshProxyResult",
    "SubRefreshProxyRequest",
    "SubRefreshProxyResult",
    "SubscribeProxyRequest",
    "SubscribeProxyResult",
    "check_json",
    "rpc_options",
]


class ProxyFailure(Exception):
    """The backend could not be asked, or its answer is not a proxy response."""


# --- requests ----------------------------------------------------------------------------


class ProxyCommon(TypedDict):
    """The fields of :class:`ProxyRequest`, as the client fills them for every event."""

    client: str
    transport: str
    protocol: str
    encoding: str
    user: str
    headers: Mapping[str, str]
    emulated_headers: Mapping[str, str]
    grpc_metadata: Mapping[str, str | bytes]
    meta: bytes | None


@dataclass(frozen=True, kw_only=True)
class ProxyRequest:
    """What every proxy request carries.

    ``headers`` are the HTTP headers of the client's connection request (the WebSocket
    upgrade, the HTTP-stream POST...), ``emulated_headers`` the ``headers`` of its
    connect command (centrifuge-js ``headers`` option), ``grpc_metadata`` the metadata
    of a ``uni_grpc`` client's call (text values, or bytes for ``-bin`` keys; empty for
    other transports, as ``headers`` are for ``uni_grpc``); names are lower-case in all
    three. Adapters forward the ones their proxy's ``http_headers`` /
    ``emulated_headers`` / ``grpc_metadata`` allow; in-process hooks see all.
    ``encoding`` is ``binary`` when the proxy has ``binary_encoding`` (data travels as
    base64), else ``json``. ``meta`` is the connection's meta (raw JSON) when the proxy
    has ``include_connection_meta``.
    """

    client: str
    transport: str
    protocol: str
    encoding: str = "json"
    user: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    emulated_headers: Mapping[str, str] = field(default_factory=dict)
    grpc_metadata: Mapping[str, str | bytes] = field(default_factory=dict)
    meta: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ConnectProxyRequest(ProxyRequest):
    """A connect without a token: ``data`` is the connect command's raw data."""

    name: str = ""
    version: str = ""
    data: bytes | None = None
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RefreshProxyRequest(ProxyRequest):
    """The connection reached its ``expire_at``."""


@dataclass(frozen=True, kw_only=True)
class SubscribeProxyRequest(ProxyRequest):
    """A client subscribes to ``channel`` of a namespace with ``subscribe_proxy_enabled``."""

    channel: str
    token: str = ""
    data: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class PublishProxyRequest(ProxyRequest):
    """A client publishes ``data`` into ``channel``."""

    channel: str
    data: bytes


@dataclass(frozen=True, kw_only=True)
class SubRefreshProxyRequest(ProxyRequest):
    """A subscription reached its ``expire_at``."""

    channel: str


@dataclass(frozen=True, kw_only=True)
class RPCProxyRequest(ProxyRequest):
    """A client ``rpc`` call."""

    method: str
    data: bytes | None = None


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectProxyResult:
    """Who connected. ``info``/``data``/``meta`` are raw JSON (or bytes in binary mode).

    ``channels`` and ``subs`` become server-side subscriptions; ``data`` goes into the
    connect result; ``expire_at`` (Unix seconds, 0 never) makes the connection expire.
    """

    user: str = ""
    expire_at: int = 0
    info: bytes | None = None
    data: bytes | None = None
    channels: tuple[str, ...] = ()
    subs: Mapping[str, SubscriptionGrant] = field(default_factory=dict)
    meta: bytes | None = None

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames or requests."""
        yield from (self.info, self.data, self.meta)
        for grant in self.subs.values():
            yield from (grant.info, grant.data)


@dataclass(frozen=True)
class RefreshProxyResult:
    """Extend the connection to ``expire_at`` (new ``info``/``meta``), or end it."""

    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None
    meta: bytes | None = None

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames or requests."""
        yield from (self.info, self.meta)


@dataclass(frozen=True)
class SubscribeProxyResult:
    """The subscription is allowed: channel info, subscribe result data, overrides."""

    info: bytes | None = None
    data: bytes | None = None
    override: Overrides = field(default_factory=Overrides)
    expire_at: int = 0

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames."""
        yield from (self.info, self.data)


#: The largest ``version`` a publish result may carry (Centrifugo's ``uint64``).
MAX_VERSION = 2**64 - 1


@dataclass(frozen=True)
class PublishProxyResult:
    """The publication is allowed, published with these fields (docs/proxies.rst, publish).

    ``data`` replaces the client's when set; ``skip_history`` keeps it out of history;
    ``tags`` go with the publication to subscribers (and tag filters); a repeated
    ``idempotency_key`` within the engine's TTL publishes nothing again; ``delta`` lets
    delta subscribers receive it as a fossil delta. ``version``/``version_epoch``: in a
    channel with history an outdated version is suppressed (not kept, not delivered;
    the client's publish still succeeds), as in the server API's ``publish``.

    Raises:
        ProxyFailure: a field of the wrong type or out of range (a hook's value, or an
            adapter's decoded answer): the call counts as a failed backend.
    """

    data: bytes | None = None
    skip_history: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    delta: bool = False
    version: int = 0
    version_epoch: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise ProxyFailure("tags must map strings to strings")
        if not isinstance(self.idempotency_key, str):
            raise ProxyFailure("idempotency_key must be a string")
        if not isinstance(self.version_epoch, str):
            raise ProxyFailure("version_epoch must be a string")
        if not isinstance(self.skip_history, bool) or not isinstance(self.delta, bool):
            raise ProxyFailure("skip_history and delta must be true or false")
        version = self.version
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not (0 <= version <= MAX_VERSION)
        ):
            raise ProxyFailure(f"version must be an integer in [0, {MAX_VERSION}]")

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames."""
        yield self.data


@dataclass(frozen=True)
class SubRefreshProxyResult:
    """Extend the subscription to ``expire_at`` (new channel ``info``), or end it."""

    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames."""
        yield self.info


@dataclass(frozen=True)
class RPCProxyResult:
    """The RPC reply's ``data``."""

    data: bytes | None = None

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames."""
        yield self.data


class ProxyResult(Protocol):
    """What every result value offers the client."""

    def json_values(self) -> Iterator[bytes | None]:
        """The raw values that end up in JSON frames or requests."""
        ...


def check_json(result: ProxyResult | None) -> None:
    """Refuse a result whose raw values are not JSON (they would break client frames).

    The client protocol is JSON: a ``b64data``/``b64info`` answer, or a hook's bytes,
    must decode to JSON too.

    Raises:
        ProxyFailure: naming the problem.
    """
    if result is None:
        return
    for value in result.json_values():
        if value is not None:
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ProxyFailure("a data/info/meta value is not JSON") from None


# --- the port ------------------------------------------------------------------------------


class IProxy(Interface):
    """One backend answering proxy events (an HTTP endpoint, a set of Python hooks).

    Every method returns a Deferred of the event's result (``None``: no result), failing
    with Error, Disconnect or ProxyFailure as described in this module.
    """

    name: str = Attribute("The proxy's name for log lines (``connect``, ``default``...).")

    def connect(request: ConnectProxyRequest) -> Deferred[ConnectProxyResult | None]:
        """Authenticate a connection that brought no token."""

    def refresh(request: RefreshProxyRequest) -> Deferred[RefreshProxyResult | None]:
        """Extend or end an expiring connection."""

    def subscribe(request: SubscribeProxyRequest) -> Deferred[SubscribeProxyResult | None]:
        """Allow or refuse a subscription."""

    def publish(request: PublishProxyRequest) -> Deferred[PublishProxyResult | None]:
        """Allow, refuse or rewrite a client publication."""

    def sub_refresh(request: SubRefreshProxyRequest) -> Deferred[SubRefreshProxyResult | None]:
        """Extend or end an expiring subscription."""

    def rpc(request: RPCProxyRequest) -> Deferred[RPCProxyResult | None]:
        """Answer a client RPC."""


@dataclass(frozen=True)
class ProxyEntry:
    """A proxy as the client uses it: the adapter and the settings the core applies."""

    name: str
    backend: IProxy
    timeout: float = 1.0
    binary: bool = False
    include_meta: bool = False
    #: ``http``, ``grpc`` or ``hooks`` (the ``protocol`` label of proxy metrics).
    protocol: str = "http"

    @property
    def encoding(self) -> str:
        """The ``encoding`` field of this proxy's requests."""
        return "binary" if self.binary else "json"


_R = TypeVar("_R")


@dataclass
class Proxies:
    """The proxies of a node: connect and refresh, and per channel/RPC event by name.

    ``subscribe``, ``publish``, ``sub_refresh`` and ``rpc`` map a ``*_proxy_name`` to its
    entry; a namespace with ``subscribe_proxy_enabled`` uses
    ``subscribe[opts.subscribe_proxy_name]``.
    """

    connect: ProxyEntry | None = None
    refresh: ProxyEntry | None = None
    subscribe: dict[str, ProxyEntry] = field(default_factory=dict)
    publish: dict[str, ProxyEntry] = field(default_factory=dict)
    sub_refresh: dict[str, ProxyEntry] = field(default_factory=dict)
    rpc: dict[str, ProxyEntry] = field(default_factory=dict)
    rpc_config: RPCConfig = field(default_factory=RPCConfig)

    @property
    def any_rpc(self) -> bool:
        """Whether some RPC proxy or the built-in ping can answer ``rpc``."""
        return bool(self.rpc) or self.rpc_config.ping.enabled

    def call(self, entry: ProxyEntry, d: Deferred[_R], clock: IReactorTime) -> Deferred[_R]:
        """``d`` (an adapter call) cancelled after ``entry.timeout`` on ``clock``.

        A timed-out call fails with :class:`ProxyFailure`; the adapter's request is
        aborted by the cancellation.
        """
        timeout = entry.timeout

        def timed_out(result: _R | Failure, seconds: float) -> _R | Failure:
            raise ProxyFailure(f"no answer within {seconds:g}s")

        return d.addTimeout(timeout, clock, onTimeoutCancel=timed_out)


def rpc_options(config: RPCConfig, method: str) -> RPCOptions:
    """The RPC options of ``method`` (``ns:name`` uses namespace ``ns``).

    Raises:
        Error: 104 method not found when the method's namespace is not configured.
    """
    boundary = config.namespace_boundary
    if boundary and boundary in method:
        name = method.split(boundary, 1)[0]
        for ns in config.namespaces:
            if ns.name == name:
                return ns
        raise Error.METHOD_NOT_FOUND
    return config.without_namespace
