"""What a consumed message means: acknowledge it, or leave it pending (Centrifugo's rules)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from rtserver import config
from rtserver.consumers.dispatch import DONE, RETRY, dispatch_command, dispatch_publication

INTERNAL = {"code": 100, "message": "internal server error"}


class Recorder:
    """A stand-in for ``APIExecutor.call`` answering with a fixed response."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.calls: list[tuple[str, Any]] = []

    async def __call__(self, method: str, params: Any) -> dict[str, Any]:
        self.calls.append((method, params))
        return self.response


def run(coro: Any) -> Any:
    d = Deferred.fromCoroutine(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the dispatch finished without waiting"
    return results[0]


def test_an_internal_error_leaves_the_message_pending() -> None:
    call = Recorder({"error": INTERNAL})
    payload = json.dumps({"channel": "c", "data": {}}).encode()
    assert run(dispatch_command(call, "q", "publish", payload)) is RETRY
    assert call.calls == [("publish", {"channel": "c", "data": {}})]


def test_an_internal_error_of_one_broadcast_channel_retries_the_message() -> None:
    responses = [{"result": {}}, {"error": INTERNAL}]
    call = Recorder({"result": {"responses": responses}})
    payload = json.dumps({"channels": ["a", "b"], "data": {}}).encode()
    assert run(dispatch_command(call, "q", "broadcast", payload)) is RETRY
    call.response = {"result": {"responses": [{"result": {}}, {"error": {"code": 102}}]}}
    assert run(dispatch_command(call, "q", "broadcast", payload)) is DONE


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("publish", b"{nope"),  # malformed request
        ("", b"[1]"),  # an envelope that is no object
        ("", b'{"method": "publish", "payload": "{nope"}'),  # malformed inner payload
        ("info", b"{}"),  # a method consumers do not run
        ("", b'{"method": "presence", "payload": {"channel": "c"}}'),
    ],
)
def test_messages_that_can_never_run_are_acknowledged_without_a_call(
    method: str, payload: bytes
) -> None:
    call = Recorder({"result": {}})
    assert run(dispatch_command(call, "q", method, payload)) is DONE
    assert call.calls == []


def test_other_errors_are_acknowledged() -> None:
    call = Recorder({"error": {"code": 102, "message": "unknown channel"}})
    assert run(dispatch_command(call, "q", "publish", b'{"channel": "x:y", "data": 1}')) is DONE


def test_publication_data_mode_publishes_the_bytes_as_they_are() -> None:
    call = Recorder({"result": {}})
    outcome = dispatch_publication(
        call, "q", b'{"a":1}', ["one", "", "two"], idempotency_key="k", delta="true",
        tags={"t": "v"},
    )  # fmt: skip
    assert run(outcome) is DONE
    (method, params), = call.calls
    assert method == "broadcast"
    assert params == {
        "b64data": "eyJhIjoxfQ==",
        "channels": ["one", "two"],
        "idempotency_key": "k",
        "delta": True,
        "tags": {"t": "v"},
    }
    call.calls.clear()
    assert run(dispatch_publication(call, "q", b"1", [""], idempotency_key="", delta="",
                                    tags={})) is DONE  # fmt: skip
    assert call.calls == []  # no channels: skipped
    assert run(dispatch_publication(call, "q", b"1", ["c"], idempotency_key="", delta="maybe",
                                    tags={})) is DONE  # fmt: skip
    assert call.calls == []  # a delta that is no boolean: skipped


def _consumer(**section: Any) -> dict[str, Any]:
    stream = {"streams": ["s"], "consumer_group": "g", **section}
    return {"consumers": [{"name": "c", "enabled": True, "type": "redis_stream",
                           "redis_stream": stream}]}  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_consumer(streams=[]), r"consumers\[0\]\.redis_stream\.streams"),
        (_consumer(consumer_group=""), r"consumer_group: is required"),
        (_consumer(num_workers=0), r"num_workers: must be at least 1"),
        (_consumer(address=["a:1", "b:2"]), r"one Redis shard is expected"),
        (_consumer(cluster_address=["a:1"]), r"Redis Cluster is not supported"),
        ({"consumers": [{"name": "k", "enabled": True, "type": "kafka"}]},
         r"consumers\[0\]\.type: unsupported consumer type 'kafka'"),
        ({"consumers": [{"name": "a"}, {"name": "a"}]}, r"defined twice"),
        ({"consumers": [{"name": ""}]}, r"consumers\[0\]\.name"),
    ],
)  # fmt: skip
def test_configuration_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.from_mapping(data)


def test_defaults_are_centrifugos() -> None:
    (consumer,) = config.from_mapping(_consumer()).consumers
    section = consumer.redis_stream
    assert (section.visibility_timeout, section.num_workers) == (30.0, 1)
    assert (section.payload_value, section.method_value) == ("payload", "method")
    assert section.publication_data_mode.channels_value == "centrifugo-channels"


def test_a_reload_reports_changed_consumers_as_needing_a_restart() -> None:
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from rtserver.service import Reloader, build_node, build_sites

    cfg = config.from_mapping({"http_api": {"key": "a"}})
    clock = Clock()
    node = build_node(cfg, clock)
    sites = build_sites(node, cfg, clock)
    new = config.from_mapping({"http_api": {"key": "a"}, **_consumer()})
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "rtserver.service":
            seen.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    try:
        assert Reloader(node, sites, lambda: (new, []), clock).reload()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert seen == ["config reloaded, but changes to consumers need a restart"]
    assert node.config.consumers == []
