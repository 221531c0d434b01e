"""``POST /emulation`` for a session on another node, when forwarding fails: 503.

Fast unit tests: a node on a Clock whose engine's control channel is down, and the
emulation resource answered through a real twisted.web Site on a StringTransport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from rtserver import config as rtconfig
from rtserver.core.node import Node
from rtserver.core.types import ControlMessage, NodeInfo
from rtserver.engines.memory import MemoryEngine
from rtserver.transports.emulation import EmulationResource


class ControlDown(Exception):
    """The engine's control channel is unavailable."""


class DownEngine(MemoryEngine):
    """A shared memory engine whose control messages cannot be sent."""

    shared = True

    def __init__(self, clock: Clock, *, deferred: bool) -> None:
        super().__init__(clock, cleanup_interval=0)
        self.deferred = deferred
        self.pending: list[Deferred[None]] = []

    def publish_control(self, message: ControlMessage, node: str = "") -> Deferred[None]:
        if not self.deferred:
            return fail(ControlDown("control channel down"))
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


def node_with_peer(clock: Clock, *, deferred: bool) -> tuple[Node, DownEngine]:
    cfg = rtconfig.from_mapping({"http_stream": {"enabled": True}})
    engine = DownEngine(clock, deferred=deferred)
    node = Node(engine, cfg, clock=clock)
    node.handle_control(NodeInfo(uid="peer-node", name="peer", version="0"))
    return node, engine


def post(resource: EmulationResource, body: dict[str, Any]) -> tuple[StringTransport, Any]:
    site = Site(resource)
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    data = orjson.dumps(body)
    proto.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return transport, proto


BODY = {"session": "s-1", "node": "peer-node", "data": '{"id":2,"subscribe":{"channel":"c"}}'}


def test_forwarding_that_fails_at_once_is_503(expect_logged_failure: Callable[..., None]) -> None:
    """The peer is known but the control message cannot be sent: 503, logged."""
    clock = Clock()
    node, _ = node_with_peer(clock, deferred=False)
    expect_logged_failure(ControlDown)
    transport, proto = post(EmulationResource(node), BODY)
    try:
        assert transport.value().startswith(b"HTTP/1.1 503 ")
        assert b"emulation temporarily unavailable\n" in transport.value()
    finally:
        proto.connectionLost(Failure(ConnectionDone()))


def test_forwarding_that_fails_later_is_503(expect_logged_failure: Callable[..., None]) -> None:
    """The control message fails after the request was taken: 503, logged."""
    clock = Clock()
    node, engine = node_with_peer(clock, deferred=True)
    expect_logged_failure(ControlDown)
    transport, proto = post(EmulationResource(node), BODY)
    try:
        assert transport.value() == b""
        [sent] = engine.pending
        sent.errback(ControlDown("control channel down"))
        assert transport.value().startswith(b"HTTP/1.1 503 ")
        assert b"emulation temporarily unavailable\n" in transport.value()
        assert clock.getDelayedCalls() == []  # the survey's timeout went with it
    finally:
        proto.connectionLost(Failure(ConnectionDone()))
