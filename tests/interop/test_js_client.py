"""centrifuge-js 5.7.4 (Node, ``ws`` transport) against a real rtserver process."""

from __future__ import annotations

import time
from collections.abc import Callable

import cent
import pytest
from interop_support import (
    EXPIRED_CLOSE_DELAY,
    NodeScenario,
    Server,
    check_pubsub_presence_history,
    events_of,
    last_with,
    unique,
)

RunJS = Callable[..., NodeScenario]


def test_connect_subscribe_receive_presence_history(rt_server: Server, run_js: RunJS) -> None:
    """A JWT-authenticated JS client receives cent publications and reads presence and history."""
    user, channel = unique("js-u-"), unique("js-ch-")
    info = {"name": "Alice"}
    js = run_js("pubsub", TOKEN=rt_server.token(user, info=info), CHANNEL=channel, COUNT="3")
    ready = js.expect("subscribed")
    client_id = ready["id"]
    sent = [{"n": i, "text": f"hello {i}"} for i in range(1, 4)]
    offsets = [rt_server.publish(channel, data).offset for data in sent]
    js.send("published")
    events = js.finish()

    check_pubsub_presence_history(
        events,
        channel=channel,
        sent=sent,
        offsets=offsets,
        client_id=client_id,
        user=user,
        info=info,
    )
    pubs = events_of(events, "publication", channel=channel)
    assert all("info" not in p for p in pubs), "API publications carry no publisher info"

    subscribed = events_of(events, "subscribed")
    assert len(subscribed) == 1
    assert subscribed[0]["recoverable"] is True
    assert subscribed[0]["positioned"] is True
    assert subscribed[0]["streamPosition"]["offset"] == 0


def test_publish_forbidden_is_103(rt_server: Server, run_js: RunJS) -> None:
    """A JS publish into a namespace without client publish permission fails with error 103."""
    user = unique("js-u-")
    js = run_js(
        "publish_denied",
        TOKEN=rt_server.token(user),
        RO_CHANNEL=unique("ro:"),
        CHAT_CHANNEL=unique("chat:"),
    )
    events = js.finish()
    error = last_with(events, "ro_publish_error")["ro_publish_error"]
    assert error == {"code": 103, "message": "permission denied"}
    after = last_with(events, "state_after_error")
    assert after == {"state_after_error": "connected", "ro_state": "subscribed"}
    own = last_with(events, "chat_publication")["chat_publication"]
    assert own["data"] == {"text": "allowed"}
    assert own["info"]["user"] == user


@pytest.mark.parametrize("mode", ["disconnect", "drop"])
def test_reconnect_recovers_missed_publications(
    rt_server: Server, run_js: RunJS, mode: str
) -> None:
    """After disconnect()/a dropped transport the JS client recovers every missed publication."""
    user, channel = unique("js-u-"), unique("js-rec-")
    live, missed = 2, 5
    js = run_js(
        "recover",
        TOKEN=rt_server.token(user),
        CHANNEL=channel,
        MODE=mode,
        LIVE=str(live),
        MISSED=str(missed),
    )
    js.run_recovery(
        rt_server.publish, channel, live=live, missed=missed, mode=mode, transport="websocket"
    )


def test_expired_token_refreshed_on_connect(rt_server: Server, run_js: RunJS) -> None:
    """Connecting with an expired token gets 109; the JS SDK calls getToken and connects."""
    user = unique("js-u-")
    js = run_js(
        "token_expired",
        TOKEN=rt_server.token(user, ttl=-120),
        FRESH_TOKEN=rt_server.token(user, ttl=3600),
    )
    events = js.finish()
    errors = events_of(events, "error")
    assert [(e["type"], e["code"]) for e in errors] == [("connect", 109)]
    assert errors[0]["message"] == "token expired"
    assert len(events_of(events, "getToken")) == 1
    result = last_with(events, "connected_with")
    assert result["getToken_calls"] == 1 and result["state"] == "connected"
    assert not events_of(events[: events.index(result)], "disconnected")


def test_short_lived_token_refreshed_without_disconnect(rt_server: Server, run_js: RunJS) -> None:
    """A 3 s connection token is refreshed via getToken; the JS client stays connected past exp."""
    user, channel = unique("js-u-"), unique("js-ref-")
    exp = int(time.time()) + 3
    js = run_js(
        "token_refresh",
        TOKEN=rt_server.token(user, ttl=None, exp=exp),
        TOKEN_EXP=str(exp),
        CLOSE_DELAY=str(EXPIRED_CLOSE_DELAY),
        FRESH_TOKEN=rt_server.token(user, ttl=3600),
        CHANNEL=channel,
    )
    ready = js.expect("past_expiry", timeout=15)
    assert time.time() > exp + EXPIRED_CLOSE_DELAY
    assert ready["state"] == "connected"
    assert ready["getToken_calls"] >= 1
    assert ready["in_presence"] is True
    result = rt_server.cent_client.presence(cent.PresenceRequest(channel=channel))
    assert list(result.presence) == [ready["id"]], "server still has the same connection"
    js.send("checked")
    events = js.finish()
    before = events[: events.index(ready)]
    assert len(events_of(before, "connected")) == 1
    assert [e for e in before if e.get("event") in ("connecting", "disconnected", "error")] == [
        {"client": "main", "event": "connecting", "code": 0, "reason": "connect called"}
    ]
    calls = events_of(events, "getToken")
    assert calls and calls[0]["at"] <= exp + EXPIRED_CLOSE_DELAY


def test_server_side_subscription_from_token_channels(rt_server: Server, run_js: RunJS) -> None:
    """Token `channels` claim: a server-side subscription feeding client.on('publication')."""
    user, channel = unique("js-u-"), unique("js-srv-")
    js = run_js("server_side", TOKEN=rt_server.token(user, channels=[channel]), CHANNEL=channel)
    js.expect("subscribed")
    rt_server.publish(channel, {"server": "side"})
    js.send("published")
    events = js.finish()
    subscribed = events_of(events, "server_subscribed", channel=channel)
    assert len(subscribed) == 1
    pubs = events_of(events, "server_publication", channel=channel)
    assert [p["data"] for p in pubs] == [{"server": "side"}]


def test_join_leave_pushed(rt_server: Server, run_js: RunJS) -> None:
    """With force_push_join_leave a JS subscriber sees another client join and leave."""
    channel = unique("js-jl-")
    user_a, user_b = unique("js-a-"), unique("js-b-")
    js = run_js(
        "join_leave",
        TOKEN_A=rt_server.token(user_a),
        TOKEN_B=rt_server.token(user_b, info={"role": "b"}),
        CHANNEL=channel,
    )
    events = js.finish()
    b_id = last_with(events, "b_id")["b_id"]
    join = last_with(events, "a_saw_join")["a_saw_join"]
    leave = last_with(events, "a_saw_leave")["a_saw_leave"]
    for info in (join, leave):
        assert info["client"] == b_id
        assert info["user"] == user_b
        assert info["connInfo"] == {"role": "b"}


def test_api_disconnect_is_terminal_3503(rt_server: Server, run_js: RunJS) -> None:
    """Server API disconnect closes the JS client with code 3503 and it does not reconnect."""
    user = unique("js-u-")
    js = run_js("api_disconnect", TOKEN=rt_server.token(user), CHANNEL=unique("js-dc-"))
    js.expect("subscribed")
    rt_server.cent_client.disconnect(cent.DisconnectRequest(user=user))
    js.send("disconnected")
    events = js.finish()
    result = last_with(events, "disconnect")
    assert result["disconnect"] == {"code": 3503, "reason": "force disconnect"}
    assert result["state"] == "disconnected"
    assert not events_of(events, "connecting", code=3503)


def test_api_unsubscribe_is_2000(rt_server: Server, run_js: RunJS) -> None:
    """Server API unsubscribe ends the JS subscription with code 2000; the client stays."""
    user, channel = unique("js-u-"), unique("js-us-")
    js = run_js("api_unsubscribe", TOKEN=rt_server.token(user), CHANNEL=channel)
    js.expect("subscribed")
    rt_server.cent_client.unsubscribe(cent.UnsubscribeRequest(user=user, channel=channel))
    js.send("unsubscribed")
    events = js.finish()
    result = last_with(events, "unsubscribe")
    assert result["unsubscribe"] == {"code": 2000, "reason": "server unsubscribe"}
    assert result["sub_state"] == "unsubscribed"
    assert result["client_state"] == "connected"
    assert len(events_of(events, "subscribed")) == 1, "no resubscribe after a terminal code"
