"""centrifuge-python 0.7.0 against a real rtserver process.

The SDK is asyncio: each test runs one scenario with ``asyncio.run`` and bounds every wait with
``asyncio.wait_for``. ``cent`` (blocking) runs in a worker thread so the client keeps reading.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import cent
import pytest
from centrifuge import (
    ClientState,
    ReplyError,
    SubscriptionState,
)
from harness import recovery_publications
from interop_support import EXPIRED_CLOSE_DELAY, Server
from pysdk import (
    Recorder,
    bounded,
    in_thread,
    name,
    run_scenario,
    sdk_client,
    subscribe,
    subscribed,
)


def test_connect_subscribe_receive_presence_history(rt_server: Server) -> None:
    """A JWT-authenticated Python client gets cent publications and reads presence and history."""
    user, channel = name("py-u-"), name("py-ch-")
    info = {"name": "Bob"}
    sent = [{"n": i, "text": f"hello {i}"} for i in range(1, 4)]

    async def scenario() -> None:
        rec = Recorder()
        token = rt_server.token(user, info=info)
        async with subscribed(rt_server, channel, rec, token=token) as (_, sub):
            client_id = rec.find("connected")[0]["id"]
            offsets = [(await in_thread(rt_server.publish, channel, d)).offset for d in sent]
            pubs = await rec.wait("publication", count=3)
            assert [p["data"] for p in pubs] == sent
            assert [p["offset"] for p in pubs] == offsets == [1, 2, 3]
            assert all(p["info"] is None for p in pubs), "API publications carry no info"

            presence = await bounded(sub.presence())
            assert list(presence.clients) == [client_id]
            me = presence.clients[client_id]
            assert (me.user, me.client, me.conn_info) == (user, client_id, info)
            stats = await bounded(sub.presence_stats())
            assert (stats.num_clients, stats.num_users) == (1, 1)

            history = await bounded(sub.history(limit=-1))
            assert [p.data for p in history.publications] == sent
            assert [p.offset for p in history.publications] == [1, 2, 3]
            assert history.offset == 3 and history.epoch
            latest = await bounded(sub.history(limit=1, reverse=True))
            assert [p.data for p in latest.publications] == [sent[-1]]

            (ready,) = rec.find("subscribed")
            assert ready["recoverable"] is True and ready["positioned"] is True
            assert ready["stream_position"]["epoch"] == history.epoch

    run_scenario(scenario())


def test_publish_forbidden_is_103(rt_server: Server) -> None:
    """A Python publish into a namespace without client publish permission raises ReplyError 103."""
    user = name("py-u-")
    ro_channel, chat_channel = name("ro:"), name("chat:")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(rt_server, rec, token=rt_server.token(user))
        ro = subscribe(client, ro_channel, rec)
        chat = subscribe(client, chat_channel, rec)
        try:
            await client.connect()
            await ro.subscribe()
            await chat.subscribe()
            await bounded(ro.ready())
            await bounded(chat.ready())
            with pytest.raises(ReplyError) as info:
                await bounded(ro.publish({"text": "not allowed"}))
            assert (info.value.code, info.value.message) == (103, "permission denied")
            assert client.state == ClientState.CONNECTED
            assert ro.state == SubscriptionState.SUBSCRIBED

            await bounded(chat.publish({"text": "allowed"}))
            (own,) = await rec.wait("publication", channel=chat_channel)
            assert own["data"] == {"text": "allowed"}
            assert own["info"]["user"] == user
        finally:
            await client.disconnect()

    run_scenario(scenario())


@pytest.mark.parametrize("mode", ["disconnect", "drop"])
def test_reconnect_recovers_missed_publications(rt_server: Server, mode: str) -> None:
    """After disconnect()/a dropped transport the Python client recovers all missed publications."""
    user, channel = name("py-u-"), name("py-rec-")
    live, missed = 2, 5

    async def scenario() -> None:
        rec = Recorder()
        client, events = sdk_client(rt_server, rec, token=rt_server.token(user))
        sub = subscribe(client, channel, rec)
        try:
            await client.connect()
            await sub.subscribe()
            await bounded(sub.ready())
            for i in range(live):
                await in_thread(rt_server.publish, channel, {"live": i})
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
                await in_thread(rt_server.publish, channel, {"missed": i})
            if mode == "disconnect":
                await client.connect()
            else:
                assert events.hold_reconnect is not None
                events.hold_reconnect.set()

            await rec.wait("subscribed", count=2)
            await rec.wait("publication", count=live + missed)
            await in_thread(rt_server.publish, channel, {"sentinel": True})
            await rec.wait("publication", count=live + missed + 1)
        finally:
            await client.disconnect()

        first, again = rec.find("subscribed")
        assert first["recoverable"] is True and first["was_recovering"] is False
        assert again["was_recovering"] is True
        assert again["recovered"] is True
        assert again["stream_position"]["epoch"] == first["stream_position"]["epoch"]
        pubs = rec.find("publication")
        expected = recovery_publications(live, missed)
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

    run_scenario(scenario())


def test_expired_token_refreshed_on_connect(rt_server: Server) -> None:
    """Connecting with an expired token gets 109; the Python SDK calls get_token and connects."""
    user = name("py-u-")
    fresh = rt_server.token(user, ttl=3600)

    async def scenario() -> None:
        rec = Recorder()

        async def get_token() -> str:
            rec.add("get_token")
            return fresh

        client, _ = sdk_client(
            rt_server, rec, token=rt_server.token(user, ttl=-120), get_token=get_token
        )
        try:
            await client.connect()
            await bounded(client.ready())
            assert client.state == ClientState.CONNECTED
        finally:
            await client.disconnect()
        errors = rec.find("error")
        assert [(e["code"], e["message"]) for e in errors] == [(109, "token expired")]
        assert len(rec.find("get_token")) == 1
        before = rec.events[: rec.events.index(rec.find("connected")[0])]
        assert [e["event"] for e in before] == ["connecting", "error", "get_token"]

    run_scenario(scenario())


def test_short_lived_token_refreshed_without_disconnect(rt_server: Server) -> None:
    """A 3 s connection token is refreshed via get_token; the Python client stays past exp."""
    user, channel = name("py-u-"), name("py-ref-")
    exp = int(time.time()) + 3
    fresh = rt_server.token(user, ttl=3600)

    async def scenario() -> None:
        rec = Recorder()

        async def get_token() -> str:
            rec.add("get_token", at=time.time())
            return fresh

        token = rt_server.token(user, ttl=None, exp=exp)
        async with subscribed(
            rt_server, channel, rec, token=token, get_token=get_token
        ) as (client, sub):
            client_id = rec.find("connected")[0]["id"]
            (call,) = await rec.wait("get_token", timeout=exp - time.time() + 5)
            assert call["at"] <= exp + EXPIRED_CLOSE_DELAY, "refreshed before the server closes"
            # A connection that was not refreshed is closed at exp + expired_close_delay.
            await asyncio.sleep(max(0.0, exp + EXPIRED_CLOSE_DELAY + 1.5 - time.time()))
            presence = await bounded(sub.presence())
            assert list(presence.clients) == [client_id]
            result = await in_thread(
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

    run_scenario(scenario())


def test_unrefreshed_token_closes_connection_3005(rt_server: Server) -> None:
    """Without get_token a short-lived connection is closed with 3005 after exp + close delay."""
    user = name("py-u-")
    exp = int(time.time()) + 2

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(rt_server, rec, token=rt_server.token(user, ttl=None, exp=exp))
        try:
            await client.connect()
            await bounded(client.ready())
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

    run_scenario(scenario())


def test_server_side_subscription_from_token_channels(rt_server: Server) -> None:
    """A channel from the token `channels` claim delivers cent publications to on_publication."""
    user, channel = name("py-u-"), name("py-srv-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(rt_server, rec, token=rt_server.token(user, channels=[channel]))
        try:
            await client.connect()
            await rec.wait("server_subscribed", channel=channel)
            await in_thread(rt_server.publish, channel, {"server": "side"})
            (pub,) = await rec.wait("server_publication", channel=channel)
            assert pub["data"] == {"server": "side"}
        finally:
            await client.disconnect()

    run_scenario(scenario())


def test_join_leave_pushed(rt_server: Server) -> None:
    """With force_push_join_leave a Python subscriber sees another client join and leave."""
    channel = name("py-jl-")
    user_a, user_b = name("py-a-"), name("py-b-")

    async def scenario() -> None:
        rec = Recorder()
        a, _ = sdk_client(rt_server, rec, token=rt_server.token(user_a), label="a")
        b, _ = sdk_client(
            rt_server, rec, token=rt_server.token(user_b, info={"role": "b"}), label="b"
        )
        sub_a = subscribe(a, channel, rec, "a")
        sub_b = subscribe(b, channel, rec, "b")
        try:
            await a.connect()
            await sub_a.subscribe()
            await bounded(sub_a.ready())
            await b.connect()
            await bounded(b.ready())
            b_id = rec.find("connected", client="b")[0]["id"]
            await sub_b.subscribe()
            (join,) = await rec.wait("join", client="a", info=_info(user_b, b_id))
            await sub_b.unsubscribe()
            (leave,) = await rec.wait("leave", client="a", info=_info(user_b, b_id))
            assert join["info"]["conn_info"] == leave["info"]["conn_info"] == {"role": "b"}
        finally:
            await b.disconnect()
            await a.disconnect()

    run_scenario(scenario())


def _info(user: str, client: str) -> dict[str, Any]:
    return {"user": user, "client": client, "conn_info": {"role": "b"}, "chan_info": None}


def test_api_disconnect_is_terminal_3503(rt_server: Server) -> None:
    """Server API disconnect closes the Python client with code 3503 and it does not reconnect."""
    user = name("py-u-")

    async def scenario() -> None:
        rec = Recorder()
        token = rt_server.token(user)
        async with subscribed(rt_server, name("py-dc-"), rec, token=token) as (client, _):
            await in_thread(rt_server.cent_client.disconnect, cent.DisconnectRequest(user=user))
            (d,) = await rec.wait("disconnected")
            assert (d["code"], d["reason"]) == (3503, "force disconnect")
            assert client.state == ClientState.DISCONNECTED
            assert rec.find("connecting") == [rec.events[0]], "no reconnect after 3503"

    run_scenario(scenario())


def test_api_unsubscribe_is_2000(rt_server: Server) -> None:
    """Server API unsubscribe ends the Python subscription with code 2000; the client stays."""
    user, channel = name("py-u-"), name("py-us-")

    async def scenario() -> None:
        rec = Recorder()
        token = rt_server.token(user)
        async with subscribed(rt_server, channel, rec, token=token) as (client, sub):
            await in_thread(
                rt_server.cent_client.unsubscribe,
                cent.UnsubscribeRequest(user=user, channel=channel),
            )
            (u,) = await rec.wait("unsubscribed")
            assert (u["code"], u["reason"]) == (2000, "server unsubscribe")
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert client.state == ClientState.CONNECTED
            assert len(rec.find("subscribed")) == 1, "no resubscribe after a terminal code"

    run_scenario(scenario())


def test_api_publish_versions_suppress_outdated(rt_server: Server) -> None:
    """HTTP API ``publish``/``broadcast`` with ``version``: outdated ones are dropped.

    A subscriber gets only the accepted publications, history holds only them, and the
    suppressed calls succeed with the stream's unchanged offset and epoch. Without
    history (``skip_history``) versions are not compared.
    """
    channel = name("py-ver-")
    api = rt_server.cent_client

    def publish(n: int, version: int, epoch: str = "a", **extra: Any) -> Any:
        request = cent.PublishRequest(
            channel=channel, data={"n": n}, version=version, version_epoch=epoch, **extra
        )
        return api.publish(request)

    def calls() -> list[tuple[int, str]]:
        results = [publish(1, 5), publish(2, 4), publish(3, 5)]  # 4 and 5 are outdated
        broadcast = cent.BroadcastRequest(
            channels=[channel], data={"n": 4}, version=6, version_epoch="a"
        )
        results.append(api.broadcast(broadcast).responses[0].result)
        results.append(publish(5, 1, "b"))  # a new version epoch starts over
        results.append(publish(6, 3, "", skip_history=True))  # no history: not compared
        results.append(publish(7, 1, ""))  # an empty epoch compares with "b": outdated
        results.append(publish(8, 0, "b"))  # no version
        return [(r.offset, r.epoch) for r in results]

    async def scenario() -> tuple[list[tuple[int, str]], list[Any]]:
        rec = Recorder()
        async with subscribed(rt_server, channel, rec, token=rt_server.token(name("py-u-"))):
            positions = await in_thread(calls)
            pubs = await rec.wait("publication", count=5)
            return positions, pubs

    positions, pubs = run_scenario(scenario())
    epoch = positions[0][1]
    assert epoch
    assert positions == [
        (1, epoch), (1, epoch), (1, epoch), (2, epoch), (3, epoch), (0, ""), (3, epoch),
        (4, epoch),
    ]
    assert [p["data"] for p in pubs] == [{"n": n} for n in (1, 4, 5, 6, 8)]
    kept = api.history(cent.HistoryRequest(channel=channel, limit=-1))
    assert [p.data for p in kept.publications] == [{"n": n} for n in (1, 4, 5, 8)]
    assert (kept.offset, kept.epoch) == (4, epoch)
