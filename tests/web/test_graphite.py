"""``graphite``: the metrics of ``/metrics`` pushed to a Graphite plaintext listener.

The Graphite server is a real TCP listener in the test collecting lines; the exporter
runs in-process on the reactor, or inside a real ``twistd`` server.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from harness import EVENT_TIMEOUT, base_config, free_port, merge, spawn_server, stop_server
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from rtserver.api.executor import APIExecutor
from rtserver.config import ConfigError, from_mapping
from rtserver.testing import RecordingSink, make_node
from rtserver.web.graphite import GraphiteExporter, path_component, render
from rtserver.web.metrics import registry_for

SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
}


class Collector(LineOnlyReceiver):
    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.factory.connected(self)

    def lineReceived(self, line: bytes) -> None:
        self.factory.got(line.decode())


class Graphite(Factory):
    """A Graphite plaintext listener: records lines; ``wait(pred)`` until one matches."""

    protocol = Collector

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.connections: list[Collector] = []
        self._waiters: list[tuple[Any, Deferred[str]]] = []
        self._connection_waiters: list[Deferred[None]] = []

    def connected(self, connection: Collector) -> None:
        self.connections.append(connection)
        waiters, self._connection_waiters = self._connection_waiters, []
        for d in waiters:
            d.callback(None)

    def next_connection(self, timeout: float = EVENT_TIMEOUT) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._connection_waiters.append(d)
        d.addTimeout(timeout, reactor)
        return d

    def got(self, line: str) -> None:
        self.lines.append(line)
        for entry in list(self._waiters):
            if entry[0](line):
                self._waiters.remove(entry)
                entry[1].callback(line)

    def wait(self, pred: Any, timeout: float = EVENT_TIMEOUT) -> Deferred[str]:
        for line in self.lines:
            if pred(line):
                return succeed(line)
        d: Deferred[str] = Deferred()
        self._waiters.append((pred, d))
        d.addTimeout(timeout, reactor)
        return d


def _listen(graphite: Graphite, port: int = 0) -> Any:
    return reactor.listenTCP(port, graphite, interface="127.0.0.1")


def test_render_names_paths_as_centrifugo() -> None:
    """Prefix, node name, the family split into namespace.subsystem.name, then labels."""
    node, clock = make_node(SETTINGS)
    executor = APIExecutor(node)
    registry = registry_for(node, executor.stats)
    for _ in range(3):
        node.make_client(RecordingSink()).receive(b'{"id":1,"connect":{}}')
    clock.advance(0)
    prefix = "centrifugo." + path_component("web-1.prod")
    lines = [b.decode() for b in render(registry.collect(), prefix, 1700000000)]
    assert "centrifugo.web-1_prod.centrifugo.node.num_clients 3.000000 1700000000\n" in lines
    accepted = "centrifugo.web-1_prod.centrifugo.client.connections_accepted.transport.test"
    assert f"{accepted} 3 1700000000\n" in lines  # a counter: an integer
    tagged = [b.decode() for b in render(registry.collect(), prefix, 1, tags=True)]
    assert (
        "centrifugo.web-1_prod.centrifugo.client.connections_accepted;transport=test 3 1\n"
        in tagged
    )
    assert all(len(line.split(" ")) == 3 for line in lines + tagged)
    node.stop()


def test_counters_and_summaries_are_sent_as_increases() -> None:
    """Counters, a summary's sum and count: the increase since the last export.

    Gauges as they are; a counter named with its ``_total``; empty label values and
    histograms left out, as Centrifugo does.
    """
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        SummaryMetricFamily,
    )

    def families(n: int) -> list[Any]:
        errors = CounterMetricFamily("app_api_errors", "", labels=["method", "ns"])
        errors.add_metric(["publish", ""], 10 * n)
        took = SummaryMetricFamily("app_api_seconds", "", labels=["method"])
        took.add_metric(["publish"], count_value=4 * n, sum_value=0.5 * n)
        gauge = GaugeMetricFamily("app_node_clients", "", value=7)
        hist = HistogramMetricFamily("app_x_h", "", buckets=[("1", 1), ("+Inf", 1)], sum_value=1)
        return [errors, took, gauge, hist]

    previous: dict[Any, float] = {}
    first = [b.decode() for b in render(families(1), "p.n", 5, previous=previous)]
    assert first == [
        "p.n.app.api.errors_total.method.publish 10 5\n",
        "p.n.app.api.seconds.count.method.publish 4.000000 5\n",
        "p.n.app.api.seconds.sum.method.publish 0.500000 5\n",
        "p.n.app.node.clients 7.000000 5\n",
    ]
    second = [b.decode() for b in render(families(3), "p.n", 6, previous=previous)]
    assert second == [
        "p.n.app.api.errors_total.method.publish 20 6\n",
        "p.n.app.api.seconds.count.method.publish 8.000000 6\n",
        "p.n.app.api.seconds.sum.method.publish 1.000000 6\n",
        "p.n.app.node.clients 7.000000 6\n",
    ]


def test_path_component_follows_centrifugo() -> None:
    """Dots and non-ASCII characters become ``_`` (and what would break a line)."""
    assert path_component("service.prod.") == "service_prod_"
    assert path_component("\u043f\u0440\u0438v\u0435\u0442") == "___v__"
    assert path_component("a b;c=d") == "a_b_c_d"


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"port": 0}, "graphite.port"),
        ({"port": 70000}, "graphite.port"),
        ({"host": ""}, "graphite.host"),
        ({"interval": "0s"}, "graphite.interval"),
        ({"prefix": "."}, "graphite.prefix"),
    ],
)
def test_config_errors_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        from_mapping({"graphite": {"enabled": True, **settings}})


def test_config_defaults_follow_centrifugo() -> None:
    g = from_mapping({}).graphite
    assert (g.enabled, g.host, g.port, g.prefix, g.interval, g.tags) == (
        False, "localhost", 2003, "centrifugo", 10.0, False,
    )
    # off: nothing is checked
    assert from_mapping({"graphite": {"port": 0}}).graphite.port == 0


def _exporter(registry: Any, port: int, **kwargs: Any) -> GraphiteExporter:
    return GraphiteExporter(
        registry,
        host="127.0.0.1",
        port=port,
        prefix="centrifugo.n1",
        interval=kwargs.pop("interval", 3600.0),
        tags=False,
        reactor=reactor,
        **kwargs,
    )


@pytest_twisted.ensureDeferred
async def test_lines_buffered_while_graphite_is_down_arrive_after_reconnect() -> None:
    """Graphite down, then up: the queued lines arrive.

    Graphite dropping the connection: the exporter reconnects and keeps sending.
    """
    node, clock = make_node(SETTINGS)
    registry = registry_for(node, APIExecutor(node).stats)
    port = free_port()
    exporter = _exporter(registry, port)
    exporter.startService()
    try:
        exporter.export()  # Graphite is down: queued
        assert exporter.sent == 0
        graphite = Graphite()
        listening = _listen(graphite, port)
        try:
            await graphite.wait(lambda line: line.startswith("centrifugo.n1.centrifugo.node."))
            assert exporter.sent > 0 and exporter.dropped == 0 and not exporter._pending
            # Graphite closes the connection: the exporter comes back
            graphite.connections[0].transport.loseConnection()
            await graphite.next_connection()
            assert len(graphite.connections) == 2
            graphite.lines.clear()
            node.make_client(RecordingSink()).receive(b'{"id":1,"connect":{}}')
            clock.advance(0)
            exporter.export()
            await graphite.wait(
                lambda line: line.startswith("centrifugo.n1.centrifugo.node.num_clients 1.0")
            )
        finally:
            await listening.stopListening()
    finally:
        exporter.stopService()
        node.stop()


def test_buffer_is_bounded_while_graphite_is_down() -> None:
    """With Graphite unreachable the oldest batches are dropped and counted."""
    node, _ = make_node(SETTINGS)
    registry = registry_for(node, APIExecutor(node).stats)
    exporter = _exporter(registry, free_port(), max_buffer=4096)
    batch = sum(len(b) for b in render(registry.collect(), exporter.prefix, 0))
    assert batch < 4096
    for _ in range(20):
        exporter.export()
    assert exporter._pending_bytes <= 4096
    assert exporter.dropped > 0
    kept = sum(len(b) for b in exporter._pending)
    assert exporter.dropped + kept == 20 * len(render(registry.collect(), exporter.prefix, 0))
    node.stop()


@pytest_twisted.ensureDeferred
async def test_twistd_server_pushes_to_graphite(tmp_path: Path) -> None:
    """A real server with ``graphite.enabled`` pushes every interval, named by node."""
    graphite = Graphite()
    listening = _listen(graphite)
    secret, api_key = secrets.token_hex(8), secrets.token_hex(8)
    config = merge(
        base_config(secret, api_key),
        {
            "node": {"name": "edge.1"},
            "graphite": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": listening.getHost().port,
                "prefix": "rt.",
                "interval": "200ms",
                "tags": True,
            },
        },
    )
    server = spawn_server(tmp_path, config, secret=secret, api_key=api_key)
    try:
        line = await graphite.wait(
            lambda line: line.startswith("rt.edge_1.centrifugo.node.num_nodes ")
        )
        assert line.split(" ")[1] == "1.000000"
        assert all(" " not in line.split(" ", 1)[0] for line in graphite.lines)
    finally:
        stop_server(server)
        await listening.stopListening()


def test_a_slow_graphite_pauses_the_writes() -> None:
    """While the transport asks to pause, lines wait in the bounded buffer, not in Twisted's."""
    from twisted.internet.testing import StringTransport

    from rtserver.web.graphite import _Line

    node, _ = make_node(SETTINGS)
    registry = registry_for(node, APIExecutor(node).stats)
    exporter = _exporter(registry, free_port(), max_buffer=4096)
    exporter.running = True
    line = _Line(exporter)
    transport = StringTransport()
    line.makeConnection(transport)
    assert transport.producer is line
    exporter.export()
    first = transport.value()
    assert first.startswith(b"centrifugo.n1.")
    line.pauseProducing()
    for _ in range(20):
        exporter.export()
    assert transport.value() == first  # nothing more written while paused
    assert 0 < exporter._pending_bytes <= 4096 and exporter.dropped > 0
    line.resumeProducing()
    assert len(transport.value()) > len(first)
    assert not exporter._pending
    exporter.running = False
    node.stop()


def test_a_failing_collection_is_logged_and_the_next_interval_runs(
    expect_logged_failure: Any,
) -> None:
    """A collector raising is logged once per interval; the loop keeps running."""
    from twisted.internet.task import Clock

    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("collector broke")

    clock = Clock()
    exporter = GraphiteExporter(
        Broken(),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=free_port(),
        prefix="p",
        interval=10.0,
        tags=False,
        reactor=clock,
    )
    expect_logged_failure(RuntimeError, count=2)
    exporter._loop.start(10.0, now=False)
    clock.advance(10)
    clock.advance(10)
    assert exporter._loop.running
    exporter._loop.stop()
