"""Python hooks through the embedding API: every proxy event, in-process, on a Clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from rtserver import config as rtconfig
from rtserver.core.client import Client
from rtserver.core.proxy import (
    ConnectProxyRequest,
    ConnectProxyResult,
    PublishProxyRequest,
    PublishProxyResult,
    RefreshProxyRequest,
    RefreshProxyResult,
    RPCProxyRequest,
    RPCProxyResult,
    SubRefreshProxyRequest,
    SubRefreshProxyResult,
    SubscribeProxyRequest,
    SubscribeProxyResult,
)
from rtserver.core.types import ConnectionToken, SubscriptionGrant
from rtserver.protocol.codes import Disconnect, Error
from rtserver.service import Hooks, build_proxies
from rtserver.testing import RecordingSink, make_node

NOW = 1_700_000_000

#: Pings off: the Clock jumps across expiry times and RecordingSink sends no pongs.
CLIENT: dict[str, Any] = {"ping_interval": "0s"}
SETTINGS: dict[str, Any] = {
    "client": CLIENT,
    "channel": {
        "namespaces": [
            {
                "name": "room",
                "presence": True,
                "history_size": 10,
                "history_ttl": "60s",
                "subscribe_proxy_enabled": True,
                "publish_proxy_enabled": True,
                "allow_presence_for_subscriber": True,
                "allow_history_for_subscriber": True,
            },
            {"name": "feed", "subscribe_proxy_enabled": True, "sub_refresh_proxy_enabled": True},
            {"name": "open", "allow_subscribe_for_client": True},
            {
                "name": "live",
                "allow_subscribe_for_client": True,
                "publish_proxy_enabled": True,
                "allowed_delta_types": ["fossil"],
                "allow_tags_filter": True,
                "history_size": 10,
                "history_ttl": "60s",
                "force_recovery": True,
            },
        ]
    },
    "rpc": {
        "without_namespace": {"proxy_enabled": True},
        "namespaces": [{"name": "off"}],
        "ping": {"enabled": True},
    },
}


class Backend:
    """In-process hooks recording their requests; answers set per test."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.pending: list[Deferred[Any]] = []
        self.cancelled = 0
        self.slow = False
        self.refresh_answer: RefreshProxyResult | None = None
        self.sub_refresh_answer: SubRefreshProxyResult | None = None

    def _hang(self) -> Deferred[Any]:
        def cancelled(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancelled)
        self.pending.append(d)
        return d

    def connect(self, req: ConnectProxyRequest) -> Any:
        self.requests.append(req)
        if self.slow:
            return self._hang()
        cookie = req.headers.get("cookie", "")
        if cookie != "session=alice":
            raise Disconnect(4001, "no session")
        return ConnectProxyResult(
            user="alice",
            expire_at=NOW + 30,
            info=b'{"name":"Alice"}',
            data=b'{"welcome":true}',
            channels=("open:news",),
            subs={"room:lobby": SubscriptionGrant(info=b'{"role":"guest"}', data=b'{"x":1}')},
            meta=b'{"plan":"pro"}',
        )

    def refresh(self, req: RefreshProxyRequest) -> Any:
        self.requests.append(req)
        return self.refresh_answer

    async def subscribe(self, req: SubscribeProxyRequest) -> SubscribeProxyResult:
        self.requests.append(req)
        if req.channel == "room:secret":
            raise Error(4403, "members only")
        expire_at = NOW + 20 if req.channel.startswith("feed:") else 0
        return SubscribeProxyResult(
            info=b'{"seat":7}', data=b'{"topic":"hello"}', expire_at=expire_at
        )

    def publish(self, req: PublishProxyRequest) -> Any:
        self.requests.append(req)
        if self.slow:
            return self._hang()
        body = orjson.loads(req.data)
        if body.get("spam"):
            raise Error(1001, "no spam")
        text = orjson.dumps({"text": body["text"].upper()})
        return PublishProxyResult(data=text, **body.get("ask", {}))  # the result fields asked

    def sub_refresh(self, req: SubRefreshProxyRequest) -> Any:
        self.requests.append(req)
        return self.sub_refresh_answer

    def rpc(self, req: RPCProxyRequest) -> Any:
        self.requests.append(req)
        if req.method == "boom":
            raise RuntimeError("backend bug")
        if req.method == "denied":
            raise Error(1403, "not yours")
        return RPCProxyResult(data=orjson.dumps({"echo": orjson.loads(req.data or b"null")}))

    def hooks(self, **kw: Any) -> Hooks:
        return Hooks(
            connect=self.connect,
            refresh=self.refresh,
            subscribe=self.subscribe,
            publish=self.publish,
            sub_refresh=self.sub_refresh,
            rpc=self.rpc,
            **kw,
        )


class Setup:
    def __init__(self, settings: dict[str, Any] = SETTINGS, hooks: Hooks | None = None) -> None:
        self.backend = Backend()
        self.clock = Clock()
        self.clock.advance(NOW)
        cfg = rtconfig.from_mapping(settings)
        hooks = hooks or self.backend.hooks()
        proxies, closing = build_proxies(cfg, self.clock, hooks)
        assert closing is None  # no HTTP or GRPC proxy to close
        self.node, _ = make_node(settings, clock=self.clock, proxies=proxies)

    def client(self, headers: dict[str, str] | None = None) -> tuple[Client, RecordingSink]:
        sink = RecordingSink(transport_name="websocket")
        return self.node.make_client(sink, headers=headers), sink

    def send(self, client: Client, *commands: dict[str, Any]) -> None:
        client.receive(b"\n".join(orjson.dumps(c) for c in commands))
        self.clock.advance(0)

    def connected(self, **connect: Any) -> tuple[Client, RecordingSink]:
        client, sink = self.client({"Cookie": "session=alice"})
        self.send(client, {"id": 1, "connect": connect})
        assert client.connected, sink.messages()
        return client, sink


def reply(sink: RecordingSink, cmd_id: int) -> dict[str, Any]:
    (found,) = [m for m in sink.messages() if m.get("id") == cmd_id]
    return found


@pytest.fixture
def s() -> Setup:
    return Setup()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is LogLevel.warn and "proxy" in event.get("log_format", ""):
            lines.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# --- connect ---------------------------------------------------------------------------------


def test_connect_without_token_asks_the_hook_and_applies_every_result_field(s: Setup) -> None:
    client, sink = s.client({"Cookie": "session=alice"})
    s.send(client, {"id": 1, "connect": {"name": "js", "data": {"hi": 1}, "headers": {"X-A": "1"}}})
    (req,) = s.backend.requests
    assert isinstance(req, ConnectProxyRequest)
    assert (req.client, req.transport, req.protocol, req.encoding) == (
        client.id, "websocket", "json", "json"
    )
    assert req.headers["cookie"] == "session=alice" and req.emulated_headers == {"x-a": "1"}
    assert (req.name, orjson.loads(req.data or b"")) == ("js", {"hi": 1})
    result = reply(sink, 1)["connect"]
    assert result["data"] == {"welcome": True}
    assert "expires" not in result  # a refresh hook: the server refreshes, not the client
    assert set(result["subs"]) == {"open:news", "room:lobby"}
    assert result["subs"]["room:lobby"]["data"] == {"x": 1}
    assert client.user == "alice" and client.conn_info == b'{"name":"Alice"}'
    assert client.meta == b'{"plan":"pro"}'
    presence = s.node.presence("room:lobby")
    s.clock.advance(0)
    info = presence.result[client.id]
    assert (info.conn_info, info.chan_info) == (b'{"name":"Alice"}', b'{"role":"guest"}')


def test_a_token_goes_through_jwt_and_never_reaches_the_hook() -> None:
    from zope.interface import implementer

    from rtserver.core.ports import ITokenVerifier

    @implementer(ITokenVerifier)
    class One:
        def verify_connection_token(self, token: str, now: float) -> ConnectionToken:
            return ConnectionToken(user="bob")

        def verify_subscription_token(self, token: str, now: float) -> Any:
            raise AssertionError

    s = Setup()
    s.node.verifier = One()
    client, _ = s.client()
    s.send(client, {"id": 1, "connect": {"token": "t"}})
    assert client.connected and client.user == "bob"
    assert s.backend.requests == []


def test_the_hooks_disconnect_reaches_the_client(s: Setup) -> None:
    client, sink = s.client()
    s.send(client, {"id": 1, "connect": {}})
    assert sink.closed_with == Disconnect(4001, "no session")


@pytest.mark.parametrize("anonymous", [False, True])
def test_no_result_is_anonymous_if_allowed_else_3501(anonymous: bool) -> None:
    settings = {"client": {**CLIENT, "allow_anonymous_connect_without_token": anonymous}}
    s = Setup(settings, Hooks(connect=lambda req: None))
    client, sink = s.client()
    s.send(client, {"id": 1, "connect": {}})
    if anonymous:
        assert client.connected and client.user == ""
    else:
        assert sink.closed_with == Disconnect.BAD_REQUEST


HEADER_CLIENT = {
    **CLIENT,
    "user_id_http_header": "X-User",
    "subscribe_to_user_personal_channel": {"enabled": True},
}


def test_no_connect_result_falls_back_to_the_user_id_header() -> None:
    """``client.user_id_http_header``: the header's user when the backend gave none.

    As in Centrifugo, that user gets no personal channel (the header is no credentials
    of the connect handler).
    """
    s = Setup({"client": HEADER_CLIENT}, Hooks(connect=lambda req: None))
    client, sink = s.client({"X-User": "erin"})
    s.send(client, {"id": 1, "connect": {}})
    assert client.connected and client.user == "erin"
    assert "subs" not in reply(sink, 1)["connect"]
    refused, sink = s.client({"X-User": ""})
    s.send(refused, {"id": 1, "connect": {}})
    assert sink.closed_with == Disconnect.BAD_REQUEST


def test_a_connect_result_wins_over_the_user_id_header() -> None:
    alice = ConnectProxyResult(user="alice")
    s = Setup({"client": HEADER_CLIENT}, Hooks(connect=lambda req: alice))
    client, sink = s.client({"X-User": "erin"})
    s.send(client, {"id": 1, "connect": {}})
    assert client.connected and client.user == "alice"
    assert list(reply(sink, 1)["connect"]["subs"]) == ["#alice"]  # the personal channel


def test_a_slow_connect_hook_times_out_with_error_100_and_one_log_line(
    s: Setup, warnings: list[str]
) -> None:
    s.backend.slow = True
    client, sink = s.client()
    s.send(client, {"id": 1, "connect": {}})
    assert sink.messages() == []
    s.clock.advance(1.0)
    assert reply(sink, 1)["error"] == {
        "code": 100, "message": "internal server error", "temporary": True
    }
    assert s.backend.cancelled == 1
    assert len(warnings) == 1 and "proxy hooks: connect" in warnings[0] and "1s" in warnings[0]
    client.close()
    assert s.clock.getDelayedCalls() == []  # no timer of the call or the client is left


def test_the_client_leaving_cancels_the_call_and_a_late_answer_is_ignored(s: Setup) -> None:
    s.backend.slow = True
    client, sink = s.client()
    s.send(client, {"id": 1, "connect": {}})
    client.transport_lost()
    assert s.backend.cancelled == 1
    (d,) = s.backend.pending
    assert d.called  # cancelled: nothing waits for the backend any more
    s.clock.advance(5)
    assert sink.messages() == [] and s.node.open_clients == 0


# --- refresh ---------------------------------------------------------------------------------


def test_refresh_hook_extends_then_ends_the_connection_without_client_refresh(s: Setup) -> None:
    client, sink = s.connected()
    assert "expires" not in reply(sink, 1)["connect"]  # the server refreshes
    s.backend.refresh_answer = RefreshProxyResult(expire_at=NOW + 100, info=b'{"v":2}')
    s.clock.advance(30)
    assert isinstance(s.backend.requests[-1], RefreshProxyRequest)
    assert s.backend.requests[-1].user == "alice"
    assert client.connected and client.expire_at == NOW + 100 and client.conn_info == b'{"v":2}'
    s.backend.refresh_answer = RefreshProxyResult(expired=True)
    s.clock.advance(70)
    assert sink.closed_with == Disconnect.EXPIRED
    s.send(client, {"id": 9, "refresh": {"token": "x"}})  # closed: ignored


def test_a_refresh_command_with_a_refresh_proxy_is_3501(s: Setup) -> None:
    client, sink = s.connected()
    s.send(client, {"id": 2, "refresh": {"token": "x"}})
    assert sink.closed_with == Disconnect.BAD_REQUEST


def test_a_failing_refresh_hook_extends_by_a_minute(s: Setup, warnings: list[str]) -> None:
    alice = ConnectProxyResult(user="alice", expire_at=NOW + 30)
    s = Setup({"client": CLIENT}, Hooks(connect=lambda r: alice, refresh=lambda r: Deferred()))
    client, _ = s.connected()
    s.clock.advance(30)
    s.clock.advance(1)  # the call times out
    assert client.connected and client.expire_at == NOW + 31 + 60
    assert len(warnings) == 1 and "refresh" in warnings[0]


# --- subscribe -------------------------------------------------------------------------------


def test_subscribe_hook_allows_one_channel_and_refuses_another(s: Setup) -> None:
    client, sink = s.connected()
    s.send(client, {"id": 2, "subscribe": {"channel": "room:a", "data": {"k": 1}}})
    s.send(client, {"id": 3, "subscribe": {"channel": "room:secret"}})
    assert reply(sink, 2)["subscribe"]["data"] == {"topic": "hello"}
    assert reply(sink, 3)["error"] == {"code": 4403, "message": "members only"}
    req = s.backend.requests[-2]
    assert isinstance(req, SubscribeProxyRequest)
    assert (req.channel, req.user, orjson.loads(req.data or b"")) == ("room:a", "alice", {"k": 1})
    s.send(client, {"id": 4, "presence": {"channel": "room:a"}})
    presence = reply(sink, 4)["presence"]["presence"]
    assert presence[client.id]["chan_info"] == {"seat": 7}
    assert client.channels() == ["open:news", "room:lobby", "room:a"]


def test_channels_without_the_proxy_keep_their_own_permissions(s: Setup) -> None:
    client, sink = s.connected()
    before = len(s.backend.requests)
    s.send(client, {"id": 2, "subscribe": {"channel": "open:y"}})
    assert "subscribe" in reply(sink, 2) and len(s.backend.requests) == before


def test_sub_refresh_hook_extends_then_unsubscribes(s: Setup) -> None:
    client, sink = s.connected()
    s.send(client, {"id": 2, "subscribe": {"channel": "feed:1"}})
    assert "expires" not in reply(sink, 2)["subscribe"]
    s.backend.refresh_answer = RefreshProxyResult(expire_at=NOW + 1000)
    s.backend.sub_refresh_answer = SubRefreshProxyResult(expire_at=NOW + 50, info=b'{"n":2}')
    s.clock.advance(20)
    assert isinstance(s.backend.requests[-1], SubRefreshProxyRequest)
    assert "feed:1" in client.channels()
    s.backend.sub_refresh_answer = SubRefreshProxyResult(expired=True)
    s.clock.advance(30)
    assert "feed:1" not in client.channels()
    assert sink.pushes()[-1] == {
        "channel": "feed:1", "unsubscribe": {"code": 2501, "reason": "subscription expired"}
    }


# --- publish ---------------------------------------------------------------------------------


def test_publish_hook_rewrites_what_subscribers_receive(s: Setup) -> None:
    alice, alice_sink = s.connected()
    bob, bob_sink = s.connected()
    for c in (alice, bob):
        s.send(c, {"id": 2, "subscribe": {"channel": "room:a"}})
    s.send(alice, {"id": 3, "publish": {"channel": "room:a", "data": {"text": "hi"}}})
    s.send(alice, {"id": 4, "publish": {"channel": "room:a", "data": {"text": "x", "spam": 1}}})
    assert reply(alice_sink, 3) == {"id": 3, "publish": {}}
    assert reply(alice_sink, 4)["error"] == {"code": 1001, "message": "no spam"}
    pubs = [p["pub"]["data"] for p in bob_sink.pushes() if "pub" in p]
    assert pubs == [{"text": "HI"}]


def test_publish_hook_tags_idempotency_key_and_delta(s: Setup) -> None:
    """The hook's tags reach subscribers and their filters; a repeated key publishes once."""
    alice, alice_sink = s.connected()
    bob, bob_sink = s.connected()
    carol, carol_sink = s.connected()
    s.send(alice, {"id": 2, "subscribe": {"channel": "live:a"}})
    s.send(bob, {"id": 2, "subscribe": {"channel": "live:a", "delta": "fossil"}})
    tf = {"key": "kind", "cmp": "eq", "val": "a"}
    s.send(carol, {"id": 2, "subscribe": {"channel": "live:a", "tf": tf}})
    assert reply(bob_sink, 2)["subscribe"]["delta"] is True
    doc = "word " * 200
    sent = [
        {"text": "t0", "ask": {"tags": {"kind": "a"}}},
        {"text": "t1", "ask": {"tags": {"kind": "b"}}},
        {"text": "once", "ask": {"idempotency_key": "k1"}},
        {"text": "once again", "ask": {"idempotency_key": "k1"}},
        {"text": doc + "1", "ask": {"version": 2, "version_epoch": "e"}},
        {"text": doc + "2", "ask": {"delta": True}},
    ]
    for i, data in enumerate(sent, start=3):
        s.send(alice, {"id": i, "publish": {"channel": "live:a", "data": data}})
        assert reply(alice_sink, i) == {"id": i, "publish": {}}
    pubs = [p["pub"] for p in alice_sink.pushes() if "pub" in p]
    assert [p["data"]["text"] for p in pubs] == ["T0", "T1", "ONCE", (doc + "1").upper(),
                                                 (doc + "2").upper()]
    assert [p.get("tags") for p in pubs] == [{"kind": "a"}, {"kind": "b"}, None, None, None]
    assert [p["pub"]["data"]["text"] for p in carol_sink.pushes() if "pub" in p] == ["T0"]
    # the delta subscriber: the last one as a fossil delta against the one before
    bob_pubs = [p["pub"] for p in bob_sink.pushes() if "pub" in p]
    assert [p.get("delta", False) for p in bob_pubs] == [False] * 4 + [True]
    assert len(bob_pubs[-1]["data"]) < 100


@pytest.mark.parametrize(
    ("ask", "reason"),
    [
        ({"tags": {"n": 1}}, "tags must map strings to strings"),
        ({"version": -1}, "version must be an integer"),
        ({"tags": [["kind", "a"]]}, "tags must map strings to strings"),
        ({"version": True}, "version must be an integer"),
        ({"idempotency_key": 5}, "idempotency_key must be a string"),
        ({"version_epoch": 1}, "version_epoch must be a string"),
        ({"delta": 1}, "skip_history and delta must be true or false"),
    ],
)
def test_publish_hook_fields_of_the_wrong_type_are_error_100(
    s: Setup, warnings: list[str], ask: dict[str, Any], reason: str
) -> None:
    alice, sink = s.connected()
    s.send(alice, {"id": 2, "subscribe": {"channel": "live:a"}})
    s.send(alice, {"id": 3, "publish": {"channel": "live:a", "data": {"text": "a", "ask": ask}}})
    assert reply(sink, 3)["error"]["code"] == 100
    assert not [p for p in sink.pushes() if "pub" in p]
    assert len(warnings) == 1 and reason in warnings[0]


def test_a_slow_publish_hook_is_error_100_and_nothing_is_published(
    s: Setup, warnings: list[str]
) -> None:
    alice, sink = s.connected()
    s.send(alice, {"id": 2, "subscribe": {"channel": "room:a"}})
    s.backend.slow = True
    s.send(alice, {"id": 3, "publish": {"channel": "room:a", "data": {"text": "hi"}}})
    s.clock.advance(1)
    assert reply(sink, 3)["error"]["code"] == 100
    assert not [p for p in sink.pushes() if "pub" in p]
    assert len(warnings) == 1 and "publish" in warnings[0]


# --- rpc and send ----------------------------------------------------------------------------


def test_rpc_hook_answers_with_data_and_error_codes(s: Setup, warnings: list[str]) -> None:
    client, sink = s.connected()
    s.send(
        client,
        {"id": 2, "rpc": {"method": "echo", "data": {"a": 1}}},
        {"id": 3, "rpc": {"method": "denied"}},
        {"id": 4, "rpc": {"method": "nope:x"}},
        {"id": 5, "rpc": {"method": "off:x"}},
        {"id": 6, "rpc": {"method": "ping"}},
        {"id": 7, "rpc": {"method": "boom"}},
    )
    assert reply(sink, 2)["rpc"] == {"data": {"echo": {"a": 1}}}
    assert reply(sink, 3)["error"] == {"code": 1403, "message": "not yours"}
    assert reply(sink, 4)["error"]["code"] == 104
    assert reply(sink, 5)["error"]["code"] == 108
    assert reply(sink, 6) == {"id": 6, "rpc": {}}
    assert reply(sink, 7)["error"]["code"] == 100
    assert len(warnings) == 1 and "RuntimeError('backend bug')" in warnings[0]


def test_send_is_refused_with_3508_as_in_centrifugo(s: Setup) -> None:
    client, sink = s.connected()
    s.send(client, {"send": {"data": {}}})
    assert sink.closed_with == Disconnect.NOT_AVAILABLE


def test_a_namespace_naming_a_missing_proxy_fails_at_build() -> None:
    cfg = rtconfig.from_mapping(
        {"channel": {"namespaces": [{"name": "xx", "publish_proxy_enabled": True,
                                     "publish_proxy_name": "billing"}]}}
    )
    with pytest.raises(rtconfig.ConfigError, match=r"publish_proxy_name.*billing"):
        build_proxies(cfg, Clock(), Hooks())


def test_connection_meta_reaches_later_requests_when_included() -> None:
    """``include_connection_meta``: the connect result's meta goes with every later event."""
    from rtserver.core.proxy import Proxies, ProxyEntry
    from rtserver.proxy.hooks import HookProxy

    backend = Backend()
    hooks = HookProxy(backend.hooks())
    clock = Clock()
    clock.advance(NOW)
    with_meta = ProxyEntry("meta", hooks, include_meta=True)
    proxies = Proxies(
        connect=ProxyEntry("connect", hooks),
        subscribe={"default": with_meta},
        rpc={"default": ProxyEntry("plain", hooks)},
        rpc_config=rtconfig.from_mapping(SETTINGS).rpc,
    )
    node, _ = make_node(SETTINGS, clock=clock, proxies=proxies)
    sink = RecordingSink()
    client = node.make_client(sink, headers={"Cookie": "session=alice"})
    client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room:a"}}')
    client.receive(b'{"id":3,"rpc":{"method":"echo"}}')
    clock.advance(0)
    subscribe, rpc = backend.requests[1:]
    assert subscribe.meta == b'{"plan":"pro"}' and rpc.meta is None


def test_unidirectional_connect_sends_its_channels_and_skips_proxied_subs() -> None:
    """Uni clients: ``channels`` lists the requested subs; subscribe-proxy channels are skipped."""
    s = Setup()
    sink = RecordingSink(transport_name="uni_websocket", unidirectional=True)
    client = s.node.make_client(sink, headers={"Cookie": "session=alice"})
    client.start_unidirectional(b'{"subs":{"open:x":{},"room:y":{}}}')
    s.clock.advance(0)
    (req,) = s.backend.requests
    assert isinstance(req, ConnectProxyRequest) and set(req.channels) == {"open:x", "room:y"}
    assert req.transport == "uni_websocket"
    (push,) = sink.messages()
    assert set(push["connect"]["subs"]) == {"open:news", "room:lobby", "open:x"}


def test_hooks_see_all_of_a_grpc_clients_metadata() -> None:
    """No allow-list in-process: every key, lower-cased, ``-bin`` values as bytes."""
    s = Setup()
    sink = RecordingSink(transport_name="uni_grpc", unidirectional=True)
    metadata = {"X-Api-Token": "t1", "x-trace-bin": b"\x00\x01"}
    client = s.node.make_client(sink, grpc_metadata=metadata)
    client.start_unidirectional(b"{}")
    s.clock.advance(0)
    (req,) = s.backend.requests
    assert req.grpc_metadata == {"x-api-token": "t1", "x-trace-bin": b"\x00\x01"}
    assert req.headers == {}


def test_values_that_are_not_json_are_a_failed_backend(warnings: list[str]) -> None:
    """A hook's (or a ``b64data`` answer's) bytes must be JSON: a broken frame never goes out."""
    settings = {"client": CLIENT, "rpc": {"without_namespace": {"proxy_enabled": True}}}
    s = Setup(settings, Hooks(
        connect=lambda r: ConnectProxyResult(user="x"),
        rpc=lambda r: RPCProxyResult(data=b"\x00binary"),
    ))
    client, sink = s.client()
    s.send(client, {"id": 1, "connect": {}}, {"id": 2, "rpc": {"method": "m"}})
    assert reply(sink, 2)["error"]["code"] == 100
    assert len(warnings) == 1 and "not JSON" in warnings[0]
