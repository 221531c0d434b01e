"""A real ``twistd rtserver`` on a Sentinel-managed Redis, through a Redis failover.

The config is written as Centrifugo's docs write it: ``engine.redis.address`` is one
``redis+sentinel://`` string. The server is not restarted while its master is killed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cent
import pytest
import requests
from harness import Server, base_config, merge, spawn_server, stop_server
from redisserver import SentinelSetup, require_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.interop]


def _poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _health(server: Server) -> int:
    session = requests.Session()
    session.trust_env = False
    with session:
        return session.get(f"{server.url}/health", timeout=5).status_code


@pytest.fixture
def sentinel_node(tmp_path: Path) -> Iterator[tuple[SentinelSetup, Server]]:
    """Master + replica + 3 sentinels, and one rtserver node using them."""
    require_redis_server()
    setup = SentinelSetup(tmp_path)
    try:
        secret, api_key = "sentinel-" + uuid.uuid4().hex, "api-" + uuid.uuid4().hex
        config = merge(
            base_config(secret, api_key),
            {
                "log": {"level": "info"},
                "engine": {
                    "type": "redis",
                    "redis": {
                        "address": setup.url,
                        "prefix": "t" + uuid.uuid4().hex[:8],
                        "connect_timeout": "500ms",
                        "io_timeout": "1s",
                    },
                },
            },
        )
        server = spawn_server(tmp_path, config, secret=secret, api_key=api_key)
        try:
            yield setup, server
        finally:
            stop_server(server)
    finally:
        setup.stop()


def test_server_survives_a_master_kill(sentinel_node: tuple[SentinelSetup, Server]) -> None:
    """SIGKILL the master: the node recovers on the promoted replica without a restart.

    /health goes 503, then 200; publish and history through the HTTP API work again,
    with the history written before the failover.
    """
    setup, server = sentinel_node
    api = server.cent()
    first = api.publish(cent.PublishRequest(channel="ha", data={"n": 1}))
    assert first.offset == 1
    setup.wait_replicated()

    setup.master.kill()
    _poll(lambda: _health(server) == 503, 15, "/health to report the lost master")
    new_master = ("127.0.0.1", setup.replica.port)
    _poll(
        lambda: all(s.master() == new_master for s in setup.sentinels),
        20,
        "the sentinels to promote the replica",
    )
    _poll(lambda: _health(server) == 200, 15, "/health to recover on the new master")

    second = api.publish(cent.PublishRequest(channel="ha", data={"n": 2}))
    assert (second.offset, second.epoch) == (2, first.epoch)
    history = api.history(cent.HistoryRequest(channel="ha", limit=10))
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
    assert f"master at 127.0.0.1:{setup.replica.port}" in server.log()
