"""Two real ``twistd rtserver`` nodes sharing one real ``redis-server``.

What users of a cluster rely on: a publication made through any node reaches clients on
every node; presence, history and ``info`` answer for the whole cluster; a node killed
with SIGKILL and restarted lets its clients recover every missed publication; a Redis
restart is survived by both nodes on their own and the loss it caused is reported to
clients (``recovered: false``), never skipped silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cent
import pytest
import requests
from harness import (
    Server,
    free_port,
    run_emulation_pubsub,
    spawn_server,
    stop_server,
)
from pysdk import Recorder, in_thread, name, run_scenario, subscribed

#: How long a cluster-level change (node announcements, Redis reconnect) may take.
CLUSTER_TIMEOUT = 20.0


class Cluster:
    """Nodes ``a`` and ``b`` on one Redis, restartable on their own ports."""

    def __init__(self, workdir: Path, config: dict[str, Any], secret: str, api_key: str) -> None:
        self.workdir = workdir
        self.config = config
        self.secret = secret
        self.api_key = api_key
        self.ports = {"a": free_port(), "b": free_port()}
        self.nodes: dict[str, Server] = {}

    def start(self, label: str) -> Server:
        config = {**self.config, "node": {"name": label}}
        self.nodes[label] = spawn_server(
            self.workdir, config, secret=self.secret, api_key=self.api_key,
            port=self.ports[label], log_name=f"node-{label}.log",
        )
        return self.nodes[label]

    def kill(self, label: str) -> None:
        """SIGKILL: no goodbye to peers, no cleanup in Redis."""
        server = self.nodes.pop(label)
        server.close_clients()
        server.process.kill()
        server.process.wait(timeout=10)

    def stop_all(self) -> None:
        for label in list(self.nodes):
            stop_server(self.nodes.pop(label))


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, cluster_config: Any) -> Iterator[Cluster]:
    config, secret, api_key = cluster_config(redis_url)
    c = Cluster(tmp_path, config, secret, api_key)
    c.start("a")
    c.start("b")
    try:
        yield c
    finally:
        c.stop_all()


def wait_until(check: Any, what: str, timeout: float = CLUSTER_TIMEOUT) -> Any:
    """Poll ``check`` (a callable returning a truthy value) until it holds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, cent.CentError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def node_names(server: Server) -> list[str]:
    return sorted(n.name for n in server.cent_client.info(cent.InfoRequest()).nodes)


def health(server: Server) -> int:
    session = requests.Session()
    session.trust_env = False
    try:
        return session.get(server.url + "/health", timeout=2).status_code
    finally:
        session.close()


def check_versions_across_nodes(a: Server, b: Server) -> None:
    """Publication versions are compared on the shared stream, whichever node publishes.

    Version 2 through ``b``, then version 1 (same epoch) through ``a`` is suppressed: its
    publish succeeds with the unchanged position, and neither the subscriber on ``a``
    nor the history sees it; version 3 through ``a`` is published.
    """
    channel = name("ver-")

    def publish(node: Server, n: int, version: int) -> tuple[int, str]:
        request = cent.PublishRequest(
            channel=channel, data={"n": n}, version=version, version_epoch="e"
        )
        result = node.cent_client.publish(request)
        return result.offset, result.epoch

    async def scenario() -> tuple[list[tuple[int, str]], list[Any]]:
        rec = Recorder()
        async with subscribed(a, channel, rec, token=a.token(name("u-"))):
            positions = [
                await in_thread(publish, b, 1, 2),
                await in_thread(publish, a, 2, 1),
                await in_thread(publish, a, 3, 3),
            ]
            return positions, await rec.wait("publication", count=2)

    positions, pubs = run_scenario(scenario())
    epoch = positions[0][1]
    assert epoch and positions == [(1, epoch), (1, epoch), (2, epoch)]
    assert [(p["data"], p["offset"]) for p in pubs] == [({"n": 1}, 1), ({"n": 3}, 2)]
    kept = b.cent_client.history(cent.HistoryRequest(channel=channel, limit=-1))
    assert [p.data for p in kept.publications] == [{"n": 1}, {"n": 3}]


def test_versions_are_compared_cluster_wide(cluster: Cluster) -> None:
    """An outdated version published through another node is suppressed."""
    check_versions_across_nodes(cluster.nodes["a"], cluster.nodes["b"])


def test_two_nodes_act_as_one_server(cluster: Cluster) -> None:
    """A client on node A is served as if B were the same server.

    B's publications reach it; presence, history, channels and info agree; B's server-side
    unsubscribe and disconnect act on it.
    """
    a, b = cluster.nodes["a"], cluster.nodes["b"]
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
            client_id = (await rec.wait("connected"))[0]["id"]
            presence = await in_thread(b.cent_client.presence, cent.PresenceRequest(channel=channel))
            assert list(presence.presence) == [client_id]
            assert presence.presence[client_id].user == user
            history = await in_thread(
                a.cent_client.history, cent.HistoryRequest(channel=channel, limit=-1)
            )
            assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}, {"n": 3}]
            channels = await in_thread(b.cent_client.channels, cent.ChannelsRequest())
            assert channels.channels[channel].num_clients == 1
            # Server-side commands through B act on the user's connection on A.
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


def test_killed_node_restarts_and_its_client_recovers(cluster: Cluster) -> None:
    """Node A is killed (SIGKILL) while B publishes; once A restarts its client recovers all."""
    b = cluster.nodes["b"]
    user, channel = name("u-"), name("room-")

    async def scenario() -> None:
        rec = Recorder()
        async with subscribed(cluster.nodes["a"], channel, rec, token=b.token(user)):
            await in_thread(b.publish, channel, {"n": 1})
            await rec.wait("publication", count=1)
            old_id = (await rec.wait("connected"))[0]["id"]
            await in_thread(cluster.kill, "a")
            await rec.wait("connecting", count=1)
            for i in range(2, 7):  # publishing through B never fails
                await in_thread(b.publish, channel, {"n": i})
            await in_thread(cluster.start, "a")
            await rec.wait("subscribed", count=2, timeout=CLUSTER_TIMEOUT)
            resubscribed = rec.find("subscribed")[-1]
            assert resubscribed["was_recovering"] and resubscribed["recovered"], resubscribed
            await in_thread(b.publish, channel, {"n": 7})
            got = await rec.wait("publication", count=7)
            assert [e["data"]["n"] for e in got] == [1, 2, 3, 4, 5, 6, 7]

            def dead_client_gone() -> bool:
                presence = b.cent_client.presence(cent.PresenceRequest(channel=channel))
                return old_id not in presence.presence and len(presence.presence) == 1

            # A's killed process could not remove its client: presence TTL does.
            await in_thread(wait_until, dead_client_gone, "killed node's presence expired")

    run_scenario(scenario())


def test_redis_restart_is_survived_and_loss_is_reported(cluster: Cluster, redis: Any) -> None:
    """Redis restarts without persistence: nodes recover alone; clients learn of the loss."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    user, channel = name("u-"), name("room-")

    async def scenario() -> None:
        rec = Recorder()
        async with subscribed(a, channel, rec, token=a.token(user)):
            await in_thread(b.publish, channel, {"n": 1})
            await rec.wait("publication", count=1)

            await in_thread(redis.stop)
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 503, "health 503")
            with pytest.raises(cent.CentApiResponseError) as refused:
                await in_thread(b.publish, channel, {"n": "lost"})
            assert refused.value.code == 100

            await in_thread(redis.start)
            for node in (a, b):
                await in_thread(wait_until, lambda n=node: health(n) == 200, "health 200")

            def resubscribed_after_loss() -> bool:
                # The stream restarted with a new epoch: the next publication tells the
                # client its position is gone; it resubscribes and learns recovered=false.
                b.publish(channel, {"n": "after"})
                return any(
                    e["was_recovering"] and not e["recovered"] for e in rec.find("subscribed")
                )

            await in_thread(wait_until, resubscribed_after_loss, "resubscribe with loss")
            await in_thread(b.publish, channel, {"n": "final"})
            await rec.wait("publication", data={"n": "final"})

    run_scenario(scenario())


def test_emulation_requests_reach_the_session_on_another_node(
    cluster: Cluster, node_js: str
) -> None:
    """centrifuge-js streams from node A but posts every command to B's /emulation."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    wait_until(lambda: node_names(b) == ["a", "b"], "node B knows node A")
    events = run_emulation_pubsub(node_js, a, b, CLUSTER_TIMEOUT)
    chat_line = next(e for e in events if "chat_publication" in e)
    assert chat_line["peer_publication"]["data"] == {"text": "allowed"}


def test_killed_pubsub_links_are_reestablished(cluster: Cluster, redis: Any) -> None:
    """Redis drops every PUB/SUB connection (it stays up): both nodes deliver again."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    user, channel = name("u-"), name("room-")

    async def scenario() -> None:
        rec = Recorder()
        async with subscribed(a, channel, rec, token=a.token(user)):
            await in_thread(redis.kill_pubsub_clients)
            counter = iter(range(1, 1000))

            def delivered_again() -> bool:
                b.publish(channel, {"n": next(counter)})
                return bool(rec.find("publication"))

            await in_thread(wait_until, delivered_again, "delivery after PUB/SUB loss")
            # Whatever was published while A was resubscribing is either delivered or
            # reported: the client never sees a gap in offsets.
            offsets = [e["offset"] for e in rec.find("publication")]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))

    run_scenario(scenario())


def test_stopping_node_leaves_the_cluster_at_once(cluster: Cluster) -> None:
    """SIGTERM on A: B drops A from ``info`` right away, not after the 7 s expiry."""
    b = cluster.nodes["b"]
    wait_until(lambda: node_names(b) == ["a", "b"], "B knows A")
    stop_server(cluster.nodes.pop("a"))
    wait_until(lambda: node_names(b) == ["b"], "B forgot A", timeout=3.0)
