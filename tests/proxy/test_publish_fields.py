"""A publish proxy's tags, idempotency_key, delta and version fields, end to end.

A real ``twistd -n rtserver`` sends client publications of namespace ``hp`` to the HTTP
backend process (``backend.py``) and of ``gp`` to the GRPC backend (``grpc_backend.py``);
both add the result fields the client's data asks for (``"ask"``). centrifuge-python
clients subscribe to the channel plainly, with fossil delta, and with a tag filter:
the backend's tags reach subscribers and select what the filtered one gets, a repeated
idempotency key publishes once, ``delta: true`` reaches the delta subscriber as fossil
deltas, and an outdated ``version`` (same ``version_epoch``) is suppressed: neither
delivered nor kept in history, while its publisher's call succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cent
import orjson
import pytest
import requests
from centrifuge import DeltaType, PublicationContext
from centrifuge.filter import Filter
from grpc_backend import GRPCBackend
from harness import Server, free_port, run_server
from prometheus_client.parser import text_string_to_metric_families
from proxy_support import Backend
from pysdk import Recorder, SubEvents, WireTap, bounded, name, run_scenario, sdk_client

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

NAMESPACE: dict[str, Any] = {
    "allow_subscribe_for_client": True,
    "allowed_delta_types": ["fossil"],
    "allow_tags_filter": True,
    "history_size": 100,
    "history_ttl": "300s",
    "force_recovery": True,
    "publish_proxy_enabled": True,
}

#: A ~4 KB text republished with one word changed each time (the backend upper-cases it).
WORDS = [f"word{i}" for i in range(600)]
DOCS = [" ".join([*WORDS[:i], f"edit{i}", *WORDS[i + 1 :]]) for i in range(8)]


@pytest.fixture(scope="module")
def rt_server(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[Server]:
    """The server, with ``hp`` publishing through HTTP and ``gp`` through GRPC."""
    grpc_backend = GRPCBackend(free_port())
    overrides = {
        "channel": {
            "proxy": {"publish": {"endpoint": f"{backend.url}/publish", "timeout": "2s"}},
            "namespaces": [
                {"name": "hp", **NAMESPACE},
                {"name": "gp", **NAMESPACE, "publish_proxy_name": "g"},
            ],
        },
        "proxies": [
            {"name": "g", "endpoint": f"grpc://127.0.0.1:{grpc_backend.port}", "timeout": "2s"}
        ],
        "prometheus": {"enabled": True},
    }
    try:
        with run_server(tmp_path_factory.mktemp("rtserver-pubfields"), overrides) as server:
            yield server
    finally:
        grpc_backend.stop()


class TaggedEvents(SubEvents):
    """Subscription events with the publications' tags."""

    async def on_publication(self, ctx: PublicationContext) -> None:
        data = ctx.pub.data
        text = orjson.loads(data)["text"] if isinstance(data, bytes | str) else data["text"]
        self._add("publication", text=text, tags=dict(ctx.pub.tags or {}))


def ask(text: str, **fields: Any) -> dict[str, Any]:
    """Client data asking the backend for these result fields (history kept)."""
    return {"text": text, "ask": {"skip_history": False, **fields}}


@pytest.mark.parametrize("namespace", ["hp", "gp"], ids=["http", "grpc"])
def test_backend_tags_idempotency_delta_and_version(rt_server: Server, namespace: str) -> None:
    channel = name(f"{namespace}:fields-")
    publications = [
        *(ask(f"t{i}", tags={"kind": kind}) for i, kind in enumerate("abab")),
        ask("once", idempotency_key="k1"),
        ask("once again", idempotency_key="k1"),  # same key: not published again
        ask("newer", version=7, version_epoch="e"),
        ask("older", version=3, version_epoch="e"),  # outdated: suppressed
        ask("restart", version=1, version_epoch="f"),  # a new version epoch: published
        ask("unversioned", version=0, version_epoch="f"),  # no version: published
        *(ask(doc, delta=True) for doc in DOCS),
        ask(DOCS[0]),  # without delta: full
        ask("end", tags={"kind": "a"}),
    ]
    suppressed = {"once again", "older"}
    published = [p["text"].upper() for p in publications if p["text"] not in suppressed]
    filtered = ["T0", "T2", "END"]

    async def scenario() -> None:
        rec = Recorder()
        clients = []
        for label in ("plain", "delta", "filtered"):
            client, _ = sdk_client(rt_server, rec, token=rt_server.token(name(label)), label=label)
            clients.append(client)
        plain, delta, tagged = clients
        tap = WireTap(delta._codec, channel)
        delta._codec = tap  # type: ignore[assignment]
        subs = [
            plain.new_subscription(channel, events=TaggedEvents(rec, channel, "plain")),
            delta.new_subscription(
                channel, events=TaggedEvents(rec, channel, "delta"), delta=DeltaType.FOSSIL
            ),
            tagged.new_subscription(
                channel,
                events=TaggedEvents(rec, channel, "filtered"),
                tags_filter=Filter.eq("kind", "a"),
            ),
        ]
        try:
            for client, sub in zip(clients, subs, strict=True):
                await client.connect()
                await sub.subscribe()
                await bounded(sub.ready())
            assert subs[1]._delta_negotiated is True
            for data in publications:
                await bounded(plain.publish(channel, data))
            got = await rec.wait("publication", client="plain", count=len(published))
            deltas = await rec.wait("publication", client="delta", count=len(published))
            only_a = await rec.wait("publication", client="filtered", count=len(filtered))
        finally:
            for client in clients:
                await client.disconnect()

        assert [p["text"] for p in got] == published
        assert [p["text"] for p in deltas] == published
        assert [p["tags"] for p in got[:4]] == [{"kind": k} for k in "abab"]
        assert all(p["tags"] == {} for p in got[4:-1]) and got[-1]["tags"] == {"kind": "a"}
        # the tag filter is applied to the backend's tags; "end" came last, so nothing
        # else is still on its way
        assert [p["text"] for p in only_a] == filtered
        assert len(rec.find("publication", client="filtered")) == len(filtered)
        # the delta subscriber: deltas for the edits published with delta, small on the wire
        wire = [(size, f) for size, frame in tap.frames for f in frame]
        assert len(wire) == len(published)
        first = published.index(DOCS[0].upper())
        assert not any(f for _, f in wire[:first])
        assert [f for _, f in wire[-2:]] == [False, False]  # published without delta
        edits = wire[first + 1 : first + len(DOCS)]
        assert all(f for _, f in edits)
        assert all(size * 10 < len(DOCS[0]) for size, _ in edits)

    run_scenario(scenario())
    # the suppressed publication is not in history either
    kept = rt_server.cent_client.history(cent.HistoryRequest(channel=channel, limit=-1))
    assert [p.data["text"] for p in kept.publications] == published
    # and both suppressions are counted, by reason, in the channel's namespace
    with requests.Session() as session:
        session.trust_env = False  # no HTTP proxy from the environment
        reply = session.get(rt_server.url + "/metrics", timeout=5)
    counted = {
        (s.labels["reason"], s.labels["channel_namespace"]): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
        if s.name == "centrifugo_broker_publish_suppressed_count"
    }
    assert counted[("version", namespace)] == 1
    assert counted[("idempotency", namespace)] == 1
