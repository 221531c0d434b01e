"""The Lua scripts of the Redis engine, following Centrifugo's steps.

The data layout they work on is in docs/deployment.rst, "Redis engine".

Each script runs atomically in Redis; TTLs are milliseconds (PEXPIRE), 0 = keep.
Scripts are loaded with SCRIPT LOAD when a command link comes up and called with
EVALSHA (EVAL on NOSCRIPT).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["ADD_PRESENCE", "ALL", "HISTORY", "PRESENCE", "PUBLISH", "REMOVE_PRESENCE", "Script"]


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 (the EVALSHA handle)."""

    name: str
    body: bytes

    @property
    def sha(self) -> str:
        """Hex SHA1 of the body, as SCRIPT LOAD returns it."""
        return hashlib.sha1(self.body).hexdigest()


#: KEYS: stream, meta, idempotency result (optional: without it, no idempotency).
#: ARGV: payload, history_size (0 = no history), history_ttl_ms, pubsub channel,
#: meta_ttl_ms, new epoch candidate, idempotency_ttl_ms, '1' to SPUBLISH (sharded PUB/SUB
#: on a Redis Cluster) instead of PUBLISH, version (decimal, '0' = none), version epoch.
#: An empty pubsub channel appends without PUBLISH (history for another broker's
#: PUB/SUB, e.g. NATS).
#: With history and a version, the meta hash keeps the last version and version epoch
#: (fields ``v``, ``ve``, as Centrifugo's): a version not greater than ``v`` is
#: suppressed (nothing appended, published or cached; the current top offset returned)
#: unless the version epoch is non-empty and differs from ``ve``. Versions are compared
#: as decimal strings (length, then digits), exact over the whole uint64 range where Lua
#: numbers are doubles.
#: Returns {offset, epoch, from_cache, suppressed}.
PUBLISH = Script(
    "publish",
    b"""
local result_key = KEYS[3] or ''
if result_key ~= '' then
  local cached = redis.call('hmget', result_key, 'e', 's')
  if cached[1] then
    return {tonumber(cached[2]), cached[1], 1, 0}
  end
end
local offset = 0
local epoch = ''
local publish = 'publish'
if ARGV[8] == '1' then
  publish = 'spublish'
end
if tonumber(ARGV[2]) > 0 then
  epoch = redis.call('hget', KEYS[2], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('hset', KEYS[2], 'e', epoch)
  end
  local version = ARGV[9]
  if version ~= '0' then
    local kept = redis.call('hmget', KEYS[2], 'v', 've', 's')
    local v = kept[1]
    if v and (ARGV[10] == '' or ARGV[10] == kept[2])
        and (#v > #version or (#v == #version and v >= version)) then
      return {tonumber(kept[3] or '0'), epoch, 0, 1}
    end
    redis.call('hset', KEYS[2], 'v', version, 've', ARGV[10])
  end
  offset = redis.call('hincrby', KEYS[2], 's', 1)
  if offset == 1 then
    redis.call('del', KEYS[1])
  end
  -- '%d', not '..': Lua prints numbers of 10^14 and more as 1e+14
  offset = string.format('%d', offset)
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[3])
  if tonumber(ARGV[5]) > 0 then
    redis.call('pexpire', KEYS[2], ARGV[5])
  end
  if ARGV[4] ~= '' then
    redis.call(publish, ARGV[4], '__p1:' .. offset .. ':' .. epoch .. '__' .. ARGV[1])
  end
elseif ARGV[4] ~= '' then
  redis.call(publish, ARGV[4], ARGV[1])
end
if result_key ~= '' then
  redis.call('hset', result_key, 'e', epoch, 's', offset)
  redis.call('pexpire', result_key, ARGV[7])
end
return {tonumber(offset), epoch, 0, 0}
""",
)

#: KEYS: stream, meta.
#: ARGV: include publications (0/1), since offset ('' = none), limit (-1 = all),
#: reverse (0/1), meta_ttl_ms, new epoch candidate.
#: A new epoch (no meta: never written, expired or evicted) drops a left-over stream of
#: the lost epoch, as a publish starting at offset 1 does.
#: Returns {top offset, epoch, entries}; entries as XRANGE returns them. ``since`` stays a
#: string (exclusive ``(<since>-0`` bounds, Redis 6.2+): Lua numbers print 10^14 and up
#: as ``1e+14``, which is no stream ID.
HISTORY = Script(
    "history",
    b"""
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
if tonumber(ARGV[5]) > 0 then
  redis.call('pexpire', KEYS[2], ARGV[5])
end
if ARGV[1] == '0' then
  return {top, epoch, {}}
end
local limit = tonumber(ARGV[3])
local entries
if ARGV[4] == '1' then
  local from = '+'
  if ARGV[2] ~= '' then
    if ARGV[2] == '0' then
      return {top, epoch, {}}
    end
    from = '(' .. ARGV[2] .. '-0'
  end
  if limit > 0 then
    entries = redis.call('xrevrange', KEYS[1], from, '-', 'COUNT', limit)
  else
    entries = redis.call('xrevrange', KEYS[1], from, '-')
  end
else
  local from = '-'
  if ARGV[2] ~= '' then
    from = '(' .. ARGV[2] .. '-0'
  end
  if limit > 0 then
    entries = redis.call('xrange', KEYS[1], from, '+', 'COUNT', limit)
  else
    entries = redis.call('xrange', KEYS[1], from, '+')
  end
end
return {top, epoch, entries}
""",
)

#: KEYS: presence data hash, presence expire zset.
#: ARGV: client id, info payload, expire-at (ms), ttl_ms.
ADD_PRESENCE = Script(
    "add_presence",
    b"""
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('pexpire', KEYS[1], ARGV[4])
redis.call('pexpire', KEYS[2], ARGV[4])
return 1
""",
)

#: KEYS: presence data hash, presence expire zset. ARGV: client id.
REMOVE_PRESENCE = Script(
    "remove_presence",
    b"""
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
""",
)

#: KEYS: presence data hash, presence expire zset. ARGV: now (ms).
#: Drops expired members, then returns HGETALL of the data hash.
PRESENCE = Script(
    "presence",
    b"""
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1])
end
return redis.call('hgetall', KEYS[1])
""",
)

ALL = (PUBLISH, HISTORY, ADD_PRESENCE, REMOVE_PRESENCE, PRESENCE)
