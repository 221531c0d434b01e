"""``GET /metrics``: Prometheus text exposition (``prometheus.enabled``).

Names follow Centrifugo's (``centrifugo_`` namespace) so existing dashboards keep
working; rtserver-only series use the ``rtserver_`` namespace. Values are read from the
node at scrape time: nothing is counted on the fan-out path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from twisted.web.resource import Resource
from twisted.web.server import Request

from rtserver.api.executor import CommandStats
from rtserver.core.node import Node
from rtserver.transports.webtransport import QuicListener
from rtserver.web.site import HTTPStats

__all__ = ["MetricsResource", "NodeCollector", "registry_for"]


class NodeCollector:
    """Collects the node's gauges and counters when Prometheus scrapes."""

    def __init__(
        self,
        node: Node,
        api_stats: CommandStats | None = None,
        http_stats: HTTPStats | None = None,
        quic: QuicListener | None = None,
    ) -> None:
        self._node = node
        self._api = api_stats
        self._http = http_stats
        self._quic = quic

    def collect(self) -> Iterator[Metric]:
        node, hub = self._node, self._node.hub
        for name, doc, value in (
            ("num_clients", "Number of clients connected to this node.", hub.num_clients),
            ("num_users", "Number of unique users connected to this node.", hub.num_users),
            ("num_channels", "Number of channels with subscribers on this node.",
             hub.num_channels),
            ("num_subscriptions", "Number of subscriptions on this node.",
             hub.num_subscriptions),
            ("num_nodes", "Number of live nodes in the cluster.", len(node.cluster.nodes())),
        ):
            yield GaugeMetricFamily(f"centrifugo_node_{name}", doc, value=value)
        build = GaugeMetricFamily("centrifugo_node_build", "Node build info.", labels=["version"])
        build.add_metric([node.version], 1)
        yield build
        yield GaugeMetricFamily(
            "rtserver_engine_healthy",
            "1 while the engine can publish and deliver (Redis links up), else 0.",
            value=1 if node.engine.healthy else 0,
        )
        accepted = CounterMetricFamily(
            "centrifugo_client_connections_accepted",
            "Client connections accepted (connect succeeded), by transport.",
            labels=["transport"],
        )
        for transport, count in sorted(hub.accepted.items()):
            accepted.add_metric([transport], count)
        yield accepted
        if self._api is not None:
            yield from self._api_metrics(self._api)
        if self._http is not None:
            yield from self._http_metrics(self._http)
        if self._quic is not None:
            yield from self._quic_metrics(self._quic)

    @staticmethod
    def _quic_metrics(quic: QuicListener) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rtserver_http3_connections",
            "QUIC connections open (HTTP/3 and WebTransport).",
            value=len(quic.peers),
        )
        yield GaugeMetricFamily(
            "rtserver_webtransport_sessions",
            "WebTransport sessions open.",
            value=quic.open_sessions,
        )
        yield CounterMetricFamily(
            "rtserver_webtransport_sessions_opened",
            "WebTransport sessions accepted since start.",
            value=quic.sessions_opened,
        )
        yield CounterMetricFamily(
            "rtserver_http3_datagrams_dropped",
            "UDP datagrams dropped: not QUIC, not for a known connection, or beyond "
            "webtransport.max_connections.",
            value=quic.dropped,
        )

    @staticmethod
    def _http_metrics(stats: HTTPStats) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rtserver_http_unfinished_request_heads",
            "HTTP connections inside a request head that is not complete yet.",
            value=stats.unfinished_heads,
        )
        yield CounterMetricFamily(
            "rtserver_http_request_head_timeouts",
            "HTTP connections closed with 408: request head not complete within "
            "http_server.read_header_timeout.",
            value=stats.head_timeouts,
        )
        yield CounterMetricFamily(
            "rtserver_http_connections_refused",
            "HTTP connections refused with 503: http_server.max_unfinished_request_heads "
            "heads were unfinished.",
            value=stats.heads_refused,
        )

    @staticmethod
    def _api_metrics(stats: CommandStats) -> Iterator[Metric]:
        duration = SummaryMetricFamily(
            "centrifugo_api_command_duration_seconds",
            "Server API command duration.",
            labels=["protocol", "method"],
        )
        for method, (count, seconds) in sorted(stats.calls.items()):
            duration.add_metric(["http", method], count_value=int(count), sum_value=seconds)
        yield duration
        errors = CounterMetricFamily(
            "centrifugo_api_command_errors",
            "Server API commands answered with an error, by error code.",
            labels=["protocol", "method", "error"],
        )
        for (method, code), count in sorted(stats.errors.items()):
            errors.add_metric(["http", method, str(code)], count)
        yield errors


def registry_for(
    node: Node,
    api_stats: CommandStats | None = None,
    http_stats: HTTPStats | None = None,
    quic: QuicListener | None = None,
) -> CollectorRegistry:
    """A registry holding only this node's collector (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, api_stats, http_stats, quic))
    return registry


class MetricsResource(Resource):
    """Serves the registry in the Prometheus text format.

    twisted.web answers HEAD from ``render_GET`` and any other method with 405.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        body: bytes = generate_latest(self._registry)
        return body
