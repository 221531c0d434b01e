"""centrifuge-python 0.7.0 with ``use_protobuf=True`` against a real rtserver process.

The SDK negotiates the ``centrifuge-protobuf`` WebSocket subprotocol; payloads are bytes.
JSON published through the API arrives as its compact UTF-8 bytes; bytes published by a
Protobuf client reach JSON subscribers as JSON when they are valid JSON, and close them
with 3506 otherwise (docs/client-protocol.rst, "Protobuf encoding").
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from centrifuge import ClientState, ReplyError, SubscriptionState
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


def test_protobuf_client_publishes_presence_history_in_a_mixed_channel(pb_server: Server) -> None:
    """JWT connect, API and client publications reach a Protobuf and a JSON subscriber alike."""
    pb_user, json_user, channel = name("pb-u-"), name("js-u-"), name("pb-ch-")
    raw = b'{"raw": "bytes",\n "n": 1}'

    async def scenario() -> None:
        rec = Recorder()
        pb, _ = sdk_client(
            pb_server,
            rec,
            token=pb_server.token(pb_user, info={"k": "v"}),
            label="pb",
            use_protobuf=True,
        )
        js, _ = sdk_client(pb_server, rec, token=pb_server.token(json_user), label="json")
        pb_sub = subscribe(pb, channel, rec, "pb")
        js_sub = subscribe(js, channel, rec, "json")
        try:
            await pb.connect()
            await js.connect()
            await pb_sub.subscribe()
            await js_sub.subscribe()
            await bounded(pb_sub.ready())
            await bounded(js_sub.ready())
            pb_id = rec.find("connected", client="pb")[0]["id"]

            await in_thread(pb_server.publish, channel, {"api": 1})
            await bounded(pb_sub.publish(raw))
            await in_thread(pb_server.publish, channel, {"api": 2})
            pb_pubs = await rec.wait("publication", client="pb", count=3)
            js_pubs = await rec.wait("publication", client="json", count=3)
            assert [p["data"] for p in pb_pubs] == [b'{"api":1}', raw, b'{"api":2}']
            assert [p["data"] for p in js_pubs] == [{"api": 1}, orjson.loads(raw), {"api": 2}]
            assert [p["offset"] for p in pb_pubs] == [p["offset"] for p in js_pubs] == [1, 2, 3]
            assert pb_pubs[1]["info"]["user"] == js_pubs[1]["info"]["user"] == pb_user

            presence = await bounded(pb_sub.presence())
            assert presence.clients[pb_id].user == pb_user
            assert presence.clients[pb_id].conn_info == b'{"k":"v"}'
            stats = await bounded(pb_sub.presence_stats())
            assert (stats.num_clients, stats.num_users) == (2, 2)
            history = await bounded(pb_sub.history(limit=-1))
            assert [p.data for p in history.publications] == [b'{"api":1}', raw, b'{"api":2}']
            assert history.offset == 3 and history.epoch
        finally:
            await js.disconnect()
            await pb.disconnect()

    run_scenario(scenario())


def test_binary_bytes_close_json_subscribers_with_3506(pb_server: Server) -> None:
    """Bytes that are not JSON reach Protobuf subscribers; a JSON subscriber gets 3506."""
    channel = name("pb-bin-")
    binary = bytes(range(256))

    async def scenario() -> None:
        rec = Recorder()
        pb, _ = sdk_client(
            pb_server, rec, token=pb_server.token(name("pb-")), label="pb", use_protobuf=True
        )
        js, _ = sdk_client(pb_server, rec, token=pb_server.token(name("js-")), label="json")
        pb_sub = subscribe(pb, channel, rec, "pb")
        js_sub = subscribe(js, channel, rec, "json")
        try:
            await pb.connect()
            await js.connect()
            await pb_sub.subscribe()
            await js_sub.subscribe()
            await bounded(pb_sub.ready())
            await bounded(js_sub.ready())
            await bounded(pb_sub.publish(binary))
            (own,) = await rec.wait("publication", client="pb")
            assert own["data"] == binary
            (closed,) = await rec.wait("disconnected", client="json")
            assert (closed["code"], closed["reason"]) == (3506, "inappropriate protocol")
            assert pb.state == ClientState.CONNECTED
        finally:
            await js.disconnect()
            await pb.disconnect()

    run_scenario(scenario())


def test_protobuf_recovery_after_disconnect(pb_server: Server) -> None:
    """A Protobuf client that reconnects recovers the missed publications (recovered: true)."""
    user, channel = name("pb-u-"), name("pb-rec-")

    async def scenario() -> None:
        rec = Recorder()
        token = pb_server.token(user)
        async with subscribed(
            pb_server, channel, rec, token=token, use_protobuf=True
        ) as (client, _):
            await in_thread(pb_server.publish, channel, {"live": 0})
            await rec.wait("publication", count=1)
            await client.disconnect()
            for i in range(3):
                await in_thread(pb_server.publish, channel, {"missed": i})
            await client.connect()
            await rec.wait("subscribed", count=2)
            pubs = await rec.wait("publication", count=4)
        first, again = rec.find("subscribed")
        assert again["was_recovering"] is True and again["recovered"] is True
        assert again["stream_position"]["epoch"] == first["stream_position"]["epoch"]
        assert [p["data"] for p in pubs] == [
            b'{"live":0}',
            b'{"missed":0}',
            b'{"missed":1}',
            b'{"missed":2}',
        ]
        assert [p["offset"] for p in pubs] == [1, 2, 3, 4]

    run_scenario(scenario())


def test_protobuf_refresh_and_sub_refresh(pb_server: Server) -> None:
    """Short-lived connection and subscription tokens are refreshed over Protobuf."""
    user, channel = name("pb-u-"), name("$pb-priv-")
    exp = int(time.time()) + 3

    async def scenario() -> None:
        rec = Recorder()

        async def get_token() -> str:
            rec.add("get_token")
            return pb_server.token(user, ttl=3600)

        async def get_sub_token(ch: str) -> str:
            rec.add("get_sub_token", channel=ch)
            return pb_server.token(user, ttl=3600, channel=ch)

        client, _ = sdk_client(
            pb_server,
            rec,
            token=pb_server.token(user, ttl=None, exp=exp),
            get_token=get_token,
            use_protobuf=True,
        )
        sub = subscribe(
            client,
            channel,
            rec,
            token=pb_server.token(user, ttl=None, exp=exp, channel=channel),
            get_token=get_sub_token,
        )
        try:
            await client.connect()
            await sub.subscribe()
            await bounded(sub.ready())
            await rec.wait("get_token", timeout=exp - time.time() + 5)
            await rec.wait("get_sub_token", timeout=exp - time.time() + 5)
            await asyncio.sleep(max(0.0, exp + EXPIRED_CLOSE_DELAY + 1.5 - time.time()))
            assert client.state == ClientState.CONNECTED
            assert sub.state == SubscriptionState.SUBSCRIBED
            await in_thread(pb_server.publish, channel, {"after": "refresh"})
            (pub,) = await rec.wait("publication")
            assert pub["data"] == b'{"after":"refresh"}'
            assert not rec.find("disconnected") and not rec.find("unsubscribed")
            assert len(rec.find("connected")) == 1 and len(rec.find("subscribed")) == 1
        finally:
            await client.disconnect()

    run_scenario(scenario())


def test_protobuf_server_side_subscription_and_rpc_error(pb_server: Server) -> None:
    """Token ``channels`` subscribe server-side; RPC without a proxy answers 108."""
    user, channel = name("pb-u-"), name("pb-srv-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(
            pb_server, rec, token=pb_server.token(user, channels=[channel]), use_protobuf=True
        )
        try:
            await client.connect()
            await rec.wait("server_subscribed", channel=channel)
            await in_thread(pb_server.publish, channel, {"server": "side"})
            (pub,) = await rec.wait("server_publication", channel=channel)
            assert pub["data"] == b'{"server":"side"}'
            with pytest.raises(ReplyError) as info:
                await bounded(client.rpc("method", b"\x00payload"))
            assert info.value.code == 108
            assert client.state == ClientState.CONNECTED
        finally:
            await client.disconnect()

    run_scenario(scenario())
