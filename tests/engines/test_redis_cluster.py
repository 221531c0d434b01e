"""Several Redis engines ("nodes") on one Redis, sharding over two Redis servers, auth."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from contract import HISTORY, NO_HISTORY, EngineContract, EngineEnv, pub
from redis_support import age, handler, make_engine
from redisserver import RedisServer, require_redis_server
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import portforward

from rtserver.core.types import (
    DisconnectControl,
    HistoryFilter,
    NodeInfo,
    Overrides,
    SubscribeControl,
)
from rtserver.engines.redisconn import shard_index
from rtserver.protocol.frames import ClientInfo, StreamPosition

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two redis-servers for sharding."""
    require_redis_server()
    with RedisServer() as first, RedisServer() as second:
        yield first, second


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_publications_join_leave_and_control(
    redis_server: RedisServer,
) -> None:
    """Publications, join/leave and broadcasts reach both nodes; targeted control, one.

    ``publish_control(message, node=uid)`` reaches only the node with that uid.
    """
    prefix = "twonodes"
    a, b = make_engine([redis_server.address], prefix), make_engine([redis_server.address], prefix)
    ha, hb = handler("node-a"), handler("node-b")
    await a.start(ha)
    await b.start(hb)
    try:
        await a.subscribe("ch")
        await b.subscribe("ch")
        pos = await a.publish("ch", pub(1), HISTORY)
        info = ClientInfo("u1", "c1", conn_info=b'{"x":1}')
        await b.publish_join("ch", info)
        await a.publish_leave("ch", info)
        broadcast = SubscribeControl(
            user="u1",
            channel="news",
            info=b'{"i":1}',
            recover_since=StreamPosition(3, "ep"),
            overrides=Overrides(presence=True),
        )
        await b.publish_control(broadcast)
        targeted = NodeInfo(uid="node-a", name="a", version="1", num_clients=2)
        await b.publish_control(targeted, node="node-b")
        await a.sync()
        await b.sync()
        for h in (ha, hb):
            assert [(c, p.offset, p.epoch) for c, p in h.publications] == [
                ("ch", pos.offset, pos.epoch)
            ]
            assert h.joins == [("ch", info)] and h.leaves == [("ch", info)]
        assert ha.controls == [broadcast]
        assert hb.controls == [broadcast, targeted]
        # a node that unsubscribed no longer gets the channel
        await b.unsubscribe("ch")
        await a.publish("ch", pub(2), NO_HISTORY)
        await a.sync()
        await b.sync()
        assert len(ha.publications) == 2 and len(hb.publications) == 1
        # both see one stream and one presence
        await a.add_presence("ch", "c1", info)
        await b.add_presence("ch", "c2", ClientInfo("u2", "c2"))
        assert set(await b.presence("ch")) == {"c1", "c2"}
        history = await b.history("ch", HistoryFilter(limit=-1), 3600.0)
        assert history.position == pos and len(history.publications) == 1
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_sharding_spreads_channels_over_two_servers(
    redis_pair: tuple[RedisServer, RedisServer],
) -> None:
    """Channels land on both servers by consistent hash; everything works across them."""
    first, second = redis_pair
    engine = make_engine([first.address, second.address])
    recorder = handler()
    await engine.start(recorder)
    try:
        channels = [f"ch{i}" for i in range(16)]
        placement = {ch: shard_index(ch, 2) for ch in channels}
        assert set(placement.values()) == {0, 1}
        for ch in channels:
            await engine.subscribe(ch)
            await engine.publish(ch, pub(1), HISTORY)
            await engine.add_presence(ch, "c1", ClientInfo("u1", "c1"))
        await engine.publish_control(DisconnectControl("u", 3000, "x"))
        await engine.sync()
        assert sorted(ch for ch, _ in recorder.publications) == sorted(channels)
        assert len(recorder.controls) == 1
        p = engine.prefix
        for index, server in enumerate(redis_pair):
            subscribed = set(server.command("PUBSUB", "CHANNELS", f"{p}.client.*"))
            expected = {f"{p}.client.{ch}".encode() for ch, i in placement.items() if i == index}
            assert subscribed == expected
            streams = set(server.command("KEYS", f"{p}.stream.ch*"))
            assert streams == {
                f"{p}.stream.{ch}".encode() for ch in channels if placement[ch] == index
            }
        # the control channel lives on the first shard only
        assert server_channels(first, f"{p}.control") and not server_channels(
            second, f"{p}.control"
        )
        for ch in channels:
            result = await engine.history(ch, HistoryFilter(limit=-1), 3600.0)
            assert [x.offset for x in result.publications] == [1]
            assert (await engine.presence_stats(ch)).num_clients == 1
    finally:
        await engine.stop()


def server_channels(server: RedisServer, pattern: str) -> list[bytes]:
    return list(server.command("PUBSUB", "CHANNELS", pattern))


@pytest_twisted.async_yield_fixture
async def sharded_env(redis_pair: tuple[RedisServer, RedisServer]) -> Any:
    engine = make_engine([s.address for s in redis_pair])
    recorder = handler()
    await engine.start(recorder)
    yield EngineEnv(engine, recorder, lambda s: Deferred.fromCoroutine(age(engine, s)), engine.sync)
    await engine.stop()


class TestShardedContract(EngineContract):
    """The engine contract over two shards."""

    @pytest.fixture
    def engine_env(self, sharded_env: EngineEnv) -> EngineEnv:
        return sharded_env


@pytest_twisted.ensureDeferred
async def test_password_and_db_from_address_never_logged() -> None:
    """A password and db in the address work; a wrong one keeps the engine unhealthy.

    No log event ever contains the password.
    """
    require_redis_server()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    server = RedisServer(password="s3cr3t-pw").start()
    try:
        good = make_engine([f"redis://:s3cr3t-pw@127.0.0.1:{server.port}/3"])
        await good.start(handler())
        assert good.healthy
        await good.publish("h", pub(1), HISTORY)
        assert server.command("SELECT", 3) == b"OK"
        assert server.pipeline([("SELECT", 3), ("DBSIZE",)])[1] >= 1
        await good.stop()
        bad = make_engine([f"redis://127.0.0.1:{server.port}"], password="wrong-pw-value")
        await bad.start(handler())
        assert not bad.healthy
        await bad.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
        server.stop()
    text = "\n".join(formatEvent(e) + repr(e.get("log_failure", "")) for e in events)
    assert "redis" in text  # the links did log
    assert "s3cr3t-pw" not in text and "wrong-pw-value" not in text


@pytest_twisted.ensureDeferred
async def test_stream_restart_after_meta_loss_with_stream_left_over(
    redis_server: RedisServer,
) -> None:
    """Only the meta hash lost (eviction): a new epoch from offset 1, old entries dropped."""
    engine = make_engine([redis_server.address])
    await engine.start(handler())
    try:
        for i in range(3):
            old = await engine.publish("h", pub(i), HISTORY)
        redis_server.command("DEL", f"{engine.prefix}.stream.meta.h")
        new = await engine.publish("h", pub(9), HISTORY)
        assert new.offset == 1 and new.epoch != old.epoch
        result = await engine.history("h", HistoryFilter(limit=-1), 3600.0)
        assert [(p.offset, p.data) for p in result.publications] == [(1, b'{"n":9}')]
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_noscript_falls_back_to_eval(redis_server: RedisServer) -> None:
    """After SCRIPT FLUSH the engine still works (EVALSHA -> NOSCRIPT -> EVAL)."""
    engine = make_engine([redis_server.address])
    await engine.start(handler())
    try:
        redis_server.command("SCRIPT", "FLUSH")
        assert (await engine.publish("h", pub(1), HISTORY)).offset == 1
        assert (await engine.publish("h", pub(2), HISTORY)).offset == 2
    finally:
        await engine.stop()


class HoldingProxy:
    """A TCP proxy in front of Redis that can hold Redis's replies back.

    While holding, the engine's bytes still reach Redis (and are recorded) but no reply
    reaches the engine: a command sent only after the previous reply never goes out.
    """

    def __init__(self, redis_port: int) -> None:
        self.holding = False
        self.sent = b""  # what the engine sent while holding
        self.held: list[tuple[Any, bytes]] = []
        self._waiters: list[tuple[Callable[[bytes], bool], Deferred[None]]] = []
        proxy = self

        class Client(portforward.ProxyClient):
            def dataReceived(self, data: bytes) -> None:  # Redis -> engine
                if proxy.holding:
                    proxy.held.append((self.peer.transport, data))
                else:
                    super().dataReceived(data)

        class ClientFactory(portforward.ProxyClientFactory):
            protocol = Client

        class Server(portforward.ProxyServer):
            clientProtocolFactory = ClientFactory  # noqa: N815 (Twisted's name)

            def dataReceived(self, data: bytes) -> None:  # engine -> Redis
                if proxy.holding:
                    proxy.sent += data
                    proxy._check()
                super().dataReceived(data)

        factory = portforward.ProxyFactory("127.0.0.1", redis_port)
        factory.protocol = Server
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.address = f"redis://127.0.0.1:{self.port.getHost().port}"

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        for transport, data in self.held:
            transport.write(data)
        self.held.clear()

    def when_sent(self, check: Callable[[bytes], bool], timeout: float) -> Deferred[None]:
        """Fires once ``check(bytes sent while holding)`` is true; fails after ``timeout``."""
        d: Deferred[None] = Deferred()
        self._waiters.append((check, d))
        self._check()
        return d.addTimeout(timeout, reactor)

    def _check(self) -> None:
        for check, d in list(self._waiters):
            if check(self.sent) and not d.called:
                self._waiters.remove((check, d))
                d.callback(None)

    async def close(self) -> None:
        await self.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_commands_in_one_turn_are_pipelined(redis_server: RedisServer) -> None:
    """Commands issued in one turn are all on the wire before the first reply comes back.

    Redis's replies are held back by a proxy: 50 publishes must reach Redis anyway (a
    client that waits for each reply before sending the next command sends only one).
    """
    proxy = HoldingProxy(int(redis_server.address.rsplit(":", 1)[1]))
    engine = make_engine([proxy.address])
    await engine.start(handler())
    try:
        proxy.hold()
        ds = [engine.publish("ch", pub(i), HISTORY) for i in range(50)]

        def evals(sent: bytes) -> int:
            return sent.count(b"\r\nEVALSHA\r\n") + sent.count(b"\r\nEVAL\r\n")

        await proxy.when_sent(lambda sent: evals(sent) >= 50, timeout=1.5)
        assert not any(d.called for d in ds)  # no reply reached the engine yet
        proxy.release()
        positions = [await d for d in ds]
        assert [p.offset for p in positions] == list(range(1, 51))
    finally:
        proxy.release()
        await engine.stop()
        await proxy.close()


@pytest_twisted.ensureDeferred
async def test_history_since_large_offsets(redis_server: RedisServer) -> None:
    """A ``since`` offset of 10^14 or more (up to 2^64-1) reads like a small one.

    Clients may send any uint64 offset; the stream IDs must not go through Lua numbers
    (printed as ``1e+14``, an invalid stream ID).
    """
    engine = make_engine([redis_server.address])
    await engine.start(handler())
    try:
        top = await engine.publish("h", pub(1), HISTORY)
        for since in (10**14 - 1, 10**14, 2**53 + 1, 2**64 - 1):
            flt = HistoryFilter(since=StreamPosition(since, ""), limit=-1)
            forward = await engine.history("h", flt, 3600.0)
            assert forward.publications == [] and forward.position == top, since
            flt = HistoryFilter(since=StreamPosition(since, ""), limit=-1, reverse=True)
            backward = await engine.history("h", flt, 3600.0)
            assert [p.offset for p in backward.publications] == [1], since
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_history_read_after_meta_loss_shows_no_old_entries(
    redis_server: RedisServer,
) -> None:
    """Meta lost (evicted or expired), stream left: a read starts the new epoch empty.

    The old entries belong to the lost epoch; returning them under the new one would
    show offsets above the top (as the memory engine never does).
    """
    engine = make_engine([redis_server.address])
    await engine.start(handler())
    try:
        for i in range(3):
            old = await engine.publish("h", pub(i), HISTORY)
        redis_server.command("DEL", f"{engine.prefix}.stream.meta.h")
        result = await engine.history("h", HistoryFilter(limit=-1), 3600.0)
        assert result.position.offset == 0 and result.position.epoch != old.epoch
        assert result.publications == []
        new = await engine.publish("h", pub(9), HISTORY)
        assert new == StreamPosition(1, result.position.epoch)
        result = await engine.history("h", HistoryFilter(limit=-1), 3600.0)
        assert [(p.offset, p.data) for p in result.publications] == [(1, b'{"n":9}')]
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_publish_past_offset_10_to_the_14(redis_server: RedisServer) -> None:
    """A stream whose top passes 10^14 keeps appending and delivering exact offsets.

    Lua prints such numbers as ``1e+14``, which is no stream ID and no offset.
    """
    engine = make_engine([redis_server.address])
    recorder = handler()
    await engine.start(recorder)
    try:
        first = await engine.publish("big", pub(0), HISTORY)
        redis_server.command("HSET", f"{engine.prefix}.stream.meta.big", "s", 10**14 - 1)
        await engine.subscribe("big")
        positions = [await engine.publish("big", pub(i), HISTORY) for i in (1, 2)]
        assert positions == [StreamPosition(10**14, first.epoch),
                             StreamPosition(10**14 + 1, first.epoch)]
        result = await engine.history("big", HistoryFilter(limit=-1), 3600.0)
        assert [p.offset for p in result.publications][-2:] == [10**14, 10**14 + 1]
        await engine.sync()
        assert [p.offset for _, p in recorder.publications] == [10**14, 10**14 + 1]
    finally:
        await engine.stop()
