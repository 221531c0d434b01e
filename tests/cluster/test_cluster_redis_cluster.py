"""Two real ``twistd rtserver`` nodes on a real 3-master Redis Cluster.

The scenarios of test_cluster_nodes.py, run with ``engine.redis.address`` set to a
``redis+cluster://`` address: cross-node delivery, presence, history, server-side
commands, publication versions, a killed node whose client recovers, the whole Redis Cluster restarted
(empty) with the loss reported to clients, PUB/SUB connections killed and re-made,
emulation across nodes, and a clean leave. The Redis fixtures of this module replace the standalone ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redisserver import RedisClusterSetup, require_redis_server
from test_cluster_nodes import (
    cluster,
    test_emulation_requests_reach_the_session_on_another_node,
    test_killed_node_restarts_and_its_client_recovers,
    test_killed_pubsub_links_are_reestablished,
    test_redis_restart_is_survived_and_loss_is_reported,
    test_stopping_node_leaves_the_cluster_at_once,
    test_two_nodes_act_as_one_server,
    test_versions_are_compared_cluster_wide,
)

__all__ = [
    "cluster",
    "test_emulation_requests_reach_the_session_on_another_node",
    "test_killed_node_restarts_and_its_client_recovers",
    "test_killed_pubsub_links_are_reestablished",
    "test_redis_restart_is_survived_and_loss_is_reported",
    "test_stopping_node_leaves_the_cluster_at_once",
    "test_two_nodes_act_as_one_server",
    "test_versions_are_compared_cluster_wide",
]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisClusterSetup]:
    """A fresh 3-master Redis Cluster on free ports."""
    require_redis_server()
    setup = RedisClusterSetup(tmp_path)
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def redis_url(redis: RedisClusterSetup) -> str:
    return redis.url
