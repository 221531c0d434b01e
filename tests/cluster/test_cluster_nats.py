"""Two real ``twistd rtserver`` nodes connected by a real ``nats-server``.

* ``broker.type: nats`` on the memory engine (Centrifugo's NATS broker): publications,
  node membership, surveys and server-side commands cross nodes over NATS; history is
  "not available" (108); after a NATS restart delivery resumes without restarting
  either node.
* ``engine.type: redis`` + ``broker.type: nats``: PUB/SUB and control over NATS, history
  and presence in Redis; publication versions are compared in the Redis history.
  Emulation requests are forwarded between nodes; when NATS is killed mid-stream and
  restarted, a client that missed publications recovers them, and a loss larger than
  the history is reported as ``recovered: false``, never skipped.
* Over TLS (a test CA), with two NATS servers in ``broker.nats.url``: the nodes start on
  the first, move to the second when it dies and wrap around to the first when the
  second dies too; what an outage cost is recovered or reported as above.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cent
import pytest
from harness import merge, run_emulation_pubsub
from natsserver import NatsServer, require_nats_server
from pysdk import Recorder, in_thread, name, run_scenario, subscribed
from redisserver import make_tls
from test_cluster_nodes import (
    CLUSTER_TIMEOUT,
    Cluster,
    check_versions_across_nodes,
    health,
    node_names,
    wait_until,
)

NO_HISTORY = {"history_size": 0, "history_ttl": "0s", "force_recovery": False}


def _start(cluster: Cluster) -> Cluster:
    for label in ("a", "b"):
        cluster.start(label)
    return cluster


@pytest.fixture
def nats_cluster(tmp_path: Path, nats: NatsServer, cluster_config: Any) -> Iterator[Cluster]:
    """Memory engine, NATS broker: Centrifugo's ``broker.type: nats`` alone."""
    config, secret, api_key = cluster_config("redis://127.0.0.1:1")
    config = merge(config, {
        "engine": {"type": "memory"},
        "broker": {"enabled": True, "type": "nats",
                   "nats": {"url": nats.url, "prefix": name("t")}},
        "channel": {"without_namespace": NO_HISTORY},
    })
    cluster = _start(Cluster(tmp_path, config, secret, api_key))
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def redis_nats_cluster(
    tmp_path: Path, nats: NatsServer, redis_url: str, cluster_config: Any
) -> Iterator[Cluster]:
    """Redis engine (history, presence), NATS broker (PUB/SUB, control)."""
    config, secret, api_key = cluster_config(redis_url)
    small = {"name": "small", "allow_subscribe_for_client": True,
             "history_size": 2, "history_ttl": "300s", "force_recovery": True}
    config = merge(config, {
        "broker": {"enabled": True, "type": "nats",
                   "nats": {"url": nats.url, "prefix": name("t")}},
    })
    config["channel"] = dict(config["channel"])
    config["channel"]["namespaces"] = [*config["channel"]["namespaces"], small]
    cluster = _start(Cluster(tmp_path, config, secret, api_key))
    try:
        yield cluster
    finally:
        cluster.stop_all()


def test_versions_are_compared_in_redis_history(redis_nats_cluster: Cluster) -> None:
    """With the NATS broker, versions are kept and compared with the Redis history."""
    nodes = redis_nats_cluster.nodes
    check_versions_across_nodes(nodes["a"], nodes["b"])


def test_nats_broker_joins_two_nodes(nats_cluster: Cluster) -> None:
    """Publications, membership, surveys and server-side commands cross over NATS."""
    a, b = nats_cluster.nodes["a"], nats_cluster.nodes["b"]
    user, channel = name("u-"), name("room-")
    wait_until(lambda: node_names(a) == ["a", "b"] and node_names(b) == ["a", "b"],
               "both nodes listed by info on both nodes")

    async def scenario() -> None:
        rec = Recorder()
        async with subscribed(a, channel, rec, token=a.token(user)):
            for i in (1, 2, 3):
                await in_thread(b.publish, channel, {"n": i})
            got = await rec.wait("publication", count=3)
            assert [e["data"] for e in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
            channels = await in_thread(b.cent_client.channels, cent.ChannelsRequest())
            assert channels.channels[channel].num_clients == 1
            with pytest.raises(cent.CentApiResponseError) as e:
                await in_thread(b.cent_client.history, cent.HistoryRequest(channel=channel))
            assert e.value.code == 108  # as Centrifugo's NATS broker: no history
            extra = name("extra-")
            await in_thread(
                b.cent_client.subscribe, cent.SubscribeRequest(user=user, channel=extra)
            )
            await rec.wait("server_subscribed", channel=extra)
            await in_thread(b.publish, extra, {"server": "side"})
            got = await rec.wait("server_publication", channel=extra)
            assert got[0]["data"] == {"server": "side"}
            await in_thread(
                b.cent_client.unsubscribe, cent.UnsubscribeRequest(user=user, channel=channel)
            )
            assert (await rec.wait("unsubscribed"))[0]["code"] == 2000
            await in_thread(
                b.cent_client.disconnect,
                cent.DisconnectRequest(
                    user=user, disconnect=cent.Disconnect(code=4501, reason="bye")
                ),
            )
            assert (await rec.wait("disconnected"))[0]["code"] == 4501

    run_scenario(scenario())


def test_nats_restart_is_survived(nats_cluster: Cluster, nats: NatsServer) -> None:
    """NATS killed: 503 and error 100 on publish; restarted: delivery resumes alone."""
    a, b = nats_cluster.nodes["a"], nats_cluster.nodes["b"]
    user, channel = name("u-"), name("room-")

    async def scenario() -> None:
        rec = Recorder()
        async with subscribed(a, channel, rec, token=a.token(user)):
            await in_thread(b.publish, channel, {"n": 1})
            await rec.wait("publication", count=1)
            await in_thread(nats.kill)
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 503, "health 503")
            with pytest.raises(cent.CentApiResponseError) as refused:
                await in_thread(b.publish, channel, {"n": "lost"})
            assert refused.value.code == 100
            await in_thread(nats.start)
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 200, "health 200")
            await in_thread(b.publish, channel, {"n": 2})
            got = await rec.wait("publication", count=2)
            assert [e["data"]["n"] for e in got] == [1, 2]

    run_scenario(scenario())


def test_emulation_requests_cross_nodes_over_nats(
    redis_nats_cluster: Cluster, node_js: str
) -> None:
    """centrifuge-js streams from node A but posts every command to B's /emulation."""
    a, b = redis_nats_cluster.nodes["a"], redis_nats_cluster.nodes["b"]
    wait_until(lambda: node_names(b) == ["a", "b"], "node B knows node A")
    run_emulation_pubsub(node_js, a, b, CLUSTER_TIMEOUT)


def test_nats_killed_mid_stream_recovers_or_reports_loss(
    redis_nats_cluster: Cluster, nats: NatsServer
) -> None:
    """NATS dies while B publishes; once back, A's client recovers or learns of the loss.

    ``room-*`` keeps 100 publications: everything missed is recovered (``recovered:
    true``). ``small:*`` keeps 2: five missed cannot be, and the client is told
    (``recovered: false``).
    """
    a, b = redis_nats_cluster.nodes["a"], redis_nats_cluster.nodes["b"]
    user = name("u-")
    roomy, small = name("room-"), name("small:room-")

    async def scenario() -> None:
        rec_roomy, rec_small = Recorder(), Recorder()
        async with (
            subscribed(a, roomy, rec_roomy, token=a.token(user)),
            subscribed(a, small, rec_small, token=a.token(user)),
        ):
            for channel, rec in ((roomy, rec_roomy), (small, rec_small)):
                await in_thread(b.publish, channel, {"n": 1})
                await rec.wait("publication", count=1)
            await in_thread(nats.kill)
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 503, "health 503")
            for i in range(2, 7):  # kept in Redis; NATS cannot deliver them
                for channel in (roomy, small):
                    await in_thread(b.publish, channel, {"n": i})
            await in_thread(nats.start)
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 200, "health 200")
            for channel in (roomy, small):
                await in_thread(b.publish, channel, {"n": 7})

            got = await rec_roomy.wait("publication", count=7, timeout=CLUSTER_TIMEOUT)
            assert [e["data"]["n"] for e in got] == [1, 2, 3, 4, 5, 6, 7]
            assert any(e["was_recovering"] and e["recovered"]
                       for e in rec_roomy.find("subscribed"))

            def loss_reported() -> bool:
                return any(e["was_recovering"] and not e["recovered"]
                           for e in rec_small.find("subscribed"))

            await in_thread(wait_until, loss_reported, "small channel reports the loss")
            await in_thread(b.publish, small, {"n": 8})
            await rec_small.wait("publication", data={"n": 8})

    run_scenario(scenario())


@pytest.fixture
def tls_failover_cluster(
    tmp_path: Path, redis_url: str, cluster_config: Any
) -> Iterator[tuple[Cluster, list[NatsServer]]]:
    """Redis history, NATS over TLS: ``url`` lists two independent nats-servers."""
    (tmp_path / "tls").mkdir()
    tls = make_tls(tmp_path / "tls")
    binary = require_nats_server()
    servers = [NatsServer(binary=binary, tls=tls).start() for _ in range(2)]
    config, secret, api_key = cluster_config(redis_url)
    small = {"name": "small", "allow_subscribe_for_client": True,
             "history_size": 2, "history_ttl": "300s", "force_recovery": True}
    config = merge(config, {
        "broker": {"enabled": True, "type": "nats",
                   "nats": {"url": ",".join(s.url for s in servers), "prefix": name("t"),
                            "tls": {"enabled": True, "server_ca_pem": str(tls.ca_cert)}}},
    })
    config["channel"] = dict(config["channel"])
    config["channel"]["namespaces"] = [*config["channel"]["namespaces"], small]
    cluster = Cluster(tmp_path, config, secret, api_key)
    try:
        _start(cluster)
        yield cluster, servers
    finally:
        cluster.stop_all()
        for server in servers:
            server.stop()


def test_nats_tls_failover_recovers_or_reports_loss(
    tls_failover_cluster: tuple[Cluster, list[NatsServer]],
) -> None:
    """Two TLS NATS servers: the first dies, then the second while the first is back.

    Delivery resumes through the second server without restarting anything; publications
    made while no server was reachable are recovered from Redis (``recovered: true``)
    or, in ``small:*`` (history of 2), reported lost (``recovered: false``).
    """
    cluster, (first, second) = tls_failover_cluster
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    user = name("u-")
    roomy, small = name("room-"), name("small:room-")

    def up_lines(node: Any, server: NatsServer) -> int:
        return node.log(tail=10**9).count(f"nats link to {server.url} is up (TLS)")

    for node in (a, b):
        assert up_lines(node, first) == 1 and up_lines(node, second) == 0, node.log()

    async def scenario() -> None:
        rec_roomy, rec_small = Recorder(), Recorder()
        async with (
            subscribed(a, roomy, rec_roomy, token=a.token(user)),
            subscribed(a, small, rec_small, token=a.token(user)),
        ):
            for channel, rec in ((roomy, rec_roomy), (small, rec_small)):
                await in_thread(b.publish, channel, {"n": 1})
                await rec.wait("publication", count=1)

            await in_thread(first.kill)  # for good, for now: the nodes move to the second
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: up_lines(n, second) == 1,
                                "node on the second NATS server")
                await in_thread(wait_until, lambda n=node: health(n) == 200, "health 200")
            for channel, rec in ((roomy, rec_roomy), (small, rec_small)):
                await in_thread(b.publish, channel, {"n": 2})
                await rec.wait("publication", data={"n": 2}, timeout=CLUSTER_TIMEOUT)

            await in_thread(second.kill)  # no server left
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 503, "health 503")
            for i in range(3, 8):  # kept in Redis; NATS cannot deliver them
                for channel in (roomy, small):
                    await in_thread(b.publish, channel, {"n": i})
            await in_thread(first.start)  # the nodes wrap around to the first
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 200, "health 200")
                assert up_lines(node, first) == 2
            for channel in (roomy, small):
                await in_thread(b.publish, channel, {"n": 8})

            got = await rec_roomy.wait("publication", count=8, timeout=CLUSTER_TIMEOUT)
            assert [e["data"]["n"] for e in got] == [1, 2, 3, 4, 5, 6, 7, 8]
            assert any(e["was_recovering"] and e["recovered"]
                       for e in rec_roomy.find("subscribed"))

            def loss_reported() -> bool:
                return any(e["was_recovering"] and not e["recovered"]
                           for e in rec_small.find("subscribed"))

            await in_thread(wait_until, loss_reported, "small channel reports the loss")
            await in_thread(b.publish, small, {"n": 9})
            await rec_small.wait("publication", data={"n": 9})

    run_scenario(scenario())
