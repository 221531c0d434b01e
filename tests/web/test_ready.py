"""Liveness (``/health``) and readiness (``/ready``): starting, ready, draining, engine down.

Unit level over a StringTransport: a node that has not started is alive but not ready;
started, it is ready; draining, it is alive and not ready. Against real ``twistd
rtserver`` processes: with ``health.drain_delay`` a SIGTERM'd server answers ``/ready``
503 ``draining`` while ``/health`` stays 200 and a connected client stays connected,
then exits and the client is told 3001 (reconnect); a server whose Redis is not up yet is not ready
until Redis starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import Server, base_config, free_port, merge, spawn_server, stop_server
from pysdk import Recorder, run_scenario, sdk_client
from redisserver import RedisServer, require_redis_server
from twisted.internet.task import Clock
from web_http import Connections

from rtserver import config as rtconfig
from rtserver.config import ConfigError
from rtserver.service import NodeService, ServerService, build_node, build_site

DRAIN_DELAY = 3.0


@pytest.fixture
def http() -> Iterator[Connections]:
    connections = Connections()
    yield connections
    connections.close_all()


def _site(settings: dict[str, Any]) -> tuple[Any, Any, Clock]:
    cfg = rtconfig.from_mapping(settings)
    clock = Clock()
    node = build_node(cfg, clock)
    site, _ = build_site(node, cfg, clock)
    return site, node, clock


def _get(http: Connections, site: Any, path: str) -> tuple[int, bytes]:
    code, headers, body = http.request(site, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    if path != "/health":
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
    return code, body


def test_starting_ready_draining(http: Connections) -> None:
    site, node, _ = _site({})
    assert _get(http, site, "/ready") == (503, b'{"status":"starting"}')
    assert _get(http, site, "/health") == (200, b"{}")
    node.start()
    assert _get(http, site, "/ready") == (200, b'{"status":"ready"}')
    node.drain()
    assert _get(http, site, "/ready") == (503, b'{"status":"draining"}')
    assert _get(http, site, "/health") == (200, b"{}")
    node.stop()
    assert _get(http, site, "/ready") == (503, b'{"status":"stopped"}')


def test_ready_is_503_while_the_engine_is_down(http: Connections) -> None:
    site, node, _ = _site({"engine": {"type": "redis", "redis": {"address": ["127.0.0.1:1"]}}})
    node.phase = "ready"  # as after the engine's first connection attempt
    assert _get(http, site, "/ready") == (503, b'{"status":"engine unavailable"}')
    node.engine.stop()


def test_ready_other_methods_and_prefix(http: Connections) -> None:
    site, _, _ = _site({"health": {"ready_handler_prefix": "/readyz"}})
    code, headers, _ = http.request(site, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert code == 405 and headers["allow"] == "GET, HEAD"
    assert _get(http, site, "/readyz")[0] == 503


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match=r"health\.drain_delay: expected a duration"):
        rtconfig.from_mapping({"health": {"drain_delay": "-1s"}})
    with pytest.raises(ConfigError, match=r"health\.ready_handler_prefix: must be set"):
        rtconfig.from_mapping({"health": {"ready_handler_prefix": "/health"}})
    assert rtconfig.from_mapping({"health": {"drain_delay": "5s"}}).health.drain_delay == 5.0


def test_drain_delay_waits_on_the_clock_before_stopping() -> None:
    cfg = rtconfig.from_mapping({"health": {"drain_delay": "2s"}})
    clock = Clock()
    node = build_node(cfg, clock)
    top = ServerService(node, cfg.health.drain_delay, clock)
    NodeService(node, [], ["tcp:0"]).setServiceParent(top)
    top.startService()
    assert node.readiness() == "ready"
    done = top.stopService()
    assert node.readiness() == "draining" and top.running
    clock.advance(1.9)
    assert node.phase == "draining"
    clock.advance(0.1)
    assert node.phase == "stopped"
    assert done.called


# --- real twistd processes ------------------------------------------------------------------


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def test_sigterm_drains_with_readiness_off(tmp_path: Path) -> None:
    secret, api_key = "s-" + uuid.uuid4().hex, "k-" + uuid.uuid4().hex
    config = merge(
        base_config(secret, api_key),
        {"log": {"level": "info"}, "health": {"drain_delay": f"{DRAIN_DELAY:g}s"}},
    )
    server = spawn_server(tmp_path, config, secret=secret, api_key=api_key)
    session = _session()
    rec = Recorder()
    try:
        assert session.get(server.url + "/ready", timeout=5).json() == {"status": "ready"}

        async def scenario() -> None:
            client, _ = sdk_client(server, rec, token=server.token("u1"))
            await client.connect()
            await rec.wait("connected")
            stopped_at = time.monotonic()
            server.process.terminate()
            while True:  # the SIGTERM arrives asynchronously
                ready = await asyncio.to_thread(session.get, server.url + "/ready", timeout=5)
                if ready.status_code == 503:
                    break
                assert time.monotonic() - stopped_at < DRAIN_DELAY
            assert ready.json() == {"status": "draining"}
            health = await asyncio.to_thread(session.get, server.url + "/health", timeout=5)
            assert health.status_code == 200
            assert not rec.find("connecting", code=3001)  # still served while draining
            # then closed with 3001 "shutdown": the SDK reconnects (to another node)
            await rec.wait("connecting", code=3001, timeout=DRAIN_DELAY + 10)
            assert time.monotonic() - stopped_at >= DRAIN_DELAY - 0.5
            await client.disconnect()

        run_scenario(scenario())
        assert server.process.wait(timeout=10) in (0, -15)
        assert "not ready for 3s (health.drain_delay)" in server.log(10**9)
    finally:
        session.close()
        if server.process.poll() is None:
            stop_server(server)


def test_not_ready_until_redis_is_up(tmp_path: Path) -> None:
    require_redis_server()
    redis = RedisServer()  # port chosen, not started yet
    secret, api_key = "s-" + uuid.uuid4().hex, "k-" + uuid.uuid4().hex
    config = merge(
        base_config(secret, api_key),
        {"engine": {"type": "redis", "redis": {"address": redis.address}}},
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spawned: dict[str, Server] = {}

    def spawn() -> None:  # returns once /health is 200, i.e. after Redis is up
        spawned["server"] = spawn_server(
            tmp_path, config, secret=secret, api_key=api_key, port=port
        )

    starter = threading.Thread(target=spawn)
    starter.start()
    session = _session()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                ready = session.get(url + "/ready", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "rtserver did not listen"
                time.sleep(0.05)
        assert ready.status_code == 503
        assert ready.json()["status"] in ("starting", "engine unavailable")
        assert session.get(url + "/health", timeout=2).status_code == 503
        redis.start()
        starter.join(timeout=20)
        assert "server" in spawned
        deadline = time.monotonic() + 10
        while session.get(url + "/ready", timeout=2).status_code != 200:
            assert time.monotonic() < deadline, "not ready after Redis came up"
            time.sleep(0.05)
    finally:
        session.close()
        starter.join(timeout=20)
        if "server" in spawned:
            stop_server(spawned["server"])
        redis.stop()
