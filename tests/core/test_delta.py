"""Delta compression and tag filters in subscribe and fan-out, on a Clock.

Deltas are decoded with centrifuge-python's fossil decoder (the one the SDK runs), so a
delta that does not rebuild the publication fails here.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from centrifuge.fossil import apply_delta
from test_encodings import Counter, PayloadSink, pb_command, pb_replies
from twisted.internet.defer import Deferred

from rtserver.api.executor import APIExecutor
from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.types import HistoryFilter
from rtserver.protocol import filters, fossil
from rtserver.testing import RecordingSink, make_node

HISTORY = {"history_size": 100, "history_ttl": "300s"}
SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {
        "namespaces": [
            # delta negotiable; positioning on request (the SDKs ask with delta)
            {"name": "dd", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True, "allowed_delta_types": ["fossil"],
             "force_recovery": True, **HISTORY},
            {"name": "dp", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True, "allowed_delta_types": ["fossil"],
             "delta_publish": True, "force_positioning": True, **HISTORY},
            # history but no positioning: delta is not granted
            {"name": "nopos", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
             "allowed_delta_types": ["fossil"], **HISTORY},
            # positioning but delta not allowed
            {"name": "nodelta", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True, "force_positioning": True,
             **HISTORY},
            {"name": "tt", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True, "allow_tags_filter": True,
             "force_recovery": True, **HISTORY},
            {"name": "nt", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True},
        ],
    },
}

DOC = {"title": "report", "rows": [{"id": i, "name": f"row {i} ünïcode 😀"} for i in range(40)]}


def documents(count: int) -> list[bytes]:
    out = []
    doc = orjson.loads(orjson.dumps(DOC))
    for version in range(count):
        doc["version"] = version
        doc["rows"][version % 40]["qty"] = version * 7
        out.append(orjson.dumps(doc))
    return out


@pytest.fixture
def node() -> tuple[Node, Any]:
    return make_node(SETTINGS)


def subscriber(
    node_clock: tuple[Node, Any], channel: str, encoding: str = "json", **sub: Any
) -> tuple[Client, PayloadSink, dict[str, Any]]:
    node, clock = node_clock
    sink = PayloadSink()
    client = node.make_client(sink, encoding=encoding)
    request = {"channel": channel, **sub}
    if encoding == "protobuf":
        client.receive(pb_command({"id": 1, "connect": {}}) + pb_command({"id": 2, "subscribe": request}))
    else:
        client.receive(orjson.dumps({"id": 1, "connect": {}}) + b"\n"
                       + orjson.dumps({"id": 2, "subscribe": request}))
    clock.advance(0)
    assert client.connected
    replies = pb_replies(sink) if encoding == "protobuf" else sink.messages()
    (answer,) = [r for r in replies if r.get("id") == 2]
    sink.clear()
    sink.payloads.clear()
    return client, sink, answer


def publish(node_clock: tuple[Node, Any], channel: str, data: bytes, **kw: Any) -> None:
    node, clock = node_clock
    d = node.publish(channel, data, **kw)
    clock.advance(0)
    assert d.called


def json_pubs(sink: RecordingSink) -> list[dict[str, Any]]:
    return [p["pub"] for p in sink.pushes() if "pub" in p]


def rebuild(pubs: list[dict[str, Any]], as_text: bool) -> tuple[list[bytes], int]:
    """What an SDK rebuilds from a delta subscriber's publications; and how many deltas."""
    prev = b""
    out, deltas = [], 0
    for pub in pubs:
        data = pub["data"].encode() if as_text else pub["data"]
        if pub.get("delta"):
            deltas += 1
            data = bytes(apply_delta(prev, data))
        out.append(data)
        prev = data
    return out, deltas


# --- negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "extra", "granted"),
    [
        ("dd:a", {}, True),
        ("dp:a", {}, True),
        ("nopos:a", {}, False),
        ("nopos:a", {"positioned": True}, False),  # no permission to read history
        ("nodelta:a", {}, False),
    ],
)
def test_delta_is_granted_only_with_allowed_type_and_positioning(
    node: tuple[Node, Any], channel: str, extra: dict[str, Any], granted: bool
) -> None:
    """The reply says delta: true only where Centrifugo would grant it; else plain pubs."""
    _, sink, answer = subscriber(node, channel, delta="fossil", **extra)
    assert answer["subscribe"].get("delta", False) is granted
    publish(node, channel, b'{"a":1}', delta=True)
    (pub,) = json_pubs(sink)
    assert pub["data"] == ('{"a":1}' if granted else {"a": 1})


def test_unknown_delta_type_closes_with_3501(node: tuple[Node, Any]) -> None:
    n, clock = node
    sink = RecordingSink()
    client = n.make_client(sink)
    client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"dd:a","delta":"xdelta"}}')
    clock.advance(0)
    assert sink.closed_with is not None and sink.closed_with.code == 3501


# --- delivery ---------------------------------------------------------------------------


def test_json_delta_subscriber_gets_full_then_deltas_and_plain_one_gets_values(
    node: tuple[Node, Any],
) -> None:
    """50 edits of a document: deltas rebuild it exactly, plain subscribers get values.

    The delta subscriber's deltas are far smaller than the document; a subscriber
    without delta in the same channel gets plain JSON values.
    """
    _, dsink, _ = subscriber(node, "dd:doc", delta="fossil")
    _, psink, _ = subscriber(node, "dd:doc")
    docs = documents(50)
    for data in docs:
        publish(node, "dd:doc", data, delta=True)
    dpubs = json_pubs(dsink)
    rebuilt, deltas = rebuild(dpubs, as_text=True)
    assert rebuilt == docs
    assert deltas == 49 and "delta" not in dpubs[0]
    assert all(isinstance(p["data"], str) for p in dpubs)
    assert [p["offset"] for p in dpubs] == list(range(1, 51))
    assert [orjson.dumps(p["data"]) for p in json_pubs(psink)] == docs
    delta_bytes = sum(len(b) for batch in dsink.batches for b in batch)
    plain_bytes = sum(len(b) for batch in psink.batches for b in batch)
    assert delta_bytes * 5 < plain_bytes


def test_protobuf_delta_subscriber_gets_raw_deltas(node: tuple[Node, Any]) -> None:
    _, sink, answer = subscriber(node, "dp:doc", "protobuf", delta="fossil")
    assert answer["subscribe"]["delta"] is True
    docs = documents(10)
    for data in docs:
        publish(node, "dp:doc", data)  # delta_publish: no flag needed
    pubs = [r["push"]["pub"] for r in pb_replies(sink)]
    rebuilt, deltas = rebuild(pubs, as_text=False)
    assert rebuilt == docs and deltas == 9


def test_publication_without_delta_flag_goes_out_full(node: tuple[Node, Any]) -> None:
    """In a namespace without delta_publish, only publications flagged delta are deltas."""
    _, sink, _ = subscriber(node, "dd:x", delta="fossil")
    docs = documents(3)
    publish(node, "dd:x", docs[0], delta=True)
    publish(node, "dd:x", docs[1])
    publish(node, "dd:x", docs[2], delta=True)
    pubs = json_pubs(sink)
    assert [bool(p.get("delta")) for p in pubs] == [False, False, True]
    assert rebuild(pubs, as_text=True)[0] == docs


def test_delta_is_computed_once_per_publication(
    node: tuple[Node, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five JSON and five Protobuf delta subscribers: one fossil delta per publication."""
    sinks = [subscriber(node, "dd:many", enc, delta="fossil")[1]
             for enc in ("json", "protobuf") for _ in range(5)]
    deltas = Counter(monkeypatch, fossil, "delta_or_full")
    docs = documents(6)
    for data in docs:
        publish(node, "dd:many", data, delta=True)
    assert deltas.calls == 5  # the first publication has no base
    for sink in sinks[:5]:
        assert rebuild(json_pubs(sink), as_text=True)[0] == docs
    for sink in sinks[5:]:
        assert rebuild([r["push"]["pub"] for r in pb_replies(sink)], as_text=False)[0] == docs
    # subscribers of one shape were handed the same payload object
    assert len({id(s.payloads[-1]) for s in sinks[:5]}) == 1


def test_late_subscriber_starts_with_a_full_publication(node: tuple[Node, Any]) -> None:
    _, first, _ = subscriber(node, "dd:late", delta="fossil")
    docs = documents(4)
    publish(node, "dd:late", docs[0], delta=True)
    publish(node, "dd:late", docs[1], delta=True)
    _, late, _ = subscriber(node, "dd:late", delta="fossil")
    publish(node, "dd:late", docs[2], delta=True)
    publish(node, "dd:late", docs[3], delta=True)
    assert [bool(p.get("delta")) for p in json_pubs(late)] == [False, True]
    assert rebuild(json_pubs(late), as_text=True)[0] == docs[2:]
    assert rebuild(json_pubs(first), as_text=True)[0] == docs


@pytest.mark.parametrize("keeper", [True, False], ids=["hub-has-base", "base-seeded"])
def test_recovery_returns_full_strings_and_the_last_is_the_base(
    node: tuple[Node, Any], keeper: bool
) -> None:
    """Recovered publications are full; the next live one is a delta against the last.

    A JSON delta subscriber gets the recovered publications as JSON strings.
    """
    if keeper:  # another delta subscriber: the hub keeps the last publication
        subscriber(node, "dd:r", delta="fossil")
    # else the recovering subscriber's last recovered publication seeds it
    docs = documents(5)
    for data in docs[:4]:
        publish(node, "dd:r", data, delta=True)
    pos = node[0].stream_top("dd:r", node[0].resolver.options("dd:r"))
    node[1].advance(0)
    _, sink, answer = subscriber(
        node, "dd:r", delta="fossil", recover=True, offset=2, epoch=pos.result.epoch
    )
    result = answer["subscribe"]
    assert result["recovered"] is True and result["delta"] is True
    recovered = result["publications"]
    assert [p["data"] for p in recovered] == [docs[2].decode(), docs[3].decode()]
    publish(node, "dd:r", docs[4], delta=True)
    (live,) = json_pubs(sink)
    assert live["delta"] is True
    assert rebuild([*recovered, live], as_text=True)[0] == docs[2:]
    # history stays plain
    n, clock = node
    history = n.history("dd:r", HistoryFilter(limit=-1))
    clock.advance(0)
    assert [p.data for p in history.result.publications] == docs


def test_api_delta_flag_reaches_the_node(node: tuple[Node, Any]) -> None:
    """``delta`` in the server API's publish is what makes a publication a delta."""
    n, clock = node
    executor = APIExecutor(n)
    _, sink, _ = subscriber(node, "dd:api", delta="fossil")
    docs = documents(3)
    for data in docs[:2]:
        call = {"channel": "dd:api", "data": orjson.loads(data), "delta": True}
        d = Deferred.fromCoroutine(executor.call("publish", call))
        clock.advance(0)
        assert d.called
    d = Deferred.fromCoroutine(executor.call(
        "broadcast", {"channels": ["dd:api"], "data": orjson.loads(docs[2]), "delta": True}))
    clock.advance(0)
    assert d.called
    pubs = json_pubs(sink)
    assert [bool(p.get("delta")) for p in pubs] == [False, True, True]
    assert rebuild(pubs, as_text=True)[0] == docs


# --- tag filters -------------------------------------------------------------------------


TAGGED = [
    ({"kind": "a", "n": "1"}, b'{"i":0}'),
    ({"kind": "b", "n": "5"}, b'{"i":1}'),
    ({"kind": "a", "n": "7"}, b'{"i":2}'),
    (None, b'{"i":3}'),
    ({"kind": "a", "n": "x"}, b'{"i":4}'),
    ({"kind": "c", "n": "9"}, b'{"i":5}'),
]
FILTER = {"op": "and", "nodes": [
    {"key": "kind", "cmp": "in", "vals": ["a", "c"]},
    {"key": "n", "cmp": "gte", "val": "5"},
]}


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_tag_filter_delivers_exactly_the_matching_publications(
    node: tuple[Node, Any], encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluations = Counter(monkeypatch, filters.Filter, "matches")
    filtered = [subscriber(node, "tt:q", encoding, tf=FILTER) for _ in range(3)]
    _, plain, _ = subscriber(node, "tt:q", encoding)
    for tags, data in TAGGED:
        publish(node, "tt:q", data, tags=tags)
    # one evaluation per publication for the three subscribers sharing the filter
    shared = evaluations.calls
    evaluations.calls = 0
    parsed = filters.parse(FILTER)
    for tags, _ in TAGGED:
        parsed.matches(tags)
    assert shared == evaluations.calls
    for _, sink, _ in filtered:
        if encoding == "json":
            got = [orjson.dumps(p["data"]) for p in json_pubs(sink)]
        else:
            got = [r["push"]["pub"]["data"] for r in pb_replies(sink)]
        assert got == [b'{"i":2}', b'{"i":5}']
        assert not sink.closed  # skipped offsets do not break the position
    assert len(plain.pushes() if encoding == "json" else pb_replies(plain)) == len(TAGGED)


def test_recovery_applies_the_tag_filter(node: tuple[Node, Any]) -> None:
    for tags, data in TAGGED:
        publish(node, "tt:rec", data, tags=tags)
    n, clock = node
    pos = n.stream_top("tt:rec", n.resolver.options("tt:rec"))
    clock.advance(0)
    _, _, answer = subscriber(
        node, "tt:rec", tf=FILTER, recover=True, offset=0, epoch=pos.result.epoch
    )
    result = answer["subscribe"]
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == [{"i": 2}, {"i": 5}]


@pytest.mark.parametrize(
    ("channel", "sub", "message"),
    [
        ("nt:a", {"tf": FILTER}, "not allowed"),
        ("tt:a", {"tf": FILTER, "delta": "fossil"}, "cannot be combined with delta"),
        ("tt:a", {"tf": {"op": "xor", "nodes": []}}, "bad request"),
        ("tt:a", {"tf": {"key": "k", "cmp": "eq"}}, "bad request"),
    ],
)
def test_bad_tag_filters_are_107(
    node: tuple[Node, Any], channel: str, sub: dict[str, Any], message: str
) -> None:
    client, sink, answer = subscriber(node, channel, **sub)
    assert answer["error"]["code"] == 107
    assert message in answer["error"]["message"]
    assert client.channels() == [] and not sink.closed


def test_payload_changed_on_the_way_to_json_is_not_a_json_delta_base(
    node: tuple[Node, Any],
) -> None:
    """A payload JSON clients get changed is no delta base for them.

    Raw newlines (bytes from a Protobuf client) are dropped for JSON clients, so a JSON
    delta subscriber's base differs from the raw payload: it gets the next one full,
    while a Protobuf delta subscriber gets the delta.
    """
    _, jsink, _ = subscriber(node, "dd:nl", delta="fossil")
    _, psink, _ = subscriber(node, "dd:nl", "protobuf", delta="fossil")
    raw = documents(1)[0].replace(b',"rows"', b',\n"rows"')
    following = raw.replace(b"\n", b"").replace(b'"version":0', b'"version":1')
    publish(node, "dd:nl", raw, delta=True)
    publish(node, "dd:nl", following, delta=True)
    jpubs = json_pubs(jsink)
    assert [bool(p.get("delta")) for p in jpubs] == [False, False]
    assert [p["data"].encode() for p in jpubs] == [raw.replace(b"\n", b""), following]
    ppubs = [r["push"]["pub"] for r in pb_replies(psink)]
    assert [bool(p.get("delta")) for p in ppubs] == [False, True]
    assert rebuild(ppubs, as_text=False)[0] == [raw, following]


def test_a_delta_not_smaller_than_the_payload_is_not_sent(node: tuple[Node, Any]) -> None:
    """Centrifugo's rule: unrelated payloads go out full, to JSON and Protobuf alike."""
    _, jsink, _ = subscriber(node, "dd:small", delta="fossil")
    _, psink, _ = subscriber(node, "dd:small", "protobuf", delta="fossil")
    sent = [b'{"a":1}', b'[2,3]', b'"x"']
    for data in sent:
        publish(node, "dd:small", data, delta=True)
    assert [p.get("delta") for p in json_pubs(jsink)] == [None, None, None]
    assert [p["data"].encode() for p in json_pubs(jsink)] == sent
    assert [r["push"]["pub"].get("delta") for r in pb_replies(psink)] == [None, None, None]


def test_non_json_bytes_close_a_json_delta_subscriber_with_3506(node: tuple[Node, Any]) -> None:
    """Bytes that are not JSON cannot reach a JSON client, delta or not (3506)."""
    _, jsink, _ = subscriber(node, "dd:bin", delta="fossil")
    _, psink, _ = subscriber(node, "dd:bin", "protobuf", delta="fossil")
    publish(node, "dd:bin", b"\x00\x01 not json", delta=True)
    assert jsink.closed_with is not None and jsink.closed_with.code == 3506
    assert [r["push"]["pub"]["data"] for r in pb_replies(psink)] == [b"\x00\x01 not json"]


def test_the_last_delta_subscriber_leaving_frees_the_channel_base(node: tuple[Node, Any]) -> None:
    """The node keeps a channel's last publication only while delta subscribers remain."""
    n, clock = node
    first, _, _ = subscriber(node, "dd:free", delta="fossil")
    second, _, _ = subscriber(node, "dd:free", delta="fossil")
    plain, _, _ = subscriber(node, "dd:free")
    publish(node, "dd:free", documents(1)[0], delta=True)
    assert "dd:free" in n.hub._last
    first.receive(b'{"id":5,"unsubscribe":{"channel":"dd:free"}}')
    clock.advance(0)
    assert "dd:free" in n.hub._last
    second.close()
    clock.advance(0)
    assert "dd:free" not in n.hub._last and "dd:free" not in n.hub._delta_subs
    assert n.hub.has_subscribers("dd:free")  # the plain subscriber stays
    publish(node, "dd:free", documents(2)[1], delta=True)
    assert "dd:free" not in n.hub._last
    plain.close()


def test_a_publication_without_history_breaks_the_delta_chain(node: tuple[Node, Any]) -> None:
    """``skip_history`` publications have no offset: they and the next one go out full.

    The next one's base would not be a stream publication.
    """
    _, sink, _ = subscriber(node, "dd:skip", delta="fossil")
    docs = documents(4)
    publish(node, "dd:skip", docs[0], delta=True)
    publish(node, "dd:skip", docs[1], delta=True)
    publish(node, "dd:skip", docs[2], delta=True, skip_history=True)
    publish(node, "dd:skip", docs[3], delta=True)
    pubs = json_pubs(sink)
    assert [bool(p.get("delta")) for p in pubs] == [False, True, False, False]
    assert rebuild(pubs, as_text=True)[0] == docs
