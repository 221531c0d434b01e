"""Cluster fixtures: a real ``redis-server`` per test and the config every node shares."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import NODE_MODULES, Server, base_config, merge
from natsserver import NatsServer, require_nats_server
from redisserver import RedisServer, require_redis_server

HERE = Path(__file__).resolve().parent

ClusterConfig = Callable[[str], tuple[dict[str, Any], str, str]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``interop`` (real processes, official clients)."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    """A fresh ``nats-server`` on a free port."""
    server = NatsServer(binary=require_nats_server()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` without persistence on a free port."""
    server = RedisServer(binary=require_redis_server()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis: RedisServer) -> str:
    return redis.address


@pytest.fixture
def cluster_config() -> ClusterConfig:
    """``(config, secret, api_key)`` for nodes sharing the Redis at the given URL."""

    def make(url: str) -> tuple[dict[str, Any], str, str]:
        secret = "cluster-" + uuid.uuid4().hex
        api_key = "api-" + uuid.uuid4().hex
        config = merge(
            base_config(secret, api_key),
            {
                "log": {"level": "info"},
                # Fast presence expiry so a killed node's clients vanish within the test.
                "client": {"presence_update_interval": "1s"},
                "http_stream": {"enabled": True},
                "engine": {
                    "type": "redis",
                    "redis": {
                        "address": [url],
                        "prefix": "t" + uuid.uuid4().hex[:8],
                        "presence_ttl": "3s",
                    },
                },
            },
        )
        return config, secret, api_key

    return make


@pytest.fixture
def node_js() -> str:
    """Path of ``node`` with the pinned centrifuge-js installed; skip (or fail in CI) without."""
    path = shutil.which("node")
    if path is None or not (NODE_MODULES / "centrifuge" / "package.json").is_file():
        reason = "node and tests/interop/node_modules (npm ci --prefix tests/interop) are needed"
        if os.environ.get("RTSERVER_REQUIRE_ALL"):
            pytest.fail(reason + " (RTSERVER_REQUIRE_ALL is set)", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach both nodes' log tails to a failing cluster test."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and cluster is not None:
        for label, server in getattr(cluster, "nodes", {}).items():
            if isinstance(server, Server):
                report.sections.append((f"node {label} log (tail)", server.log(6000)))
    return report
