"""Delta compression across two real nodes sharing one real ``redis-server``.

The publisher's ``delta`` flag travels with the publication between nodes, through
Redis PUB/SUB or through a real ``nats-server`` (``broker.type: nats``, history in
Redis): a document published through node ``a`` with ``delta: true`` reaches a
centrifuge-python delta subscriber on node ``b`` as fossil deltas it rebuilds exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from centrifuge import DeltaType
from harness import Server, merge
from pysdk import (
    Recorder,
    WireTap,
    bounded,
    in_thread,
    name,
    run_scenario,
    sdk_client,
    subscribe,
)
from test_cluster_nodes import Cluster

COUNT = 10
#: A ~3 KB document, one row changed in each version.
DOCS = [
    json.dumps({"version": v, "rows": [{"id": i, "qty": i * 3 + (v if i == v else 0)}
                                       for i in range(100)]}).encode()
    for v in range(COUNT)
]


@pytest.fixture(params=["redis", "nats"])
def delta_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, cluster_config: Any
) -> Iterator[Cluster]:
    config, secret, api_key = cluster_config(redis_url)
    if request.param == "nats":
        nats = request.getfixturevalue("nats")
        config = merge(config, {"broker": {"enabled": True, "type": "nats",
                                           "nats": {"url": nats.url, "prefix": name("t")}}})
    config = merge(config, {"channel": {"namespaces": [{
        "name": "docs", "allow_subscribe_for_client": True, "allowed_delta_types": ["fossil"],
        "history_size": 100, "history_ttl": "300s", "force_positioning": True,
    }]}})
    c = Cluster(tmp_path, config, secret, api_key)
    for label in ("a", "b"):
        c.start(label)
        if request.param == "nats":  # announcements before the NATS link is up
            c.nodes[label].expect_logged_failure("NatsUnavailable")
    try:
        yield c
    finally:
        c.stop_all()


def publish(server: Server, channel: str, doc: bytes) -> None:
    session = requests.Session()
    session.trust_env = False
    with session:
        response = session.post(
            f"{server.api_url}/publish",
            json={"channel": channel, "data": json.loads(doc), "delta": True},
            headers={"X-API-Key": server.api_key},
            timeout=5,
        )
    response.raise_for_status()
    assert "error" not in response.json()


def test_delta_flag_crosses_nodes(delta_cluster: Cluster) -> None:
    a, b = delta_cluster.nodes["a"], delta_cluster.nodes["b"]
    channel = name("docs:c-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(b, rec, token=b.token(name("u-")))
        tap = WireTap(client._codec, channel)
        client._codec = tap
        sub = subscribe(client, channel, rec, delta=DeltaType.FOSSIL)
        try:
            await client.connect()
            await sub.subscribe()
            await bounded(sub.ready())
            for doc in DOCS:
                await in_thread(publish, a, channel, doc)
            got = await rec.wait("publication", count=COUNT, timeout=15)
            assert [p["data"] for p in got] == [json.loads(d) for d in DOCS]
        finally:
            await client.disconnect()
        flags = [f for _, frame in tap.frames for f in frame]
        assert flags == [False] + [True] * (COUNT - 1)

    run_scenario(scenario())
