"""``GET /metrics``: Prometheus text exposition (``prometheus.enabled``).

Names follow Centrifugo's (``centrifugo_`` namespace) so existing dashboards keep
working; rtserver-only series use the ``rtserver_`` namespace. Values are read from the
node at scrape time: nothing is counted on the fan-out path. The table is in
docs/operations.rst, "Metrics".

Counters keep Centrifugo's exact sample names: prometheus_client names a counter's
samples ``<name>_total``, Centrifugo's (Go) counters mostly have no suffix, so
:func:`_counter` exposes them as ``untyped`` families whose samples carry the name
itself (Prometheus queries them, ``rate()`` included, exactly as counters).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.samples import Sample
from twisted.web.resource import Resource
from twisted.web.server import Request

from rtserver.api.executor import CommandStats
from rtserver.core.node import Node
from rtserver.core.stats import NodeStats
from rtserver.sockjs.forward import Forwarder
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
        sockjs_relay: Forwarder | None = None,
        quic: QuicListener | None = None,
    ) -> None:
        self._node = node
        self._api = api_stats
        self._http = http_stats
        self._relay = sockjs_relay
        self._quic = quic

    def collect(self) -> Iterator[Metric]:
        node, hub = self._node, self._node.hub
        for name, doc, value in (
            ("num_clients", "Number of clients connected to this node.", hub.num_clients),
            ("num_users", "Number of unique users connected to this node.", hub.num_users),
            ("num_channels", "Number of channels with subscribers on this node.", hub.num_channels),
            ("num_subscriptions", "Number of subscriptions on this node.", hub.num_subscriptions),
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
        yield _counter(
            "centrifugo_client_connections_accepted",
            "Client connections accepted (connect succeeded), by transport.",
            ["transport"],
            {(t,): n for t, n in hub.accepted.items()},
        )
        yield from self._client_metrics(node)
        yield from self._stats_metrics(node.stats)
        if self._api is not None:
            yield from self._api_metrics(self._api)
        if self._http is not None:
            yield from self._http_metrics(self._http)
        if self._relay is not None:
            yield CounterMetricFamily(
                "rtserver_sockjs_relayed_requests",
                "SockJS requests this worker relayed to the worker owning their session.",
                value=self._relay.forwarded,
            )
            yield CounterMetricFamily(
                "rtserver_sockjs_relay_unreachable",
                "SockJS requests served here because their session's worker was unreachable.",
                value=self._relay.unreachable,
            )
        if self._quic is not None:
            yield from self._quic_metrics(self._quic)

    @staticmethod
    def _client_metrics(node: Node) -> Iterator[Metric]:
        inflight: dict[tuple[str], int] = {}
        total = largest = waiting = 0
        for client in node.hub.clients():
            key = (client.transport_name,)
            inflight[key] = inflight.get(key, 0) + 1
            queued = client.queued_bytes
            if queued:
                total += queued
                waiting += 1
                largest = max(largest, queued)
        family = GaugeMetricFamily(
            "centrifugo_client_connections_inflight",
            "Connected clients now, by transport.",
            labels=["transport"],
        )
        for key, count in sorted(inflight.items()):
            family.add_metric(list(key), count)
        yield family
        for name, doc, value in (
            ("queue_bytes", "Bytes queued for all clients, waiting for their transport.", total),
            ("queue_max_bytes", "Bytes queued for the most backed-up client.", largest),
            ("queued_clients", "Clients with output waiting for their transport.", waiting),
        ):
            yield GaugeMetricFamily(f"rtserver_client_{name}", doc, value=value)

    @staticmethod
    def _stats_metrics(stats: NodeStats) -> Iterator[Metric]:
        yield _summary(
            "centrifugo_client_command_duration_seconds",
            "Client command duration, by method.",
            ["method"],
            {(m,): v for m, v in stats.commands.calls.items()},
        )
        yield _counter(
            "centrifugo_client_num_reply_errors",
            "Error replies to client commands, by method and code.",
            ["method", "code"],
            {(m, str(c)): n for (m, c), n in stats.reply_errors.items()},
        )
        yield _counter(
            "centrifugo_client_num_server_disconnects",
            "Connections the server closed, by disconnect code.",
            ["code"],
            {(str(c),): n for c, n in stats.disconnects.items()},
        )
        yield _summary(
            "centrifugo_proxy_duration_seconds",
            "Proxy call duration, by protocol, type and proxy name.",
            ["protocol", "type", "name"],
            stats.proxies.calls,
        )
        yield _counter(
            "centrifugo_proxy_errors",
            "Proxy calls that failed (timeout, transport error, bad answer).",
            ["protocol", "type", "name"],
            stats.proxy_errors,
        )
        yield _summary(
            "rtserver_engine_duration_seconds",
            "Engine round trip duration (broker, history, presence), by operation.",
            ["operation"],
            {(op,): v for op, v in stats.engine.calls.items()},
        )
        yield _counter(
            "rtserver_engine_errors",
            "Engine calls that failed, by operation.",
            ["operation"],
            {(op,): n for op, n in stats.engine_errors.items()},
        )
        yield _counter(
            "centrifugo_broker_publish_suppressed_count",
            "Publications suppressed (not kept, not delivered), by reason and namespace.",
            ["reason", "channel_namespace"],
            stats.suppressed,
        )
        yield _counter(
            "centrifugo_consumers_messages_processed_total",
            "Messages a consumer processed (acknowledged), by consumer name.",
            ["consumer_name"],
            {(name,): n for name, n in stats.consumer_processed.items()},
        )
        yield _counter(
            "centrifugo_consumers_errors_total",
            "Messages a consumer failed to process (left for a retry), by consumer name.",
            ["consumer_name"],
            {(name,): n for name, n in stats.consumer_errors.items()},
        )

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
        yield GaugeMetricFamily(
            "rtserver_http3_handshakes",
            "QUIC connections whose handshake is not complete.",
            value=quic.handshaking,
        )
        yield CounterMetricFamily(
            "rtserver_http3_retries_sent",
            "QUIC Retry packets sent (address validation while many handshakes are open).",
            value=quic.retries_sent,
        )
        yield CounterMetricFamily(
            "rtserver_http3_retry_tokens_refused",
            "Initial packets dropped for an invalid, expired or other-address Retry token.",
            value=quic.tokens_refused,
        )
        yield CounterMetricFamily(
            "rtserver_http3_stateless_resets_sent",
            "QUIC Stateless Resets sent for packets of connections this process does not hold.",
            value=quic.resets_sent,
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


def _counter(name: str, doc: str, labels: list[str], values: Mapping[Any, float]) -> Metric:
    """A monotonic count whose samples carry ``name`` itself (no ``_total``)."""
    family = Metric(name, doc, "unknown")
    for key, value in sorted(values.items()):
        family.samples.append(Sample(name, dict(zip(labels, key, strict=True)), value))
    return family


def _summary(name: str, doc: str, labels: list[str], calls: Mapping[Any, list[float]]) -> Metric:
    family = SummaryMetricFamily(name, doc, labels=labels)
    for key, (count, seconds) in sorted(calls.items()):
        family.add_metric(list(key), count_value=int(count), sum_value=seconds)
    return family


def registry_for(
    node: Node,
    api_stats: CommandStats | None = None,
    http_stats: HTTPStats | None = None,
    sockjs_relay: Forwarder | None = None,
    quic: QuicListener | None = None,
) -> CollectorRegistry:
    """A registry holding only this node's collector (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, api_stats, http_stats, sockjs_relay, quic))
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
