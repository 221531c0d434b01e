"""The server API executor over a real Node and MemoryEngine, driven by a Clock."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from rtserver.api.executor import APIExecutor, PublishCommand
from rtserver.config import from_mapping
from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.types import ConnectionToken
from rtserver.engines.memory import MemoryEngine
from rtserver.protocol.codes import Disconnect, Error
from rtserver.protocol.frames import StreamPosition

CONFIG = {
    "client": {"insecure": True, "allow_anonymous_connect_without_token": True},
    "channel": {
        "namespaces": [
            {"name": "hist", "history_size": 10, "history_ttl": "300s"},
            {"name": "pres", "presence": True},
            {"name": "obj", "publication_data_format": "json_object"},
        ]
    },
}


class RecordingSink:
    """A transport stand-in that records what the client writes."""

    transport_name = "test"
    unidirectional = False
    emulation = False
    pong = True

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.closed: Disconnect | None = None

    def write(self, payloads: list[Any]) -> None:
        self.messages.extend(p.data for p in payloads)

    def close(self, disconnect: Disconnect | None) -> None:
        self.closed = disconnect

    def pushes(self, kind: str) -> list[dict[str, Any]]:
        """Bodies of the pushes of one kind (``pub``, ``subscribe``, ...)."""
        out = []
        for raw in self.messages:
            push = orjson.loads(raw).get("push")
            if push and kind in push:
                out.append(push)
        return out


class UserTokens:
    """A token verifier where the token is the user id."""

    def verify_connection_token(self, token: str, now: float) -> ConnectionToken:
        return ConnectionToken(user=token)


class Harness:
    """A started node, its executor and helpers to call it and to connect clients."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.node = Node(
            MemoryEngine(self.clock), from_mapping(CONFIG), clock=self.clock, verifier=UserTokens()
        )
        self.node.start()
        self.executor = APIExecutor(self.node)

    def call(self, method: str, params: Any) -> dict[str, Any]:
        """The response body of a command (the memory engine answers synchronously)."""
        out: list[Any] = []
        Deferred.fromCoroutine(self.executor.call(method, params)).addBoth(out.append)
        assert out, "command did not complete synchronously"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        # What an adapter sends: must encode with orjson (results hold Fragments).
        body: dict[str, Any] = orjson.loads(orjson.dumps(out[0]))
        return body

    def result(self, method: str, params: Any) -> dict[str, Any]:
        body = self.call(method, params)
        assert "result" in body, body
        result: dict[str, Any] = body["result"]
        return result

    def error(self, method: str, params: Any) -> int:
        body = self.call(method, params)
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["message"], str)
        code: int = body["error"]["code"]
        return code

    def connect(self, user: str = "alice", *channels: str) -> tuple[Client, RecordingSink]:
        sink = RecordingSink()
        client = self.node.make_client(sink)
        client.receive(orjson.dumps({"id": 1, "connect": {"token": user}}))
        for i, channel in enumerate(channels, start=2):
            client.receive(orjson.dumps({"id": i, "subscribe": {"channel": channel}}))
        self.clock.advance(0)
        assert client.connected
        return client, sink


@pytest.fixture
def api() -> Harness:
    return Harness()


# --- publish ---------------------------------------------------------------------------


def test_publish_history_offsets(api: Harness) -> None:
    """Publishing to a history channel returns increasing offsets and one epoch."""
    first = api.result("publish", {"channel": "hist:a", "data": {"n": 1}})
    second = api.result("publish", {"channel": "hist:a", "data": {"n": 2}})
    assert first["offset"] == 1
    assert second["offset"] == 2
    assert first["epoch"] == second["epoch"]
    assert isinstance(first["epoch"], str) and first["epoch"]


def test_publish_without_history_is_empty(api: Harness) -> None:
    """Publishing to a channel without history returns an empty result."""
    assert api.result("publish", {"channel": "news", "data": "hello"}) == {}


def test_publish_skip_history(api: Harness) -> None:
    """skip_history publishes without storing the publication."""
    assert api.result("publish", {"channel": "hist:a", "data": 1, "skip_history": True}) == {}
    assert api.result("history", {"channel": "hist:a", "limit": -1})["publications"] == []


def test_publish_idempotency_key_dedupes(api: Harness) -> None:
    """A repeated idempotency_key returns the first result and publishes once."""
    _, sink = api.connect("alice", "hist:a")
    params = {"channel": "hist:a", "data": {"n": 1}, "idempotency_key": "k1"}
    first = api.result("publish", params)
    again = api.result("publish", params)
    api.clock.advance(0)
    assert again == first
    assert len(api.result("history", {"channel": "hist:a", "limit": -1})["publications"]) == 1
    assert len(sink.pushes("pub")) == 1


def test_publish_delivers_to_subscribers(api: Harness) -> None:
    """Subscribers receive the published data as raw JSON on one line."""
    _, sink = api.connect("alice", "news")
    api.result("publish", {"channel": "news", "data": {"text": "two\nlines"}, "tags": {"k": "v"}})
    api.clock.advance(0)
    [push] = sink.pushes("pub")
    assert push["channel"] == "news"
    assert push["pub"]["data"] == {"text": "two\nlines"}
    assert push["pub"]["tags"] == {"k": "v"}
    assert all(b"\n" not in m for m in sink.messages)


def test_publish_unknown_namespace(api: Harness) -> None:
    """Publishing into an unconfigured namespace is error 102."""
    assert api.error("publish", {"channel": "nope:a", "data": 1}) == 102


@pytest.mark.parametrize(
    "params",
    [
        {"data": 1},
        {"channel": "", "data": 1},
        {"channel": "a"},
        {"channel": 5, "data": 1},
        {"channel": "a", "data": 1, "tags": {"k": 1}},
        {"channel": "a", "data": 1, "skip_history": "yes"},
        {"channel": "a", "b64data": "not base64!"},
        {"channel": "a", "b64data": base64.b64encode(b"\x00binary").decode()},
        {"channel": "obj:a", "data": [1, 2]},
    ],
)
def test_publish_bad_request(api: Harness, params: dict[str, Any]) -> None:
    """Missing or mistyped publish fields are error 107."""
    assert api.error("publish", params) == 107


def test_publish_bad_field_is_named(api: Harness) -> None:
    """The 107 message names the offending field."""
    body = api.call("publish", {"channel": "a", "data": 1, "tags": ["x"]})
    assert "tags" in body["error"]["message"]


def test_publish_b64data(api: Harness) -> None:
    """b64data holding JSON is published as that JSON."""
    b64 = base64.b64encode(b'{\n  "a": 1\n}').decode()
    api.result("publish", {"channel": "hist:a", "b64data": b64})
    [pub] = api.result("history", {"channel": "hist:a", "limit": -1})["publications"]
    assert pub["data"] == {"a": 1}


def test_params_must_be_object(api: Harness) -> None:
    """A request that is not a JSON object is error 107."""
    assert api.error("publish", ["channel", "a"]) == 107


# --- broadcast -------------------------------------------------------------------------


def test_broadcast_responses_in_order(api: Harness) -> None:
    """A broadcast answers one response per channel, in order, errors included."""
    result = api.result(
        "broadcast", {"channels": ["hist:a", "nope:b", "plain", ""], "data": {"x": 1}}
    )
    first, unknown, plain, empty = result["responses"]
    assert first["result"]["offset"] == 1
    assert unknown == {"error": {"code": 102, "message": "unknown channel"}}
    assert plain == {"result": {}}
    assert empty["error"]["code"] == 107


def test_broadcast_needs_channels(api: Harness) -> None:
    """A broadcast without channels is error 107."""
    assert api.error("broadcast", {"data": 1}) == 107
    assert api.error("broadcast", {"channels": [], "data": 1}) == 107


# --- history ---------------------------------------------------------------------------


def _publish(api: Harness, channel: str, count: int) -> str:
    epoch = ""
    for n in range(1, count + 1):
        epoch = api.result("publish", {"channel": channel, "data": {"n": n}})["epoch"]
    return epoch


def test_history_empty_shape(api: Harness) -> None:
    """History of an empty channel still has publications, offset and epoch."""
    result = api.result("history", {"channel": "hist:empty", "limit": -1})
    assert result["publications"] == []
    assert result["offset"] == 0
    assert isinstance(result["epoch"], str)


def test_history_default_limit_is_position_only(api: Harness) -> None:
    """Without limit, history returns only the stream position."""
    epoch = _publish(api, "hist:a", 3)
    assert api.result("history", {"channel": "hist:a"}) == {
        "publications": [],
        "offset": 3,
        "epoch": epoch,
    }


def test_history_limit_reverse_since(api: Harness) -> None:
    """limit, reverse and since select the expected publications."""
    epoch = _publish(api, "hist:a", 5)

    def offsets(**params: Any) -> list[int]:
        result = api.result("history", {"channel": "hist:a", **params})
        return [p["offset"] for p in result["publications"]]

    assert offsets(limit=-1) == [1, 2, 3, 4, 5]
    assert offsets(limit=2) == [1, 2]
    assert offsets(limit=2, reverse=True) == [5, 4]
    assert offsets(limit=-1, since={"offset": 3, "epoch": epoch}) == [4, 5]
    assert offsets(limit=-1, since={"offset": 3, "epoch": epoch}, reverse=True) == [2, 1]


def test_history_publication_shape(api: Harness) -> None:
    """History publications carry data, offset and tags."""
    api.result("publish", {"channel": "hist:a", "data": [1, "x"], "tags": {"t": "1"}})
    [pub] = api.result("history", {"channel": "hist:a", "limit": 10})["publications"]
    assert pub == {"data": [1, "x"], "offset": 1, "tags": {"t": "1"}}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"channel": "plain"}, 108),
        ({"channel": "nope:a"}, 102),
        ({}, 107),
        ({"channel": "hist:a", "limit": "10"}, 107),
        ({"channel": "hist:a", "since": {"offset": -1}}, 107),
        ({"channel": "hist:a", "since": {"offset": 1, "epoch": "other"}}, 112),
        ({"channel": "hist:a", "limit": 1, "reverse": True, "since": {"offset": 0}}, 107),
    ],
)
def test_history_errors(api: Harness, params: dict[str, Any], code: int) -> None:
    """History reports disabled history, bad input and stale epochs with their codes."""
    _publish(api, "hist:a", 1)
    assert api.error("history", params) == code


def test_history_remove(api: Harness) -> None:
    """history_remove drops publications but keeps the offset and epoch."""
    epoch = _publish(api, "hist:a", 2)
    assert api.result("history_remove", {"channel": "hist:a"}) == {}
    assert api.result("history", {"channel": "hist:a", "limit": -1}) == {
        "publications": [],
        "offset": 2,
        "epoch": epoch,
    }


def test_history_remove_without_history(api: Harness) -> None:
    """history_remove in a namespace without history is error 108."""
    assert api.error("history_remove", {"channel": "plain"}) == 108


# --- presence, channels, info ----------------------------------------------------------


def test_presence_not_available(api: Harness) -> None:
    """Presence of a namespace without presence is error 108."""
    assert api.error("presence", {"channel": "plain"}) == 108
    assert api.error("presence_stats", {"channel": "plain"}) == 108


def test_presence_empty(api: Harness) -> None:
    """An empty channel has an empty presence map and zero counts."""
    assert api.result("presence", {"channel": "pres:room"}) == {"presence": {}}
    assert api.result("presence_stats", {"channel": "pres:room"}) == {
        "num_clients": 0,
        "num_users": 0,
    }


def test_presence_lists_subscribers(api: Harness) -> None:
    """Presence lists each subscribed connection with its user and client id."""
    alice, _ = api.connect("alice", "pres:room")
    api.connect("alice", "pres:room")
    bob, _ = api.connect("bob", "pres:room")
    presence = api.result("presence", {"channel": "pres:room"})["presence"]
    assert len(presence) == 3
    assert presence[alice.id] == {"user": "alice", "client": alice.id}
    assert presence[bob.id]["user"] == "bob"
    stats = api.result("presence_stats", {"channel": "pres:room"})
    assert stats == {"num_clients": 3, "num_users": 2}


def test_channels(api: Harness) -> None:
    """The channels command lists active channels with client counts, filtered by pattern."""
    api.connect("alice", "news", "pres:room")
    api.connect("bob", "news")
    assert api.result("channels", {}) == {
        "channels": {"news": {"num_clients": 2}, "pres:room": {"num_clients": 1}}
    }
    assert api.result("channels", {"pattern": "pres:*"}) == {
        "channels": {"pres:room": {"num_clients": 1}}
    }


def test_info(api: Harness) -> None:
    """The info command lists this node with its uid, name and counts."""
    api.connect("alice", "news")
    [node] = api.result("info", {})["nodes"]
    assert node["uid"] == api.node.uid
    assert node["name"]
    assert node["num_clients"] == 1
    assert node["num_channels"] == 1


def test_info_accepts_null_params(api: Harness) -> None:
    """A missing request object counts as empty."""
    assert api.result("info", None)["nodes"]


# --- rpc, unknown methods, failures ----------------------------------------------------


def test_rpc_method_not_found(api: Harness) -> None:
    """An rpc has no server-side methods: error 104."""
    assert api.error("rpc", {"method": "anything", "params": {}}) == 104


def test_unknown_method(api: Harness) -> None:
    """An unknown API method is error 104."""
    assert api.error("teleport", {}) == 104


def test_unexpected_exception_is_internal_and_logged(
    api: Harness, monkeypatch: pytest.MonkeyPatch, expect_logged_failure: Callable[..., None]
) -> None:
    """An unexpected failure answers error 100 and is logged once, with its traceback."""

    def broken(channel: str) -> Any:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(api.node.engine, "presence", broken)
    expect_logged_failure(RuntimeError)
    body = api.call("presence", {"channel": "pres:room"})
    assert body["error"]["code"] == 100


def test_engine_outage_is_internal_and_one_warning_line(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine that cannot reach its backend: error 100, one warn line, no traceback."""
    seen: list[dict[str, Any]] = []

    def broken(channel: str) -> Any:
        raise ConnectionError("redis 127.0.0.1:6379 is unavailable")

    monkeypatch.setattr(api.node.engine, "presence", broken)
    globalLogPublisher.addObserver(seen.append)
    try:
        body = api.call("presence", {"channel": "pres:room"})
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert body["error"]["code"] == 100
    mine = [e for e in seen if "server API" in (e.get("log_format") or "")]
    assert [(e["log_level"], formatEvent(e)) for e in mine] == [
        (LogLevel.warn, "server API presence failed: redis 127.0.0.1:6379 is unavailable")
    ]
    assert "log_failure" not in mine[0]


# --- batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_batch_replies_keyed_by_method(api: Harness, parallel: bool) -> None:
    """A batch answers a top-level replies list, each reply under its method name."""
    body = api.call(
        "batch",
        {
            "commands": [
                {"publish": {"channel": "hist:a", "data": 1}},
                {"publish": {"channel": "nope:a", "data": 1}},
                {"presence_stats": {"channel": "pres:room"}},
                {"broadcast": {"channels": ["hist:a"], "data": 2}},
            ],
            "parallel": parallel,
        },
    )
    publish, error, stats, broadcast = body["replies"]
    assert set(body) == {"replies"}
    assert publish["publish"]["offset"] == 1
    assert error == {"error": {"code": 102, "message": "unknown channel"}}
    assert stats == {"presence_stats": {"num_clients": 0, "num_users": 0}}
    assert broadcast["broadcast"]["responses"][0]["result"]["offset"] == 2


def test_batch_bad_commands(api: Harness) -> None:
    """Malformed, unknown and nested batch commands get per-command errors."""
    body = api.call(
        "batch", {"commands": [{}, {"a": {}, "b": {}}, {"teleport": {}}, {"batch": {}}, 7]}
    )
    codes = [reply["error"]["code"] for reply in body["replies"]]
    assert codes == [107, 107, 104, 104, 107]


def test_batch_empty_and_invalid(api: Harness) -> None:
    """An empty batch has no replies; a non-list commands field is error 107."""
    assert api.call("batch", {}) == {"replies": []}
    assert api.error("batch", {"commands": {"publish": {}}}) == 107


# --- typed publishes (the GRPC API's path) --------------------------------------------


def _typed(api: Harness, commands: list[PublishCommand], *, parallel: bool = False,
           method: str = "batch") -> list[Any]:
    out: list[Any] = []
    d = Deferred.fromCoroutine(
        api.executor.publish_commands(commands, parallel=parallel, method=method))
    d.addBoth(out.append)
    assert out, "typed publishes did not complete synchronously"
    return [{"error": o.to_wire()} if isinstance(o, Error) else o for o in out[0]]


_SAME = [
    ("hist:a", b'{"n":1}', {}, False, ""),
    ("news", b"1", {"k": "v"}, False, ""),
    ("hist:a", b"2", {}, True, ""),  # skip_history: not stored
    ("hist:a", b"3", {}, False, "key"),
    ("hist:a", b"3", {}, False, "key"),  # same idempotency key: the same position
    ("", b"1", {}, False, ""),
    ("bad\x01", b"1", {}, False, ""),
    ("nope:a", b"1", {}, False, ""),
    ("obj:a", b"[1]", {}, False, ""),  # json_object namespace
]


@pytest.mark.parametrize("parallel", [False, True])
def test_typed_publishes_answer_what_a_batch_of_publish_answers(parallel: bool) -> None:
    """Results, positions, dedup and every error as ``batch`` gives them for the same input."""
    typed, generic = Harness(), Harness()
    commands = [PublishCommand(ch, data, tags, skip, key) for ch, data, tags, skip, key in _SAME]
    got = _typed(typed, commands, parallel=parallel)
    body = generic.call("batch", {"parallel": parallel, "commands": [
        {"publish": {"channel": ch, "data": orjson.loads(data), "tags": tags,
                     "skip_history": skip, "idempotency_key": key}}
        for ch, data, tags, skip, key in _SAME]})
    want = [reply.get("publish", reply) for reply in body["replies"]]
    # Epochs are random per node; everything else must match.
    epochs = {r.pop("epoch") for r in got if "epoch" in r}
    assert len(epochs) == 1
    for r in want:
        r.pop("epoch", None)
    assert got == want
    assert [r.get("offset") for r in got[:5]] == [1, None, None, 2, 2]
    assert [r["error"]["code"] for r in got[5:]] == [107, 107, 102, 107]
    assert typed.result("history", {"channel": "hist:a", "limit": -1})["offset"] == 2


def test_typed_publish_reaches_subscribers_and_counts_as_its_method(api: Harness) -> None:
    """A unary typed publish is delivered and recorded in the stats as ``publish``."""
    _client, sink = api.connect("alice", "news")
    assert _typed(api, [PublishCommand("news", b'{"x":1}', {})], method="publish") == [{}]
    api.clock.advance(0)
    assert [p["pub"]["data"] for p in sink.pushes("pub")] == [{"x": 1}]
    assert _typed(api, [PublishCommand("nope:x", b"1", {})], method="publish") == [
        {"error": {"code": 102, "message": "unknown channel"}}]
    assert api.executor.stats.calls["publish"][0] == 2
    assert api.executor.stats.errors == {("publish", 102): 1}


def test_typed_publish_carries_the_delta_flag(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delta`` of a typed publish reaches Node.publish, as the HTTP API's does."""
    seen: list[Any] = []
    real = api.node.publish

    def spy(channel: str, data: bytes, **kwargs: Any) -> Any:
        seen.append(kwargs.get("delta"))
        return real(channel, data, **kwargs)

    monkeypatch.setattr(api.node, "publish", spy)
    commands = [PublishCommand("news", b"1", {}, delta=True), PublishCommand("news", b"2", {})]
    assert _typed(api, commands) == [{}, {}]
    assert seen == [True, False]


class SlowEngine:
    """``node.publish`` answering later (Redis), on lanes a test chooses."""

    def __init__(self, api: Harness, monkeypatch: pytest.MonkeyPatch,
                 lanes: dict[str, Any]) -> None:
        self.pending: list[Deferred[StreamPosition]] = []
        self.events: list[str] = []
        monkeypatch.setattr(api.node, "publish", self.publish)
        monkeypatch.setattr(api.node, "publish_order", lambda channel: lanes.get(channel))
        real_stats = api.node.presence_stats

        def presence_stats(channel: str) -> Any:
            self.events.append(f"presence_stats {channel}")
            return real_stats(channel)

        monkeypatch.setattr(api.node, "presence_stats", presence_stats)

    def publish(self, channel: str, data: bytes, **kwargs: Any) -> Deferred[StreamPosition]:
        if channel.startswith("nope"):
            return fail(Error.UNKNOWN_CHANNEL)
        d: Deferred[StreamPosition] = Deferred()
        self.events.append(f"publish {channel} {data.decode()}")
        self.pending.append(d)
        return d

    def answer(self, n: int) -> None:
        """Answer the ``n`` oldest unanswered publishes with offsets 1, 2, ..."""
        for _ in range(n):
            d = next(d for d in self.pending if not d.called)
            d.callback(StreamPosition(self.pending.index(d) + 1, "e"))


@pytest.mark.parametrize(("lanes", "issued_at_once"), [
    ({}, 1),  # no lane known: one round trip each
    ({"a": 1, "b": 2}, 1),  # two lanes (shards): no order across them
    ({"a": 0, "b": 0}, 2),  # one ordered lane: both go out at once
])
def test_typed_publish_waits_for_a_slow_engine_unless_one_lane(
    api: Harness, monkeypatch: pytest.MonkeyPatch, lanes: dict[str, Any], issued_at_once: int
) -> None:
    """An engine that answers later is awaited per publish, unless it orders them itself."""
    engine = SlowEngine(api, monkeypatch, lanes)
    out: list[Any] = []
    Deferred.fromCoroutine(api.executor.publish_commands(
        [PublishCommand("a", b"1", {}), PublishCommand("b", b"2", {})])).addBoth(out.append)
    assert (len(engine.pending), out) == (issued_at_once, [])
    engine.answer(1)
    assert (len(engine.pending), out) == (2, [])
    engine.answer(1)
    assert out == [[{"offset": 1, "epoch": "e"}, {"offset": 2, "epoch": "e"}]]


def test_batch_pipelines_a_run_of_publishes_on_one_lane(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run goes out at once; another command waits for it; replies stay per command."""
    engine = SlowEngine(api, monkeypatch, {"a": 0, "b": 0, "nope:x": 0, "c": 1})
    out: list[Any] = []
    Deferred.fromCoroutine(api.executor.call("batch", {"commands": [
        {"publish": {"channel": "a", "data": 1}},
        {"publish": {"channel": "nope:x", "data": 2}},
        {"publish": {"channel": "a"}},  # no data
        {"broadcast": {"channels": ["a", "b"], "data": 3}},
        {"presence_stats": {"channel": "pres:room"}},
        {"publish": {"channel": "b", "data": 4}},
        {"publish": {"channel": "c", "data": 5}},  # another lane
        {"publish": {"channel": "b", "data": 6}},
    ]})).addBoth(out.append)
    assert engine.events == ["publish a 1", "publish a 3", "publish b 3"]
    engine.answer(2)
    assert engine.events == ["publish a 1", "publish a 3", "publish b 3"]  # b 3 unanswered
    engine.answer(1)
    assert engine.events[3:] == ["presence_stats pres:room", "publish b 4"]
    engine.answer(1)
    assert engine.events[5:] == ["publish c 5"]
    engine.answer(1)
    assert engine.events[6:] == ["publish b 6"]
    assert out == []
    engine.answer(1)
    [body] = out
    assert body["replies"] == [
        {"publish": {"offset": 1, "epoch": "e"}},
        {"error": {"code": 102, "message": "unknown channel"}},
        {"error": {"code": 107, "message": "bad request: data is required"}},
        {"broadcast": {"responses": [{"result": {"offset": 2, "epoch": "e"}},
                                     {"result": {"offset": 3, "epoch": "e"}}]}},
        {"presence_stats": {"num_clients": 0, "num_users": 0}},
        {"publish": {"offset": 4, "epoch": "e"}},
        {"publish": {"offset": 5, "epoch": "e"}},
        {"publish": {"offset": 6, "epoch": "e"}},
    ]


def test_typed_publish_unexpected_failure_is_internal_and_logged(
    api: Harness, monkeypatch: pytest.MonkeyPatch, expect_logged_failure: Callable[..., None]
) -> None:
    """An engine failure that is not an API error answers 100 and is logged."""

    def broken(channel: str, data: bytes, **kwargs: Any) -> Deferred[StreamPosition]:
        return fail(RuntimeError("engine exploded"))

    monkeypatch.setattr(api.node, "publish", broken)
    expect_logged_failure(RuntimeError)
    assert _typed(api, [PublishCommand("a", b"1", {})]) == [
        {"error": {"code": 100, "message": "internal server error", "temporary": True}}]


# --- connection control ----------------------------------------------------------------


def test_subscribe_server_side(api: Harness) -> None:
    """API subscribe pushes a subscription to each of the user's connections."""
    _, sink = api.connect("alice")
    _, other = api.connect("bob")
    params = {"user": "alice", "channel": "news", "data": {"welcome": True}}
    assert api.result("subscribe", params) == {}
    api.clock.advance(0)
    [push] = sink.pushes("subscribe")
    assert push["channel"] == "news"
    assert push["subscribe"]["data"] == {"welcome": True}
    assert other.pushes("subscribe") == []
    api.result("publish", {"channel": "news", "data": "hi"})
    api.clock.advance(0)
    assert [p["pub"]["data"] for p in sink.pushes("pub")] == ["hi"]


def test_subscribe_override_presence(api: Harness) -> None:
    """A presence override adds server-side subscribers to presence."""
    alice, _ = api.connect("alice")
    api.result(
        "subscribe",
        {
            "user": "alice",
            "channel": "news",
            "info": {"role": "admin"},
            "override": {"presence": {"value": True}},
        },
    )
    presence = api.node.engine.presence("news")
    infos: list[Any] = []
    presence.addCallback(infos.append)
    [info] = infos[0].values()
    assert info.client == alice.id
    assert orjson.loads(info.chan_info) == {"role": "admin"}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"channel": "news"}, 107),
        ({"user": "alice"}, 107),
        ({"user": "alice", "channel": "nope:a"}, 102),
        ({"user": "alice", "channel": "news", "override": {"presence": True}}, 107),
        ({"user": "alice", "channel": "news", "recover_since": {"epoch": 1}}, 107),
        ({"user": "alice", "channel": "news", "expire_at": -1}, 107),
    ],
)
def test_subscribe_errors(api: Harness, params: dict[str, Any], code: int) -> None:
    """API subscribe validates user, channel namespace and field types."""
    assert api.error("subscribe", params) == code


def test_unsubscribe(api: Harness) -> None:
    """API unsubscribe sends the user's connections an unsubscribe push (2000)."""
    _, sink = api.connect("alice", "news")
    assert api.result("unsubscribe", {"user": "alice", "channel": "news"}) == {}
    api.clock.advance(0)
    [push] = sink.pushes("unsubscribe")
    assert push["unsubscribe"] == {"code": 2000, "reason": "server unsubscribe"}
    assert api.error("unsubscribe", {"user": "alice"}) == 107


def test_disconnect_default(api: Harness) -> None:
    """API disconnect closes the user's connections with 3503 by default."""
    _, sink = api.connect("alice")
    _, bob = api.connect("bob")
    assert api.result("disconnect", {"user": "alice"}) == {}
    assert sink.closed == Disconnect(3503, "force disconnect")
    assert bob.closed is None


def test_disconnect_custom_and_whitelist(api: Harness) -> None:
    """API disconnect uses the given code and spares whitelisted clients."""
    kept, kept_sink = api.connect("alice")
    _, sink = api.connect("alice")
    params = {
        "user": "alice",
        "disconnect": {"code": 4001, "reason": "bye"},
        "whitelist": [kept.id],
    }
    assert api.result("disconnect", params) == {}
    assert sink.closed == Disconnect(4001, "bye")
    assert kept_sink.closed is None


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user": "alice", "disconnect": {"code": 1000, "reason": "x"}},
        {"user": "alice", "disconnect": {"code": 4000, "reason": "x" * 124}},
        {"user": "alice", "whitelist": "c1"},
    ],
)
def test_disconnect_errors(api: Harness, params: dict[str, Any]) -> None:
    """API disconnect rejects a missing user and unusable close codes with 107."""
    assert api.error("disconnect", params) == 107


def test_refresh_expired(api: Harness) -> None:
    """API refresh with expired closes the user's connections with 3005."""
    _, sink = api.connect("alice")
    assert api.result("refresh", {"user": "alice", "expired": True}) == {}
    assert sink.closed == Disconnect.EXPIRED
    assert api.error("refresh", {"expired": True}) == 107


def test_refresh_extends(api: Harness) -> None:
    """API refresh with expire_at and info updates the connection."""
    alice, sink = api.connect("alice")
    expire_at = int(api.clock.seconds()) + 3600
    params = {"user": "alice", "expire_at": expire_at, "info": {"v": 2}}
    assert api.result("refresh", params) == {}
    assert alice.expire_at == expire_at
    assert alice.conn_info == b'{"v":2}'
    assert sink.closed is None


def test_history_of_bytes_that_are_not_json(api: Harness) -> None:
    """Bytes a Protobuf client published that are not JSON come back as ``b64data``.

    Spliced in as they are, they would make the whole API response invalid JSON.
    """
    api.node.publish("hist:a", b"\xff\x00binary")
    api.node.publish("hist:a", b'{"ok":\n1}')
    api.clock.advance(0)
    pubs = api.result("history", {"channel": "hist:a", "limit": 10})["publications"]
    assert pubs[0] == {"b64data": base64.b64encode(b"\xff\x00binary").decode(), "offset": 1}
    assert pubs[1] == {"data": {"ok": 1}, "offset": 2}
