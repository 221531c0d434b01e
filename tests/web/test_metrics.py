"""``GET /metrics``: the node's state in the Prometheus text format."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtserver.api.executor import APIExecutor
from rtserver.config import from_mapping
from rtserver.service import build_site
from rtserver.testing import RecordingSink, make_node
from rtserver.web.metrics import registry_for

SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {"without_namespace": {"allow_subscribe_for_client": True,
                                      "allow_subscribe_for_anonymous": True}},
    "http_api": {"key": "k"},
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest_twisted.ensureDeferred
async def test_metrics_reflect_clients_subscriptions_and_api_calls() -> None:
    """Gauges follow connections and subscriptions; API calls are counted by method."""
    from prometheus_client import generate_latest

    node, clock = make_node(SETTINGS)
    executor = APIExecutor(node)
    registry = registry_for(node, executor.stats)
    for _ in range(2):
        client = node.make_client(RecordingSink())
        client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room"}}')
    clock.advance(0)
    await executor.call("publish", {"channel": "room", "data": {}})
    await executor.call("publish", {"channel": "", "data": {}})
    await executor.call("nonsense", {})
    got = samples(generate_latest(registry).decode())
    assert got[("centrifugo_node_num_clients", ())] == 2
    assert got[("centrifugo_node_num_channels", ())] == 1
    assert got[("centrifugo_node_num_subscriptions", ())] == 2
    assert got[("centrifugo_node_num_nodes", ())] == 1
    assert got[("rtserver_engine_healthy", ())] == 1
    assert got[("centrifugo_client_connections_accepted", (("transport", "test"),))] == 2
    publish = (("method", "publish"), ("protocol", "http"))
    assert got[("centrifugo_api_command_duration_seconds_count", publish)] == 2
    bad = (("error", "107"), ("method", "publish"), ("protocol", "http"))
    assert got[("centrifugo_api_command_errors_total", bad)] == 1
    unknown = (("error", "104"), ("method", "unknown"), ("protocol", "http"))
    assert got[("centrifugo_api_command_errors_total", unknown)] == 1
    node.stop()


def _get(site: Any, path: str) -> bytes:
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = transport.value()
    proto.connectionLost(Failure(ConnectionDone()))
    return bytes(data)


def test_metrics_endpoint_is_served_only_when_enabled() -> None:
    """``prometheus.enabled`` mounts /metrics with the exposition content type."""
    for enabled in (True, False):
        settings = {**SETTINGS, "prometheus": {"enabled": enabled}}
        node, clock = make_node(settings)
        cfg = from_mapping(settings)
        site, _ = build_site(node, cfg, clock)
        response = _get(site, "/metrics")
        if enabled:
            assert response.startswith(b"HTTP/1.1 200")
            assert b"Content-Type: text/plain; version=" in response
            assert b"centrifugo_node_num_clients 0.0" in response
        else:
            assert response.startswith(b"HTTP/1.1 404")
        node.stop()
