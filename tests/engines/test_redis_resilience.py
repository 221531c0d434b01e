"""The Redis engine when Redis misbehaves: down, restarted, slow, deaf links, garbage.

Each test gets its own ``redis-server`` (they stop, restart and kill it). Waits for
reconnects and Redis TTLs are bounded polls (``until``); nothing sleeps where a
Deferred can be awaited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from contract import HISTORY, NO_HISTORY, pub
from redis_support import handler, make_engine, pause, unique_prefix, until
from redisserver import RedisServer, free_port, require_redis_server
from twisted.internet import reactor
from twisted.internet.task import Clock

from rtserver._compat import encode_redis_command
from rtserver.config import RedisEngineConfig
from rtserver.core.types import DisconnectControl, HistoryFilter
from rtserver.engines.redis import RedisEngine, RedisTimeout, RedisUnavailable
from rtserver.protocol.frames import ClientInfo

pytestmark = pytest.mark.redis


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own."""
    require_redis_server()
    with RedisServer() as s:
        yield s


async def _stop(engine: RedisEngine) -> None:
    await engine.stop()
    assert not engine.healthy


@pytest_twisted.ensureDeferred
async def test_presence_expires_unless_refreshed(server: RedisServer) -> None:
    """Entries live presence_ttl after their last add_presence; reads drop expired ones."""
    engine = make_engine([server.address], presence_ttl=0.6)
    await engine.start(handler())
    try:
        await engine.add_presence("p", "stale", ClientInfo("u1", "stale"))
        await engine.add_presence("p", "fresh", ClientInfo("u2", "fresh"))
        await pause(0.3)
        await engine.add_presence("p", "fresh", ClientInfo("u2", "fresh"))  # refresh
        await pause(0.4)  # "stale" is 0.7 s old, "fresh" 0.4 s
        presence = await engine.presence("p")
        assert set(presence) == {"fresh"}
        stats = await engine.presence_stats("p")
        assert (stats.num_clients, stats.num_users) == (1, 1)
        # the keys themselves carry the TTL, so an abandoned channel leaves nothing behind
        p = engine.prefix
        assert 0 < server.command("PTTL", f"{p}.presence.data.p") <= 600
        assert 0 < server.command("PTTL", f"{p}.presence.expire.p") <= 600
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_publish_fails_fast_while_redis_is_down(server: RedisServer) -> None:
    """With Redis stopped: healthy is False and every call errs at once, never hangs."""
    engine = make_engine([server.address], io_timeout=5.0)
    await engine.start(handler())
    try:
        assert engine.healthy
        server.stop()
        await until(lambda: not engine.healthy, what="the engine to notice Redis is gone")
        started = reactor.seconds()
        for call in (
            engine.publish("ch", pub(1), HISTORY),
            engine.publish("ch", pub(1), NO_HISTORY),
            engine.history("ch", HistoryFilter(limit=-1), 60.0),
            engine.presence("ch"),
            engine.add_presence("ch", "c1", ClientInfo("u", "c1")),
            engine.publish_control(DisconnectControl("u", 3000, "x")),
            engine.subscribe("ch"),
        ):
            with pytest.raises(RedisUnavailable, match="unavailable"):
                await call
        assert reactor.seconds() - started < 0.5
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_command_without_answer_times_out(server: RedisServer) -> None:
    """A command Redis does not answer within io_timeout fails; the link then recovers."""
    engine = make_engine([server.address], io_timeout=0.2)
    await engine.start(handler())
    try:
        server.command("CLIENT", "PAUSE", 700)
        started = reactor.seconds()
        with pytest.raises(RedisTimeout):
            await engine.publish("ch", pub(1), HISTORY)
        assert reactor.seconds() - started < 0.6
        assert not engine.healthy
        await until(lambda: engine.healthy, timeout=5.0, what="recovery after the pause")
        pos = await engine.publish("ch", pub(2), HISTORY)
        assert pos.offset >= 1
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_redis_restart_reconnects_resubscribes_and_changes_epoch(
    server: RedisServer,
) -> None:
    """Restart without persistence: reconnect, resubscribe, deliver, and a NEW epoch.

    The history channel continues in another epoch, so the loss is signalled, not silent.
    """
    engine = make_engine([server.address])
    recorder = handler()
    await engine.start(recorder)
    try:
        await engine.subscribe("h")
        before = await engine.publish("h", pub(1), HISTORY)
        server.restart()
        await until(lambda: not engine.healthy, what="the loss to be noticed")
        await until(lambda: engine.healthy, what="reconnect and resubscribe")
        after = await engine.publish("h", pub(2), HISTORY)
        assert after.offset == 1 and after.epoch != before.epoch
        await engine.sync()
        assert [(p.offset, p.epoch) for _, p in recorder.publications] == [
            (1, before.epoch),
            (1, after.epoch),
        ]
        assert b"P.client.h".replace(b"P", engine.prefix.encode()) in server.command(
            "PUBSUB", "CHANNELS"
        )
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_pubsub_client_kill_resubscribes(server: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub: the PUB/SUB link comes back with every channel."""
    engine = make_engine([server.address])
    recorder = handler()
    await engine.start(recorder)
    try:
        for ch in ("a", "b", "c"):
            await engine.subscribe(ch)
        await engine.unsubscribe("c")
        old = engine.shards[0].pubsub._proto
        assert server.kill_pubsub_clients() == 1
        await until(
            lambda: engine.healthy and engine.shards[0].pubsub._proto is not old,
            what="the PUB/SUB link to come back",
        )
        for ch in ("a", "b", "c"):
            await engine.publish(ch, pub(1), NO_HISTORY)
        await engine.publish_control(DisconnectControl("u", 3000, "x"))
        await engine.sync()
        assert sorted(ch for ch, _ in recorder.publications) == ["a", "b"]
        assert len(recorder.controls) == 1
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_subscribe_cut_off_by_a_lost_link_fails_with_redis_unavailable(
    server: RedisServer,
) -> None:
    """A SUBSCRIBE whose connection is lost before the answer fails with RedisUnavailable.

    (Not a FirstError wrapping it.) The channel stays in the engine's set, so the
    reconnect subscribes it until the caller unsubscribes.
    """
    engine = make_engine([server.address])
    await engine.start(handler())
    try:
        link = engine.shards[0].pubsub
        old = link._proto
        cut = engine.subscribe("b")
        assert server.kill_pubsub_clients() == 1
        with pytest.raises(RedisUnavailable):
            await cut
        await until(
            lambda: engine.healthy and link._proto not in (None, old), what="the link to return"
        )
        p = engine.prefix
        assert server.command("PUBSUB", "CHANNELS", f"{p}.client.*") == [f"{p}.client.b".encode()]
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_unsubscribe_from_a_failed_subscribe_errback_leaves_no_stale_reply(
    server: RedisServer,
) -> None:
    """An unsubscribe made inside a failed subscribe's errback goes nowhere.

    The node does exactly that (the channel's last local subscriber is dropped). Queued
    on the dead connection, its stale pending entry would take the new connection's
    first reply, stall the resubscribe until io_timeout and force a second reconnect.
    """
    engine = make_engine([server.address])
    await engine.start(handler())
    try:
        link = engine.shards[0].pubsub
        old = link._proto
        await engine.subscribe("a")
        reactions: list[Any] = []

        def drop_subscriber(failure: Any) -> None:
            d = engine.unsubscribe("b")
            d.addBoth(reactions.append)

        cut = engine.subscribe("b")
        cut.addErrback(drop_subscriber)
        assert server.kill_pubsub_clients() == 1
        await until(lambda: link._proto not in (None, old), what="a new connection")
        new = link._proto
        await until(lambda: engine.healthy, what="the resubscribe")
        assert link._proto is new  # no second reconnect
        assert reactions == [None] and not link._pending
        p = engine.prefix
        assert server.command("PUBSUB", "CHANNELS", f"{p}.client.*") == [f"{p}.client.a".encode()]
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_deaf_pubsub_link_is_reestablished_by_the_probe(server: RedisServer) -> None:
    """A PUB/SUB link that silently stops delivering is re-established.

    Its subscriptions are dropped behind the engine's back; the probe it publishes on its
    node channel is lost, so after another interval the link is declared stale.
    """
    engine = make_engine([server.address], pubsub_probe_interval=0.1)
    recorder = handler()
    await engine.start(recorder)
    try:
        await engine.subscribe("ch")
        link = engine.shards[0].pubsub
        deaf = link._proto
        deaf.transport.write(encode_redis_command(deaf, "UNSUBSCRIBE"))
        await until(
            lambda: link._proto is not deaf and engine.healthy,
            timeout=3.0,
            what="the deaf link to be replaced",
        )
        await engine.publish("ch", pub(1), NO_HISTORY)
        await engine.sync()
        assert [ch for ch, _ in recorder.publications] == ["ch"]
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_idle_pubsub_link_survives_probes(server: RedisServer) -> None:
    """An idle but working link answers its probes and is kept.

    The probe timer runs on a Clock the test advances (a real-time interval short enough
    to test quickly loses races on a loaded machine); the probes travel through the real
    redis-server. The watchdog is armed by the time start() returns.
    """
    clock = Clock()
    config = RedisEngineConfig(
        address=[server.address], prefix=unique_prefix(), pubsub_probe_interval=1.0
    )
    engine = RedisEngine(clock, config, reactor=reactor)
    await engine.start(handler())
    try:
        link = engine.shards[0].pubsub
        proto = link._proto
        for _ in range(5):  # several quiet intervals, each answered
            clock.advance(1.0)
            assert link.probe_sent
            await until(lambda: not link.probe_sent, what="the probe to come back")
        assert link._proto is proto and engine.healthy
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_garbled_messages_are_dropped(server: RedisServer) -> None:
    """Malformed client and control payloads are logged and dropped; delivery goes on."""
    engine = make_engine([server.address])
    recorder = handler()
    await engine.start(recorder)
    try:
        await engine.subscribe("ch")
        p = engine.prefix
        for channel, payload in [
            (f"{p}.client.ch", b"not json"),
            (f"{p}.client.ch", b"__p1:x__{}\ndata"),
            (f"{p}.client.ch", b"__j__[1]"),
            (f"{p}.client.ch", b'{"info":7}\n{}'),
            (f"{p}.control", b"garbage"),
            (f"{p}.control", b'{"type":"NoSuchType","data":{}}'),
            (f"{p}.control", b'{"type":"DisconnectControl","data":{"user":1}}'),
            (f"{p}.node.{recorder.uid}", b'{"type":"probe"}'),
        ]:
            server.command("PUBLISH", channel, payload)
        await engine.publish("ch", pub(1), NO_HISTORY)
        await engine.sync()
        assert [p.data for _, p in recorder.publications] == [b'{"n":1}']
        assert recorder.controls == [] and recorder.joins == []
        assert engine.healthy
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_start_without_redis_then_recover() -> None:
    """Start against a Redis that is not there yet.

    start() still fires, the engine is unhealthy and fails fast, connects once Redis
    appears, and stop() leaves no timers.
    """
    require_redis_server()
    port = free_port()
    engine = make_engine([f"redis://127.0.0.1:{port}"])
    await engine.start(handler())
    server = RedisServer(port=port)
    try:
        assert not engine.healthy
        with pytest.raises(RedisUnavailable):
            await engine.publish("ch", pub(1), NO_HISTORY)
        server.start()
        await until(lambda: engine.healthy, what="the first connection")
        assert (await engine.publish("ch", pub(1), HISTORY)).offset == 1
    finally:
        await _stop(engine)
        server.stop()


@pytest_twisted.ensureDeferred
async def test_io_timeout_zero_means_no_timeout(server: RedisServer) -> None:
    """``io_timeout: 0`` disables command timeouts on both links (it is not "time out now")."""
    engine = make_engine([server.address], io_timeout=0.0)
    recorder = handler()
    await engine.start(recorder)
    try:
        assert engine.healthy
        await engine.subscribe("ch")
        await engine.publish("ch", pub(1), HISTORY)
        await engine.sync()
        assert [ch for ch, _ in recorder.publications] == ["ch"]
    finally:
        await _stop(engine)


@pytest_twisted.ensureDeferred
async def test_probe_that_could_not_be_sent_does_not_condemn_the_pubsub_link(
    server: RedisServer,
) -> None:
    """A probe PUBLISH failing on the command link leaves the PUB/SUB link in good standing."""
    from twisted.internet.defer import fail

    engine = make_engine([server.address])
    await engine.start(handler())
    try:
        shard = engine.shards[0]
        shard.pubsub.probe_sent = True  # the watchdog marks the probe before asking for it
        real = shard.command.execute
        shard.command.execute = lambda *args: fail(RedisUnavailable("command link lost"))
        try:
            engine._probe(shard)
        finally:
            shard.command.execute = real
        assert shard.pubsub.probe_sent is False
        assert engine.healthy
    finally:
        await _stop(engine)
