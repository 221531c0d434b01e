"""The client state machine: commands, permissions, recovery and timers on a Clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from rtserver.core.client import Client
from rtserver.core.ports import ITokenVerifier
from rtserver.core.types import (
    ConnectionToken,
    DisconnectControl,
    InvalidToken,
    SubscribeControl,
    SubscriptionToken,
    TokenExpired,
    UnsubscribeControl,
)
from rtserver.protocol.codes import Disconnect
from rtserver.testing import RecordingSink, make_node

HISTORY_NS = {
    "name": "chat",
    "history_size": 10,
    "history_ttl": "300s",
    "force_recovery": True,
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "allow_subscribe_for_client": True,
    "allow_publish_for_subscriber": True,
    "allow_history_for_subscriber": True,
    "allow_presence_for_subscriber": True,
}
SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True},
        "namespaces": [
            HISTORY_NS,
            {"name": "news", "allow_subscribe_for_client": True},
            {"name": "dm", "allow_user_limited_channels": True},
            {"name": "pos", "history_size": 10, "history_ttl": "300s",
             "allow_subscribe_for_client": True, "allow_positioning": True},
        ],
    },
}


@implementer(ITokenVerifier)
class StaticTokens:
    """Tokens are names of prepared claims; ``expired:*`` and ``bad`` fail."""

    def __init__(self) -> None:
        self.connection: dict[str, ConnectionToken] = {}
        self.subscription: dict[str, SubscriptionToken] = {}

    def verify_connection_token(self, token: str, now: float) -> ConnectionToken:
        if token.startswith("expired"):
            raise TokenExpired()
        if token not in self.connection:
            raise InvalidToken("unknown")
        return self.connection[token]

    def verify_subscription_token(self, token: str, now: float) -> SubscriptionToken:
        if token.startswith("expired"):
            raise TokenExpired()
        if token not in self.subscription:
            raise InvalidToken("unknown")
        return self.subscription[token]


USER = {"token": "user"}


class Harness:
    """A node on a Clock plus helpers to drive clients (``USER`` connects as user "u")."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.tokens = StaticTokens()
        self.tokens.connection["user"] = ConnectionToken(user="u")
        self.node, self.clock = make_node(SETTINGS if settings is None else settings, verifier=self.tokens)

    def client(self, connect: dict[str, Any] | None = None, **sink_kw: Any) -> tuple[Client, RecordingSink]:
        sink = RecordingSink(**sink_kw)
        client = self.node.make_client(sink)
        if connect is not None:
            self.send(client, {"id": 1, "connect": connect})
            assert client.connected, sink.messages()
            sink.clear()
        return client, sink

    def send(self, client: Client, *commands: dict[str, Any]) -> None:
        client.receive(b"\n".join(orjson.dumps(c) for c in commands))
        self.clock.advance(0)

    def publish(self, channel: str, data: bytes = b'{"x":1}') -> Any:
        d = self.node.publish(channel, data)
        self.clock.advance(0)
        return d.result


@pytest.fixture
def h() -> Harness:
    return Harness()


def reply(sink: RecordingSink, cmd_id: int) -> dict[str, Any]:
    """The reply to command ``cmd_id``."""
    (found,) = [m for m in sink.messages() if m.get("id") == cmd_id]
    return found


# --- connect ---------------------------------------------------------------------------


def test_anonymous_connect_result(h: Harness) -> None:
    """Connect returns a client id, version and ping/pong settings."""
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {"name": "js"}})
    result = reply(sink, 1)["connect"]
    assert result["client"] == client.id
    assert result["ping"] == 25 and result["pong"] is True
    assert "expires" not in result and "session" not in result


def test_connect_without_credentials_is_refused() -> None:
    """Without a token and without anonymous access, connect closes with 3501."""
    h = Harness({})
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {}})
    assert sink.closed_with == Disconnect.BAD_REQUEST


def test_command_before_connect_is_bad_request(h: Harness) -> None:
    """Only connect may come first."""
    client, sink = h.client()
    h.send(client, {"id": 1, "subscribe": {"channel": "a"}})
    assert sink.closed_with == Disconnect.BAD_REQUEST and sink.messages() == []


def test_second_connect_is_bad_request(h: Harness) -> None:
    """A connected client cannot connect again."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "connect": {}})
    assert sink.closed_with == Disconnect.BAD_REQUEST


def test_expired_connection_token_gets_109_then_connection_is_unusable(h: Harness) -> None:
    """Expired token: error 109 reply (SDKs refresh and reconnect); later commands: 3501."""
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {"token": "expired"}})
    assert reply(sink, 1)["error"] == {"code": 109, "message": "token expired"}
    assert not sink.closed
    h.send(client, {"id": 2, "connect": {"token": "expired"}})
    assert sink.closed_with == Disconnect.BAD_REQUEST


def test_invalid_connection_token_disconnects_3500(h: Harness) -> None:
    """A bad token is terminal: disconnect 3500 invalid token."""
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {"token": "bad"}})
    assert sink.closed_with == Disconnect.INVALID_TOKEN


def test_expiring_token_sets_expires_and_ttl(h: Harness) -> None:
    """A token with exp gives expires:true and ttl = seconds left."""
    h.tokens.connection["t"] = ConnectionToken(user="42", expire_at=int(h.clock.seconds()) + 60)
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {"token": "t"}})
    result = reply(sink, 1)["connect"]
    assert result["expires"] is True and result["ttl"] == 60


def test_garbage_frame_disconnects_without_traceback(h: Harness) -> None:
    """Malformed JSON closes with 3501 and nothing else is written."""
    client, sink = h.client(connect=USER)
    client.receive(b"{nope")
    h.clock.advance(0)
    assert sink.closed_with == Disconnect.BAD_REQUEST
    assert sink.messages() == []


def test_stale_connection_without_connect_is_closed(h: Harness) -> None:
    """No connect within stale_close_delay: disconnect 3502."""
    _, sink = h.client()
    h.clock.advance(10)
    assert sink.closed_with == Disconnect.STALE


# --- pings, expiry ---------------------------------------------------------------------


def test_pings_and_pong_timeout(h: Harness) -> None:
    """A ping every 25s; a pong keeps the connection; a missing pong closes with 3012."""
    client, sink = h.client(connect=USER)
    h.clock.advance(25)
    assert sink.messages() == [{}]
    h.send(client, {})
    h.clock.advance(8.5)
    assert not sink.closed
    h.clock.advance(25 - 8.5)
    assert sink.messages() == [{}, {}]
    h.clock.advance(8)
    assert sink.closed_with == Disconnect.NO_PONG


def test_pings_keep_coming_on_a_busy_connection(h: Harness) -> None:
    """Pings are sent on schedule even while publications flow."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "news:a"}})
    for _ in range(5):
        h.publish("news:a")
        h.clock.advance(5)
        h.send(client, {})
    assert {} in sink.messages()


def test_unrefreshed_connection_expires_with_3005(h: Harness) -> None:
    """Not refreshed by exp + expired_close_delay: disconnect 3005."""
    h.tokens.connection["t"] = ConnectionToken(user="42", expire_at=int(h.clock.seconds()) + 30)
    client, sink = h.client(connect={"token": "t"})
    h.clock.advance(30 + 24)
    h.send(client, {})
    assert not sink.closed
    h.clock.advance(1)
    assert sink.closed_with == Disconnect.EXPIRED


def test_refresh_extends_the_connection(h: Harness) -> None:
    """Refresh with a newer token of the same user reschedules expiry."""
    now = int(h.clock.seconds())
    h.tokens.connection["t1"] = ConnectionToken(user="42", expire_at=now + 30)
    h.tokens.connection["t2"] = ConnectionToken(user="42", expire_at=now + 300)
    client, sink = h.client(connect={"token": "t1"})
    h.clock.advance(30)
    h.send(client, {"id": 2, "refresh": {"token": "t2"}})
    result = reply(sink, 2)["refresh"]
    assert result["expires"] is True and result["ttl"] == 270
    for _ in range(50):  # 250 more seconds, answering every ping
        h.clock.advance(5)
        h.send(client, {})
    assert not sink.closed


def test_refresh_with_another_users_token_is_3500(h: Harness) -> None:
    """A refresh token must belong to the connected user."""
    h.tokens.connection["a"] = ConnectionToken(user="1", expire_at=int(h.clock.seconds()) + 30)
    h.tokens.connection["b"] = ConnectionToken(user="2", expire_at=int(h.clock.seconds()) + 300)
    client, sink = h.client(connect={"token": "a"})
    h.send(client, {"id": 2, "refresh": {"token": "b"}})
    assert sink.closed_with == Disconnect.INVALID_TOKEN


def test_close_cancels_every_timer(h: Harness) -> None:
    """After close, the client leaves no delayed calls behind."""
    h.tokens.connection["t"] = ConnectionToken(user="42", expire_at=int(h.clock.seconds()) + 30)
    client, _ = h.client(connect={"token": "t"})
    h.tokens.subscription["s"] = SubscriptionToken(
        user="42", channel="news:x", expire_at=int(h.clock.seconds()) + 30
    )
    h.send(client, {"id": 2, "subscribe": {"channel": "news:x", "token": "s"}})
    h.clock.advance(25)  # a pong timer is now pending too
    assert h.clock.getDelayedCalls()
    client.close(Disconnect.SHUTDOWN)
    assert h.clock.getDelayedCalls() == []


# --- subscribe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ("nope:a", 102),
        ("$secret", 103),
        ("dm:#1,2", 103),
        ("x" * 256, 107),
        ("caf\u00e9", 107),
    ],
)
def test_subscribe_refusals(h: Harness, channel: str, code: int) -> None:
    """Unknown namespace 102, private/user-limited without rights 103, bad names 107."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": channel}})
    assert reply(sink, 2)["error"]["code"] == code
    assert not sink.closed


def test_subscribe_twice_is_105_and_limit_is_106() -> None:
    """Already subscribed: 105; past client.channel_limit: 106."""
    settings = dict(SETTINGS, client={**SETTINGS["client"], "channel_limit": 1})
    h = Harness(settings)
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "a"}}, {"id": 3, "subscribe": {"channel": "a"}},
           {"id": 4, "subscribe": {"channel": "b"}})
    assert "subscribe" in reply(sink, 2)
    assert reply(sink, 3)["error"]["code"] == 105
    assert reply(sink, 4)["error"]["code"] == 106


def test_user_limited_channel_for_listed_user(h: Harness) -> None:
    """``dm:#1,2`` is open to users 1 and 2 without a token."""
    h.tokens.connection["u1"] = ConnectionToken(user="1")
    client, sink = h.client(connect={"token": "u1"})
    h.send(client, {"id": 2, "subscribe": {"channel": "dm:#1,2"}})
    assert reply(sink, 2)["subscribe"] == {}


def test_subscription_token_grants_private_channel(h: Harness) -> None:
    """A valid subscription token opens a ``$`` channel and sets chan_info."""
    h.tokens.connection["c"] = ConnectionToken(user="7")
    h.tokens.subscription["s"] = SubscriptionToken(user="7", channel="$secret", info=b'{"r":1}')
    client, sink = h.client(connect={"token": "c"})
    h.send(client, {"id": 2, "subscribe": {"channel": "$secret", "token": "s"}})
    assert reply(sink, 2)["subscribe"] == {}
    assert client.info("$secret").chan_info == b'{"r":1}'


def test_subscription_token_for_other_channel_is_3500(h: Harness) -> None:
    """A subscription token is bound to its channel."""
    h.tokens.connection["c"] = ConnectionToken(user="7")
    h.tokens.subscription["s"] = SubscriptionToken(user="7", channel="$other")
    client, sink = h.client(connect={"token": "c"})
    h.send(client, {"id": 2, "subscribe": {"channel": "$secret", "token": "s"}})
    assert sink.closed_with == Disconnect.INVALID_TOKEN


def test_expired_subscription_token_is_109(h: Harness) -> None:
    """Expired subscription token: error 109, connection stays."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "$s", "token": "expired"}})
    assert reply(sink, 2)["error"]["code"] == 109 and not sink.closed


def test_subscription_expiry_unsubscribes_2501(h: Harness) -> None:
    """Without sub_refresh, an expiring subscription ends with unsubscribe 2501."""
    h.tokens.connection["c"] = ConnectionToken(user="7")
    h.tokens.subscription["s"] = SubscriptionToken(
        user="7", channel="news:x", expire_at=int(h.clock.seconds()) + 10
    )
    client, sink = h.client(connect={"token": "c"})
    h.send(client, {"id": 2, "subscribe": {"channel": "news:x", "token": "s"}})
    assert reply(sink, 2)["subscribe"] == {"expires": True, "ttl": 10}
    h.clock.advance(10 + 25)
    assert {"channel": "news:x", "unsubscribe": {"code": 2501, "reason": "subscription expired"}} in sink.pushes()
    assert client.channels() == []


def test_positioning_on_request(h: Harness) -> None:
    """allow_positioning: positioned subs get epoch and offset."""
    client, sink = h.client(connect=USER)
    h.publish("pos:a")
    h.send(client, {"id": 2, "subscribe": {"channel": "pos:a", "positioned": True}})
    result = reply(sink, 2)["subscribe"]
    assert result["positioned"] is True and result["offset"] == 1 and result["epoch"]
    assert "recoverable" not in result


# --- publications, recovery ------------------------------------------------------------


def test_publication_reaches_subscriber_with_offset(h: Harness) -> None:
    """Subscribers receive API publications as pub pushes with offsets."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "chat:a"}})
    sink.clear()
    h.publish("chat:a", b'{"text":"hi"}')
    assert sink.pushes() == [{"channel": "chat:a", "pub": {"data": {"text": "hi"}, "offset": 1}}]


def test_pushes_within_a_turn_are_coalesced(h: Harness) -> None:
    """Several publications in one reactor turn reach a client as one batch (one frame)."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "news:a"}})
    sink.clear()
    for i in range(5):
        h.node.publish("news:a", b'{"i":%d}' % i)
    h.clock.advance(0)
    assert len(sink.batches) == 1 and len(sink.batches[0]) == 5


def _recover(h: Harness, offset: int, epoch: str, flag: int = 1) -> tuple[RecordingSink, dict[str, Any]]:
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "chat:a", "recover": True,
                                           "offset": offset, "epoch": epoch, "flag": flag}})
    return sink, reply(sink, 2)


def test_recovery_returns_the_whole_gap(h: Harness) -> None:
    """Missed publications come back in order with recovered:true and the sent offset."""
    pos = [h.publish("chat:a", b'{"n":%d}' % i) for i in range(5)]
    _, msg = _recover(h, 2, pos[0].epoch)
    result = msg["subscribe"]
    assert result["recovered"] is True and result["was_recovering"] is True
    assert result["offset"] == 2 and result["epoch"] == pos[0].epoch
    assert [p["offset"] for p in result["publications"]] == [3, 4, 5]


def test_recovery_with_nothing_missed(h: Harness) -> None:
    """A client already at the top recovers with no publications."""
    pos = h.publish("chat:a")
    _, msg = _recover(h, 1, pos.epoch)
    assert msg["subscribe"]["recovered"] is True
    assert "publications" not in msg["subscribe"]


def test_recovery_after_epoch_change_is_not_recovered(h: Harness) -> None:
    """A different epoch: recovered is absent, no publications, current position."""
    pos = h.publish("chat:a")
    _, msg = _recover(h, 0, "another")
    result = msg["subscribe"]
    assert "recovered" not in result and "publications" not in result
    assert result["offset"] == pos.offset and result["epoch"] == pos.epoch
    assert result["was_recovering"] is True


def test_recovery_gap_beyond_history_is_all_or_nothing(h: Harness) -> None:
    """When the gap is longer than the history window, nothing partial is returned."""
    pos = [h.publish("chat:a") for _ in range(15)]  # history_size 10 keeps 6..15
    _, msg = _recover(h, 2, pos[0].epoch)
    assert "recovered" not in msg["subscribe"] and "publications" not in msg["subscribe"]
    assert msg["subscribe"]["offset"] == 15


def test_unrecoverable_with_reject_flag_is_112(h: Harness) -> None:
    """Flag bit 2 turns a failed recovery into error 112."""
    h.publish("chat:a")
    _sink, msg = _recover(h, 0, "another", flag=3)
    assert msg["error"]["code"] == 112


def test_publications_during_subscribe_are_buffered_and_deduplicated(h: Harness) -> None:
    """Publications racing a slow engine subscribe arrive after the reply, once, in order."""
    engine = h.node.engine
    gate: Deferred[None] = Deferred()
    original = engine.subscribe
    engine.subscribe = lambda channel: gate  # type: ignore[method-assign]
    h.publish("chat:a", b'{"n":1}')
    client, sink = h.client(connect=USER)
    epoch = engine.history("chat:a", __import__("rtserver.core.types", fromlist=["HistoryFilter"]).HistoryFilter(), 3600).result.position.epoch
    h.send(client, {"id": 2, "subscribe": {"channel": "chat:a", "recover": True, "offset": 1, "epoch": epoch}})
    h.publish("chat:a", b'{"n":2}')  # buffered: the subscription is not live yet
    assert sink.messages() == []
    engine.subscribe = original  # type: ignore[method-assign]
    gate.callback(None)
    h.clock.advance(0)
    messages = sink.messages()
    assert "subscribe" in messages[0]
    recovered = [p["offset"] for p in messages[0]["subscribe"].get("publications", [])]
    live = [m["push"]["pub"]["offset"] for m in messages[1:] if "pub" in m.get("push", {})]
    assert sorted(recovered + live) == [2] and len(recovered + live) == 1


def test_gap_on_positioned_subscription_forces_resubscribe(h: Harness) -> None:
    """A live publication skipping an offset: unsubscribe 2500 so the client recovers."""
    from rtserver.protocol.frames import Publication

    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "chat:a"}})
    sink.clear()
    h.node.handle_publication("chat:a", Publication(data=b"{}", offset=5))
    h.clock.advance(0)
    assert sink.pushes() == [{"channel": "chat:a", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}]


def test_join_and_leave_pushes(h: Harness) -> None:
    """With force_push_join_leave, subscribers see others join and leave."""
    a, sink_a = h.client(connect=USER)
    h.send(a, {"id": 2, "subscribe": {"channel": "chat:a"}})
    b, _ = h.client(connect=USER)
    sink_a.clear()
    h.send(b, {"id": 2, "subscribe": {"channel": "chat:a"}})
    b.close(Disconnect.SHUTDOWN)
    h.clock.advance(0)
    kinds = [(k, p[k]["info"]["client"]) for p in sink_a.pushes() for k in ("join", "leave") if k in p]
    assert kinds == [("join", b.id), ("leave", b.id)]


def test_presence_and_stats(h: Harness) -> None:
    """Presence lists subscribers; stats count clients and users (zeros included)."""
    h.tokens.connection["u"] = ConnectionToken(user="u1", info=b'{"name":"A"}')
    a, sink = h.client(connect={"token": "u"})
    h.send(a, {"id": 2, "subscribe": {"channel": "chat:a"}},
           {"id": 3, "presence": {"channel": "chat:a"}},
           {"id": 4, "presence_stats": {"channel": "chat:a"}})
    presence = reply(sink, 3)["presence"]["presence"]
    assert presence == {a.id: {"user": "u1", "client": a.id, "conn_info": {"name": "A"}}}
    assert reply(sink, 4)["presence_stats"] == {"num_clients": 1, "num_users": 1}


def test_presence_disabled_is_108_and_forbidden_is_103(h: Harness) -> None:
    """Presence on a namespace without presence: 108; not subscribed: 103."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "presence": {"channel": "news:a"}}, {"id": 3, "presence": {"channel": "chat:a"}})
    assert reply(sink, 2)["error"]["code"] == 108
    assert reply(sink, 3)["error"]["code"] == 103


def test_history_command(h: Harness) -> None:
    """History returns publications, epoch and offset; a stale epoch is 112; bad reverse 107."""
    pos = [h.publish("chat:a", b'{"n":%d}' % i) for i in range(3)]
    client, sink = h.client(connect=USER)
    h.send(
        client,
        {"id": 2, "subscribe": {"channel": "chat:a"}},
        {"id": 3, "history": {"channel": "chat:a", "limit": 2, "since": {"offset": 1, "epoch": pos[0].epoch}}},
        {"id": 4, "history": {"channel": "chat:a", "since": {"offset": 1, "epoch": "old"}}},
        {"id": 5, "history": {"channel": "chat:a", "reverse": True, "since": {"offset": 0, "epoch": ""}}},
        {"id": 6, "history": {"channel": "chat:a"}},
        {"id": 7, "history": {"channel": "news:a"}},
    )
    hist = reply(sink, 3)["history"]
    assert [p["offset"] for p in hist["publications"]] == [2, 3]
    assert hist["epoch"] == pos[0].epoch and hist["offset"] == 3
    assert reply(sink, 4)["error"]["code"] == 112
    assert reply(sink, 5)["error"]["code"] == 107
    assert reply(sink, 6)["history"] == {"publications": [], "epoch": pos[0].epoch, "offset": 3}
    assert reply(sink, 7)["error"]["code"] == 108


def test_client_publish_permissions(h: Harness) -> None:
    """Publishing is 103 unless allowed; allowed subscribers' publications carry info."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "publish": {"channel": "news:a", "data": {"x": 1}}},
           {"id": 3, "publish": {"channel": "chat:a", "data": {"x": 1}}},
           {"id": 4, "subscribe": {"channel": "chat:a"}},
           {"id": 5, "publish": {"channel": "chat:a", "data": {"x": 2}}})
    assert reply(sink, 2)["error"]["code"] == 103
    assert reply(sink, 3)["error"]["code"] == 103
    assert reply(sink, 5)["publish"] == {}
    (pub,) = [p["pub"] for p in sink.pushes() if "pub" in p]
    assert pub["data"] == {"x": 2} and pub["info"]["client"] == client.id


def test_rpc_send_and_ping_without_handlers(h: Harness) -> None:
    """Rpc and ping answer 108; send without a handler disconnects 3508."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "rpc": {"method": "x"}}, {"id": 3, "ping": {}})
    assert reply(sink, 2)["error"]["code"] == 108
    assert reply(sink, 3)["error"]["code"] == 108
    h.send(client, {"send": {"data": {}}})
    assert sink.closed_with == Disconnect.NOT_AVAILABLE


# --- server-side subscriptions and control ---------------------------------------------


def test_token_channels_are_server_side_subscriptions(h: Harness) -> None:
    """Token ``channels`` appear in the connect result and publications follow it."""
    h.tokens.connection["t"] = ConnectionToken(user="42", channels=("news:personal",))
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {"token": "t"}})
    assert reply(sink, 1)["connect"]["subs"] == {"news:personal": {}}
    h.publish("news:personal")
    assert sink.pushes()[-1]["channel"] == "news:personal"


def test_token_channel_in_unknown_namespace_fails_connect(h: Harness) -> None:
    """A server-side channel in an unknown namespace fails the whole connect with 102."""
    h.tokens.connection["t"] = ConnectionToken(user="42", channels=("nope:x",))
    client, sink = h.client()
    h.send(client, {"id": 1, "connect": {"token": "t"}})
    assert reply(sink, 1)["error"]["code"] == 102
    assert not h.node.hub.has_subscribers("nope:x")


def test_api_control_subscribe_unsubscribe_disconnect(h: Harness) -> None:
    """Server API commands reach the user's connections as pushes and close frames."""
    h.tokens.connection["t"] = ConnectionToken(user="42")
    _client, sink = h.client(connect={"token": "t"})
    h.node.control(SubscribeControl(user="42", channel="news:x"))
    h.clock.advance(0)
    assert sink.pushes() == [{"channel": "news:x", "subscribe": {}}]
    h.node.control(UnsubscribeControl(user="42", channel="news:x"))
    h.clock.advance(0)
    assert sink.pushes()[-1] == {"channel": "news:x", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    h.node.control(DisconnectControl(user="42", code=3503, reason="force disconnect"))
    assert sink.closed_with == Disconnect.FORCE_NO_RECONNECT


def test_slow_client_is_disconnected_3008() -> None:
    """A client whose transport stalls is cut at client.queue_max_size."""
    settings = dict(SETTINGS, client={**SETTINGS["client"], "queue_max_size": 4096})
    h = Harness(settings)
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "news:a"}})
    client.pause_writing()
    for _ in range(100):
        h.node.publish("news:a", b'{"payload":"' + b"x" * 100 + b'"}')
    h.clock.advance(0)
    assert sink.closed_with == Disconnect.SLOW


def test_json_object_format_refuses_other_payloads() -> None:
    """publication_data_format json_object: a non-object client publication is 107."""
    ns = {"name": "obj", "allow_subscribe_for_client": True, "allow_publish_for_client": True,
          "publication_data_format": "json_object"}
    h = Harness({**SETTINGS, "channel": {"namespaces": [ns]}})
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "publish": {"channel": "obj:a", "data": [1]}},
           {"id": 3, "publish": {"channel": "obj:a", "data": {"ok": True}}})
    assert reply(sink, 2)["error"]["code"] == 107
    assert reply(sink, 3)["publish"] == {}


def test_single_connection_disconnects_older_connections() -> None:
    """Personal channel single_connection: a new connection closes the user's others (3504)."""
    settings = {**SETTINGS, "client": {**SETTINGS["client"], "subscribe_to_user_personal_channel": {
        "enabled": True, "single_connection": True}}}
    h = Harness(settings)
    _first, first_sink = h.client(connect=USER)
    second, second_sink = h.client(connect=USER)
    assert first_sink.closed_with == Disconnect.CONNECTION_LIMIT
    assert second.connected and not second_sink.closed
    h.publish("#u")
    assert second_sink.pushes()[-1]["channel"] == "#u"


def test_cache_recovery_returns_only_the_latest_publication() -> None:
    """force_recovery_mode cache: a behind client recovers with just the newest publication."""
    ns = {**HISTORY_NS, "name": "state", "force_recovery_mode": "cache"}
    h = Harness({**SETTINGS, "channel": {"namespaces": [ns]}})
    pos = [h.publish("state:a", b'{"v":%d}' % i) for i in range(4)]
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "state:a", "recover": True,
                                           "offset": 1, "epoch": pos[0].epoch}})
    result = reply(sink, 2)["subscribe"]
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == [{"v": 3}]


def test_emulation_session_pings_and_pongs(h: Harness) -> None:
    """Emulated sessions get session+node, and pings/pongs work as on WebSocket."""
    client, sink = h.client(emulation=True)
    h.send(client, {"id": 1, "connect": USER})
    result = reply(sink, 1)["connect"]
    assert result["session"] == client.session and result["node"] == h.node.uid
    assert result["pong"] is True
    assert h.node.hub.by_session(client.session) is client
    h.clock.advance(25)
    client.receive("{}")  # the pong, as /emulation delivers it
    h.clock.advance(8)
    assert not sink.closed
    h.clock.pump([1] * (25 + 8))  # step by step: timers fire at their own time
    assert sink.closed_with == Disconnect.NO_PONG
    assert h.node.hub.by_session(client.session) is None


def test_unidirectional_connect_is_a_push_without_pong(h: Harness) -> None:
    """Unidirectional clients get a bare connect push, pings they need not answer."""
    client, sink = h.client(unidirectional=True, pong=False)
    client.start_unidirectional(b'{"token":"user","subs":{"news:a":{},"$p":{}}}')
    h.clock.advance(0)
    (connect,) = sink.messages()
    assert set(connect) == {"connect"}
    assert "pong" not in connect["connect"] and list(connect["connect"]["subs"]) == ["news:a"]
    h.clock.pump([1] * (25 + 8 + 25))
    assert sink.messages()[1:] == [{}, {}] and not sink.closed


def test_unidirectional_connect_errors_become_disconnects(h: Harness) -> None:
    """An expired token on a unidirectional transport is disconnect 3005, not a reply."""
    client, sink = h.client(unidirectional=True, pong=False)
    client.start_unidirectional(b'{"token":"expired"}')
    assert sink.closed_with == Disconnect.EXPIRED
    other, other_sink = h.client(unidirectional=True, pong=False)
    other.start_unidirectional(b"[1]")
    assert other_sink.closed_with == Disconnect.BAD_REQUEST


# --- sub_refresh, limits, unsubscribe, token mismatches, failures ------------------------


#: These tests span minutes: no server pings (the test clients answer none).
QUIET: dict[str, Any] = dict(SETTINGS, client={**SETTINGS["client"], "ping_interval": "0s"})


@pytest.fixture
def quiet() -> Harness:
    return Harness(QUIET)


def _sub_token(h: Harness, name: str, user: str, channel: str, ttl: int, **kw: Any) -> None:
    h.tokens.subscription[name] = SubscriptionToken(
        user=user, channel=channel, expire_at=int(h.clock.seconds()) + ttl, **kw
    )


def _unsub_codes(sink: RecordingSink) -> list[int]:
    return [p["unsubscribe"]["code"] for p in sink.pushes() if "unsubscribe" in p]


def test_sub_refresh_moves_the_subscription_expiry(quiet: Harness) -> None:
    """sub_refresh with a later token keeps the subscription past the first token's end."""
    h = quiet
    h.tokens.connection["c"] = ConnectionToken(user="7")
    _sub_token(h, "short", "7", "news:x", 10)
    _sub_token(h, "long", "7", "news:x", 600)
    client, sink = h.client(connect={"token": "c"})
    h.send(client, {"id": 2, "subscribe": {"channel": "news:x", "token": "short"}})
    h.clock.advance(5)
    h.send(client, {"id": 3, "sub_refresh": {"channel": "news:x", "token": "long"}})
    assert reply(sink, 3)["sub_refresh"] == {"expires": True, "ttl": 595}
    h.clock.advance(100)  # well past the first token's expiry + expired_sub_close_delay
    assert _unsub_codes(sink) == [] and client.channels() == ["news:x"]
    h.publish("news:x")
    assert sink.pushes()[-1]["channel"] == "news:x"
    h.clock.advance(600)
    assert _unsub_codes(sink) == [2501] and client.channels() == []


def test_sub_refresh_refusals(h: Harness) -> None:
    """An expired token is ignored (empty reply); an unknown channel is 103; a bad token 3500."""
    h.tokens.connection["c"] = ConnectionToken(user="7")
    _sub_token(h, "s", "7", "news:x", 10)
    client, sink = h.client(connect={"token": "c"})
    h.send(client, {"id": 2, "subscribe": {"channel": "news:x", "token": "s"}})
    h.send(client, {"id": 3, "sub_refresh": {"channel": "news:x", "token": "expired"}})
    assert reply(sink, 3)["sub_refresh"] == {}
    h.send(client, {"id": 4, "sub_refresh": {"channel": "news:y", "token": "s"}})
    assert reply(sink, 4)["error"]["code"] == 103
    h.send(client, {"id": 5, "sub_refresh": {"channel": "news:x", "token": "bad"}})
    assert sink.closed_with == Disconnect.INVALID_TOKEN


def test_user_connection_limit_is_enforced_per_user() -> None:
    """``client.user_connection_limit``: one more connection of the user is closed with 3504.

    Other users' connections and closed ones do not count.
    """
    h = Harness(dict(QUIET, client={**QUIET["client"], "user_connection_limit": 2}))
    h.tokens.connection["other"] = ConnectionToken(user="v")
    first, _ = h.client(connect=USER)
    h.client(connect=USER)
    third, sink = h.client()
    h.send(third, {"id": 1, "connect": USER})
    assert sink.closed_with == Disconnect.CONNECTION_LIMIT and not third.connected
    h.client(connect={"token": "other"})  # another user is not limited by u's count
    first.close(None)
    fourth, _ = h.client(connect=USER)  # a slot is free again
    assert fourth.connected


def test_unsubscribe_command_stops_delivery_and_presence(h: Harness) -> None:
    """``unsubscribe`` answers {}, ends delivery, removes presence and announces the leave."""
    watcher, wsink = h.client(connect=USER)
    h.send(watcher, {"id": 2, "subscribe": {"channel": "chat:a"}})
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "chat:a"}})
    assert client.id in h.node.presence("chat:a").result
    h.send(client, {"id": 3, "unsubscribe": {"channel": "chat:a"}})
    assert reply(sink, 3) == {"id": 3, "unsubscribe": {}}
    assert client.channels() == []
    assert client.id not in h.node.presence("chat:a").result
    assert wsink.pushes()[-1] == {"channel": "chat:a", "leave": {"info": {"user": "u", "client": client.id}}}
    sink.clear()
    h.publish("chat:a")
    assert sink.messages() == []
    h.send(client, {"id": 4, "unsubscribe": {"channel": "chat:a"}})  # not subscribed: still {}
    assert reply(sink, 4) == {"id": 4, "unsubscribe": {}}
    h.send(client, {"id": 5, "unsubscribe": {}})
    assert sink.closed_with == Disconnect.BAD_REQUEST


def test_invalid_subscription_token_is_103(h: Harness) -> None:
    """A token the verifier rejects: error 103, the connection stays."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "$s", "token": "bad"}})
    assert reply(sink, 2)["error"]["code"] == 103 and not sink.closed
    assert client.channels() == []


@pytest.mark.parametrize(
    "claims",
    [{"user": "someone-else", "channel": "$s"}, {"user": "u", "channel": "$s", "client": "not-me"}],
    ids=["other-user", "other-connection"],
)
def test_subscription_token_for_another_user_or_connection_is_3500(
    h: Harness, claims: dict[str, str]
) -> None:
    """A subscription token is bound to its user and, with ``client``, to one connection."""
    h.tokens.subscription["s"] = SubscriptionToken(**claims)
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "$s", "token": "s"}})
    assert sink.closed_with == Disconnect.INVALID_TOKEN
    assert not h.node.hub.has_subscribers("$s")


def test_expiring_server_side_subscription_closes_the_connection(quiet: Harness) -> None:
    """An expiring server-side subscription ends the connection with 3006.

    The client cannot resubscribe to it: the server owns it.
    """
    h = quiet
    client, sink = h.client(connect=USER)
    h.node.control(
        SubscribeControl(user="u", channel="news:x", expire_at=int(h.clock.seconds()) + 30)
    )
    h.clock.advance(0)
    assert sink.pushes() == [{"channel": "news:x", "subscribe": {"expires": True, "ttl": 30}}]
    h.clock.advance(30 + 24)  # expired_sub_close_delay is 25 s
    assert not sink.closed
    h.clock.advance(1)
    assert sink.closed_with == Disconnect.SUB_EXPIRED and client.channels() == []


class FailingVerifier(StaticTokens):
    """A verifier with a bug: subscription token ``boom`` raises an unexpected error."""

    def verify_subscription_token(self, token: str, now: float) -> SubscriptionToken:
        if token == "boom":
            raise RuntimeError("verifier bug")
        return super().verify_subscription_token(token, now)


def test_unexpected_handler_error_is_100_and_logged_once(
    h: Harness, expect_logged_failure: Callable[..., None]
) -> None:
    """A command whose handler raises unexpectedly gets error 100.

    The failure is logged once and the connection keeps working, nothing half-subscribed.
    """
    expect_logged_failure(RuntimeError, count=1)
    h.node.verifier = verifier = FailingVerifier()
    verifier.connection["user"] = ConnectionToken(user="u")
    client, sink = h.client(connect=USER)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h.send(client, {"id": 2, "subscribe": {"channel": "news:x", "token": "boom"}})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert reply(sink, 2)["error"]["code"] == 100
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and isinstance(failures[0]["log_failure"].value, RuntimeError)
    assert client.connected and client.channels() == []
    assert not h.node.hub.has_subscribers("news:x")
    h.send(client, {"id": 3, "subscribe": {"channel": "news:x"}})
    assert reply(sink, 3) == {"id": 3, "subscribe": {}}


def test_output_waits_while_the_transport_is_full(h: Harness) -> None:
    """While the transport is paused, output is held (and counted), then written at once."""
    client, sink = h.client(connect=USER)
    h.send(client, {"id": 2, "subscribe": {"channel": "news:a"}})
    sink.clear()
    client.pause_writing()
    h.publish("news:a")
    assert sink.messages() == [] and client.queued_bytes > 0
    client.resume_writing()
    assert client.queued_bytes == 0
    assert [p["channel"] for p in sink.pushes()] == ["news:a"]


def test_a_publication_is_encoded_once_for_all_subscribers(h: Harness) -> None:
    """Subscribers of one wire shape are handed the very same encoded bytes.

    One encode per shape (bidirectional, unidirectional), not one per subscriber.
    """
    sinks = []
    for uni in (False, False, True, True):
        client, sink = h.client(unidirectional=uni)
        if uni:
            client.start_unidirectional(b'{"token":"user","subs":{"news:a":{}}}')
            h.clock.advance(0)
        else:
            h.send(client, {"id": 1, "connect": USER}, {"id": 2, "subscribe": {"channel": "news:a"}})
        assert client.channels() == ["news:a"]
        sink.clear()
        sinks.append(sink)
    h.publish("news:a")
    (b1,), (b2,), (u1,), (u2,) = ([m for batch in s.batches for m in batch] for s in sinks)
    assert b1 is b2 and u1 is u2 and b1 != u1
