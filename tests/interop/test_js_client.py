"""centrifuge-js 5.7.4 (Node, ``ws`` transport) against a real rtserver process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import cent
import pytest
from interop_support import EXPIRED_CLOSE_DELAY, NodeScenario, Server

RunJS = Callable[..., NodeScenario]


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _events(events: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e for e in events if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())
    ]


def _with(events: list[dict[str, Any]], key: str) -> dict[str, Any]:
    found = [e for e in events if key in e]
    assert found, f"no line with {key!r} in {events}"
    return found[-1]


def test_connect_subscribe_receive_presence_history(rt_server: Server, run_js: RunJS) -> None:
    """A JWT-authenticated JS client receives cent publications and reads presence and history."""
    user, channel = _name("js-u-"), _name("js-ch-")
    info = {"name": "Alice"}
    js = run_js("pubsub", TOKEN=rt_server.token(user, info=info), CHANNEL=channel, COUNT="3")
    ready = js.expect("subscribed")
    client_id = ready["id"]
    sent = [{"n": i, "text": f"hello {i}"} for i in range(1, 4)]
    offsets = [rt_server.publish(channel, data).offset for data in sent]
    js.send("published")
    events = js.finish()

    pubs = _events(events, "publication", channel=channel)
    assert [p["data"] for p in pubs] == sent
    assert [p["offset"] for p in pubs] == offsets == [1, 2, 3]
    assert all("info" not in p for p in pubs), "API publications carry no publisher info"

    presence = _with(events, "presence")["presence"]
    assert list(presence) == [client_id]
    assert presence[client_id]["user"] == user
    assert presence[client_id]["client"] == client_id
    assert presence[client_id]["connInfo"] == info
    assert _with(events, "presence_stats")["presence_stats"] == {"numClients": 1, "numUsers": 1}

    history = _with(events, "history")["history"]
    assert [p["data"] for p in history["publications"]] == sent
    assert [p["offset"] for p in history["publications"]] == [1, 2, 3]
    assert history["offset"] == 3
    assert isinstance(history["epoch"], str) and history["epoch"]
    assert [p["data"] for p in _with(events, "history_latest")["history_latest"]] == [sent[-1]]

    subscribed = _events(events, "subscribed")
    assert len(subscribed) == 1
    assert subscribed[0]["recoverable"] is True
    assert subscribed[0]["positioned"] is True
    assert subscribed[0]["streamPosition"]["offset"] == 0


def test_publish_forbidden_is_103(rt_server: Server, run_js: RunJS) -> None:
    """A JS publish into a namespace without client publish permission fails with error 103."""
    user = _name("js-u-")
    js = run_js(
        "publish_denied",
        TOKEN=rt_server.token(user),
        RO_CHANNEL=_name("ro:"),
        CHAT_CHANNEL=_name("chat:"),
    )
    events = js.finish()
    error = _with(events, "ro_publish_error")["ro_publish_error"]
    assert error == {"code": 103, "message": "permission denied"}
    after = _with(events, "state_after_error")
    assert after == {"state_after_error": "connected", "ro_state": "subscribed"}
    own = _with(events, "chat_publication")["chat_publication"]
    assert own["data"] == {"text": "allowed"}
    assert own["info"]["user"] == user


@pytest.mark.parametrize("mode", ["disconnect", "drop"])
def test_reconnect_recovers_missed_publications(
    rt_server: Server, run_js: RunJS, mode: str
) -> None:
    """After disconnect()/a dropped transport the JS client recovers every missed publication."""
    user, channel = _name("js-u-"), _name("js-rec-")
    live, missed = 2, 5
    js = run_js(
        "recover",
        TOKEN=rt_server.token(user),
        CHANNEL=channel,
        MODE=mode,
        LIVE=str(live),
        MISSED=str(missed),
    )
    js.expect("subscribed")
    for i in range(live):
        rt_server.publish(channel, {"live": i})
    js.send("published_live")
    js.expect("away")
    for i in range(missed):
        rt_server.publish(channel, {"missed": i})
    js.send("published_missed")
    js.expect("recovered")
    rt_server.publish(channel, {"sentinel": True})
    js.send("published_sentinel")
    events = js.finish()

    subscribed = _events(events, "subscribed")
    assert len(subscribed) == 2, subscribed
    first, again = subscribed
    assert first["recoverable"] is True and first["wasRecovering"] is False
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]

    pubs = _events(events, "publication")
    data = [p["data"] for p in pubs]
    expected = (
        [{"live": i} for i in range(live)]
        + [{"missed": i} for i in range(missed)]
        + [{"sentinel": True}]
    )
    assert data == expected, "every publication exactly once, in order"
    assert [p["offset"] for p in pubs] == list(range(1, live + missed + 2))
    # The missed ones came with the resubscribe (between the second subscribed event and
    # the sentinel), not before it.
    index = events.index(again)
    after = [e["data"] for e in events[index:] if e.get("event") == "publication"]
    assert after == expected[live:]
    away = events[: events.index(_with(events, "away_state"))]
    if mode == "disconnect":
        assert _events(away, "disconnected", code=0), "disconnect() → disconnected"
    else:
        assert _events(away, "connecting", code=1), "dropped transport → connecting"
        assert not _events(away, "disconnected")
        assert _with(events, "released_frames")["released_frames"] >= 1


def test_expired_token_refreshed_on_connect(rt_server: Server, run_js: RunJS) -> None:
    """Connecting with an expired token gets 109; the JS SDK calls getToken and connects."""
    user = _name("js-u-")
    js = run_js(
        "token_expired",
        TOKEN=rt_server.token(user, ttl=-120),
        FRESH_TOKEN=rt_server.token(user, ttl=3600),
    )
    events = js.finish()
    errors = _events(events, "error")
    assert [(e["type"], e["code"]) for e in errors] == [("connect", 109)]
    assert errors[0]["message"] == "token expired"
    assert len(_events(events, "getToken")) == 1
    result = _with(events, "connected_with")
    assert result["getToken_calls"] == 1 and result["state"] == "connected"
    assert not _events(events[: events.index(result)], "disconnected")


def test_short_lived_token_refreshed_without_disconnect(rt_server: Server, run_js: RunJS) -> None:
    """A 3 s connection token is refreshed via getToken; the JS client stays connected past exp."""
    user, channel = _name("js-u-"), _name("js-ref-")
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
    assert len(_events(before, "connected")) == 1
    assert [e for e in before if e.get("event") in ("connecting", "disconnected", "error")] == [
        {"client": "main", "event": "connecting", "code": 0, "reason": "connect called"}
    ]
    calls = _events(events, "getToken")
    assert calls and calls[0]["at"] <= exp + EXPIRED_CLOSE_DELAY


def test_server_side_subscription_from_token_channels(rt_server: Server, run_js: RunJS) -> None:
    """Token `channels` claim: a server-side subscription feeding client.on('publication')."""
    user, channel = _name("js-u-"), _name("js-srv-")
    js = run_js("server_side", TOKEN=rt_server.token(user, channels=[channel]), CHANNEL=channel)
    js.expect("subscribed")
    rt_server.publish(channel, {"server": "side"})
    js.send("published")
    events = js.finish()
    subscribed = _events(events, "server_subscribed", channel=channel)
    assert len(subscribed) == 1
    pubs = _events(events, "server_publication", channel=channel)
    assert [p["data"] for p in pubs] == [{"server": "side"}]


def test_join_leave_pushed(rt_server: Server, run_js: RunJS) -> None:
    """With force_push_join_leave a JS subscriber sees another client join and leave."""
    channel = _name("js-jl-")
    user_a, user_b = _name("js-a-"), _name("js-b-")
    js = run_js(
        "join_leave",
        TOKEN_A=rt_server.token(user_a),
        TOKEN_B=rt_server.token(user_b, info={"role": "b"}),
        CHANNEL=channel,
    )
    events = js.finish()
    b_id = _with(events, "b_id")["b_id"]
    join = _with(events, "a_saw_join")["a_saw_join"]
    leave = _with(events, "a_saw_leave")["a_saw_leave"]
    for info in (join, leave):
        assert info["client"] == b_id
        assert info["user"] == user_b
        assert info["connInfo"] == {"role": "b"}


def test_api_disconnect_is_terminal_3503(rt_server: Server, run_js: RunJS) -> None:
    """Server API disconnect closes the JS client with code 3503 and it does not reconnect."""
    user = _name("js-u-")
    js = run_js("api_disconnect", TOKEN=rt_server.token(user), CHANNEL=_name("js-dc-"))
    js.expect("subscribed")
    rt_server.cent_client.disconnect(cent.DisconnectRequest(user=user))
    js.send("disconnected")
    events = js.finish()
    result = _with(events, "disconnect")
    assert result["disconnect"] == {"code": 3503, "reason": "force disconnect"}
    assert result["state"] == "disconnected"
    assert not _events(events, "connecting", code=3503)


def test_api_unsubscribe_is_2000(rt_server: Server, run_js: RunJS) -> None:
    """Server API unsubscribe ends the JS subscription with code 2000; the client stays."""
    user, channel = _name("js-u-"), _name("js-us-")
    js = run_js("api_unsubscribe", TOKEN=rt_server.token(user), CHANNEL=channel)
    js.expect("subscribed")
    rt_server.cent_client.unsubscribe(cent.UnsubscribeRequest(user=user, channel=channel))
    js.send("unsubscribed")
    events = js.finish()
    result = _with(events, "unsubscribe")
    assert result["unsubscribe"] == {"code": 2000, "reason": "server unsubscribe"}
    assert result["sub_state"] == "unsubscribed"
    assert result["client_state"] == "connected"
    assert len(_events(events, "subscribed")) == 1, "no resubscribe after a terminal code"
