"""Wiring: configuration in, a running MultiService out.

The only module that knows every adapter exists: it picks the engine, builds the Node,
the API executor, the resource tree and one listening service per endpoint description.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.application.strports import service as strports_service
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.web.resource import Resource

from rtserver import logs
from rtserver.api.executor import APIExecutor
from rtserver.auth.jwt import JWTVerifier
from rtserver.config import (
    ClientTLSConfig,
    Config,
    ProxyConfig,
    RedisEngineConfig,
    check_proxy_references,
    proxy_names,
    server_tls_files,
    server_tls_pem,
)
from rtserver.connections import split_description
from rtserver.consumers.redis_stream import RedisStreamConsumer
from rtserver.core.channels import ChannelResolver
from rtserver.core.node import Node
from rtserver.core.ports import IBroker, IEngine, IHistory
from rtserver.core.proxy import IProxy, Proxies, ProxyEntry
from rtserver.engines.composite import CompositeEngine
from rtserver.engines.memory import MemoryEngine
from rtserver.logs import Logger
from rtserver.proxy.hooks import HookProxy, Hooks
from rtserver.shutdown import StopSignalGuard, bounded
from rtserver.sockjs.forward import Siblings
from rtserver.tlsserver import client_trust_root
from rtserver.transports.emulation import EmulationResource, HTTPStreamResource, SSEResource
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.uni import UniHTTPStreamResource, UniSSEResource, UniWebSocketFactory
from rtserver.transports.websocket import WebSocketFactory
from rtserver.web.admin import AdminRoot, admin_root
from rtserver.web.api import APIResource
from rtserver.web.apifast import APIFastPath
from rtserver.web.cors import CORSResource
from rtserver.web.health import HealthResource, ReadyResource
from rtserver.web.site import Branch, HTTPStats, RTSite, mount

__all__ = [
    "Hooks",
    "Listener",
    "NodeService",
    "Reloader",
    "Sites",
    "admin_url",
    "build",
    "build_engine",
    "build_grpc_api",
    "build_http3",
    "build_node",
    "build_proxies",
    "build_quic_listener",
    "build_site",
    "build_sites",
    "build_uni_grpc",
    "build_verifier",
    "default_listen",
    "describe_engine",
    "enabled_transports",
    "http3_address",
]

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from rtserver.transports.webtransport import QuicListener

_log = Logger()

# ``reactor: Any`` below: twistd's reactor provides a dozen interfaces (time, TCP, SSL,
# threads...) and each part takes the ones it needs.


#: The longest wait for the close handshakes of clients on stop (seconds; Centrifugo's
#: WebSocket waits as long for a close frame); ``shutdown.timeout`` may end it sooner.
CLOSE_WAIT = 5.0


class Drainable(Protocol):
    """What shutdown waits for: a listener whose connections close."""

    def wait_closed(self, timeout: float) -> Deferred[None]:
        """Fires when every connection has closed, or after ``timeout`` seconds."""
        ...


class ServerService(MultiService):
    """The whole server; on stop, first reports not ready for ``drain_delay`` seconds.

    During the delay everything keeps serving (listeners open, clients connected) while
    ``/ready`` answers 503 ``draining``, so a balancer stops sending new clients before
    the listeners close and clients get 3001 (``health.drain_delay``).
    """

    def __init__(
        self, node: Node, drain_delay: float, reactor: Any, shutdown_timeout: float = 30.0
    ) -> None:
        super().__init__()
        self.node = node
        self._delay = drain_delay
        self._reactor = reactor
        self._signals = StopSignalGuard(reactor)
        #: ``shutdown.timeout``: the bound on closing, from the end of the drain delay.
        self.shutdown_timeout = shutdown_timeout

    def startService(self) -> None:
        super().startService()
        # after the reactor installed its own handlers (during start-up); a bare clock
        # (tests, embedders driving time themselves) has no signal handlers to guard
        when_running = getattr(self._reactor, "callWhenRunning", None)
        if when_running is not None:
            when_running(self._signals.install)

    def stopService(self) -> Deferred[Any]:
        self._signals.uninstall()
        self.node.drain()
        if self._delay <= 0:
            return self._close()
        _log.info(
            "shutting down: not ready for {delay:g}s (health.drain_delay), then closing",
            delay=self._delay,
        )
        d: Deferred[None] = deferLater(self._reactor, self._delay, lambda: None)
        return d.addCallback(lambda _: self._close())

    def _close(self) -> Deferred[Any]:
        """Stop every part, for at most ``shutdown.timeout`` seconds."""
        return bounded(MultiService.stopService(self), self.shutdown_timeout, self._reactor)


class NodeService(Service):
    """Starts the node (and its engine) and drains connections on shutdown."""

    def __init__(
        self,
        node: Node,
        drains: list[Drainable],
        endpoints: list[str],
        shutdown_timeout: float = CLOSE_WAIT,
        reloader: Reloader | None = None,
    ) -> None:
        self.node = node
        self._drains = drains
        self._endpoints = endpoints
        self._timeout = shutdown_timeout
        self._reloader = reloader
        self._previous_hup: Any = None

    def startService(self) -> None:
        super().startService()
        config = self.node.config
        _log.info(
            "rtserver {version} node {name}: {engine}, transports {transports}, "
            "listening on {endpoints}",
            version=self.node.version,
            name=self.node.name,
            engine=describe_engine(config),
            transports=", ".join(enabled_transports(config)) or "none",
            endpoints=", ".join(self._endpoints),
        )
        if config.admin.enabled:
            _log.info("admin web UI at {url}", url=admin_url(config))
        d = self.node.start()
        d.addErrback(lambda f: _log.failure("node failed to start", f))
        if self._reloader is not None and hasattr(signal, "SIGHUP"):
            self._previous_hup = signal.signal(signal.SIGHUP, self._hup)

    def _hup(self, signum: int, frame: object) -> None:
        """SIGHUP: reload in the reactor thread (a signal handler may not touch state)."""
        reloader = self._reloader
        if reloader is not None:
            reloader.reactor.callFromThread(reloader.reload)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        stopped = self.node.stop()  # 3001 to clients, goodbye to peers, engine closed
        stopped.addErrback(lambda f: _log.failure("node did not stop cleanly", f))
        waits = [drain.wait_closed(self._timeout) for drain in self._drains]
        return DeferredList([stopped, *waits], consumeErrors=True)


#: Loads the configuration again: the config and its warnings (raises ConfigError).
Loader = Callable[[], tuple[Config, list[str]]]

#: Sections a reload cannot change: they shape listeners, engines and the resource tree.
_RESTART_SECTIONS = (
    "http_server",
    "engine",
    "node",
    "websocket",
    "http_stream",
    "sse",
    "emulation",
    "uni_websocket",
    "uni_sse",
    "uni_http_stream",
    "uni_grpc",
    "sockjs",
    "health",
    "shutdown",
    "prometheus",
    "graphite",
    "consumers",
)


class Reloader:
    """Applies a re-read configuration to a running server (SIGHUP; docs/deployment.rst).

    Changes for new operations: token keys and checks (``client.token``,
    ``client.subscription_token``), the rest of ``client`` for new connections,
    channel namespaces and options, ``client.allowed_origins``, ``http_api.key`` and
    ``insecure``, the admin password, secret and ``insecure``, ``log.level``. Connected
    clients stay connected. Other sections need a restart: a change there is logged and
    not applied. A configuration that fails to load or validate is refused with a log
    line; the running one stays.
    """

    def __init__(self, node: Node, sites: Sites, load: Loader, reactor: Any) -> None:
        self.node = node
        self.sites = sites
        self.load = load
        self.reactor = reactor

    def reload(self) -> bool:
        """Re-read and apply the configuration; False when it was refused."""
        old = self.node.config
        try:
            new, warnings = self.load()
            verifier = build_verifier(new, self.reactor)
        except ValueError as e:  # ConfigError is one
            _log.error("config reload refused, the running configuration stays: {error}", error=e)
            return False
        for warning in warnings:
            _log.warn("config: {warning}", warning=warning)
        fixed = [name for name in _RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
        if new.log.format != old.log.format:
            fixed.append("log.format")
        api = dataclasses.replace(
            old.http_api, key=new.http_api.key, insecure=new.http_api.insecure
        )
        if api != new.http_api:
            fixed.append("http_api (except key and insecure)")
        admin = dataclasses.replace(
            old.admin,
            password=new.admin.password,
            secret=new.admin.secret,
            insecure=new.admin.insecure,
        )
        if admin != new.admin:
            fixed.append("admin (except password, secret and insecure)")
        if admin.enabled and not admin.insecure and not (admin.password and admin.secret):
            _log.error("config reload refused: the admin UI would have no password or secret")
            return False
        log = dataclasses.replace(new.log, format=old.log.format)
        applied = dataclasses.replace(
            old, log=log, client=new.client, channel=new.channel, http_api=api, admin=admin
        )
        logs.set_level(applied.log.level)
        node = self.node
        node.config = applied
        node.resolver = ChannelResolver(applied.channel)
        node.verifier = verifier
        self.sites.origins.replace(applied.client.allowed_origins)
        if self.sites.api is not None:
            self.sites.api.reconfigure(api)
        if self.sites.admin is not None and self.sites.admin.auth is not None:
            self.sites.admin.auth.reconfigure(admin)
        if fixed:
            _log.warn(
                "config reloaded, but changes to {sections} need a restart",
                sections=", ".join(fixed),
            )
        else:
            _log.info("config reloaded")
        return True


def enabled_transports(config: Config) -> list[str]:
    """Names of the client transports this configuration serves."""
    names = [] if config.websocket.disabled else ["websocket"]
    for name in ("http_stream", "sse", "uni_websocket", "uni_sse", "uni_http_stream", "sockjs"):
        if getattr(config, name).enabled:
            names.append(name)
    if config.uni_grpc.enabled:
        names.append("uni_grpc")
    if config.http_server.http3.enabled and config.webtransport.enabled:
        names.append("webtransport")
    return names


def build_engine(config: Config, reactor: Any) -> IEngine:
    """The engine for ``engine``, with ``broker``/``presence_manager`` replacing a side.

    As Centrifugo v6: ``engine.type`` (memory, redis) configures broker, history and
    presence together; an enabled ``broker`` replaces the broker (and its history), an
    enabled ``presence_manager`` the presence. A NATS broker keeps history in the
    ``engine.type: redis`` engine when there is one, and has none otherwise (see
    docs/cluster.rst, "NATS broker").
    """
    broker_config, pm_config = config.broker, config.presence_manager
    if not broker_config.enabled and not pm_config.enabled:
        return _engine_of(config.engine.type, config.engine.redis, reactor)
    base: IEngine | None = None
    if not (broker_config.enabled and pm_config.enabled):
        base = _engine_of(config.engine.type, config.engine.redis, reactor)
    broker: IBroker
    history: IHistory
    if broker_config.enabled and broker_config.type == "nats":
        from rtserver.engines.nats import NatsBroker
        from rtserver.engines.redis import RedisEngine

        store = base if isinstance(base, RedisEngine) else None
        nats = NatsBroker(reactor, broker_config.nats, reactor=reactor, history=store)
        broker, history = nats, nats
    elif broker_config.enabled:
        engine = _engine_of(broker_config.type, broker_config.redis, reactor)
        broker, history = engine, engine
    else:
        assert base is not None
        broker, history = base, base
    presence: IEngine
    if pm_config.enabled:
        presence = _engine_of(pm_config.type, pm_config.redis, reactor)
    else:
        assert base is not None
        presence = base
    parts = [e for e in (base, presence) if e is not None]
    if base is not None and history is broker and base is not presence:
        parts.remove(base)  # neither history nor presence: not needed at all
    unique = list({id(e): e for e in parts}.values())
    return CompositeEngine(broker, history, presence, unique)


def describe_engine(config: Config) -> str:
    """The backends in one phrase for the start-up log line."""
    broker = config.broker.type if config.broker.enabled else config.engine.type
    presence = (
        config.presence_manager.type if config.presence_manager.enabled else config.engine.type
    )
    if broker == presence == config.engine.type:
        return f"{broker} engine"
    return f"{broker} broker, {presence} presence"


def _engine_of(kind: str, redis: RedisEngineConfig, reactor: Any) -> IEngine:
    if kind == "redis":
        from rtserver.engines.redis import RedisEngine

        return RedisEngine(reactor, redis, reactor=reactor)
    return MemoryEngine(reactor)


def build_verifier(config: Config, reactor: Any) -> JWTVerifier | None:
    """The token verifier of ``config`` (JWKS keys fetched with treq on ``reactor``).

    Raises:
        ValueError: a key cannot be loaded.
    """
    fetch = None
    token, sub_token = config.client.token, config.client.subscription_token
    if token.jwks_public_endpoint or sub_token.jwks_public_endpoint:
        from rtserver.auth.jwks import treq_fetcher

        fetch = treq_fetcher(reactor)
    return JWTVerifier.from_config(config.client, clock=reactor, fetch=fetch)


class ProxyPoolService(Service):
    """Closes the proxies' connections (HTTP keep-alive pool, GRPC channels) at stop."""

    def __init__(
        self, pool: Any, closers: list[Callable[[], Deferred[None]]] | None = None
    ) -> None:
        self.pool = pool
        self.closers = closers or []

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        closed: list[Deferred[Any]] = [close() for close in self.closers]
        if self.pool is not None:
            closed.append(self.pool.closeCachedConnections())
        return gatherResults(closed, consumeErrors=True)


def build_proxies(
    config: Config, reactor: Any, hooks: Hooks | None = None
) -> tuple[Proxies, ProxyPoolService | None]:
    """The backend proxies of ``config`` plus in-process ``hooks`` (docs/proxies.rst).

    Returns:
        The proxies and a service closing their connections at shutdown (None without
        HTTP or GRPC proxies).

    Raises:
        ConfigError: a namespace names a proxy nobody provides.
    """
    pool: Any = None
    closers: list[Callable[[], Deferred[None]]] = []
    adapters: dict[int, IProxy] = {}
    tls_pools: dict[ClientTLSConfig, Any] = {}  # a pool per ``http.tls`` object

    def http(name: str, proxy: ProxyConfig) -> ProxyEntry:
        nonlocal pool
        backend = adapters.get(id(proxy))
        if backend is None and proxy.endpoint.startswith("grpc://"):
            from rtserver.proxy.grpc import GRPCProxy

            grpc_proxy = GRPCProxy(name, proxy, reactor=reactor)
            closers.append(grpc_proxy.close)
            backend = adapters[id(proxy)] = grpc_proxy
        elif backend is None:
            from rtserver.proxy.http import HTTPProxy, make_pool

            tls = proxy.http.tls
            if not tls.enabled:
                if pool is None:
                    pool = make_pool(reactor)
                own = pool
            elif tls in tls_pools:
                own = tls_pools[tls]
            else:  # a pooled connection keeps the client certificate it was made with
                own = tls_pools[tls] = make_pool(reactor)
                closers.append(own.closeCachedConnections)
            backend = adapters[id(proxy)] = HTTPProxy(name, proxy, reactor=reactor, pool=own)
        return ProxyEntry(
            name,
            backend,
            timeout=proxy.timeout,
            binary=proxy.binary_encoding,
            include_meta=proxy.include_connection_meta,
            protocol="grpc" if proxy.endpoint.startswith("grpc://") else "http",
        )

    proxies = Proxies(rpc_config=config.rpc)
    client = config.client.proxy
    if client.connect.enabled:
        proxies.connect = http("connect", client.connect)
    if client.refresh.enabled:
        proxies.refresh = http("refresh", client.refresh)
    tables = {
        "subscribe": proxies.subscribe,
        "publish": proxies.publish,
        "sub_refresh": proxies.sub_refresh,
        "rpc": proxies.rpc,
    }
    for kind, named in proxy_names(config).items():
        for name, proxy in named.items():
            tables[kind][name] = http(name, proxy)
    if hooks is not None:
        backend = HookProxy(hooks)
        entry = ProxyEntry(hooks.name, backend, timeout=hooks.timeout, protocol="hooks")
        if hooks.connect is not None:
            proxies.connect = ProxyEntry("hooks", backend, timeout=hooks.timeout, protocol="hooks")
        if hooks.refresh is not None:
            proxies.refresh = ProxyEntry("hooks", backend, timeout=hooks.timeout, protocol="hooks")
        for kind, hook in (
            ("subscribe", hooks.subscribe),
            ("publish", hooks.publish),
            ("sub_refresh", hooks.sub_refresh),
            ("rpc", hooks.rpc),
        ):
            if hook is not None:
                tables[kind][hooks.name] = entry
    check_proxy_references(config, {kind: set(table) for kind, table in tables.items()})
    closing = ProxyPoolService(pool, closers) if pool is not None or closers else None
    return proxies, closing


def build_node(config: Config, reactor: Any, proxies: Proxies | None = None) -> Node:
    """The engine, token verifier and node for ``config``."""
    engine = build_engine(config, reactor)
    verifier = build_verifier(config, reactor)
    return Node(engine, config, clock=reactor, verifier=verifier, proxies=proxies)


def build_site(
    node: Node, config: Config, reactor: Any, executor: APIExecutor | None = None
) -> tuple[RTSite, list[Drainable]]:
    """The resource tree; also returns the transports to drain on shutdown."""
    sites = build_sites(node, config, reactor, executor)
    return sites.site, sites.drains


def admin_internal(config: Config) -> bool:
    """Whether the admin UI has its own listener (``http_server.internal_port``)."""
    admin = config.admin
    return admin.enabled and bool(config.http_server.internal_port) and not admin.external


@dataclass
class Sites:
    """What :func:`build_sites` makes: listeners' sites and the parts a reload changes."""

    site: RTSite
    #: The admin UI's own site on ``http_server.internal_port``, or None.
    internal: RTSite | None
    drains: list[Drainable]
    origins: OriginPolicy
    api: APIResource | None
    admin: AdminRoot | None
    #: The site of this worker's private socket, where the other workers relay the
    #: requests of SockJS sessions this one owns (``--workers N`` with SockJS), or None.
    owned: RTSite | None = None
    #: HTTP/3's datagram protocol (``http_server.http3.enabled``), or None.
    quic: QuicListener | None = None
    #: The metrics registry ``/metrics`` serves and ``graphite`` pushes, or None when
    #: both are off.
    metrics: CollectorRegistry | None = None


def build_sites(
    node: Node,
    config: Config,
    reactor: Any,
    executor: APIExecutor | None = None,
    *,
    siblings: Siblings | None = None,
) -> Sites:
    """The main site, the internal one (admin UI on ``internal_port``), drains, parts.

    ``siblings`` (a worker of ``--workers N``): the workers sharing the SockJS endpoint.
    """
    executor = executor or APIExecutor(node)
    admin_tree: AdminRoot | None = None
    if config.admin.enabled:
        admin_tree = admin_root(node, executor, config.admin, reactor)
    at_root = admin_tree is not None and not config.admin.handler_prefix.strip("/")
    internal = admin_internal(config)
    root: Branch = admin_tree if admin_tree is not None and at_root and not internal else Branch()
    origins = OriginPolicy(config.client.allowed_origins)
    drains: list[Drainable] = []
    if not config.websocket.disabled:
        from autobahn.twisted.resource import WebSocketResource

        factory = WebSocketFactory(
            node,
            origins,
            message_size_limit=config.websocket.message_size_limit,
            max_messages_in_frame=config.client.max_messages_in_frame,
            write_timeout=config.websocket.write_timeout,
            reactor=reactor,
        )
        mount(root, config.websocket.handler_prefix, WebSocketResource(factory))
        drains.append(factory)
    limits: list[tuple[str, int]] = []
    timeout = config.websocket.write_timeout

    def mount_http(prefix: str, resource: Resource, methods: bytes, body_limit: int) -> None:
        mount(root, prefix, CORSResource(resource, origins, methods))
        limits.append((prefix, body_limit))

    if config.http_stream.enabled:
        hs = config.http_stream
        resource: Resource = HTTPStreamResource(node, write_timeout=timeout)
        mount_http(hs.handler_prefix, resource, b"POST", hs.max_request_body_size)
    if config.sse.enabled:
        resource = SSEResource(node, write_timeout=timeout)
        sse = config.sse
        mount_http(sse.handler_prefix, resource, b"GET, POST", sse.max_request_body_size)
    if config.http_stream.enabled or config.sse.enabled:
        emu = config.emulation
        mount_http(emu.handler_prefix, EmulationResource(node), b"POST", emu.max_request_body_size)
    if config.uni_http_stream.enabled:
        uhs = config.uni_http_stream
        resource = UniHTTPStreamResource(node, write_timeout=timeout)
        mount_http(uhs.handler_prefix, resource, b"POST", uhs.max_request_body_size)
    if config.uni_sse.enabled:
        usse = config.uni_sse
        resource = UniSSEResource(node, write_timeout=timeout)
        mount_http(usse.handler_prefix, resource, b"GET, POST", usse.max_request_body_size)
    if config.uni_websocket.enabled:
        from autobahn.twisted.resource import WebSocketResource

        uws = config.uni_websocket
        uni_factory = UniWebSocketFactory(
            node,
            origins,
            join_push_messages=uws.join_push_messages,
            message_size_limit=uws.message_size_limit,
            max_messages_in_frame=config.client.max_messages_in_frame,
            write_timeout=timeout,
            reactor=reactor,
        )
        mount(root, uws.handler_prefix, WebSocketResource(uni_factory))
        drains.append(uni_factory)
    owned_site: RTSite | None = None
    relay = None
    if config.sockjs.enabled:
        from rtserver.sockjs.forward import Forwarder
        from rtserver.sockjs.resource import OwnedSessions
        from rtserver.transports.sockjs import sockjs_resource

        sj = config.sockjs
        relay = None if siblings is None else Forwarder(siblings, reactor)
        sockjs = sockjs_resource(
            node,
            sj,
            origins,
            message_size_limit=config.websocket.message_size_limit,
            write_timeout=timeout,
            clock=reactor,
            forwarder=relay,
        )
        mount(root, sj.handler_prefix, sockjs)
        limits.append((sj.handler_prefix, sj.max_request_body_size))
        drains.append(sockjs)
        if siblings is not None:
            owned_root = Branch()
            mount(owned_root, sj.handler_prefix, OwnedSessions(sockjs))
            owned_limits = [(sj.handler_prefix, sj.max_request_body_size)]
            # No head deadline: the peers are this host's workers, keeping idle
            # connections for their next relayed request.
            owned_site = RTSite(
                owned_root, body_limits=owned_limits, read_header_timeout=0, reactor=reactor
            )
            drains.append(owned_site)
    quic = None
    if config.http_server.http3.enabled:
        quic = build_quic_listener(node, config, origins, reactor)
    fast_path = None
    http_stats = HTTPStats()
    api_resource = None
    if not config.http_api.disabled:
        api = config.http_api
        api_resource = APIResource(executor, api)
        mount(root, api.handler_prefix, api_resource)
        limits.append((api.handler_prefix, api.max_request_body_size))
        fast_path = APIFastPath(api_resource, api.handler_prefix, api.max_request_body_size)
    registry = None
    if config.prometheus.enabled or config.graphite.enabled:
        from rtserver.web.metrics import MetricsResource, registry_for

        registry = registry_for(node, executor.stats, http_stats, sockjs_relay=relay, quic=quic)
        if config.prometheus.enabled:
            mount(root, config.prometheus.handler_prefix, MetricsResource(registry))
    if config.health.enabled:
        mount(root, config.health.handler_prefix, HealthResource(node.engine))
        mount(root, config.health.ready_handler_prefix, ReadyResource(node))
    internal_site = None
    if admin_tree is not None:
        if internal:
            internal_root: Branch = admin_tree if at_root else Branch()
            if not at_root:
                mount(internal_root, config.admin.handler_prefix, admin_tree)
            internal_site = RTSite(internal_root, reactor=reactor)
            drains.append(internal_site)
        elif not at_root:
            mount(root, config.admin.handler_prefix, admin_tree)
    site = RTSite(
        root,
        body_limits=limits,
        api_fast_path=fast_path,
        read_header_timeout=config.http_server.read_header_timeout,
        max_unfinished_heads=config.http_server.max_unfinished_request_heads,
        stats=http_stats,
        reactor=reactor,
    )
    drains.append(site)
    return Sites(
        site, internal_site, drains, origins, api_resource, admin_tree, owned_site, quic, registry
    )


def build_graphite(
    registry: CollectorRegistry, config: Config, node_name: str, reactor: Any
) -> Service:
    """The ``graphite`` exporter of ``registry`` (rtserver/web/graphite.py).

    Paths start with ``<graphite.prefix>.<node name>``, as Centrifugo names them.
    """
    from rtserver.web.graphite import GraphiteExporter, path_component

    graphite = config.graphite
    return GraphiteExporter(
        registry,
        host=graphite.host,
        port=graphite.port,
        prefix=graphite.prefix.removesuffix(".") + "." + path_component(node_name),
        interval=graphite.interval,
        tags=graphite.tags,
        reactor=reactor,
    )


def build_grpc_api(
    executor: APIExecutor, config: Config, reactor: Any, *, reuse_port: bool = False
) -> Service:
    """The GRPC server API on ``grpc_api.address``:``grpc_api.port`` (rtserver/grpcapi).

    ``reuse_port``: the port is shared with the other workers of ``--workers N``.
    Served on the reactor (gRPC over rtserver's own HTTP/2 server) unless
    ``grpc_api.server`` is ``grpcio``, or is unset with ``grpc_api.reflection`` on (the
    reflection service is grpcio's; config validation refuses it with ``h2``).
    """
    grpc = config.grpc_api
    if grpc.served_by == "h2":
        from rtserver.grpcapi.api import APIDispatch
        from rtserver.grpcapi.h2server import GRPCH2Factory, H2GRPCService

        factory = GRPCH2Factory(
            APIDispatch(executor, grpc),
            reactor,
            max_receive_message_size=grpc.max_receive_message_size,
        )
        return H2GRPCService(
            "GRPC API",
            factory,
            reactor,
            address=grpc.address,
            port=grpc.port,
            tls=grpc.tls,
            reuse_port=reuse_port,
        )
    from rtserver.grpcapi.api import SERVICE_NAME, APIServicer
    from rtserver.grpcapi.bridge import ReactorBridge
    from rtserver.grpcapi.server import GRPCServerService

    if not grpc.server:
        _log.info("GRPC API: grpc_api.reflection is on, so grpcio's server serves the GRPC API")
    bridge = ReactorBridge(reactor)
    servicer = APIServicer(executor, bridge, grpc)
    return GRPCServerService(
        "GRPC API",
        [servicer.handler()],
        bridge,
        reactor,
        address=grpc.address,
        port=grpc.port,
        tls=grpc.tls,
        max_receive_message_size=grpc.max_receive_message_size,
        reflection=[SERVICE_NAME] if grpc.reflection else [],
        reuse_port=reuse_port,
    )


def build_uni_grpc(
    node: Node, config: Config, reactor: Any, *, reuse_port: bool = False
) -> Service:
    """The uni_grpc transport on ``uni_grpc.address``:``uni_grpc.port`` (rtserver/grpcapi).

    ``reuse_port``: the port is shared with the other workers of ``--workers N``.
    """
    from rtserver.grpcapi.bridge import ReactorBridge
    from rtserver.grpcapi.server import AioGRPCServerService
    from rtserver.grpcapi.unistream import KEEPALIVE_OPTIONS, UniStreamServicer

    uni = config.uni_grpc
    bridge = ReactorBridge(reactor)
    servicer = UniStreamServicer(node, bridge)
    return AioGRPCServerService(
        "uni_grpc",
        [servicer.handler()],
        bridge,
        reactor,
        address=uni.address,
        port=uni.port,
        tls=uni.tls,
        max_receive_message_size=uni.max_receive_message_size,
        max_concurrent_rpcs=uni.max_concurrent_streams,
        options=KEEPALIVE_OPTIONS,
        reuse_port=reuse_port,
    )


def http3_address(config: Config, listen: list[str]) -> tuple[int, str]:
    """``(UDP port, interface)`` of HTTP/3.

    The first ``ssl:`` listener's port and interface, else ``http_server``'s.
    """
    for description in listen:
        parts = split_description(description)
        if parts[0] != "ssl":
            continue
        args = dict(p.partition("=")[::2] for p in parts[1:] if "=" in p)
        positional = [p for p in parts[1:] if "=" not in p]
        port = args.get("port") or (positional[0] if positional else "")
        if port.isdigit():
            return int(port), args.get("interface", "")
    server = config.http_server
    return server.port, server.address


def build_quic_listener(
    node: Node, config: Config, origins: OriginPolicy, reactor: Any
) -> QuicListener:
    """HTTP/3's datagram protocol (the WebTransport endpoint; transports/webtransport.py)."""
    from rtserver.transports.webtransport import QuicListener, quic_configuration, reset_secret

    cert, key = server_tls_pem(config.http_server.tls)
    wt = config.webtransport
    quic = quic_configuration(cert, key, wt.idle_timeout)
    return QuicListener(node, origins, wt, quic, reactor, reset_key=reset_secret(key))


def build_http3(
    listener: QuicListener,
    config: Config,
    listen: list[str],
    reactor: Any,
    reuse_port: bool = False,
    fd: int | None = None,
) -> Service:
    """HTTP/3 on UDP, on the port number of the HTTP server's TLS listener.

    ``reuse_port``: shared with the other workers of ``--workers N`` (``SO_REUSEPORT``);
    ``fd``: the bound UDP socket the supervisor of ``--workers N`` gave this worker.
    """
    from rtserver.transports.webtransport import HTTP3Service

    port, interface = http3_address(config, listen)
    return HTTP3Service(listener, port, interface, reactor, reuse_port=reuse_port, fd=fd)


def default_listen(config: Config) -> list[str]:
    """The endpoint description for ``http_server`` settings."""
    server = config.http_server
    desc = f"tcp:{server.port}"
    if server.tls.enabled:
        cert, key = server_tls_files(server.tls)
        desc = f"ssl:{server.port}:privateKey={_escape(key)}:certKey={_escape(cert)}"
    if server.address:
        desc += f":interface={_escape(server.address)}"
    return [desc]


def admin_url(cfg: Config, host: str = "") -> str:
    """The URL of the admin web UI a server with ``cfg`` serves (``localhost`` by default)."""
    server = cfg.http_server
    internal = bool(server.internal_port) and not cfg.admin.external
    address = (server.internal_address if internal else server.address) or host
    if address in ("", "0.0.0.0", "::"):  # every interface: this machine answers too
        address = "localhost"
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    port = server.internal_port if internal else server.port
    scheme = "https" if server.tls.enabled and not internal else "http"
    prefix = cfg.admin.handler_prefix.strip("/")
    return f"{scheme}://{address}:{port}/{prefix + '/' if prefix else ''}"


def internal_listen(config: Config) -> str:
    """The endpoint description of ``http_server.internal_port`` (plain TCP)."""
    server = config.http_server
    desc = f"tcp:{server.internal_port}"
    if server.internal_address:
        desc += f":interface={_escape(server.internal_address)}"
    return desc


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class Listener(Protocol):
    """Makes the listening service of one endpoint description for a site.

    ``client_ca``: None, or (for an ``ssl:`` description only) the trust root
    (``tlsserver.client_trust_root``) its TLS verifies a client certificate against
    (mutual TLS).
    """

    def __call__(
        self, description: str, site: RTSite, reactor: Any, client_ca: Any = None, /
    ) -> Service: ...


def _strports_listener(
    description: str, site: RTSite, reactor: Any, client_ca: Any = None
) -> Service:
    service = strports_service(description, site, reactor=reactor)
    if client_ca is not None:
        from rtserver._compat import require_client_certificate

        require_client_certificate(service.endpoint, client_ca)
    listening: Service = service
    return listening


def build_consumers(
    config: Config, executor: APIExecutor, node: Node, reactor: Any
) -> list[Service]:
    """A service per enabled ``consumers`` entry (docs/consumers.rst); started after the node.

    The consumer name in each Redis consumer group is the node's id, as in Centrifugo.
    """
    services: list[Service] = []
    for consumer in config.consumers:
        if not consumer.enabled:
            _log.info("consumer {name} is not enabled, skip", name=consumer.name)
            continue
        services.append(
            RedisStreamConsumer(
                consumer.name,
                consumer.redis_stream,
                executor.call,
                node.uid,
                reactor,
                reactor,
                max_payload_size=config.http_api.max_request_body_size,
                stats=node.stats,
            )
        )
    return services


def build(
    config: Config,
    *,
    listen: list[str] | None = None,
    reactor: Any = None,
    reload: Loader | None = None,
    hooks: Hooks | None = None,
    listener: Listener | None = None,
    siblings: Siblings | None = None,
    reuse_port: bool = False,
    http3_fd: int | None = None,
) -> MultiService:
    """The whole server as a MultiService (the twistd plugin and .tac files call this).

    Args:
        config: The configuration (``rtserver.config.load`` or ``from_mapping``).
        listen: Endpoint descriptions; default from ``http_server``.
        reactor: The reactor (default: the global one).
        reload: Loads the configuration again (the file given to ``twistd rtserver
            -c``): with it, SIGHUP applies what can change without a restart
            (:class:`Reloader`).
        hooks: In-process proxy hooks of an embedding application (docs/proxies.rst,
            "Embedding: Python hooks"); they answer the events they define instead of
            an HTTP backend.
        listener: Makes the listening service of an endpoint description (default:
            the strports service; a worker of ``--workers N`` passes one listening with
            ``SO_REUSEPORT``, rtserver/workers.py).
        siblings: The workers of ``--workers N`` (each one's private Unix socket): with
            SockJS on, this worker listens on its own and relays the requests of
            sessions another worker owns to that worker's.
        reuse_port: The GRPC ports (``grpc_api``, ``uni_grpc``) and HTTP/3's UDP port
            are shared with the other workers of ``--workers N`` (``SO_REUSEPORT``).
        http3_fd: HTTP/3's UDP socket, bound by the supervisor of ``--workers N`` and
            inherited (default: HTTP/3 binds its port itself).

    Raises:
        ConfigError: a namespace names a proxy that neither ``config`` nor ``hooks``
            provides.
    """
    listen_on = listener or _strports_listener
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    logs.set_level(config.log.level)
    proxies, closing = build_proxies(config, reactor, hooks)
    node = build_node(config, reactor, proxies)
    executor = APIExecutor(node)
    sites = build_sites(node, config, reactor, executor, siblings=siblings)
    site, internal_site, drains = sites.site, sites.internal, sites.drains
    top = ServerService(node, config.health.drain_delay, reactor, config.shutdown.timeout)
    top.setName("rtserver")
    endpoints = listen or default_listen(config)
    if closing is not None:
        closing.setServiceParent(top)
    internal_endpoints = [internal_listen(config)] if internal_site is not None else []
    reloader = None if reload is None else Reloader(node, sites, reload, reactor)
    NodeService(node, drains, endpoints + internal_endpoints, reloader=reloader).setServiceParent(
        top
    )
    client_ca = client_trust_root(config.http_server.tls, "http_server.tls")
    if client_ca is not None:
        _log.info("http_server.tls.client_ca_pem: TLS clients must present a certificate")
    for desc in endpoints:
        tls = split_description(desc)[0] == "ssl"
        if client_ca is not None and not tls:
            _log.warn(
                "http_server.tls.client_ca_pem: {endpoint} is no TLS listener, so it asks "
                "no client certificate",
                endpoint=desc,
            )
        listen_on(desc, site, reactor, client_ca if tls else None).setServiceParent(top)
    if sites.owned is not None and siblings is not None:
        # lockfile=1: a stale socket of a killed predecessor is removed, a live one kept.
        private = "unix:" + siblings.own_path.replace(":", "\\:") + ":mode=600:lockfile=1"
        strports_service(private, sites.owned, reactor=reactor).setServiceParent(top)
    if sites.quic is not None:
        http3 = build_http3(
            sites.quic, config, endpoints, reactor, reuse_port=reuse_port, fd=http3_fd
        )
        http3.setServiceParent(top)
    if config.graphite.enabled and sites.metrics is not None:
        build_graphite(sites.metrics, config, node.name, reactor).setServiceParent(top)
    for consumer in build_consumers(config, executor, node, reactor):
        consumer.setServiceParent(top)
    if config.grpc_api.enabled:
        build_grpc_api(executor, config, reactor, reuse_port=reuse_port).setServiceParent(top)
    if config.uni_grpc.enabled:
        build_uni_grpc(node, config, reactor, reuse_port=reuse_port).setServiceParent(top)
    if internal_site is not None:
        for desc in internal_endpoints:
            listen_on(desc, internal_site, reactor).setServiceParent(top)
    return top
