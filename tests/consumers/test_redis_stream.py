"""``consumers`` of type ``redis_stream``: a real rtserver process reading a real redis-server.

Commands are added with ``XADD`` as a producer would; a centrifuge-python subscriber (or
the channel's history) shows what the server ran, ``XPENDING`` what it acknowledged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import Server, run_server
from pysdk import Recorder, name, run_scenario, subscribed
from redisserver import RedisServer, RespError, SentinelSetup, require_redis_server, wait_for

GROUP = "rtserver"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for one test (some tests restart it)."""
    server = RedisServer(binary=require_redis_server()).start()
    try:
        yield server
    finally:
        server.stop()


def consumer_config(redis: RedisServer, *streams: str, **extra: Any) -> dict[str, Any]:
    return {
        "consumers": [
            {
                "name": "events",
                "enabled": True,
                "type": "redis_stream",
                "redis_stream": {
                    "address": redis.address,
                    "streams": list(streams),
                    "consumer_group": GROUP,
                    **extra,
                },
            },
            # a disabled consumer of a type rtserver does not run is skipped, as in Centrifugo
            {"name": "off", "enabled": False, "type": "kafka"},
        ]
    }


def group_exists(redis: RedisServer, stream: str) -> bool:
    try:
        groups = redis.command("XINFO", "GROUPS", stream)
    except RespError:
        return False  # no such key yet
    return any(GROUP.encode() in g for g in groups)


def wait_group(redis: RedisServer, stream: str) -> None:
    wait_for(lambda: group_exists(redis, stream), 15, f"consumer group on {stream}")


def pending(redis: RedisServer, stream: str) -> int:
    return int(redis.command("XPENDING", stream, GROUP)[0])


def xadd(redis: RedisServer, stream: str, **fields: Any) -> bytes:
    args: list[Any] = []
    for key, value in fields.items():
        args += [key, value if isinstance(value, str) else json.dumps(value)]
    return bytes(redis.command("XADD", stream, "*", *args))


def history(server: Server, channel: str) -> list[Any] | None:
    """The channel's publications; None while the server answers with an error."""
    import cent

    try:
        reply = server.cent_client.history(cent.HistoryRequest(channel=channel, limit=-1))
    except cent.CentApiResponseError:
        return None  # e.g. 100 while the engine's Redis reconnects
    return [p.data for p in reply.publications]


def test_commands_from_a_stream_reach_subscribers_bad_entries_are_skipped(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Each command runs once, in order; bad entries are logged without content and acked."""
    stream, channel, user = name("s-"), name("ch-"), name("u-")
    config = consumer_config(redis, stream)
    config["prometheus"] = {"enabled": True}
    with run_server(tmp_path, config) as server:
        wait_group(redis, stream)

        async def scenario() -> list[Any]:
            rec = Recorder()
            async with subscribed(server, channel, rec, token=server.token(user)):
                xadd(redis, stream, method="publish", other="no payload field")
                xadd(redis, stream, method="publish", payload="{not json secret-in-body")
                xadd(redis, stream, method="no_such_method", payload={"channel": channel})
                # unknown namespace: the API answers 102, which no retry can change
                xadd(redis, stream, method="publish",
                     payload={"channel": "nosuchns:x", "data": {"n": 0}})  # fmt: skip
                xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": 1}})
                # no method field: the payload is Centrifugo's {"method", "payload"} envelope,
                # its inner payload here a string holding JSON
                envelope = {
                    "method": "broadcast",
                    "payload": json.dumps({"channels": [channel], "data": {"n": 2}}),
                }
                xadd(redis, stream, payload=envelope)
                xadd(redis, stream, payload={"method": "publish",
                                             "payload": {"channel": channel, "data": {"n": 3}}})  # fmt: skip
                pubs = await rec.wait("publication", count=3)
                return [p["data"] for p in pubs]

        assert run_scenario(scenario()) == [{"n": 1}, {"n": 2}, {"n": 3}]
        wait_for(lambda: pending(redis, stream) == 0, 10, "every entry acknowledged")
        assert int(redis.command("XLEN", stream)) == 7
        log = server.log(tail=10**7)
        assert "payload value 'payload' not found" in log
        assert "malformed payload" in log
        assert "'no_such_method' is not supported by consumers" in log
        assert "102: unknown channel" in log
        assert "secret-in-body" not in log
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        assert 'centrifugo_consumers_messages_processed_total{consumer_name="events"} 7.0' in metrics
        assert 'centrifugo_consumers_errors_total{consumer_name="events"} 0.0' in metrics


def test_publication_data_mode(redis: RedisServer, tmp_path: Path) -> None:
    """The payload is the data; channels, tags and idempotency key come from other fields."""
    stream, one, two = name("s-"), name("ch-"), name("ch-")
    config = consumer_config(redis, stream, publication_data_mode={"enabled": True})
    with run_server(tmp_path, config) as server:
        wait_group(redis, stream)
        fields = {"centrifugo-channels": f"{one},{two}", "centrifugo-idempotency-key": "k1"}
        xadd(redis, stream, payload={"hello": 1}, **fields)
        xadd(redis, stream, payload={"hello": 1}, **fields)  # same key: published once
        xadd(redis, stream, payload={"hello": 2}, **{"centrifugo-channels": one})
        wait_for(lambda: pending(redis, stream) == 0 and len(history(server, one)) == 2, 10,
                 "publications in history")  # fmt: skip
        assert history(server, one) == [{"hello": 1}, {"hello": 2}]
        assert history(server, two) == [{"hello": 1}]


def test_redis_restart_consumer_resumes(redis: RedisServer, tmp_path: Path) -> None:
    """redis-server restarts empty: the consumer recreates its group and reads on."""
    stream, channel = name("s-"), name("ch-")
    with run_server(tmp_path, consumer_config(redis, stream)) as server:
        wait_group(redis, stream)
        xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": 1}})
        wait_for(lambda: history(server, channel) == [{"n": 1}], 10, "first publication")
        redis.restart()
        wait_group(redis, stream)  # the restarted Redis has no data: the group came back
        xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": 2}})
        wait_for(lambda: (history(server, channel) or [])[-1:] == [{"n": 2}], 15,
                 "after the restart")  # fmt: skip
        wait_for(lambda: pending(redis, stream) == 0, 10, "acknowledged")


def test_pending_entries_of_a_dead_consumer_are_claimed(
    redis: RedisServer, tmp_path: Path
) -> None:
    """An entry another consumer read and never acked runs after visibility_timeout."""
    stream, channel = name("s-"), name("ch-")
    redis.command("XGROUP", "CREATE", stream, GROUP, "$", "MKSTREAM")
    xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": 1}})
    read = redis.command("XREADGROUP", "GROUP", GROUP, "dead-node", "STREAMS", stream, ">")
    assert read, "the dead consumer holds the entry"
    assert pending(redis, stream) == 1
    config = consumer_config(redis, stream, visibility_timeout="1s")
    with run_server(tmp_path, config) as server:
        started = time.monotonic()
        # claimed by the first XAUTOCLAIM (every 5 s, as Centrifugo) after 1 s idle
        wait_for(lambda: history(server, channel) == [{"n": 1}], 15, "the claimed entry ran")
        assert time.monotonic() - started < 12
        wait_for(lambda: pending(redis, stream) == 0, 10, "acknowledged by the new consumer")
        consumers = redis.command("XINFO", "CONSUMERS", stream, GROUP)
        assert any(b"dead-node" in c for c in consumers)


def test_workers_run_entries_concurrently_and_oversized_payloads_are_skipped(
    redis: RedisServer, tmp_path: Path
) -> None:
    """num_workers commands in hand at once, each run and acked; oversized ones skipped.

    A payload above http_api.max_request_body_size is logged and acked without running.
    """
    stream, channel = name("s-"), name("ch-")
    config = consumer_config(redis, stream, num_workers=4)
    config["http_api"] = {"max_request_body_size": 2048}
    with run_server(tmp_path, config) as server:
        wait_group(redis, stream)
        big = {"channel": channel, "data": {"blob": "x" * 4096}}
        xadd(redis, stream, method="publish", payload=big)
        for i in range(20):
            xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": i}})
        wait_for(lambda: len(history(server, channel) or ()) == 20 and pending(redis, stream) == 0,
                 15, "20 publications, all acknowledged")  # fmt: skip
        assert sorted(d["n"] for d in history(server, channel) or ()) == list(range(20))
        assert "exceeds 2048 (http_api.max_request_body_size)" in server.log(tail=10**7)


def test_an_internal_error_leaves_the_entry_pending_until_it_runs(
    redis: RedisServer, tmp_path: Path
) -> None:
    """An internal error (100) leaves the entry pending; it runs once the cause is gone.

    The engine's Redis is down, so publish fails; once it is back, the entry is claimed
    after visibility_timeout and published.
    """
    stream, channel = name("s-"), name("ch-")
    engine = RedisServer(binary=require_redis_server()).start()
    try:
        config = consumer_config(redis, stream, visibility_timeout="1s")
        config["engine"] = {"type": "redis", "redis": {"address": engine.address}}
        config["prometheus"] = {"enabled": True}
        with run_server(tmp_path, config) as server:
            wait_group(redis, stream)
            engine.stop()
            xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": 1}})
            wait_for(lambda: "server API publish failed" in server.log(tail=10**7), 10,
                     "the failed attempt")  # fmt: skip
            assert pending(redis, stream) == 1
            metrics = requests.get(server.url + "/metrics", timeout=5).text
            errors = re.search(r'consumers_errors_total\{consumer_name="events"\} (\d+)', metrics)
            assert errors is not None and int(errors[1]) >= 1
            engine.start()
            wait_for(lambda: history(server, channel) == [{"n": 1}], 20, "the retried entry")
            wait_for(lambda: pending(redis, stream) == 0, 10, "acknowledged after the retry")
    finally:
        engine.stop()


def test_a_read_error_is_retried_with_backoff_not_in_a_busy_loop(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The stream key holds a string: each attempt fails; attempts back off to 5 s apart."""
    stream, channel = name("s-"), name("ch-")
    redis.command("SET", stream, "not a stream")
    with run_server(tmp_path, consumer_config(redis, stream)) as server:
        line = f"error reading redis stream {stream}: WRONGTYPE"
        wait_for(lambda: line in server.log(tail=10**7), 10, "the first failed attempt")
        first = time.monotonic()
        # attempts 2, 3 and 4 come 0.2, 0.4 and 0.8 s apart: a busy loop would log them
        # within milliseconds (a loaded machine can only make them later)
        wait_for(lambda: server.log(tail=10**7).count(line) >= 4, 15, "four attempts")
        assert time.monotonic() - first >= 1.0  # 1.4 s, less the first line's detection lag
        redis.command("DEL", stream)
        wait_group(redis, stream)  # the next attempt creates it
        xadd(redis, stream, method="publish", payload={"channel": channel, "data": {"n": 1}})
        wait_for(lambda: history(server, channel) == [{"n": 1}], 15, "read after the fix")


def test_a_sentinel_managed_redis(tmp_path: Path) -> None:
    """``sentinel_address`` and ``sentinel_master_name``, as for engine.redis.

    The consumer reads from, and acknowledges on, the master the sentinels name.
    """
    require_redis_server()
    setup = SentinelSetup(tmp_path)
    try:
        stream, channel = name("s-"), name("ch-")
        config = consumer_config(setup.master, stream)
        config["consumers"][0]["redis_stream"] = {
            # one shard: its sentinels comma-separated in one entry (as engine.redis)
            "sentinel_address": [
                ",".join(s.address.removeprefix("redis://") for s in setup.sentinels)
            ],
            "sentinel_master_name": "mymaster",
            "streams": [stream],
            "consumer_group": GROUP,
        }
        workdir = tmp_path / "server"
        workdir.mkdir()
        with run_server(workdir, config) as server:
            wait_group(setup.master, stream)
            xadd(setup.master, stream, method="publish",
                 payload={"channel": channel, "data": {"n": 1}})  # fmt: skip
            wait_for(lambda: history(server, channel) == [{"n": 1}], 10, "read via sentinel")
            wait_for(lambda: pending(setup.master, stream) == 0, 10, "acknowledged")
    finally:
        setup.stop()
