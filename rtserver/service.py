"""Wiring: configuration in, a running MultiService out.

The only module that knows every adapter exists: it picks the engine, builds the Node,
the API executor, the resource tree and one listening service per endpoint description.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.application.strports import service as strports_service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.web.resource import Resource

from rtserver import logs
from rtserver.api.executor import APIExecutor
from rtserver.auth.jwt import JWTVerifier
from rtserver.config import Config, ProxyConfig, check_proxy_references, proxy_names
from rtserver.core.node import Node
from rtserver.core.ports import IEngine
from rtserver.core.proxy import IProxy, Proxies, ProxyEntry
from rtserver.engines.memory import MemoryEngine
from rtserver.logs import Logger
from rtserver.proxy.hooks import HookProxy, Hooks
from rtserver.transports.emulation import EmulationResource, HTTPStreamResource, SSEResource
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.uni import UniHTTPStreamResource, UniSSEResource, UniWebSocketFactory
from rtserver.transports.websocket import WebSocketFactory
from rtserver.web.api import APIResource
from rtserver.web.apifast import APIFastPath
from rtserver.web.cors import CORSResource
from rtserver.web.health import HealthResource
from rtserver.web.site import Branch, RTSite, mount

__all__ = [
    "Hooks",
    "NodeService",
    "build",
    "build_engine",
    "build_node",
    "build_proxies",
    "build_site",
    "default_listen",
    "enabled_transports",
]

_log = Logger()

# ``reactor: Any`` below: twistd's reactor provides a dozen interfaces (time, TCP, SSL,
# threads...) and each part takes the ones it needs.


class Drainable(Protocol):
    """What shutdown waits for: a listener whose connections close."""

    def wait_closed(self, timeout: float) -> Deferred[None]:
        """Fires when every connection has closed, or after ``timeout`` seconds."""
        ...


class NodeService(Service):
    """Starts the node (and its engine) and drains connections on shutdown."""

    def __init__(
        self,
        node: Node,
        drains: list[Drainable],
        endpoints: list[str],
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.node = node
        self._drains = drains
        self._endpoints = endpoints
        self._timeout = shutdown_timeout

    def startService(self) -> None:
        super().startService()
        config = self.node.config
        _log.info(
            "rtserver {version} node {name}: {engine} engine, transports {transports}, "
            "listening on {endpoints}",
            version=self.node.version,
            name=self.node.name,
            engine=config.engine.type,
            transports=", ".join(enabled_transports(config)) or "none",
            endpoints=", ".join(self._endpoints),
        )
        d = self.node.start()
        d.addErrback(lambda f: _log.failure("node failed to start", f))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        stopped = self.node.stop()  # 3001 to clients, goodbye to peers, engine closed
        stopped.addErrback(lambda f: _log.failure("node did not stop cleanly", f))
        waits = [drain.wait_closed(self._timeout) for drain in self._drains]
        return DeferredList([stopped, *waits], consumeErrors=True)


def enabled_transports(config: Config) -> list[str]:
    """Names of the client transports this configuration serves."""
    names = [] if config.websocket.disabled else ["websocket"]
    for name in ("http_stream", "sse", "uni_websocket", "uni_sse", "uni_http_stream", "sockjs"):
        if getattr(config, name).enabled:
            names.append(name)
    return names


def build_engine(config: Config, reactor: Any) -> IEngine:
    """The engine ``engine.type`` names: memory (default) or redis."""
    if config.engine.type == "redis":
        from rtserver.engines.redis import RedisEngine

        return RedisEngine(reactor, config.engine.redis, reactor=reactor)
    return MemoryEngine(reactor)


class ProxyPoolService(Service):
    """Closes the proxies' connections (HTTP keep-alive pool, GRPC channels) at stop."""

    def __init__(self, pool: Any, closers: list[Callable[[], None]] | None = None) -> None:
        self.pool = pool
        self.closers = closers or []

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        for close in self.closers:
            close()
        if self.pool is None:
            return succeed(None)
        closed: Deferred[Any] = self.pool.closeCachedConnections()
        return closed


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
    closers: list[Callable[[], None]] = []
    adapters: dict[int, IProxy] = {}

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

            if pool is None:
                pool = make_pool(reactor)
            backend = adapters[id(proxy)] = HTTPProxy(name, proxy, reactor=reactor, pool=pool)
        return ProxyEntry(
            name,
            backend,
            timeout=proxy.timeout,
            binary=proxy.binary_encoding,
            include_meta=proxy.include_connection_meta,
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
        entry = ProxyEntry(hooks.name, backend, timeout=hooks.timeout)
        if hooks.connect is not None:
            proxies.connect = ProxyEntry("hooks", backend, timeout=hooks.timeout)
        if hooks.refresh is not None:
            proxies.refresh = ProxyEntry("hooks", backend, timeout=hooks.timeout)
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
    verifier = JWTVerifier.from_config(config.client)
    return Node(engine, config, clock=reactor, verifier=verifier, proxies=proxies)


def build_site(
    node: Node, config: Config, reactor: Any
) -> tuple[RTSite, list[Drainable]]:
    """The resource tree; also returns the transports to drain on shutdown."""
    root = Branch()
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
    if config.sockjs.enabled:
        from rtserver.transports.sockjs import sockjs_resource

        sj = config.sockjs
        sockjs = sockjs_resource(
            node,
            sj,
            origins,
            message_size_limit=config.websocket.message_size_limit,
            write_timeout=timeout,
            clock=reactor,
        )
        mount(root, sj.handler_prefix, sockjs)
        limits.append((sj.handler_prefix, sj.max_request_body_size))
        drains.append(sockjs)
    fast_path = None
    executor = APIExecutor(node)
    if not config.http_api.disabled:
        api = config.http_api
        api_resource = APIResource(executor, api)
        mount(root, api.handler_prefix, api_resource)
        limits.append((api.handler_prefix, api.max_request_body_size))
        fast_path = APIFastPath(api_resource, api.handler_prefix, api.max_request_body_size)
    if config.prometheus.enabled:
        from rtserver.web.metrics import MetricsResource, registry_for

        registry = registry_for(node, executor.stats)
        mount(root, config.prometheus.handler_prefix, MetricsResource(registry))
    if config.health.enabled:
        mount(root, config.health.handler_prefix, HealthResource(node.engine))
    site = RTSite(root, body_limits=limits, api_fast_path=fast_path, reactor=reactor)
    drains.append(site)
    return site, drains


def default_listen(config: Config) -> list[str]:
    """The endpoint description for ``http_server`` settings."""
    server = config.http_server
    desc = f"tcp:{server.port}"
    if server.tls.enabled:
        desc = (
            f"ssl:{server.port}:privateKey={_escape(server.tls.key_pem_file)}"
            f":certKey={_escape(server.tls.cert_pem_file)}"
        )
    if server.address:
        desc += f":interface={_escape(server.address)}"
    return [desc]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def build(
    config: Config,
    *,
    listen: list[str] | None = None,
    reactor: Any = None,
    hooks: Hooks | None = None,
) -> MultiService:
    """The whole server as a MultiService (the twistd plugin and .tac files call this).

    Args:
        config: The configuration (``rtserver.config.load`` or ``from_mapping``).
        listen: Endpoint descriptions; default from ``http_server``.
        reactor: The reactor (default: the global one).
        hooks: In-process proxy hooks of an embedding application (docs/proxies.rst,
            "Embedding: Python hooks"); they answer the events they define instead of
            an HTTP backend.

    Raises:
        ConfigError: a namespace names a proxy that neither ``config`` nor ``hooks``
            provides.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    logs.set_level(config.log.level)
    proxies, closing = build_proxies(config, reactor, hooks)
    node = build_node(config, reactor, proxies)
    site, drains = build_site(node, config, reactor)
    top = MultiService()
    top.setName("rtserver")
    endpoints = listen or default_listen(config)
    if closing is not None:
        closing.setServiceParent(top)
    NodeService(node, drains, endpoints).setServiceParent(top)
    for desc in endpoints:
        strports_service(desc, site, reactor=reactor).setServiceParent(top)
    top.node = node  # type: ignore[attr-defined]
    return top
