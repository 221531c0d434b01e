"""``/metrics`` beyond the node gauges: transports, commands, proxies, engine, queues.

Each named series appears and moves when the thing it counts happens: a unit test
drives a node on a Clock (commands, reply errors, server disconnects, in-process proxy
hooks, engine round trips, a client whose transport is full); a test against a real
``twistd rtserver`` scrapes ``/metrics`` around a centrifuge-python session and an RPC
answered by an HTTP backend.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import requests
from harness import base_config, merge, spawn_server, stop_server
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pysdk import Recorder, run_scenario, sdk_client

from rtserver import config as rtconfig
from rtserver.core.proxy import RPCProxyResult
from rtserver.protocol.codes import Disconnect
from rtserver.service import build_proxies
from rtserver.testing import RecordingSink, make_node
from rtserver.web.metrics import registry_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "allow_publish_for_subscriber": True,
            "allow_history_for_subscriber": True,
            "allow_presence_for_subscriber": True,
            "allow_history_for_anonymous": True,
            "allow_presence_for_anonymous": True,
            "allow_publish_for_anonymous": True,
            "presence": True,
            "history_size": 10,
            "history_ttl": "60s",
        },
        "namespaces": [{"name": "closed"}],
    },
    "rpc": {"without_namespace": {"proxy_enabled": True}},
}


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(got: Samples, metric: str, /, **labels: str) -> float:
    return got.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_commands_errors_disconnects_proxies_engine_and_queues() -> None:
    from rtserver.proxy.hooks import Hooks

    def rpc(request: Any) -> RPCProxyResult:
        if request.method == "boom":
            raise RuntimeError("backend bug")
        return RPCProxyResult(data=b'{"ok":true}')

    cfg = rtconfig.from_mapping(SETTINGS)
    from twisted.internet.task import Clock

    clock = Clock()
    proxies, _ = build_proxies(cfg, clock, Hooks(rpc=rpc))
    node, _ = make_node(SETTINGS, clock=clock, proxies=proxies)
    registry = registry_for(node)
    before = parse(generate_latest(registry).decode())
    assert value(before, "centrifugo_client_command_duration_seconds_count", method="connect") == 0

    sink = RecordingSink(transport_name="websocket")
    client = node.make_client(sink)
    client.receive(
        b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room"}}\n'
        b'{"id":3,"publish":{"channel":"room","data":{"n":1}}}\n'
        b'{"id":4,"history":{"channel":"room","limit":10}}\n'
        b'{"id":5,"presence":{"channel":"room"}}\n'
        b'{"id":6,"subscribe":{"channel":"closed:x"}}\n'
        b'{"id":7,"rpc":{"method":"hello","data":{}}}\n'
        b'{"id":8,"rpc":{"method":"boom","data":{}}}'
    )
    clock.advance(0)
    slow = node.make_client(RecordingSink(transport_name="sse"))
    slow.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room"}}')
    clock.advance(0)
    slow.pause_writing()  # its transport is full: output queues
    node.publish("room", b'{"n":2}')
    clock.advance(0)
    got = parse(generate_latest(registry).decode())

    for method in ("connect", "subscribe", "publish", "history", "presence", "rpc"):
        count = value(got, "centrifugo_client_command_duration_seconds_count", method=method)
        assert count >= 1, method
    assert value(got, "centrifugo_client_command_duration_seconds_count", method="rpc") == 2
    assert value(got, "centrifugo_client_num_reply_errors", method="subscribe", code="103") == 1
    assert value(got, "centrifugo_client_num_reply_errors", method="rpc", code="100") == 1
    assert value(got, "centrifugo_client_connections_inflight", transport="websocket") == 1
    assert value(got, "centrifugo_client_connections_inflight", transport="sse") == 1
    assert value(got, "centrifugo_client_connections_accepted", transport="sse") == 1
    rpc_labels = {"protocol": "hooks", "type": "rpc", "name": "default"}
    assert value(got, "centrifugo_proxy_duration_seconds_count", **rpc_labels) == 2
    assert value(got, "centrifugo_proxy_errors", **rpc_labels) == 1
    for op in ("subscribe", "publish", "history", "add_presence", "presence"):
        assert value(got, "rtserver_engine_duration_seconds_count", operation=op) >= 1, op
    assert value(got, "rtserver_client_queued_clients") == 1
    queued = value(got, "rtserver_client_queue_bytes")
    assert queued > 0 and value(got, "rtserver_client_queue_max_bytes") == queued

    client.close(Disconnect.FORCE_NO_RECONNECT)
    got = parse(generate_latest(registry).decode())
    assert value(got, "centrifugo_client_num_server_disconnects", code="3501") == 0
    assert value(got, "centrifugo_client_num_server_disconnects", code="3503") == 1
    assert value(got, "centrifugo_client_connections_inflight", transport="websocket") == 0
    node.stop()


def test_engine_failures_are_counted() -> None:
    from twisted.internet.defer import fail

    node, _ = make_node(SETTINGS)
    d = node.stats.time_engine("publish", fail(RuntimeError("down")))
    d.addErrback(lambda _: None)
    opts = node.resolver.options("room")
    node.stats.time_publish(fail(RuntimeError("down")), opts).addErrback(lambda _: None)
    got = parse(generate_latest(registry_for(node)).decode())
    assert value(got, "rtserver_engine_errors", operation="publish") == 2
    assert value(got, "rtserver_engine_duration_seconds_count", operation="publish") == 2
    assert not [k for k in got if k[0] == "centrifugo_broker_publish_suppressed_count"]
    node.stop()


@pytest_twisted.ensureDeferred
async def test_server_api_engine_calls_are_timed() -> None:
    """presence, presence_stats and history_remove of the server API count as round trips."""
    from rtserver.api.executor import APIExecutor

    node, _ = make_node(SETTINGS)
    executor = APIExecutor(node)
    for method in ("presence", "presence_stats", "history_remove"):
        reply = await executor.call(method, {"channel": "room"})
        assert "result" in reply, reply
    got = parse(generate_latest(registry_for(node)).decode())
    for op in ("presence", "presence_stats", "remove_history"):
        assert value(got, "rtserver_engine_duration_seconds_count", operation=op) == 1, op
    node.stop()


@pytest_twisted.ensureDeferred
async def test_suppressed_publications_are_counted_by_reason_and_namespace() -> None:
    """Outdated versions and repeated idempotency keys: Centrifugo's suppressed counter.

    Accepted publications (first of a key, newer version, no version) are not counted;
    the namespace label is the channel's namespace, empty without one.
    """
    from rtserver.api.executor import APIExecutor

    settings = merge(
        SETTINGS,
        {"channel": {"namespaces": [{"name": "docs", "history_size": 5, "history_ttl": "60s"}]}},
    )
    node, _ = make_node(settings)
    executor = APIExecutor(node)

    async def publish(channel: str, **fields: Any) -> dict[str, Any]:
        reply = await executor.call("publish", {"channel": channel, "data": {}, **fields})
        assert "result" in reply, reply
        return reply["result"]

    first = await publish("docs:a", version=2)
    assert await publish("docs:a", version=1) == first  # suppressed: the current position
    assert await publish("docs:a", version=2) == first
    await publish("docs:a", version=3)
    await publish("docs:a")
    await publish("room", idempotency_key="k")
    await publish("room", idempotency_key="k")
    await publish("room", idempotency_key="other")
    got = parse(generate_latest(registry_for(node)).decode())
    suppressed = "centrifugo_broker_publish_suppressed_count"
    assert value(got, suppressed, reason="version", channel_namespace="docs") == 2
    assert value(got, suppressed, reason="idempotency", channel_namespace="") == 1
    assert [k for k in got if k[0] == suppressed] == [
        (suppressed, (("channel_namespace", ""), ("reason", "idempotency"))),
        (suppressed, (("channel_namespace", "docs"), ("reason", "version"))),
    ]
    assert value(got, "rtserver_engine_duration_seconds_count", operation="publish") == 8
    node.stop()


def test_counters_keep_centrifugo_names() -> None:
    """No ``_total`` suffix where Centrifugo's counter has none."""
    node, _ = make_node(SETTINGS)
    node.stats.count(node.stats.disconnects, 3001)
    text = generate_latest(registry_for(node)).decode()
    assert 'centrifugo_client_num_server_disconnects{code="3001"} 1.0' in text
    assert "# TYPE centrifugo_client_num_server_disconnects untyped" in text
    assert "num_server_disconnects_total" not in text
    node.stop()


# --- a real server ----------------------------------------------------------------------------


class _RPCBackend(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        body = json.dumps({"result": {"data": {"echo": request.get("method")}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def rpc_backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RPCBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rpc"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_twistd_metrics_move(tmp_path: Path, rpc_backend: str) -> None:
    secret, api_key = "s-" + uuid.uuid4().hex, "k-" + uuid.uuid4().hex
    config = merge(
        base_config(secret, api_key),
        {
            "prometheus": {"enabled": True},
            "rpc": {
                "proxy": {"endpoint": rpc_backend},
                "without_namespace": {"proxy_enabled": True},
            },
        },
    )
    server = spawn_server(tmp_path, config, secret=secret, api_key=api_key)
    session = requests.Session()
    session.trust_env = False

    def scrape() -> Samples:
        reply = session.get(server.url + "/metrics", timeout=5)
        assert reply.status_code == 200
        return parse(reply.text)

    try:
        before = scrape()
        rec = Recorder()

        async def scenario() -> None:
            client, _ = sdk_client(server, rec, token=server.token("u1"))
            await client.connect()
            await rec.wait("connected")
            reply = await client.rpc("hello", {})
            assert reply.data == {"echo": "hello"}
            during = await run_in_thread(scrape)
            assert (
                value(during, "centrifugo_client_connections_inflight", transport="websocket") == 1
            )
            await client.disconnect()

        async def run_in_thread(fn: Any) -> Any:
            import asyncio

            return await asyncio.to_thread(fn)

        run_scenario(scenario())
        def publish(**fields: Any) -> dict[str, Any]:
            reply = session.post(
                server.api_url + "/publish",
                json={"data": {}, **fields},
                headers={"X-API-Key": api_key},
                timeout=5,
            )
            assert reply.status_code == 200
            body: dict[str, Any] = reply.json()
            assert "result" in body, body
            return body

        publish(channel="room")
        first = publish(channel="chat:doc", version=5, version_epoch="e")
        assert publish(channel="chat:doc", version=4, version_epoch="e") == first
        assert publish(channel="room", idempotency_key="same") == publish(
            channel="room", idempotency_key="same"
        )
        after = scrape()
        suppressed = "centrifugo_broker_publish_suppressed_count"
        assert value(after, suppressed, reason="version", channel_namespace="chat") == 1
        assert value(after, suppressed, reason="idempotency", channel_namespace="") == 1
        for name, labels in (
            ("centrifugo_client_command_duration_seconds_count", {"method": "connect"}),
            ("centrifugo_client_command_duration_seconds_count", {"method": "rpc"}),
            ("centrifugo_client_connections_accepted", {"transport": "websocket"}),
            (
                "centrifugo_proxy_duration_seconds_count",
                {"protocol": "http", "type": "rpc", "name": "default"},
            ),
            ("rtserver_engine_duration_seconds_count", {"operation": "publish"}),
            (
                "centrifugo_api_command_duration_seconds_count",
                {"protocol": "http", "method": "publish"},
            ),
        ):
            assert value(after, name, **labels) > value(before, name, **labels), (name, labels)
        assert ("rtserver_client_queue_bytes", ()) in after
    finally:
        session.close()
        stop_server(server)
