"""The Redis engine on a real Redis Cluster: hash slots, routing, redirections.

A 3-master cluster is made as operators make one (``redis-server --cluster-enabled
yes`` three times, ``redis-cli --cluster create``; tests/redisserver.py). The engine
passes the engine contract there, keeps each channel's keys in one slot while channels
spread over every master, follows ``MOVED`` and ``ASK`` while slots move, and recovers
from a master restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from contract import HISTORY, NO_HISTORY, EngineContract, EngineEnv, pub
from redis_support import AGE_KEYS, handler, make_engine, until
from redisserver import (
    RedisClusterSetup,
    RedisServer,
    RespError,
    require_redis_server,
    wait_for,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from rtserver.config import RedisAddress
from rtserver.core.types import DisconnectControl, HistoryFilter, PublishOptions
from rtserver.engines.redis import RedisEngine, RedisUnavailable
from rtserver.engines.rediscluster import ClusterCommandLink, crc16, key_slot
from rtserver.protocol.frames import ClientInfo

pytestmark = pytest.mark.redis

ALL = HistoryFilter(limit=-1)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSetup]:
    require_redis_server()
    setup = RedisClusterSetup(tmp_path_factory.mktemp("cluster"))
    try:
        yield setup
    finally:
        setup.stop()


def _command(engine: RedisEngine) -> ClusterCommandLink:
    command = engine.shards[0].command
    assert isinstance(command, ClusterCommandLink)
    return command


async def _age(engine: RedisEngine, seconds: float) -> None:
    """Age every key of the prefix on every master of the cluster."""
    for link in _command(engine).links():
        await link.execute("EVAL", AGE_KEYS, 0, engine.prefix, max(1, round(seconds * 1000)))


def _keys(server: RedisServer, pattern: str) -> list[str]:
    return sorted(k.decode() for k in server.command("KEYS", pattern))


def _clear(setup: RedisClusterSetup, prefix: str) -> None:
    """Delete every key of ``prefix`` (one by one: they live in many slots)."""
    for node in setup.nodes:
        for key in _keys(node, f"{prefix}.*"):
            node.command("DEL", key)


# --- hash slots ------------------------------------------------------------------------


def test_crc16_known_vectors() -> None:
    """CRC16-CCITT (XMODEM) as the Redis Cluster specification gives it."""
    assert crc16(b"") == 0
    assert crc16(b"123456789") == 0x31C3  # the specification's check value
    assert crc16(b"foo") % 16384 == 12182  # CLUSTER KEYSLOT foo in the Redis docs


def test_key_slot_matches_the_server(redis_cluster: RedisClusterSetup) -> None:
    """Our slot of a key is the one ``CLUSTER KEYSLOT`` answers, hash tags included."""
    keys = [
        "foo", "bar", "", "{user1000}.following", "{user1000}.followers", "foo{}{bar}",
        "foo{{bar}}zap", "foo{bar}{zap}", "{}", "}{", "a{b", "a}b{c}", "chat:ÿ",
        "centrifugo.stream.{news:sport}", "centrifugo.presence.data.{news:sport}",
        "канал", "😀", *(f"ch-{i}" for i in range(200)),
    ]  # fmt: skip
    for key in keys:
        assert key_slot(key) == redis_cluster.keyslot(key), key


# --- the engine on a cluster -------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def cluster_env(redis_cluster: RedisClusterSetup) -> AsyncIterator[EngineEnv]:
    engine = make_engine([redis_cluster.url])
    recorder = handler()
    await engine.start(recorder)
    assert engine.healthy
    yield EngineEnv(
        engine, recorder, lambda s: Deferred.fromCoroutine(_age(engine, s)), engine.sync
    )
    await engine.stop()


class TestRedisClusterContract(EngineContract):
    """The engine contract on a 3-master Redis Cluster."""

    @pytest.fixture
    def engine_env(self, cluster_env: EngineEnv) -> EngineEnv:
        return cluster_env


@pytest_twisted.ensureDeferred
async def test_channel_keys_share_a_slot_and_channels_spread(
    redis_cluster: RedisClusterSetup,
) -> None:
    """Each channel's keys (stream, meta, result, presence) sit on one master.

    Channels are spread over all three masters.
    """
    engine = make_engine([redis_cluster.url])
    await engine.start(handler())
    try:
        options = PublishOptions(
            history_size=5, history_ttl=60.0, history_meta_ttl=3600.0, idempotency_key="k1"
        )
        channels = [f"room:{i}" for i in range(12)]
        for ch in channels:
            await engine.publish(ch, pub(1), options)
            await engine.add_presence(ch, "c1", ClientInfo("u", "c1"))
        used = set()
        for ch in channels:
            owner = redis_cluster.owner(ch)
            used.add(owner.port)
            p = engine.prefix
            assert _keys(owner, f"{p}.*{{{ch}}}*") == sorted(
                [
                    f"{p}.presence.data.{{{ch}}}",
                    f"{p}.presence.expire.{{{ch}}}",
                    f"{p}.result.{{{ch}}}.k1",
                    f"{p}.stream.meta.{{{ch}}}",
                    f"{p}.stream.{{{ch}}}",
                ]
            )
        assert used == {n.port for n in redis_cluster.nodes}
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_two_nodes_on_one_cluster_exchange_publications_and_control(
    redis_cluster: RedisClusterSetup,
) -> None:
    """Classic PUB/SUB over the cluster: a publication on any slot reaches the other node."""
    b = make_engine([redis_cluster.url])
    a = make_engine([redis_cluster.url], prefix=b.prefix)  # nodes of one cluster
    ha, hb = handler(), handler()
    await a.start(ha)
    await b.start(hb)
    try:
        channels = [f"news:{i}" for i in range(6)]
        for ch in channels:
            await b.subscribe(ch)
        for n, ch in enumerate(channels, 1):
            await a.publish(ch, pub(n), HISTORY)
        await until(lambda: len(hb.publications) == len(channels), what="b got them all")
        assert sorted(ch for ch, _ in hb.publications) == sorted(channels)
        await a.publish_control(DisconnectControl(user="u1", code=4000, reason="test"), node=hb.uid)
        await until(lambda: bool(hb.controls), what="targeted control reached b")
        assert isinstance(hb.controls[-1], DisconnectControl)
        assert not any(isinstance(c, DisconnectControl) for c in ha.controls)
    finally:
        await a.stop()
        await b.stop()


def _node_id(server: RedisServer) -> str:
    return str(server.command("CLUSTER", "MYID").decode())


def _move_empty_slot(
    setup: RedisClusterSetup, slot: int, to: RedisServer, nodes: list[RedisServer] | None = None
) -> None:
    """Give an empty slot to another master as ``redis-cli --cluster reshard`` does.

    IMPORTING on the new owner and MIGRATING on the old one first: the new owner's
    ``SETSLOT NODE`` then bumps its config epoch, so a heartbeat of the old owner still
    in flight (claiming the slot with its older map) cannot take the slot back on some
    node, which would leave two nodes sending MOVED to each other. Returns once every
    node names the new owner.
    """
    nodes = nodes or setup.nodes
    target = _node_id(to)
    for node in nodes:
        node.command("CLUSTER", "SETSLOT", slot, "STABLE")
    owner = _slot_owner(setup.nodes[0], slot)  # a newcomer may not know the map yet
    if owner != target:
        to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", owner)
        source = next(n for n in nodes if _node_id(n) == owner)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target)
    to.command("CLUSTER", "SETSLOT", slot, "NODE", target)
    for node in nodes:
        if node is not to:
            try:
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target)
            except RespError as e:  # left without slots, it became the new owner's replica
                if "only with masters" not in str(e):
                    raise
    wait_for(
        lambda: all(_slot_owner(n, slot) == target for n in nodes if _is_master(n)),
        10,
        f"every node to give slot {slot} to {to.port}",
    )
    if nodes is setup.nodes:
        setup.wait_ok()


def _is_master(node: RedisServer) -> bool:
    return b"myself,master" in node.command("CLUSTER", "NODES")


def _slot_owner(node: RedisServer, slot: int) -> str:
    """The id of the master ``node`` believes serves ``slot`` ("" if none)."""
    for line in node.command("CLUSTER", "NODES").decode().splitlines():
        fields = line.split()
        if "master" not in fields[2]:
            continue
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot in migration: [slot->-id] / [slot-<-id]
            low, _, high = part.partition("-")
            if int(low) <= slot <= int(high or low):
                return fields[0]
    return ""


async def _engine_for_slot(
    setup: RedisClusterSetup, channel: str
) -> tuple[RedisEngine, int, RedisServer, RedisServer]:
    """A started engine, ``channel``'s slot, the master serving it and another master."""
    engine = make_engine([setup.url])
    await engine.start(handler())
    owner = setup.owner(channel)
    return engine, key_slot("{" + channel + "}"), owner, next(n for n in setup.nodes if n is not owner)


@pytest_twisted.ensureDeferred
async def test_moved_slot_is_followed(redis_cluster: RedisClusterSetup) -> None:
    """A slot moved to another master after the engine read the map.

    The engine gets MOVED, goes to the new master, and later commands go straight there.
    """
    channel = "moving-room"
    engine, slot, before, after = await _engine_for_slot(redis_cluster, channel)
    try:
        _move_empty_slot(redis_cluster, slot, after)
        position = await engine.publish(channel, pub(1), HISTORY)
        assert position.offset == 1
        assert f"{engine.prefix}.stream.{{{channel}}}" in _keys(after, f"{engine.prefix}.*")
        assert _keys(before, f"{engine.prefix}.*") == []
        result = await engine.history(channel, ALL, 60.0)
        assert [p.offset for p in result.publications] == [1]
        await until(lambda: _command(engine)._slots[slot] == ("127.0.0.1", after.port))
    finally:
        await engine.stop()
        _clear(redis_cluster, engine.prefix)
        _move_empty_slot(redis_cluster, slot, before)


@pytest_twisted.ensureDeferred
async def test_endless_redirections_end_as_unavailable(redis_cluster: RedisClusterSetup) -> None:
    """Past ``max_redirects`` (nodes disagreeing on a slot's owner) the call fails cleanly.

    The caller gets RedisUnavailable (error 100 for a client), not Redis's raw MOVED.
    """
    channel = "bounced-room"
    engine, slot, before, after = await _engine_for_slot(redis_cluster, channel)
    command = _command(engine)
    command.max_redirects = 0
    try:
        _move_empty_slot(redis_cluster, slot, after)
        with pytest.raises(RedisUnavailable, match="redirected"):
            await engine.publish(channel, pub(1), HISTORY)
    finally:
        await engine.stop()
        _clear(redis_cluster, engine.prefix)
        _move_empty_slot(redis_cluster, slot, before)


def _errors(server: RedisServer, kind: str) -> int:
    """How many ``kind`` error replies (MOVED, ASK, TRYAGAIN) ``server`` has sent."""
    stat = server.info("errorstats").get(f"errorstat_{kind}", "count=0")
    return int(stat.split("=")[1])


@pytest_twisted.ensureDeferred
async def test_slot_migration_ask_and_tryagain_are_followed(
    redis_cluster: RedisClusterSetup,
) -> None:
    """A slot half-way through migration (MIGRATING on the source, IMPORTING on the target).

    A one-key command on a key the source no longer has gets ASK and is run on the target
    after ASKING; the engine's multi-key scripts get ASK, then TRYAGAIN from the target
    (their keys are not all there yet) and are retried until the migration ends. The slot map is changed only by the end of the migration.
    """
    channel = "migrating-room"
    engine, slot, source, target = await _engine_for_slot(redis_cluster, channel)
    command = _command(engine)
    try:
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
        asks = _errors(source, "ASK")
        await command.execute("SET", f"{engine.prefix}.x.{{{channel}}}", "1")
        assert _errors(source, "ASK") == asks + 1
        assert target.command("ASKING") == b"OK"
        assert _keys(target, f"{engine.prefix}.*") == [f"{engine.prefix}.x.{{{channel}}}"]
        assert command._slots[slot] == ("127.0.0.1", source.port)

        retries = _errors(target, "TRYAGAIN")
        added = engine.add_presence(channel, "c1", ClientInfo("u", "c1"))
        await until(lambda: _errors(target, "TRYAGAIN") > retries, what="TRYAGAIN")
        _move_empty_slot(redis_cluster, slot, target)  # the migration ends
        await added
        assert await engine.presence(channel) == {"c1": ClientInfo("u", "c1")}
        assert f"{engine.prefix}.presence.data.{{{channel}}}" in _keys(target, f"{engine.prefix}.*")
    finally:
        await engine.stop()
        _move_empty_slot(redis_cluster, slot, target)
        _clear(redis_cluster, engine.prefix)
        _move_empty_slot(redis_cluster, slot, source)


@pytest_twisted.ensureDeferred
async def test_master_restart_is_survived(redis_cluster: RedisClusterSetup) -> None:
    """A master goes away and comes back.

    Meanwhile calls for its slots fail fast (error 100) and the engine is unhealthy; then
    it works again by itself.
    """
    engine = make_engine([redis_cluster.url], connect_timeout=0.3)
    recorder = handler()
    await engine.start(recorder)
    channel = "restart-room"
    victim = redis_cluster.owner(channel)
    try:
        await engine.subscribe(channel)
        await engine.publish(channel, pub(1), HISTORY)
        victim.stop()
        await until(lambda: not engine.healthy, what="unhealthy while a master is down")
        with pytest.raises(RedisUnavailable):
            await engine.publish(channel, pub(2), HISTORY)
        victim.start()
        redis_cluster.wait_ok()
        await until(lambda: engine.healthy, timeout=15, what="healthy again")
        position = await engine.publish(channel, pub(3), HISTORY)
        assert position.offset == 1  # nothing persisted: a new stream
        await until(
            lambda: any(p.data == pub(3).data for _, p in recorder.publications),
            what="delivery after the restart",
        )
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_no_reachable_seed_keeps_the_engine_unhealthy() -> None:
    """Seeds nobody listens on: start finishes, the engine is unhealthy, calls fail."""
    from redisserver import free_port

    engine = make_engine([f"redis+cluster://127.0.0.1:{free_port()}"], connect_timeout=0.3)
    await engine.start(handler())
    try:
        assert not engine.healthy
        with pytest.raises(RedisUnavailable):
            await engine.presence("x")
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_new_master_is_found_through_moved(
    redis_cluster: RedisClusterSetup, tmp_path: Path
) -> None:
    """A master added to the cluster after the engine started, given a slot.

    The engine meets it through MOVED, connects to it, runs the command there once the
    link is up, and the refreshed slot map lists it.
    """
    engine = make_engine([redis_cluster.url])
    await engine.start(handler())
    channel = "room-on-a-new-master"
    slot = key_slot("{" + channel + "}")
    before = redis_cluster.owner(channel)
    newcomer = RedisServer(extra_args=RedisClusterSetup._cluster_args(tmp_path, 9)).start()
    first = redis_cluster.nodes[0]
    everyone = [*redis_cluster.nodes, newcomer]
    target = _node_id(newcomer)
    try:
        bus_port = newcomer.extra_args[newcomer.extra_args.index("--cluster-port") + 1]
        first.command("CLUSTER", "MEET", "127.0.0.1", newcomer.port, bus_port)
        ids = [_node_id(n) for n in everyone]
        wait_for(
            lambda: all(
                all(i.encode() in n.command("CLUSTER", "NODES") for i in ids)
                and b"handshake" not in n.command("CLUSTER", "NODES")
                for n in everyone
            ),
            10,
            "every node to know the newcomer",
        )
        _move_empty_slot(redis_cluster, slot, newcomer, everyone)
        assert ("127.0.0.1", newcomer.port) not in _command(engine).nodes()
        position = await engine.publish(channel, pub(1), HISTORY)
        assert position.offset == 1
        assert f"{engine.prefix}.stream.{{{channel}}}" in _keys(newcomer, f"{engine.prefix}.*")
        await until(lambda: ("127.0.0.1", newcomer.port) in _command(engine).nodes())
        await until(lambda: engine.healthy, what="healthy with four masters")
    finally:
        await engine.stop()
        for key in _keys(newcomer, "*"):
            newcomer.command("DEL", key)
        _move_empty_slot(redis_cluster, slot, before, everyone)
        newcomer.stop()
        for node in redis_cluster.nodes:
            if target.encode() in node.command("CLUSTER", "NODES"):
                node.command("CLUSTER", "FORGET", target)
        redis_cluster.wait_ok()


def test_malformed_slot_maps_are_refused_and_partial_ones_are_used() -> None:
    """A malformed CLUSTER SLOTS reply leaves the map as it was; a partial one is used.

    Slots a partial map leaves out have no master (until a later map covers them).
    """
    link = ClusterCommandLink(
        RedisAddress("h", 1, cluster_seeds=(("h", 1),)),
        reactor,
        reactor,
        connect_timeout=1.0,
        io_timeout=1.0,
        on_change=lambda: None,
    )
    assert not link._apply([[0, 16383, [None]]], "127.0.0.1")
    assert not link._apply(b"nonsense", "127.0.0.1")
    assert not link._apply([[0, 20000, [b"127.0.0.1", 7000, b"id"]]], "127.0.0.1")
    assert not link.ready and link._slots == [None] * 16384
    failures: list[Failure] = []
    link.execute("GET", "k").addErrback(failures.append)
    assert failures[0].check(RedisUnavailable)  # no map yet
    assert link._apply([[0, 8000, [b"", 7000, b"id"]]], "10.0.0.9")
    assert link._slots[0] == ("10.0.0.9", 7000) and link._slots[8001] is None
    assert set(link._slots[8001:]) == {None} and set(link._slots[:8001]) == {("10.0.0.9", 7000)}
    link.stop()


@pytest_twisted.ensureDeferred
async def test_master_failover_to_its_replica_is_followed(tmp_path: Path) -> None:
    """A master with a replica is killed; the cluster promotes the replica.

    Meanwhile the engine is unhealthy and calls for the lost slots fail at once; once the
    cluster has failed over, the engine finds the new master through the slot map by
    itself (no restart), history continues in the same epoch (the data was replicated)
    and publications reach a subscriber again.
    """
    require_redis_server()
    setup = RedisClusterSetup(tmp_path)
    channel = "failover-room"
    master = setup.owner(channel)
    replica = RedisServer(extra_args=RedisClusterSetup._cluster_args(tmp_path, 7)).start()
    engine = make_engine([setup.url], connect_timeout=0.3)
    recorder = handler()
    try:
        bus_port = master.extra_args[master.extra_args.index("--cluster-port") + 1]
        replica.command("CLUSTER", "MEET", "127.0.0.1", master.port, bus_port)
        wait_for(
            lambda: _node_id(master).encode() in replica.command("CLUSTER", "NODES"),
            10,
            "the replica to meet the master",
        )
        replica.command("CLUSTER", "REPLICATE", _node_id(master))
        wait_for(
            lambda: replica.info("replication").get("master_link_status") == "up",
            15,
            "the replica to sync",
        )
        await engine.start(recorder)
        assert engine.healthy
        await engine.subscribe(channel)
        first = await engine.publish(channel, pub(1), HISTORY)
        assert master.command("WAIT", 1, 2000) == 1  # the replica has it

        master.kill()
        await until(lambda: not engine.healthy, what="unhealthy without the master")
        with pytest.raises(RedisUnavailable):
            await engine.history(channel, ALL, 60.0)
        await until(lambda: replica.info("replication").get("role") == "master", timeout=20,
                    what="the cluster to promote the replica")  # fmt: skip
        await until(lambda: engine.healthy, timeout=20, what="healthy on the new master")

        second = await engine.publish(channel, pub(2), HISTORY)
        assert (second.offset, second.epoch) == (2, first.epoch)
        result = await engine.history(channel, ALL, 60.0)
        assert [p.offset for p in result.publications] == [1, 2]
        await until(
            lambda: any(p.offset == 2 for _, p in recorder.publications),
            timeout=10,
            what="delivery through the new master",
        )
    finally:
        await engine.stop()
        replica.stop()
        setup.stop()


@pytest_twisted.ensureDeferred
async def test_stop_during_a_retry_fails_the_call_and_leaves_no_timer(
    redis_cluster: RedisClusterSetup,
) -> None:
    """The engine stops while a write waits for a slot migration to end.

    The write fails with RedisUnavailable at once and no retry timer is left behind.
    """
    channel = "stopping-room"
    engine, slot, source, target = await _engine_for_slot(redis_cluster, channel)
    stopped = False
    try:
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
        retries = _errors(target, "TRYAGAIN")
        outcome: list[Any] = []
        engine.add_presence(channel, "c1", ClientInfo("u", "c1")).addBoth(outcome.append)
        await until(lambda: _errors(target, "TRYAGAIN") > retries, what="TRYAGAIN")
        assert outcome == []  # still retrying
        stopping = engine.stop()
        stopped = True
        # failed by stop() itself, not by a later retry
        assert len(outcome) == 1 and outcome[0].check(RedisUnavailable)
        await stopping
    finally:
        if not stopped:
            await engine.stop()
        _move_empty_slot(redis_cluster, slot, source)


def _shard_channels(server: RedisServer, pattern: str) -> list[bytes]:
    return list(server.command("PUBSUB", "SHARDCHANNELS", pattern))


def _sharded_state(engine: RedisEngine, name: bytes, slot: int) -> str:
    """What the engine believes about a shard channel (for a failure's message)."""
    sharded = engine.shards[0].sharded
    command = _command(engine)
    if sharded is None:
        return "no sharded subscriber"
    links = [
        f"{link.address.host}:{link.address.port} ready={link.ready} tried={link.ever_tried}"
        for link in sharded.links()
    ]
    return (
        f"slot owner in the map: {command._slots[slot]}, placed at: {sharded._where.get(name)}, "
        f"wanted: {name in sharded.channels}, refreshing: {command._refreshing is not None}, "
        f"refresh timer: {command._refresh_timer is not None}, links: {links}"
    )


@pytest_twisted.ensureDeferred
async def test_client_channels_use_sharded_pubsub_on_their_master(
    redis_cluster: RedisClusterSetup,
) -> None:
    """On Redis 7 each client channel is SSUBSCRIBEd on its slot's master only.

    No classic subscription carries it, and publications arrive (SPUBLISH, also from the
    history script).
    """
    engine = make_engine([redis_cluster.url])
    recorder = handler()
    await engine.start(recorder)
    try:
        assert _command(engine).sharded
        channels = [f"sharded:{i}" for i in range(6)]
        for ch in channels:
            await engine.subscribe(ch)
        p = engine.prefix
        for ch in channels:
            owner = redis_cluster.owner(ch)
            name = f"{p}.client.{{{ch}}}".encode()
            assert _shard_channels(owner, f"{p}.*").count(name) == 1
            for node in redis_cluster.nodes:
                assert name not in node.command("PUBSUB", "CHANNELS", f"{p}.*")
                if node is not owner:
                    assert name not in _shard_channels(node, f"{p}.*")
        await engine.publish(channels[0], pub(1), HISTORY)
        await engine.publish(channels[1], pub(2), NO_HISTORY)
        await engine.publish_join(channels[2], ClientInfo("u", "c1"))
        await engine.sync()
        assert [(ch, p.data) for ch, p in recorder.publications] == [
            (channels[0], pub(1).data),
            (channels[1], pub(2).data),
        ]
        assert recorder.joins == [(channels[2], ClientInfo("u", "c1"))]
        await engine.unsubscribe(channels[0])
        assert _shard_channels(redis_cluster.owner(channels[0]), f"{p}.*{channels[0]}*") == []
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_subscription_follows_its_slot_to_another_master(
    redis_cluster: RedisClusterSetup,
) -> None:
    """A subscribed channel's slot moves to another master.

    Redis drops the shard subscription; the engine subscribes again on the new master
    and deliveries continue.
    """
    engine = make_engine([redis_cluster.url])
    recorder = handler()
    await engine.start(recorder)
    channel = "wandering-room"
    slot = key_slot("{" + channel + "}")
    before = redis_cluster.owner(channel)
    after = next(n for n in redis_cluster.nodes if n is not before)
    name = f"{engine.prefix}.client.{{{channel}}}".encode()
    try:
        await engine.subscribe(channel)
        await engine.publish(channel, pub(1), NO_HISTORY)
        await until(lambda: len(recorder.publications) == 1, what="first delivery")
        _move_empty_slot(redis_cluster, slot, after)
        # A deadline, not a wait: Redis drops the shard subscription, the engine asks for
        # the slot map (rate-limited) and subscribes on the new master; under coverage on
        # a loaded machine that once took longer than 5 s.
        try:
            await until(
                lambda: name in _shard_channels(after, f"{engine.prefix}.*"),
                timeout=10.0,
                what="subscribed again on the new master",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; {_sharded_state(engine, name, slot)}") from None
        assert name not in _shard_channels(before, f"{engine.prefix}.*")
        await engine.publish(channel, pub(2), NO_HISTORY)
        await until(lambda: len(recorder.publications) == 2, what="delivery after the move")
    finally:
        await engine.stop()
        _move_empty_slot(redis_cluster, slot, before)


@pytest_twisted.ensureDeferred
async def test_channel_subscribed_before_the_slot_map_moves_to_sharded_pubsub(
    redis_cluster: RedisClusterSetup,
) -> None:
    """A subscribe made while the engine still waits for its first slot map.

    It fails (nothing is connected yet), but the channel is kept: once the map says
    the cluster has sharded PUB/SUB, the channel is SSUBSCRIBEd on its master and
    publications reach it.
    """
    engine = make_engine([redis_cluster.url])
    recorder = handler()
    started = engine.start(recorder)
    channel = "early-room"
    with pytest.raises(RedisUnavailable):
        await engine.subscribe(channel)
    await started
    name = f"{engine.prefix}.client.{{{channel}}}".encode()
    try:
        owner = redis_cluster.owner(channel)
        await until(lambda: name in _shard_channels(owner, f"{engine.prefix}.*"))
        await engine.publish(channel, pub(1), NO_HISTORY)
        await until(lambda: len(recorder.publications) == 1, what="delivery")
    finally:
        await engine.stop()
