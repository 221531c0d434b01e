"""Throughput of a ``redis_stream`` consumer: publish commands per second, end to end.

A real redis-server and a real ``twistd -n rtserver`` (tests/harness.py helpers): N
``publish`` entries (a channel without subscribers or history) are added to the stream
in one pipeline while the consumer waits on its ``XREADGROUP``; the time is from the
pipeline's send to the moment the group has read every entry and none is pending
(polled every 5 ms, so the error is below 5 ms).

Usage: python bench/consumer_stream.py [entries] [workers ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from harness import run_server  # noqa: E402
from redisserver import RedisServer, require_redis_server, wait_for  # noqa: E402


def done(redis: RedisServer, stream: str, last: bytes) -> bool:
    (group,) = redis.command("XINFO", "GROUPS", stream)
    info = dict(zip(group[::2], group[1::2], strict=True))
    return bool(info[b"last-delivered-id"] == last and int(info[b"pending"]) == 0)


def run(entries: int, workers: int) -> float:
    stream = f"bench-{workers}"
    with tempfile.TemporaryDirectory() as tmp, RedisServer(
        binary=require_redis_server()
    ) as redis:
        config = {
            "log": {"level": "info"},
            "consumers": [
                {
                    "name": "bench",
                    "enabled": True,
                    "type": "redis_stream",
                    "redis_stream": {
                        "address": redis.address,
                        "streams": [stream],
                        "consumer_group": "g",
                        "num_workers": workers,
                    },
                }
            ],
        }
        with run_server(Path(tmp), config):
            wait_for(lambda: redis.command("EXISTS", stream) == 1, 10, "the group")
            payload = json.dumps({"channel": "bench", "data": {"text": "x" * 64}})
            commands = [
                ("XADD", stream, "*", "method", "publish", "payload", payload)
                for _ in range(entries)
            ]
            started = time.perf_counter()
            ids = redis.pipeline(commands, timeout=60)
            last = bytes(ids[-1])
            while not done(redis, stream, last):
                time.sleep(0.005)
            return time.perf_counter() - started


def main() -> None:
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    workers = [int(w) for w in sys.argv[2:]] or [1, 4, 16]
    for w in workers:
        seconds = run(entries, w)
        print(f"num_workers={w:3d}: {entries} entries in {seconds:.2f} s = "
              f"{entries / seconds:,.0f} commands/s")  # fmt: skip


if __name__ == "__main__":
    main()
