"""centrifuge-python 0.7.0 against a real rtserver process.

The SDK is asyncio: each test runs one scenario with ``asyncio.run`` and bounds every wait with
``asyncio.wait_for``. ``cent`` (blocking) runs in a worker thread so the client keeps reading.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, is_dataclass
from typing import Any, TypeVar

import cent
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ReplyError,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionEventHandler,
    SubscriptionState,
    UnsubscribedContext,
)
from interop_support import EVENT_TIMEOUT, EXPIRED_CLOSE_DELAY, Server

T = TypeVar("T")
#: Bound of one whole scenario.
SCENARIO_TIMEOUT = 25.0


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _run(scenario: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        try:
            return await asyncio.wait_for(scenario, SCENARIO_TIMEOUT)
        finally:
            # Let the SDK finish closing its sockets (close handshakes run in background
            # tasks) instead of having asyncio.run cancel them half-way.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=3)

    return asyncio.run(bounded())


async def _bounded(awaitable: Awaitable[T], timeout: float = EVENT_TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


class Recorder:
    """Every SDK event of a scenario, in order, with waits on them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, kind: str, **data: Any) -> None:
        self.events.append({"event": kind, **{k: _plain(v) for k, v in data.items()}})
        self._changed.set()

    def find(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait(
        self, kind: str, count: int = 1, timeout: float = EVENT_TIMEOUT, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events of ``kind`` matching ``match`` were recorded."""

        async def until() -> list[dict[str, Any]]:
            while True:
                found = self.find(kind, **match)
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {count}x {kind} {match} within {timeout:g}s; events: {self.events}"
            ) from None


class ClientEvents(ClientEventHandler):
    """Client-level events (including server-side subscriptions) into a Recorder."""

    def __init__(self, rec: Recorder, label: str = "main") -> None:
        self.rec = rec
        self.label = label
        #: Awaited by on_connecting for "transport closed": holds the reconnect back.
        self.hold_reconnect: asyncio.Event | None = None

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.rec.add("connecting", client=self.label, code=ctx.code, reason=ctx.reason)
        if ctx.code == 1 and self.hold_reconnect is not None:
            await self.hold_reconnect.wait()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.rec.add("connected", client=self.label, id=ctx.client)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.rec.add("disconnected", client=self.label, code=ctx.code, reason=ctx.reason)

    async def on_error(self, ctx: ErrorContext) -> None:
        err = ctx.error
        self.rec.add(
            "error",
            client=self.label,
            type=ctx.code,
            code=getattr(err, "code", None),
            message=getattr(err, "message", str(err)),
        )

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.rec.add(
            "server_subscribed",
            channel=ctx.channel,
            recoverable=ctx.recoverable,
            was_recovering=ctx.was_recovering,
            recovered=ctx.recovered,
        )

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.rec.add("server_unsubscribed", channel=ctx.channel)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.rec.add(
            "server_publication", channel=ctx.channel, data=ctx.pub.data, offset=ctx.pub.offset
        )


class SubEvents(SubscriptionEventHandler):
    """Subscription events into a Recorder."""

    def __init__(self, rec: Recorder, channel: str, label: str = "main") -> None:
        self.rec = rec
        self.channel = channel
        self.label = label

    def _add(self, kind: str, **data: Any) -> None:
        self.rec.add(kind, client=self.label, channel=self.channel, **data)

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self._add("subscribing", code=ctx.code, reason=ctx.reason)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self._add(
            "subscribed",
            recoverable=ctx.recoverable,
            positioned=ctx.positioned,
            was_recovering=ctx.was_recovering,
            recovered=ctx.recovered,
            stream_position=ctx.stream_position,
        )

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self._add("unsubscribed", code=ctx.code, reason=ctx.reason)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self._add("publication", data=ctx.pub.data, offset=ctx.pub.offset, info=ctx.pub.info)

    async def on_join(self, ctx: JoinContext) -> None:
        self._add("join", info=ctx.info)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self._add("leave", info=ctx.info)


def _client(
    server: Server,
    rec: Recorder,
    token: str = "",
    get_token: Callable[[], Awaitable[str]] | None = None,
    label: str = "main",
) -> tuple[Client, ClientEvents]:
    events = ClientEvents(rec, label)
    client = Client(
        server.ws_url,
        events=events,
        token=token,
        get_token=get_token,
        max_reconnect_delay=1.0,
        proxy=None,
    )
    return client, events


def _subscribe(client: Client, channel: str, rec: Recorder, label: str = "main") -> Subscription:
    return client.new_subscription(channel, events=SubEvents(rec, channel, label))


async def _cent(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def test_connect_subscribe_receive_presence_history(rt_server: Server) -> None:
    """A JWT-authenticated Python client gets cent publications and reads presence and history."""
    user, channel = _name("py-u-"), _name("py-ch-")
    info = {"name": "Bob"}
    sent = [{"n": i, "text": f"hello {i}"} for i in range(1, 4)]

    async def scenario() -> None:
        rec = Recorder()
        client, _ = _client(rt_server, rec, token=rt_server.token(user, info=info))
        sub = _subscribe(client, channel, rec)
        try:
            await client.connect()
            await sub.subscribe()
            await _bounded(sub.ready())
            client_id = rec.find("connected")[0]["id"]
            offsets = [(await _cent(rt_server.publish, channel, d)).offset for d in sent]
            pubs = await rec.wait("publication", count=3)
            assert [p["data"] for p in pubs] == sent
            assert [p["offset"] for p in pubs] == offsets == [1, 2, 3]
            assert all(p["info"] is None for p in pubs), "API publications carry no info"

            presence = await _bounded(sub.presence())
            assert list(presence.clients) == [client_id]
            me = presence.clients[client_id]
            assert (me.user, me.client, me.conn_info) == (user, client_id, info)
            stats = await _bounded(sub.presence_stats())
            assert (stats.num_clients, stats.num_users) == (1, 1)

            history = await _bounded(sub.history(limit=-1))
            assert [p.data for p in history.publications] == sent
            assert [p.offset for p in history.publications] == [1, 2, 3]
            assert history.offset == 3 and history.epoch
            latest = await _bounded(sub.history(limit=1, reverse=True))
            assert [p.data for p in latest.publications] == [sent[-1]]

            (subscribed,) = rec.find("subscribed")
            assert subscribed["recoverable"] is True and subscribed["positioned"] is True
            assert subscribed["stream_position"]["epoch"] == history.epoch
        finally:
            await client.disconnect()

    _run(scenario())


def test_publish_forbidden_is_103(rt_server: Server) -> None:
    """A Python publish into a namespace without client publish permission raises ReplyError 103."""
    user = _name("py-u-")
    ro_channel, chat_channel = _name("ro:"), _name("chat:")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = _client(rt_server, rec, token=rt_server.token(user))
        ro = _subscribe(client, ro_channel, rec)
        chat = _subscribe(client, chat_channel, rec)
        try:
            await client.connect()
            await ro.subscribe()
            await chat.subscribe()
            await _bounded(ro.ready())
            await _bounded(chat.ready())
            with pytest.raises(ReplyError) as info:
                await _bounded(ro.publish({"text": "not allowed"}))
            assert (info.value.code, info.value.message) == (103, "permission denied")
            assert client.state == ClientState.CONNECTED
            assert ro.state == SubscriptionState.SUBSCRIBED

            await _bounded(chat.publish({"text": "allowed"}))
            (own,) = await rec.wait("publication", channel=chat_channel)
            assert own["data"] == {"text": "allowed"}
            assert own["info"]["user"] == user
        finally:
            await client.disconnect()

    _run(scenario())


@pytest.mark.parametrize("mode", ["disconnect", "drop"])
def test_reconnect_recovers_missed_publications(rt_server: Server, mode: str) -> None:
    """After disconnect()/a dropped transport the Python client recovers all missed publications."""
    user, channel = _name("py-u-"), _name("py-rec-")
    live, missed = 2, 5

    async def scenario() -> None:
        rec = Recorder()
        client, events = _client(rt_server, rec, token=rt_server.token(user))
        sub = _subscribe(client, channel, rec)
        try:
            await client.connect()
            await sub.subscribe()
            await _bounded(sub.ready())
            for i in range(live):
                await _cent(rt_server.publish, channel, {"live": i})
            await rec.wait("publication", count=live)

            if mode == "disconnect":
                await client.disconnect()
                assert rec.find("disconnected", code=0)
            else:
                # Lose the TCP connection under the SDK; it reconnects by itself once the
                # on_connecting handler returns, i.e. after the missed publications.
                events.hold_reconnect = asyncio.Event()
                conn = client._conn  # the SDK's websockets connection (no public handle)
                assert conn is not None
                conn.transport.abort()
                await rec.wait("connecting", code=1)
            for i in range(missed):
                await _cent(rt_server.publish, channel, {"missed": i})
            if mode == "disconnect":
                await client.connect()
            else:
                assert events.hold_reconnect is not None
                events.hold_reconnect.set()

            await rec.wait("subscribed", count=2)
            await rec.wait("publication", count=live + missed)
            await _cent(rt_server.publish, channel, {"sentinel": True})
            await rec.wait("publication", count=live + missed + 1)
        finally:
            await client.disconnect()

        first, again = rec.find("subscribed")
        assert first["recoverable"] is True and first["was_recovering"] is False
        assert again["was_recovering"] is True
        assert again["recovered"] is True
        assert again["stream_position"]["epoch"] == first["stream_position"]["epoch"]
        pubs = rec.find("publication")
        expected = (
            [{"live": i} for i in range(live)]
            + [{"missed": i} for i in range(missed)]
            + [{"sentinel": True}]
        )
        assert [p["data"] for p in pubs] == expected, "every publication exactly once, in order"
        assert [p["offset"] for p in pubs] == list(range(1, live + missed + 2))
        after = rec.events[rec.events.index(again) :]
        assert [e["data"] for e in after if e["event"] == "publication"] == expected[live:]
        if mode == "drop":
            before = rec.events[: rec.events.index(again)]
            assert [e["event"] for e in before if e["event"].endswith("connected")] == [
                "connected",
                "connected",
            ], "a dropped transport reconnects without a disconnected event"

    _run(scenario())


def test_expired_token_refreshed_on_connect(rt_server: Server) -> None:
    """Connecting with an expired token gets 109; the Python SDK calls get_token and connects."""
    user = _name("py-u-")
    fresh = rt_server.token(user, ttl=3600)

    async def scenario() -> None:
        rec = Recorder()

        async def get_token() -> str:
            rec.add("get_token")
            return fresh

        client, _ = _client(
            rt_server, rec, token=rt_server.token(user, ttl=-120), get_token=get_token
        )
        try:
            await client.connect()
            await _bounded(client.ready())
            assert client.state == ClientState.CONNECTED
        finally:
            await client.disconnect()
        errors = rec.find("error")
        assert [(e["code"], e["message"]) for e in errors] == [(109, "token expired")]
        assert len(rec.find("get_token")) == 1
        before = rec.events[: rec.events.index(rec.find("connected")[0])]
        assert [e["event"] for e in before] == ["connecting", "error", "get_token"]

    _run(scenario())


def test_short_lived_token_refreshed_without_disconnect(rt_server: Server) -> None:
    """A 3 s connection token is refreshed via get_token; the Python client stays past exp."""
    user, channel = _name("py-u-"), _name("py-ref-")
    exp = int(time.time()) + 3
    fresh = rt_server.token(user, ttl=3600)

    async def scenario() -> None:
        rec = Recorder()

        async def get_token() -> str:
            rec.add("get_token", at=time.time())
            return fresh

        client, _ = _client(
            rt_server, rec, token=rt_server.token(user, ttl=None, exp=exp), get_token=get_token
        )
        sub = _subscribe(client, channel, rec)
        try:
            await client.connect()
            await sub.subscribe()
            await _bounded(sub.ready())
            client_id = rec.find("connected")[0]["id"]
            (call,) = await rec.wait("get_token", timeout=exp - time.time() + 5)
            assert call["at"] <= exp + EXPIRED_CLOSE_DELAY, "refreshed before the server closes"
            # A connection that was not refreshed is closed at exp + expired_close_delay.
            await asyncio.sleep(max(0.0, exp + EXPIRED_CLOSE_DELAY + 1.5 - time.time()))
            presence = await _bounded(sub.presence())
            assert list(presence.clients) == [client_id]
            result = await _cent(
                rt_server.cent_client.presence, cent.PresenceRequest(channel=channel)
            )
            assert list(result.presence) == [client_id]
            assert client.state == ClientState.CONNECTED
            assert [
                e["event"] for e in rec.events if e["event"] in ("connecting", "connected")
            ] == [
                "connecting",
                "connected",
            ]
            assert not rec.find("disconnected") and not rec.find("error")
        finally:
            await client.disconnect()

    _run(scenario())


def test_unrefreshed_token_closes_connection_3005(rt_server: Server) -> None:
    """Without get_token a short-lived connection is closed with 3005 after exp + close delay."""
    user = _name("py-u-")
    exp = int(time.time()) + 2

    async def scenario() -> None:
        rec = Recorder()
        client, _ = _client(rt_server, rec, token=rt_server.token(user, ttl=None, exp=exp))
        try:
            await client.connect()
            await _bounded(client.ready())
            # The server closes it (3005, reconnect allowed); the SDK reconnects with the same,
            # now expired, token, gets 109 and, having no get_token, gives up.
            (closed,) = await rec.wait(
                "connecting", code=3005, timeout=exp - time.time() + EXPIRED_CLOSE_DELAY + 3
            )
            assert closed["reason"] == "connection expired"
            assert time.time() >= exp + EXPIRED_CLOSE_DELAY - 0.5
            await rec.wait("disconnected")
        finally:
            await client.disconnect()

    _run(scenario())


def test_server_side_subscription_from_token_channels(rt_server: Server) -> None:
    """A channel from the token `channels` claim delivers cent publications to on_publication."""
    user, channel = _name("py-u-"), _name("py-srv-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = _client(rt_server, rec, token=rt_server.token(user, channels=[channel]))
        try:
            await client.connect()
            await rec.wait("server_subscribed", channel=channel)
            await _cent(rt_server.publish, channel, {"server": "side"})
            (pub,) = await rec.wait("server_publication", channel=channel)
            assert pub["data"] == {"server": "side"}
        finally:
            await client.disconnect()

    _run(scenario())


def test_join_leave_pushed(rt_server: Server) -> None:
    """With force_push_join_leave a Python subscriber sees another client join and leave."""
    channel = _name("py-jl-")
    user_a, user_b = _name("py-a-"), _name("py-b-")

    async def scenario() -> None:
        rec = Recorder()
        a, _ = _client(rt_server, rec, token=rt_server.token(user_a), label="a")
        b, _ = _client(rt_server, rec, token=rt_server.token(user_b, info={"role": "b"}), label="b")
        sub_a = _subscribe(a, channel, rec, "a")
        sub_b = _subscribe(b, channel, rec, "b")
        try:
            await a.connect()
            await sub_a.subscribe()
            await _bounded(sub_a.ready())
            await b.connect()
            await _bounded(b.ready())
            b_id = rec.find("connected", client="b")[0]["id"]
            await sub_b.subscribe()
            (join,) = await rec.wait("join", client="a", info=_info(user_b, b_id))
            await sub_b.unsubscribe()
            (leave,) = await rec.wait("leave", client="a", info=_info(user_b, b_id))
            assert join["info"]["conn_info"] == leave["info"]["conn_info"] == {"role": "b"}
        finally:
            await b.disconnect()
            await a.disconnect()

    _run(scenario())


def _info(user: str, client: str) -> dict[str, Any]:
    return {"user": user, "client": client, "conn_info": {"role": "b"}, "chan_info": None}


def test_api_disconnect_is_terminal_3503(rt_server: Server) -> None:
    """Server API disconnect closes the Python client with code 3503 and it does not reconnect."""
    user = _name("py-u-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = _client(rt_server, rec, token=rt_server.token(user))
        sub = _subscribe(client, _name("py-dc-"), rec)
        try:
            await client.connect()
            await sub.subscribe()
            await _bounded(sub.ready())
            await _cent(rt_server.cent_client.disconnect, cent.DisconnectRequest(user=user))
            (d,) = await rec.wait("disconnected")
            assert (d["code"], d["reason"]) == (3503, "force disconnect")
            assert client.state == ClientState.DISCONNECTED
            assert rec.find("connecting") == [rec.events[0]], "no reconnect after 3503"
        finally:
            await client.disconnect()

    _run(scenario())


def test_api_unsubscribe_is_2000(rt_server: Server) -> None:
    """Server API unsubscribe ends the Python subscription with code 2000; the client stays."""
    user, channel = _name("py-u-"), _name("py-us-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = _client(rt_server, rec, token=rt_server.token(user))
        sub = _subscribe(client, channel, rec)
        try:
            await client.connect()
            await sub.subscribe()
            await _bounded(sub.ready())
            await _cent(
                rt_server.cent_client.unsubscribe,
                cent.UnsubscribeRequest(user=user, channel=channel),
            )
            (u,) = await rec.wait("unsubscribed")
            assert (u["code"], u["reason"]) == (2000, "server unsubscribe")
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert client.state == ClientState.CONNECTED
            assert len(rec.find("subscribed")) == 1, "no resubscribe after a terminal code"
        finally:
            await client.disconnect()

    _run(scenario())
