"""The NATS broker on a real ``nats-server`` (and a real ``redis-server`` for history).

* With a Redis engine as its history store (``engine.type: redis`` + ``broker.type:
  nats``), the composite engine passes the whole engine contract: PUB/SUB over NATS,
  history, idempotency and presence in Redis.
* Without one (Centrifugo's NATS broker), two nodes exchange publications, joins, leaves
  and control messages; history is "not available" (108).
* A NATS restart: the broker reports itself unhealthy, refuses publishes at once, then
  reconnects and resubscribes by itself.
* Channel names NATS cannot carry, wildcards and raw mode behave as Centrifugo documents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from contract import HISTORY, NO_HISTORY, EngineContract, EngineEnv, RecordingHandler, pub
from nats_support import make_broker
from natsserver import NatsServer, require_nats_server
from redis_support import handler, make_engine, until
from redisserver import RedisServer
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from rtserver.config import ConfigError, parse_nats_urls
from rtserver.core.ports import IBroker, IHistory
from rtserver.core.types import DisconnectControl, HistoryFilter, NodeInfo
from rtserver.engines.composite import CompositeEngine
from rtserver.engines.natsconn import NatsUnavailable
from rtserver.engines.redis import RedisEngine
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import ClientInfo

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    require_nats_server()
    with NatsServer() as server:
        yield server


@pytest_twisted.async_yield_fixture
async def engine_env(nats_server: NatsServer, redis_server: RedisServer) -> AsyncIterator[EngineEnv]:
    redis = make_engine([redis_server.address])
    broker = make_broker(nats_server.url, history=redis)
    engine = CompositeEngine(broker, broker, redis, [redis])
    recorder = handler()
    await engine.start(recorder)
    assert engine.healthy

    async def age(seconds: float) -> None:
        from redis_support import age as age_keys

        await age_keys(redis, seconds)

    yield EngineEnv(engine, recorder, lambda s: Deferred.fromCoroutine(age(s)), broker.sync)
    await engine.stop()
    assert not engine.healthy


class TestNatsWithRedisHistoryContract(EngineContract):
    """The engine contract, unchanged: NATS PUB/SUB, Redis history and presence."""


@pytest_twisted.async_yield_fixture
async def two_nodes(nats_server: NatsServer) -> AsyncIterator[list[tuple[Any, RecordingHandler]]]:
    prefix = "t" + __import__("uuid").uuid4().hex[:8]
    nodes = []
    for _ in range(2):
        broker = make_broker(nats_server.url, prefix)
        recorder = handler()
        await broker.start(recorder)
        assert broker.healthy
        nodes.append((broker, recorder))
    yield nodes
    for broker, _ in nodes:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_two_nodes_exchange_everything(two_nodes: list[tuple[Any, RecordingHandler]]) -> None:
    """Publications, joins, leaves, broadcast and addressed control cross nodes."""
    (a, ra), (b, rb) = two_nodes
    assert verifyObject(IBroker, a) and verifyObject(IHistory, a)
    await b.subscribe("room")
    position = await a.publish("room", pub(1), HISTORY)
    assert (position.offset, position.epoch) == (0, "")  # no history store: no positions
    info = ClientInfo("u1", "c1")
    await a.publish_join("room", info)
    await a.publish_leave("room", info)
    control = DisconnectControl(user="u1", code=3503, reason="force disconnect")
    await a.publish_control(control)
    to_b = NodeInfo(uid=rb.uid, name="b", version="x", num_clients=1, num_users=1,
                    num_channels=1, num_subs=1, uptime=3)
    await a.publish_control(to_b, node=rb.uid)
    await a.sync()
    await until(lambda: len(rb.controls) == 2, what="controls on b")
    assert [p.data for _, p in rb.publications] == [b'{"n":1}']
    assert rb.joins == [("room", info)] and rb.leaves == [("room", info)]
    assert rb.controls == [control, to_b]
    assert ra.controls == [control]  # broadcast reaches the sender too; addressed does not
    assert ra.publications == []  # a is not subscribed to the channel
    await b.unsubscribe("room")
    await b.sync()
    await a.publish("room", pub(2), NO_HISTORY)
    await a.sync()
    await b.sync()
    assert len(rb.publications) == 1


@pytest_twisted.ensureDeferred
async def test_history_is_not_available_without_a_store(
    two_nodes: list[tuple[Any, RecordingHandler]],
) -> None:
    """As Centrifugo's NATS broker: history and remove_history answer 108."""
    broker = two_nodes[0][0]
    for call in (lambda: broker.history("room", HistoryFilter(limit=-1), 60.0),
                 lambda: broker.remove_history("room")):
        with pytest.raises(Error) as e:
            await call()
        assert e.value.code == 108


@pytest_twisted.ensureDeferred
async def test_channels_nats_cannot_carry_are_refused(
    two_nodes: list[tuple[Any, RecordingHandler]],
) -> None:
    """Whitespace, empty tokens and (by default) wildcards: error 107, connection intact."""
    broker, recorder = two_nodes[0]
    for channel in ("has space", "tab\tch", "a..b", "end.", "news.*", "news.>"):
        with pytest.raises(Error) as e:
            await broker.subscribe(channel)
        assert e.value.code == 107, channel
        with pytest.raises(Error):
            await broker.publish(channel, pub(1), NO_HISTORY)
    await broker.subscribe("fine")
    await broker.publish("fine", pub(1), NO_HISTORY)
    await broker.sync()
    assert broker.healthy and [c for c, _ in recorder.publications] == ["fine"]


@pytest_twisted.ensureDeferred
async def test_wildcard_subscription_when_allowed(nats_server: NatsServer) -> None:
    """``allow_wildcards``: ``news.*`` receives what is published into ``news.sport``."""
    broker = make_broker(nats_server.url, allow_wildcards=True)
    recorder = handler()
    await broker.start(recorder)
    try:
        await broker.subscribe("news.*")
        await broker.publish("news.sport", pub(7), NO_HISTORY)
        await broker.publish_join("news.*", ClientInfo("u", "c"))  # skipped, not an error
        await broker.sync()
        assert [(c, p.data) for c, p in recorder.publications] == [("news.*", b'{"n":7}')]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_raw_mode_maps_channels_to_plain_subjects(nats_server: NatsServer) -> None:
    """Raw mode: ``chat:index`` is subject ``chat.index``; payloads travel unwrapped."""
    broker = make_broker(
        nats_server.url, raw={"enabled": True, "channel_replacements": {":": "."}, "prefix": ""}
    )
    recorder = handler()
    await broker.start(recorder)
    try:
        await broker.subscribe("chat:index")
        # Another NATS client publishes plain JSON (and once something that is not JSON).
        nats_server.publish("chat.index", b'{"from":"outside"}')
        nats_server.publish("chat.index", b"not json")
        await broker.publish("chat:index", pub(3), NO_HISTORY)
        await broker.publish_join("chat:index", ClientInfo("u", "c"))  # no joins in raw mode
        await broker.sync()
        assert [(c, p.data) for c, p in recorder.publications] == [
            ("chat:index", b'{"from":"outside"}'),
            ("chat:index", b'{"n":3}'),
        ]
        assert recorder.joins == []
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_nats_restart_reconnects_and_resubscribes() -> None:
    """NATS goes away: unhealthy, publishes fail at once; back: delivery resumes alone."""
    server = NatsServer(binary=require_nats_server()).start()
    try:
        prefix = "restart"
        a, b = make_broker(server.url, prefix), make_broker(server.url, prefix)
        ra, rb = handler(), handler()
        await a.start(ra)
        await b.start(rb)
        await b.subscribe("room")
        await a.publish("room", pub(1), NO_HISTORY)
        await until(lambda: len(rb.publications) == 1, what="first publication")

        server.kill()
        await until(lambda: not a.healthy and not b.healthy, what="both unhealthy")
        with pytest.raises(NatsUnavailable):
            await a.publish("room", pub(2), NO_HISTORY)
        with pytest.raises(NatsUnavailable):
            await a.publish_control(DisconnectControl(user="u", code=3503, reason="x"))

        server.start()
        await until(lambda: a.healthy and b.healthy, timeout=10.0, what="both healthy again")
        await a.publish("room", pub(3), NO_HISTORY)
        await until(lambda: len(rb.publications) == 2, what="delivery after restart")
        assert [p.data for _, p in rb.publications] == [b'{"n":1}', b'{"n":3}']
        control = DisconnectControl(user="u", code=3503, reason="after")
        await a.publish_control(control)
        await until(lambda: control in rb.controls, what="control after restart")
        await a.stop()
        await b.stop()
    finally:
        server.stop()


def test_url_parsing_keeps_credentials_out_of_str() -> None:
    """``nats://user:pass@host:port``: credentials parsed, never shown."""
    (address,) = parse_nats_urls("nats://derek:s3cret@localhost:4333")
    assert (address.host, address.port, address.user, address.password) == (
        "localhost", 4333, "derek", "s3cret")
    assert "s3cret" not in str(address) and "s3cret" not in repr(address)
    assert parse_nats_urls("nats://tok@h")[0].token == "tok"
    assert "tok" not in repr(parse_nats_urls("nats://tok@h"))
    assert parse_nats_urls("nats://h")[0].port == 4222
    assert [(a.host, a.port, a.tls) for a in parse_nats_urls("tls://a:1, b ,nats://c")] == [
        ("a", 1, True), ("b", 4222, False), ("c", 4222, False)]
    with pytest.raises(ConfigError):
        parse_nats_urls("http://h:1")


@pytest_twisted.ensureDeferred
async def test_authenticated_server() -> None:
    """User and password from the URL; a wrong password leaves the broker unhealthy."""
    server = NatsServer(binary=require_nats_server(), user="derek", password="pw").start()
    try:
        good = make_broker(server.url)
        bad = make_broker(f"nats://derek:wrong@127.0.0.1:{server.port}")
        await good.start(handler())
        await bad.start(handler())
        assert good.healthy and not bad.healthy
        await good.stop()
        await bad.stop()
    finally:
        server.stop()


def test_redis_history_store_type() -> None:
    """The Redis engine serves as the NATS broker's history store."""
    assert callable(RedisEngine.append)


@pytest_twisted.ensureDeferred
async def test_client_subscribing_to_a_channel_nats_refuses_gets_107(
    nats_server: NatsServer,
) -> None:
    """A client asking for ``news.*`` (wildcards off) gets 107; nothing is logged as a failure.

    The broker's refusal is the client's error, not a server fault: the node must not
    log it with a traceback.
    """
    from twisted.internet import reactor

    from rtserver import config as rtconfig
    from rtserver.core.node import Node
    from rtserver.testing import RecordingSink

    cfg = rtconfig.from_mapping({"client": {"insecure": True}})
    broker = make_broker(nats_server.url)
    node = Node(CompositeEngine(broker, broker, make_engine_memory()), cfg, clock=reactor)
    await node.start()
    try:
        sink = RecordingSink()
        client = node.make_client(sink)
        client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"news.*"}}')
        await until(lambda: any(r.get("id") == 2 for r in sink.replies()), what="reply 2")
        reply = next(r for r in sink.replies() if r.get("id") == 2)
        assert reply["error"]["code"] == 107
        assert not sink.closed
    finally:
        await node.stop()


def make_engine_memory() -> Any:
    from twisted.internet import reactor

    from rtserver.engines.memory import MemoryEngine

    return MemoryEngine(reactor)
