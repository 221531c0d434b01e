"""Fossil delta compression and tag filters with the official SDKs against a real rtserver.

centrifuge-js (JSON and Protobuf builds, in Node: js/delta_tags.mjs) and
centrifuge-python (JSON and ``use_protobuf=True``) subscribe with ``delta: "fossil"`` to a
namespace with ``allowed_delta_types``, next to a subscriber without delta in the same
channel; a ~3.6 KB document is republished 50 times with one small edit each time through
the server API with ``delta: true``. Every version must arrive intact on both, and the
bytes each client reads off its WebSocket show the delta subscriber's publications are
a small fraction of the full ones. A tag-filtered subscription gets exactly the
publications whose tags match.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from centrifuge import DeltaType
from centrifuge.filter import Filter
from deltachains import edited_document
from harness import NodeScenario, Server, run_server
from interop_support import unique
from pysdk import (
    Recorder,
    WireTap,
    bounded,
    in_thread,
    name,
    run_scenario,
    sdk_client,
    subscribe,
)

RunJS = Callable[..., NodeScenario]

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

HISTORY = {"history_size": 100, "history_ttl": "300s", "force_recovery": True}
OVERRIDES: dict[str, Any] = {
    "http_stream": {"enabled": True},
    "emulation": {"enabled": True},
    "channel": {
        "namespaces": [
            {"name": "docs", "allow_subscribe_for_client": True,
             "allowed_delta_types": ["fossil"], **HISTORY},
            {"name": "quotes", "allow_subscribe_for_client": True, "allow_tags_filter": True,
             **HISTORY},
        ],
    },
}

COUNT = 50
DOCS = edited_document(COUNT)
#: Tagged publications and the filter the SDKs send: kind in (a, c) and n >= 5.
TAGGED: list[tuple[dict[str, str], dict[str, int]]] = [
    ({"kind": kind, "n": str(n)}, {"i": i})
    for i, (kind, n) in enumerate(
        [("a", 1), ("b", 5), ("a", 7), ("c", 12), ("a", 5), ("b", 9), ("c", 3), ("a", 40)]
    )
]
JS_FILTER = {"op": "and", "nodes": [
    {"key": "kind", "cmp": "in", "vals": ["a", "c"]},
    {"key": "n", "cmp": "gte", "val": "5"},
]}
PY_FILTER = Filter.all(Filter.is_in("kind", ["a", "c"]), Filter.gte("n", "5"))
MATCHING = [data for tags, data in TAGGED if tags["kind"] in "ac" and int(tags["n"]) >= 5]


@pytest.fixture(scope="module")
def rt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``twistd -n rtserver`` with the ``docs`` (delta) and ``quotes`` namespaces."""
    with run_server(tmp_path_factory.mktemp("rtserver-delta"), OVERRIDES) as server:
        yield server


def api(server: Server, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One server API call (``cent`` has no ``delta`` field, so plain HTTP)."""
    session = requests.Session()
    session.trust_env = False
    with session:
        response = session.post(
            f"{server.api_url}/{method}", json=params,
            headers={"X-API-Key": server.api_key}, timeout=5,
        )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    assert "error" not in body, body
    return body


def publish_all(server: Server, doc_channel: str, tags_channel: str) -> None:
    for doc in DOCS:
        api(server, "publish", {"channel": doc_channel, "data": json.loads(doc), "delta": True})
    for tags, data in TAGGED:
        api(server, "publish", {"channel": tags_channel, "data": data, "tags": tags})


def value(data: Any) -> Any:
    """A publication's data as the Python SDK hands it over: bytes (JSON) or decoded."""
    return json.loads(data) if isinstance(data, bytes) else data


def wire_ratio(delta_bytes: int, full_bytes: int) -> float:
    ratio = delta_bytes / full_bytes
    print(f"delta subscriber read {delta_bytes} B, plain subscriber {full_bytes} B: {ratio:.3f}")
    return ratio


def run_js_delta_tags(
    server: Server, run_js: RunJS, build: str, transport: str, doc_channel: str,
    tags_channel: str,
) -> dict[str, Any]:
    """Run js/delta_tags.mjs over ``transport`` and publish everything it waits for.

    A delta and a plain subscriber to ``doc_channel``, a tag-filtered one to
    ``tags_channel``. Checks that delta was negotiated on that transport and that the delta subscriber and
    the tag filter got exactly what was published; returns the scenario's last event.
    """
    js = run_js(
        "delta_tags",
        timeout=50.0,
        BUILD=build,
        BASE_URL=server.url,
        TRANSPORT=transport,
        DELTA_TOKEN=server.token(unique("jsd-")),
        PLAIN_TOKEN=server.token(unique("jsp-")),
        DELTA_CHANNEL=doc_channel,
        TAGS_CHANNEL=tags_channel,
        TAGS_FILTER=json.dumps(JS_FILTER),
        COUNT=str(COUNT),
        TAGGED_MATCHING=str(len(MATCHING)),
    )
    ready = js.expect("subscribed")
    assert ready["delta_negotiated"] is True and ready["transport"] == transport
    publish_all(server, doc_channel, tags_channel)
    js.send("published")
    out: dict[str, Any] = js.expect(lambda e: "delta_wire" in e, timeout=30.0)
    js.finish()
    assert [json.loads(d) for d in out["delta"]] == [json.loads(d) for d in DOCS]
    assert [json.loads(d) for d in out["tags"]] == MATCHING
    return out


@pytest.mark.parametrize("build", ["json", "protobuf"])
def test_js_delta_and_tag_filter(rt_server: Server, run_js: RunJS, build: str) -> None:
    """Both builds over WebSocket, reading the wire: deltas at a few % of the bytes."""
    out = run_js_delta_tags(rt_server, run_js, build, "websocket", unique("docs:d-"),
                            unique("quotes:q-"))
    assert [json.loads(d) for d in out["plain"]] == [json.loads(d) for d in DOCS]

    delta_wire, plain_wire = out["delta_wire"], out["plain_wire"]
    assert [p["delta"] for p in delta_wire] == [False] + [True] * (COUNT - 1)
    assert not any(p["delta"] for p in plain_wire) and len(plain_wire) == COUNT
    # every delta is far smaller than the full payload of the same publication
    for d, p in zip(delta_wire[1:], plain_wire[1:], strict=True):
        assert d["data_bytes"] * 10 < p["data_bytes"]
    ratio = wire_ratio(
        sum(p["frame_bytes"] for p in delta_wire), sum(p["frame_bytes"] for p in plain_wire)
    )
    assert ratio < 0.1
    assert out["sdk_stats"]["deltas"] == COUNT - 1 and out["sdk_stats"]["full"] == 1


@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
def test_python_delta_and_tag_filter(rt_server: Server, use_protobuf: bool) -> None:
    doc_channel, tags_channel = name("docs:p-"), name("quotes:p-")

    async def scenario() -> None:
        rec = Recorder()
        delta, _ = sdk_client(rt_server, rec, token=rt_server.token(name("pyd-")),
                              label="delta", use_protobuf=use_protobuf)
        plain, _ = sdk_client(rt_server, rec, token=rt_server.token(name("pyp-")),
                              label="plain", use_protobuf=use_protobuf)
        delta_tap = WireTap(delta._codec, doc_channel)
        plain_tap = WireTap(plain._codec, doc_channel)
        delta._codec = delta_tap  # type: ignore[assignment]
        plain._codec = plain_tap  # type: ignore[assignment]
        dsub = subscribe(delta, doc_channel, rec, "delta", delta=DeltaType.FOSSIL)
        tsub = subscribe(delta, tags_channel, rec, "tags", tags_filter=PY_FILTER)
        psub = subscribe(plain, doc_channel, rec, "plain")
        try:
            await delta.connect()
            await plain.connect()
            for sub in (dsub, tsub, psub):
                await sub.subscribe()
                await bounded(sub.ready())
            assert dsub._delta_negotiated is True
            await in_thread(publish_all, rt_server, doc_channel, tags_channel)
            got = await rec.wait("publication", client="delta", count=COUNT, timeout=20)
            plain_got = await rec.wait("publication", client="plain", count=COUNT, timeout=20)
            tagged = await rec.wait("publication", client="tags", count=len(MATCHING))
            await asyncio.sleep(0)  # nothing else is due; a late extra would show below
            expected = [json.loads(d) for d in DOCS]
            assert [value(p["data"]) for p in got] == expected
            assert [value(p["data"]) for p in plain_got] == expected
            assert [value(p["data"]) for p in tagged] == MATCHING
            assert len(rec.find("publication", client="tags")) == len(MATCHING)
        finally:
            await delta.disconnect()
            await plain.disconnect()

        flags = [f for _, frame in delta_tap.frames for f in frame]
        assert flags == [False] + [True] * (COUNT - 1)
        assert not any(f for _, frame in plain_tap.frames for f in frame)
        ratio = wire_ratio(
            sum(size for size, _ in delta_tap.frames), sum(size for size, _ in plain_tap.frames)
        )
        assert ratio < 0.1

    run_scenario(scenario())


@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
def test_python_delta_recovery(rt_server: Server, use_protobuf: bool) -> None:
    """A reconnecting delta subscriber recovers full publications, then deltas.

    ``recovered: true``; the deltas that follow are against the last one recovered.
    """
    channel = name("docs:r-")
    docs = DOCS[:12]

    def publish(doc: bytes) -> None:
        api(rt_server, "publish", {"channel": channel, "data": json.loads(doc), "delta": True})

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(rt_server, rec, token=rt_server.token(name("pyr-")),
                               use_protobuf=use_protobuf)
        tap = WireTap(client._codec, channel)
        client._codec = tap  # type: ignore[assignment]
        sub = subscribe(client, channel, rec, delta=DeltaType.FOSSIL)
        try:
            await client.connect()
            await sub.subscribe()
            await bounded(sub.ready())
            for doc in docs[:4]:
                await in_thread(publish, doc)
            await rec.wait("publication", count=4)
            await client.disconnect()
            for doc in docs[4:8]:
                await in_thread(publish, doc)
            await client.connect()
            await rec.wait("subscribed", count=2)
            await rec.wait("publication", count=8)
            for doc in docs[8:]:
                await in_thread(publish, doc)
            pubs = await rec.wait("publication", count=len(docs))
        finally:
            await client.disconnect()
        _, again = rec.find("subscribed")
        assert again["was_recovering"] is True and again["recovered"] is True
        assert [value(p["data"]) for p in pubs] == [json.loads(d) for d in docs]
        assert [p["offset"] for p in pubs] == list(range(1, len(docs) + 1))
        # live: full then deltas; recovered (in the subscribe reply, not a push) full;
        # after recovery: deltas against the last recovered publication
        flags = [f for _, frame in tap.frames for f in frame]
        assert flags == [False, True, True, True] + [True] * 4

    run_scenario(scenario())


@pytest.mark.parametrize("build", ["json", "protobuf"])
def test_js_delta_and_tag_filter_over_http_streaming(
    rt_server: Server, run_js: RunJS, build: str
) -> None:
    """The delta and tag-filter subscriptions over HTTP-streaming + /emulation."""
    out = run_js_delta_tags(rt_server, run_js, build, "http_stream", unique("docs:h-"),
                            unique("quotes:h-"))
    assert out["sdk_stats"]["deltas"] == COUNT - 1 and out["sdk_stats"]["full"] == 1
