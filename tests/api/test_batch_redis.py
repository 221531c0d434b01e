"""A sequential API batch over the Redis engine: pipelined, yet the same as one by one.

A real Node on a real ``redis-server`` (client-side sharding over two servers in the
last test), a connected client whose transport writes are counted (one write = one
WebSocket frame), and the executor the HTTP and GRPC APIs run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_twisted
from redisserver import RedisServer, require_redis_server
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rtserver.api.executor import APIExecutor, PublishCommand
from rtserver.config import RedisEngineConfig, from_mapping
from rtserver.core.node import Node
from rtserver.core.types import ConnectionToken
from rtserver.engines.redis import RedisEngine
from rtserver.protocol.codes import Disconnect, Error

pytestmark = pytest.mark.redis

CONFIG = {
    "client": {"insecure": True, "allow_anonymous_connect_without_token": True},
    "channel": {"namespaces": [{"name": "hist", "history_size": 100, "history_ttl": "300s"}]},
}


class FrameSink:
    """A transport stand-in: each ``write`` is one frame to the client."""

    transport_name = "websocket"
    unidirectional = False
    emulation = False
    pong = True

    def __init__(self) -> None:
        self.frames: list[list[bytes]] = []

    def write(self, payloads: list[Any]) -> None:
        self.frames.append([p.data for p in payloads])

    def close(self, disconnect: Disconnect | None) -> None:
        pass

    def publications(self) -> list[tuple[str, Any]]:
        """(channel, data) of every publication push, in arrival order."""
        out = []
        for frame in self.frames:
            for raw in frame:
                push = orjson.loads(raw).get("push")
                if push and "pub" in push:
                    out.append((push["channel"], push["pub"]["data"]))
        return out

    def publication_frames(self) -> int:
        return sum(1 for frame in self.frames if any(b'"pub"' in raw for raw in frame))


class UserTokens:
    def verify_connection_token(self, token: str, now: float) -> ConnectionToken:
        return ConnectionToken(user=token)


async def until(predicate: Any, what: str) -> None:
    deadline = reactor.seconds() + 5
    while not predicate():
        assert reactor.seconds() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, 0.01, lambda: None)


class RedisAPI:
    """A started node on Redis, its executor, and a subscribed client."""

    def __init__(self, addresses: list[str]) -> None:
        cfg = RedisEngineConfig(
            address=addresses, prefix="t" + uuid.uuid4().hex[:12], connect_timeout=1.0,
            io_timeout=2.0,
        )
        self.engine = RedisEngine(reactor, cfg, reactor=reactor)
        self.node = Node(self.engine, from_mapping(CONFIG), clock=reactor, verifier=UserTokens())
        self.executor = APIExecutor(self.node)
        self.sink = FrameSink()

    async def start(self, *channels: str) -> None:
        await self.node.start()
        await until(lambda: self.engine.healthy, "the engine")
        self.client = client = self.node.make_client(self.sink)
        client.receive(orjson.dumps({"id": 1, "connect": {"token": "alice"}}))
        for i, channel in enumerate(channels, start=2):
            client.receive(orjson.dumps({"id": i, "subscribe": {"channel": channel}}))
        await until(lambda: sum(len(f) for f in self.sink.frames) == 1 + len(channels),
                    "the subscribe replies")
        self.sink.frames.clear()

    async def stop(self) -> None:
        """Unsubscribe first and wait for Redis to confirm, then stop the node."""
        self.client.close(Disconnect.SHUTDOWN)
        await until(lambda: not any(shard.channels for shard in self.engine.shards),
                    "the unsubscribes")
        await self.engine.sync()
        await self.node.stop()

    async def batch(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = await self.executor.call("batch", {"commands": commands})
        replies: list[dict[str, Any]] = orjson.loads(orjson.dumps(body))["replies"]
        return replies


@pytest_twisted.async_yield_fixture
async def api(redis_server: RedisServer) -> AsyncIterator[RedisAPI]:
    harness = RedisAPI([redis_server.address])
    await harness.start("hist:a", "news")
    yield harness
    await harness.stop()


def _publishes(n: int, channel: str = "hist:a") -> list[dict[str, Any]]:
    return [{"publish": {"channel": channel, "data": {"n": i}}} for i in range(1, n + 1)]


@pytest_twisted.ensureDeferred
async def test_a_batch_of_publishes_reaches_a_subscriber_in_fewer_frames(api: RedisAPI) -> None:
    """16 publishes: all sent to Redis at once, so they arrive together, in order."""
    replies = await api.batch(_publishes(16))
    assert [r["publish"]["offset"] for r in replies] == list(range(1, 17))
    await until(lambda: len(api.sink.publications()) == 16, "16 publications")
    assert api.sink.publications() == [("hist:a", {"n": i}) for i in range(1, 17)]
    assert api.sink.publication_frames() < 16


@pytest_twisted.ensureDeferred
async def test_the_engine_gets_every_publish_of_a_run_before_the_first_answer(
    api: RedisAPI,
) -> None:
    """The typed (GRPC) batch issues the run without waiting for each answer."""
    issued: list[str] = []
    answered: list[str] = []
    real = api.node.publish

    def spy(channel: str, data: bytes, **kwargs: Any) -> Any:
        issued.append(channel)
        d = real(channel, data, **kwargs)
        d.addCallback(lambda r: answered.append(channel) or r)
        issued.append(f"answered before: {len(answered)}")
        return d

    api.node.publish = spy  # type: ignore[method-assign]
    commands = [PublishCommand("news", b'{"n":%d}' % i, {}) for i in range(16)]
    outcomes = await api.executor.publish_commands(commands)
    assert outcomes == [{}] * 16
    assert issued[1::2] == ["answered before: 0"] * 16
    await until(lambda: len(api.sink.publications()) == 16, "16 publications")
    assert [d for _, d in api.sink.publications()] == [{"n": i} for i in range(16)]
    assert api.sink.publication_frames() < 16


@pytest_twisted.ensureDeferred
async def test_errors_history_idempotency_and_versions_as_one_by_one(api: RedisAPI) -> None:
    """Per-command errors; a history after publishes sees them; dedup and versions hold."""
    replies = await api.batch([
        {"publish": {"channel": "hist:a", "data": 1}},
        {"publish": {"channel": "nope:a", "data": 2}},  # unknown namespace
        {"publish": {"channel": "hist:a"}},  # no data
        {"publish": {"channel": "hist:a", "data": 3, "idempotency_key": "k"}},
        {"publish": {"channel": "hist:a", "data": 4, "idempotency_key": "k"}},  # repeated
        {"publish": {"channel": "hist:a", "data": 5, "version": 2}},
        {"publish": {"channel": "hist:a", "data": 6, "version": 1}},  # outdated
        {"history": {"channel": "hist:a", "limit": -1}},
        {"publish": {"channel": "hist:a", "data": 7}},
        {"broadcast": {"channels": ["hist:a", "news"], "data": 8}},
        {"history": {"channel": "hist:a", "limit": -1}},
    ])
    assert replies[1] == {"error": {"code": 102, "message": "unknown channel"}}
    assert replies[2]["error"]["code"] == Error.BAD_REQUEST.code
    offsets = [r["publish"]["offset"] for r in replies[:7] if "publish" in r]
    assert offsets == [1, 2, 2, 3, 3]
    first, second = replies[7]["history"], replies[10]["history"]
    assert [p["data"] for p in first["publications"]] == [1, 3, 5]
    assert first["offset"] == 3
    assert replies[8]["publish"]["offset"] == 4
    responses = replies[9]["broadcast"]["responses"]
    assert responses[0]["result"]["offset"] == 5 and responses[1] == {"result": {}}
    assert [p["data"] for p in second["publications"]] == [1, 3, 5, 7, 8]
    await until(lambda: len(api.sink.publications()) == 6, "6 publications")
    assert api.sink.publications() == [
        ("hist:a", 1), ("hist:a", 3), ("hist:a", 5), ("hist:a", 7), ("hist:a", 8), ("news", 8)]


@pytest_twisted.ensureDeferred
async def test_sharded_redis_keeps_the_order_of_each_channel() -> None:
    """Two shards: a batch alternating between them still applies in order per channel."""
    require_redis_server()
    with RedisServer() as one, RedisServer() as two:
        harness = RedisAPI([one.address, two.address])
        lanes: dict[Any, str] = {}
        n = 0
        while len(lanes) < 2:  # a channel on each shard
            n += 1
            lanes.setdefault(harness.node.publish_order(f"hist:{n}"), f"hist:{n}")
        assert None not in lanes
        a, b = lanes.values()
        await harness.start(a, b)
        try:
            commands = []
            for i in range(1, 9):
                commands += [{"publish": {"channel": a, "data": i}},
                             {"publish": {"channel": a, "data": 10 + i}},
                             {"publish": {"channel": b, "data": i}}]
            replies = await harness.batch(commands)
            assert [r["publish"]["offset"] for r in replies[2::3]] == list(range(1, 9))
            assert [r["publish"]["offset"] for r in replies[0::3]] == list(range(1, 16, 2))
            await until(lambda: len(harness.sink.publications()) == 24, "24 publications")
            got = harness.sink.publications()
            for channel in (a, b):
                want = [c["publish"]["data"] for c in commands if c["publish"]["channel"] == channel]
                assert [d for c, d in got if c == channel] == want
            history = await harness.batch([{"history": {"channel": a, "limit": -1}}])
            assert [p["data"] for p in history[0]["history"]["publications"]] == [
                c["publish"]["data"] for c in commands if c["publish"]["channel"] == a]
        finally:
            await harness.stop()

