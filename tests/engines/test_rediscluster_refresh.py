"""The Redis Cluster slot-map refresh when every node fails at once (no cluster needed)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from rtserver.config import RedisEngineConfig
from rtserver.engines.redis import RedisEngine
from rtserver.engines.rediscluster import ClusterCommandLink


def test_a_refresh_that_fails_at_once_does_not_block_the_next() -> None:
    """Every node refusing synchronously: the next scheduled refresh still asks again.

    A refresh whose coroutine finished before ``refresh()`` stored it stayed recorded as
    "under way", so every later refresh joined it and the slot map was never asked again.
    """
    clock = Clock()
    config = RedisEngineConfig(address=["redis+cluster://127.0.0.1:1,127.0.0.1:2"])
    engine = RedisEngine(clock, config, reactor=reactor)
    link = engine.shards[0].command
    assert isinstance(link, ClusterCommandLink)
    asked: list[tuple[str, int]] = []

    def refuse(host: str, port: int, *args: Any) -> Deferred[Any]:
        asked.append((host, port))
        return fail(ConnectionRefusedError(f"{host}:{port} refused"))

    link._asker.ask = refuse  # type: ignore[method-assign]
    link.start()
    assert asked == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    clock.advance(10)  # the backoff's retry
    assert asked[2:] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    link.stop()
    assert clock.getDelayedCalls() == []
