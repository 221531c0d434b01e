"""Wiring: configuration in, a running MultiService out.

The only module that knows every adapter exists: it picks the engine, builds the Node,
the API executor, the resource tree and one listening service per endpoint description.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.application.strports import service as strports_service
from twisted.internet.defer import Deferred, DeferredList
from rtserver.logs import Logger
from twisted.web.resource import Resource

from rtserver import logs
from rtserver.api.executor import APIExecutor
from rtserver.auth.jwt import JWTVerifier
from rtserver.config import Config
from rtserver.core.node import Node
from rtserver.engines.memory import MemoryEngine
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.websocket import WebSocketFactory
from rtserver.web.api import APIResource
from rtserver.web.health import HealthResource
from rtserver.web.site import RTSite, mount

__all__ = ["NodeService", "build", "build_node", "build_site", "default_listen"]

_log = Logger()


class NodeService(Service):
    """Starts the node (and its engine) and drains connections on shutdown."""

    def __init__(self, node: Node, drains: list[Any], shutdown_timeout: float = 5.0) -> None:
        self.node = node
        self._drains = drains
        self._timeout = shutdown_timeout

    def startService(self) -> None:
        super().startService()
        d = self.node.start()
        d.addErrback(lambda f: _log.failure("node failed to start", f))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.node.stop()
        waits = [drain.wait_closed(self._timeout) for drain in self._drains]
        return DeferredList(waits, consumeErrors=True)


def build_node(config: Config, reactor: Any) -> Node:
    """The engine, token verifier and node for ``config``."""
    engine = MemoryEngine(reactor)
    verifier = JWTVerifier.from_config(config.client)
    return Node(engine, config, clock=reactor, verifier=verifier)


def build_site(node: Node, config: Config, reactor: Any) -> tuple[RTSite, list[Any]]:
    """The resource tree; also returns the transports to drain on shutdown."""
    root = Resource()
    origins = OriginPolicy(config.client.allowed_origins)
    drains: list[Any] = []
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
    if not config.http_api.disabled:
        mount(root, config.http_api.handler_prefix, APIResource(APIExecutor(node), config.http_api))
        limits.append((config.http_api.handler_prefix, config.http_api.max_request_body_size))
    if config.health.enabled:
        mount(root, config.health.handler_prefix, HealthResource())
    site = RTSite(root, body_limits=limits, reactor=reactor)
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


def build(config: Config, *, listen: list[str] | None = None, reactor: Any = None) -> MultiService:
    """The whole server as a MultiService (the twistd plugin and .tac files call this)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    logs.set_level(config.log.level)
    node = build_node(config, reactor)
    site, drains = build_site(node, config, reactor)
    top = MultiService()
    top.setName("rtserver")
    NodeService(node, drains).setServiceParent(top)
    for desc in listen or default_listen(config):
        strports_service(desc, site, reactor=reactor).setServiceParent(top)
    top.node = node  # type: ignore[attr-defined]
    return top
