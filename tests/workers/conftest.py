"""Worker fixtures: a real ``redis-server`` per test and a config the workers share."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import NODE_MODULES, base_config, merge
from redisserver import RedisServer, require_redis_server

HERE = Path(__file__).resolve().parent
# The WebTransport test client (tests/transports/wtclient.py).
sys.path.insert(0, str(HERE.parent / "transports"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``interop`` (real processes, official clients)."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` without persistence on a free port."""
    server = RedisServer(binary=require_redis_server()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_config(redis: RedisServer) -> tuple[dict[str, Any], str, str]:
    """``(config, secret, api_key)`` of a server on the Redis engine."""
    secret = "workers-" + uuid.uuid4().hex
    api_key = "api-" + uuid.uuid4().hex
    config = merge(
        base_config(secret, api_key),
        {
            "log": {"level": "info"},
            "client": {"presence_update_interval": "1s"},
            "http_stream": {"enabled": True},
            "engine": {
                "type": "redis",
                "redis": {
                    "address": [redis.address],
                    "prefix": "w" + uuid.uuid4().hex[:8],
                    "presence_ttl": "3s",
                },
            },
        },
    )
    return config, secret, api_key


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
