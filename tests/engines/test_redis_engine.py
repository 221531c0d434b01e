"""The Redis engine against the engine contract, on a real ``redis-server``.

Redis' clock cannot be moved, so the contract's ``advance(seconds)`` ages every key of
the test's prefix instead (PTTLs shrink, keys whose TTL runs out are deleted): the TTLs
the engine set are exercised as if that much time had passed. ``settle()`` is a PING
round trip on the engine's PUB/SUB links.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
from contract import EngineContract, EngineEnv
from redis_support import age, handler, make_engine
from redisserver import RedisServer, require_redis_server
from twisted.internet.defer import Deferred

pytestmark = pytest.mark.redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session (tests use unique key prefixes)."""
    require_redis_server()
    with RedisServer() as server:
        yield server


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
