"""Property-based fuzz of the server HTTP API bodies, through the API resource.

Every method (and an unknown one, and the legacy ``POST /api`` route) gets random
bodies: arbitrary bytes, arbitrary JSON values, and objects built from the fields the
executor reads with values of random types. Each request goes through a real Site on an
in-memory connection, both twisted.web and the API fast path in front of it, in both
error modes. Properties: the answer is a JSON body with a result or a documented error
code (never 100 internal error) or a 4xx; never a 500; nothing logged at error level
or above and no traceback.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from fuzzkit import FUZZ, watch_log
from hypothesis import given
from hypothesis import strategies as st
from test_client_protocol import big_ints, channels, json_values, scalars
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from rtserver.api.executor import METHODS, APIExecutor
from rtserver.config import from_mapping
from rtserver.core.node import Node
from rtserver.engines.memory import MemoryEngine
from rtserver.web.api import APIResource
from rtserver.web.apifast import APIFastPath
from rtserver.web.site import RTSite

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions:DeprecationWarning")

KEY = "fuzz-key"
CONFIG = {
    "http_api": {"key": KEY},
    "channel": {
        "without_namespace": {"presence": True, "history_size": 5, "history_ttl": "60s"},
        "namespaces": [{"name": "chat", "history_size": 5, "history_ttl": "60s"}],
    },
}
#: The API error codes docs/server-api.rst documents, except 100 (internal error).
DOCUMENTED = {102, 104, 107, 108, 112, 113}

FIELDS = [
    "channel",
    "channels",
    "data",
    "b64data",
    "skip_history",
    "tags",
    "idempotency_key",
    "delta",
    "version",
    "version_epoch",
    "user",
    "client",
    "session",
    "info",
    "b64info",
    "data",
    "override",
    "recover_since",
    "expire_at",
    "expired",
    "disconnect",
    "whitelist",
    "limit",
    "since",
    "reverse",
    "pattern",
    "method",
    "params",
    "commands",
    "parallel",
]
field_values = st.one_of(
    scalars,
    big_ints,
    channels,
    json_values,
    st.fixed_dictionaries({}, optional={"offset": big_ints, "epoch": scalars}),
    st.fixed_dictionaries({}, optional={"code": big_ints, "reason": scalars}),
    st.lists(channels, max_size=3),
)


#: A valid request per method; the fuzz keeps, retypes or drops each field and adds more.
BASES: dict[str, dict[str, Any]] = {
    "publish": {"channel": "chat:1", "data": {"x": 1}},
    "broadcast": {"channels": ["a", "chat:1"], "data": {"x": 1}},
    "subscribe": {"user": "u1", "channel": "chat:1"},
    "unsubscribe": {"user": "u1", "channel": "chat:1"},
    "disconnect": {"user": "u1"},
    "refresh": {"user": "u1"},
    "presence": {"channel": "a"},
    "presence_stats": {"channel": "a"},
    "history": {"channel": "chat:1", "limit": 3},
    "history_remove": {"channel": "chat:1"},
    "channels": {},
    "info": {},
    "rpc": {"method": "m"},
    "batch": {"commands": [{"publish": {"channel": "a", "data": 1}}]},
}
#: Plausible values per field (right type), mixed with values of any type.
TYPED: dict[str, st.SearchStrategy[Any]] = {
    "channel": channels,
    "channels": st.lists(channels, max_size=3),
    "user": st.sampled_from(["u1", "", "u2"]),
    "client": st.text(max_size=6),
    "session": st.text(max_size=6),
    "limit": big_ints,
    "expire_at": big_ints,
    "since": st.fixed_dictionaries({}, optional={"offset": big_ints, "epoch": scalars}),
    "recover_since": st.fixed_dictionaries({}, optional={"offset": big_ints, "epoch": scalars}),
    "disconnect": st.fixed_dictionaries({}, optional={"code": big_ints, "reason": scalars}),
    "override": st.dictionaries(
        st.sampled_from(["presence", "join_leave", "force_recovery", "x"]),
        st.one_of(st.fixed_dictionaries({"value": scalars}), scalars),
        max_size=2,
    ),
    "tags": st.dictionaries(st.text(max_size=4), scalars, max_size=2),
    "whitelist": st.lists(st.text(max_size=4), max_size=2),
}


def field_value(name: str) -> st.SearchStrategy[Any]:
    typed = TYPED.get(name)
    return field_values if typed is None else st.one_of(typed, typed, field_values)


@st.composite
def objects(draw: st.DrawFn, method: str = "") -> dict[str, Any]:
    """A request object for ``method``: its valid base, fields retyped, others added."""
    obj = dict(BASES.get(method) or draw(st.sampled_from(list(BASES.values()))))
    for name in list(obj):
        action = draw(st.sampled_from(["keep", "keep", "retype", "drop"]))
        if action == "retype":
            obj[name] = draw(field_value(name))
        elif action == "drop":
            del obj[name]
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3)):
        obj[name] = draw(field_value(name))
    if method == "batch" and draw(st.booleans()):
        obj["commands"] = draw(
            st.lists(
                st.sampled_from([m for m in METHODS if m != "batch"]).flatmap(
                    lambda m: objects(m).map(lambda o, m=m: {m: o})
                ),
                max_size=3,
            )
        )
    return obj


def bodies(method: str) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary JSON, or (mostly) a mutated request for ``method``."""
    mutated = objects(method).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        st.binary(max_size=80),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated,
        mutated,
        mutated,
    )


legacy_bodies = st.one_of(
    bodies(""),
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "id": big_ints,
                "method": st.one_of(st.sampled_from(METHODS), big_ints, scalars),
                "params": st.one_of(objects(), json_values),
            },
        ),
        min_size=1,
        max_size=3,
    ).map(lambda cmds: b"\n".join(json.dumps(c).encode() for c in cmds)),
)


class Server:
    """The API resource at /api on a node (memory engine, Clock) behind a real Site."""

    def __init__(self, fast: bool) -> None:
        config = from_mapping(CONFIG)
        self.clock = Clock()
        node = Node(MemoryEngine(self.clock), config, clock=self.clock)
        node.start()
        api = APIResource(APIExecutor(node), config.http_api)
        root = Resource()
        root.putChild(b"api", api)
        limit = config.http_api.max_request_body_size
        if fast:
            self.site: Site = RTSite(
                root,
                body_limits=[("/api", limit)],
                api_fast_path=APIFastPath(api, "/api", limit),
                reactor=self.clock,
            )
        else:
            self.site = Site(root, reactor=self.clock)

    def post(self, path: str, body: bytes, transport_mode: bool) -> tuple[int, bytes, str]:
        """One keep-alive POST on a fresh connection: status, body and content type."""
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        head = [
            f"POST {path} HTTP/1.1",
            "Host: localhost",
            f"X-API-Key: {KEY}",
            f"Content-Length: {len(body)}",
        ]
        if transport_mode:
            head.append("X-Centrifugo-Error-Mode: transport")
        proto.dataReceived("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        self.clock.advance(0)
        raw = transport.value()
        proto.connectionLost(Failure(ConnectionDone()))
        response_head, _, response_body = raw.partition(b"\r\n\r\n")
        lines = response_head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), raw
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", len(response_body)))
        return int(lines[0].split()[1]), response_body[:length], headers.get("content-type", "")


SERVERS = {False: Server(False), True: Server(True)}


def check(path: str, body: bytes, fast: bool, transport_mode: bool) -> None:
    with watch_log() as log:
        status, payload, content_type = SERVERS[fast].post(path, body, transport_mode)
    assert log.bad == [], log.lines()
    assert status != 500 and status < 500, (status, payload)
    if status != 200:
        assert 400 <= status < 500, status
        if content_type == "application/json" and payload:
            error = orjson.loads(payload)
            assert error["code"] in DOCUMENTED, error
        return
    assert content_type == "application/json", content_type
    for line in payload.split(b"\n"):
        reply = orjson.loads(line)
        replies = reply.get("replies") if isinstance(reply, dict) else None
        if replies is None:
            assert ("result" in reply) != ("error" in reply), reply
            items = [reply]
        else:  # batch: {method: result} or {"error": ...} per command
            assert all(isinstance(r, dict) and len(r) == 1 for r in replies), replies
            items = replies
        for item in items:
            if "error" in item:
                assert item["error"]["code"] in DOCUMENTED, item


@FUZZ
@given(
    st.sampled_from([*METHODS, "nope"]).flatmap(lambda m: st.tuples(st.just(m), bodies(m))),
    st.booleans(),
    st.booleans(),
)
def test_method_bodies(request: tuple[str, bytes], fast: bool, transport_mode: bool) -> None:
    """POST /api/<method> with a random body: a JSON answer or a 4xx, never a 500."""
    method, body = request
    check(f"/api/{method}", body, fast, transport_mode)


@FUZZ
@given(legacy_bodies, st.booleans())
def test_legacy_bodies(body: bytes, fast: bool) -> None:
    """POST /api with random newline-separated commands."""
    check("/api", body, fast, False)
