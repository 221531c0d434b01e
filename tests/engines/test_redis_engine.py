"""The Redis engine against the engine contract, on a real ``redis-server``.

Redis' clock cannot be moved, so the contract's ``advance(seconds)`` ages every key of
the test's prefix instead (PTTLs shrink, keys whose TTL runs out are deleted): the TTLs
the engine set are exercised as if that much time had passed. ``settle()`` is a PING
round trip on the engine's PUB/SUB links.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from contract import EngineContract, EngineEnv, pub, versioned
from redis_support import age, handler, make_engine
from redisserver import RedisServer
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from rtserver.core.types import SUPPRESS_VERSION, Suppressed
from rtserver.engines.redis import RedisUnavailable
from rtserver.protocol.frames import StreamPosition

pytestmark = pytest.mark.redis


@pytest_twisted.async_yield_fixture
async def engine_env(redis_server: RedisServer) -> AsyncIterator[EngineEnv]:
    engine = make_engine([redis_server.address])
    recorder = handler()
    await engine.start(recorder)
    assert engine.healthy

    yield EngineEnv(engine, recorder, lambda s: Deferred.fromCoroutine(age(engine, s)), engine.sync)
    await engine.stop()
    assert not engine.healthy


class TestRedisEngineContract(EngineContract):
    """The shared engine contract, unchanged, against Redis."""


class TestRedisVersionLayout:
    """The version check keeps Centrifugo's fields in the stream's meta hash."""

    @pytest_twisted.ensureDeferred
    async def test_meta_hash_holds_version_fields(
        self, engine_env: EngineEnv, redis_server: RedisServer
    ) -> None:
        """``v``/``ve`` of ``<prefix>.stream.meta.<ch>`` are read and written as Centrifugo's.

        A meta hash written the way Centrifugo writes it suppresses an older version
        and answers its ``s``/``e``; an accepted version replaces ``v``/``ve``.
        """
        e = engine_env.engine
        meta = f"{e.prefix}.stream.meta.layout"
        redis_server.command("HSET", meta, "e", "EPOCH", "s", 3, "v", 7, "ve", "x")
        suppressed = await e.publish("layout", pub(1), versioned(5, "x"))
        assert suppressed == Suppressed(3, "EPOCH", SUPPRESS_VERSION)
        assert redis_server.command("XLEN", f"{e.prefix}.stream.layout") == 0
        accepted = await e.publish("layout", pub(2), versioned(8, "x"))
        assert accepted == StreamPosition(4, "EPOCH")
        fields = redis_server.command("HGETALL", meta)
        stored = dict(zip(fields[::2], fields[1::2], strict=True))
        assert stored == {b"e": b"EPOCH", b"s": b"4", b"v": b"8", b"ve": b"x"}
        await e.publish("layout", pub(3), versioned(0, "y"))
        assert redis_server.command("HMGET", meta, "v", "ve") == [b"8", b"x"]


@pytest_twisted.ensureDeferred
async def test_pubsub_commands_sent_while_stopping_leave_no_timer(redis_server: RedisServer) -> None:
    """(Un)subscribing while the engine stops: stop() fires with no reply timer left behind.

    A node stopping unsubscribes its channels while the engine closes its links; the
    UNSUBSCRIBE is not sent, a SUBSCRIBE fails with RedisUnavailable, and whatever waits
    for stop() finds the reactor without this engine's timers.
    """
    engine = make_engine([redis_server.address])
    await engine.start(handler())
    await engine.subscribe("a")
    before = set(reactor.getDelayedCalls())
    stopping = engine.stop()
    unsubscribed = engine.unsubscribe("a")
    subscribed = engine.subscribe("b")
    await stopping
    assert [c for c in reactor.getDelayedCalls() if c not in before and c.active()] == []
    await unsubscribed
    with pytest.raises(RedisUnavailable):
        await subscribed
