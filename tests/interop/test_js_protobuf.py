"""centrifuge-js 5.7.4's Protobuf build (``centrifuge/build/protobuf``) in Node.

Over WebSocket (``centrifuge-protobuf`` subprotocol) and over HTTP-streaming +
``/emulation`` with ``application/octet-stream`` bodies, next to a JSON client in the
same channel (js/protobuf_session.mjs). The server is the Protobuf suites' rtserver
(``pb_server``: client publish in channels without namespace, HTTP-streaming on).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from harness import EXPIRED_CLOSE_DELAY, NodeScenario, Server
from interop_support import last_with, unique

RunJS = Callable[..., NodeScenario]

pytestmark = [pytest.mark.interop, pytest.mark.timeout(40)]


@pytest.fixture(scope="module")
def rt_server(pb_server: Server) -> Server:
    """``run_js`` and the failure-log hook use the Protobuf suites' server."""
    return pb_server


@pytest.mark.parametrize("transport", ["websocket", "http_stream"])
def test_protobuf_build_session(rt_server: Server, run_js: RunJS, transport: str) -> None:
    """Everything a Protobuf app does, over one transport, next to a JSON client.

    JWT, server-side and client subscriptions, raw bytes to both encodings, presence,
    history, RPC 108, refresh and sub_refresh, recovery.
    """
    user, peer = unique("pbjs-u-"), unique("pbjs-p-")
    channel, server_channel = unique("pbjs-ch-"), unique("pbjs-srv-")
    private = unique("$pbjs-priv-")
    exp = int(time.time()) + 4
    count, missed = 3, 2
    js = run_js(
        "protobuf_session",
        timeout=35.0,
        BASE_URL=rt_server.url,
        TRANSPORT=transport,
        TOKEN=rt_server.token(user, ttl=None, exp=exp, channels=[server_channel]),
        TOKEN_EXP=str(exp),
        FRESH_TOKEN=rt_server.token(user, channels=[server_channel]),
        SUB_TOKEN=rt_server.token(user, ttl=None, exp=exp, channel=private),
        FRESH_SUB_TOKEN=rt_server.token(user, channel=private),
        PEER_TOKEN=rt_server.token(peer),
        CHANNEL=channel,
        PRIVATE_CHANNEL=private,
        SERVER_CHANNEL=server_channel,
        COUNT=str(count),
        MISSED=str(missed),
        CLOSE_DELAY=str(EXPIRED_CLOSE_DELAY),
    )
    ready = js.expect("subscribed")
    assert ready["transport"] == transport
    assert ready["server_subscribed"] == server_channel and ready["recoverable"] is True
    sent = [{"n": i} for i in range(count)]
    for data in sent:
        rt_server.publish(channel, data)
    rt_server.publish(server_channel, {"server": "side"})
    js.send("published")
    js.expect("away", timeout=20)
    for i in range(missed):
        rt_server.publish(channel, {"missed": i})
    js.send("published_missed")
    events = js.finish(timeout=20)

    api = last_with(events, "api")
    assert [p["data"] for p in api["api"]] == [orjson.dumps(d).decode() for d in sent]
    assert all(p["binary"] for p in api["api"]), "Protobuf payloads are Uint8Array"
    assert [p["offset"] for p in api["api"]] == [1, 2, 3]
    assert api["peer_api"] == sent
    assert api["server_pub"]["data"] == '{"server":"side"}'

    raw = '{"raw": "bytes",\n "from": "protobuf"}'
    own = last_with(events, "own")
    assert own["own"] == {"data": raw, "offset": 4, "binary": True}
    assert own["at_peer"] == {"raw": "bytes", "from": "protobuf"}

    state = last_with(events, "presence")
    assert sorted(c["user"] for c in state["presence"]) == sorted([user, peer])
    assert state["presence_stats"] == {"numClients": 2, "numUsers": 2}
    assert [p["data"] for p in state["history"]][-1] == raw
    assert [p["offset"] for p in state["history"]] == [1, 2, 3, 4]

    assert last_with(events, "rpc_error")["rpc_error"]["code"] == 108

    after = last_with(events, "after_expiry")["after_expiry"]
    assert after["state"] == "connected" and after["private"] == "subscribed"
    assert sorted(after["token_calls"]) == ["connection", "subscription"]

    recovered = last_with(events, "again")
    assert recovered["again"] == {"wasRecovering": True, "recovered": True}
    assert [p["data"] for p in recovered["recovered_pubs"]] == [
        orjson.dumps({"missed": i}).decode() for i in range(missed)
    ]
    assert [p["offset"] for p in recovered["recovered_pubs"]] == [5, 6]
    codes = [e.get("code") for e in events if e.get("event") in ("disconnected", "connecting")]
    assert 3506 not in codes and 3501 not in codes
