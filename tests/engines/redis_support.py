"""Helpers for the Redis engine tests: engines on a test prefix, aging keys, polling."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from contract import RecordingHandler
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rtserver.config import RedisEngineConfig
from rtserver.engines.redis import RedisEngine

#: Moves "time" forward for every key of a prefix: PTTLs shrink by ARGV[2] ms and keys
#: whose TTL runs out are deleted (what Redis would have done after that long).
AGE_KEYS = b"""
local cursor = '0'
local step = tonumber(ARGV[2])
repeat
  local r = redis.call('scan', cursor, 'MATCH', ARGV[1] .. '.*', 'COUNT', 1000)
  cursor = r[1]
  for _, key in ipairs(r[2]) do
    local ttl = redis.call('pttl', key)
    if ttl > 0 then
      if ttl <= step then
        redis.call('del', key)
      else
        redis.call('pexpire', key, ttl - step)
      end
    end
  end
until cursor == '0'
return 1
"""


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return "t" + uuid.uuid4().hex[:12]


def make_engine(addresses: list[str], prefix: str | None = None, **config: Any) -> RedisEngine:
    """A RedisEngine on the real reactor with short timeouts."""
    options: dict[str, Any] = {
        "connect_timeout": 1.0,
        "io_timeout": 2.0,
        "pubsub_probe_interval": 30.0,
    }
    options.update(config)
    cfg = RedisEngineConfig(address=addresses, prefix=prefix or unique_prefix(), **options)
    return RedisEngine(reactor, cfg, reactor=reactor)


def handler(uid: str | None = None) -> RecordingHandler:
    """A recording handler with a unique node uid."""
    return RecordingHandler(uid=uid or str(uuid.uuid4()))


async def age(engine: RedisEngine, seconds: float) -> None:
    """Age every key of ``engine``'s prefix by ``seconds`` on every shard."""
    for shard in engine.shards:
        await shard.command.execute(
            "EVAL", AGE_KEYS, 0, engine.prefix, max(1, round(seconds * 1000))
        )


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` on the reactor every 10 ms; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await deferLater(reactor, 0.01, lambda: None)


async def pause(seconds: float) -> None:
    """Let real time pass (only where Redis' own clock must move: TTLs)."""
    await deferLater(reactor, seconds, lambda: None)
