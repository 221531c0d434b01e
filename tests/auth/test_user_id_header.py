"""``client.user_id_http_header`` on a real server, Centrifugo v6's rules.

A connection request's header set by an authenticating proxy names the user when the
connect has no token, no connect proxy gave credentials and anonymous access is off;
a token wins over the header, an empty header is no user, and anonymous access wins over
it (as in Centrifugo). Real parts: ``twistd -n rtserver``, centrifuge-python over
WebSocket (its ``headers`` go on the upgrade request), requests for uni_http_stream and
``cent`` for the server API's presence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cent
import orjson
import pytest
import requests
from centrifuge import Client
from harness import Server, run_server
from pysdk import ClientEvents, Recorder, bounded, name, run_scenario

pytestmark = pytest.mark.interop

HEADER = "X-Authenticated-User"
OVERRIDES = {
    "client": {"user_id_http_header": HEADER},
    "uni_http_stream": {"enabled": True},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("user-header"), OVERRIDES) as running:
        yield running


def presence_users(server: Server, channel: str) -> list[str]:
    result = server.cent_client.presence(cent.PresenceRequest(channel=channel))
    return sorted(info.user for info in result.presence.values())


def ws_user(server: Server, headers: dict[str, str], token: str = "") -> dict[str, Any]:
    """Connect over WebSocket with ``headers``: the channel's presence users, or the close."""
    channel = name("room")

    async def scenario() -> dict[str, Any]:
        rec = Recorder()
        client = Client(server.ws_url, events=ClientEvents(rec), token=token, headers=headers,
                        proxy=None)
        await client.connect()
        try:
            waits = [asyncio.ensure_future(rec.wait(kind)) for kind in ("connected", "disconnected")]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if rec.find("disconnected"):
                return {"disconnected": rec.find("disconnected")[0]["code"]}
            sub = client.new_subscription(channel)
            await sub.subscribe()
            await bounded(sub.ready())
            return {"users": presence_users(server, channel)}
        finally:
            await client.disconnect()

    return run_scenario(scenario())


def test_the_header_names_the_user(server: Server) -> None:
    assert ws_user(server, {HEADER: "alice"}) == {"users": ["alice"]}


def test_header_name_is_case_insensitive(server: Server) -> None:
    assert ws_user(server, {HEADER.lower(): "bob"}) == {"users": ["bob"]}


def test_a_token_wins_over_the_header(server: Server) -> None:
    result = ws_user(server, {HEADER: "alice"}, token=server.token("carol"))
    assert result == {"users": ["carol"]}


def test_no_header_or_an_empty_one_is_refused(server: Server) -> None:
    """No credentials at all: 3501 bad request, as without the option."""
    assert ws_user(server, {}) == {"disconnected": 3501}
    assert ws_user(server, {HEADER: ""}) == {"disconnected": 3501}


def test_unidirectional_http_stream(server: Server) -> None:
    """A unidirectional transport over HTTP takes the header as well."""
    channel = name("news")
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{server.url}/connection/uni_http_stream",
            data=orjson.dumps({"subs": {channel: {}}}),
            headers={HEADER: "dave"},
            stream=True,
            timeout=5.0,
        )
        try:
            lines = response.iter_lines()
            first = orjson.loads(next(lines))
            assert channel in first["connect"]["subs"]
            # the server API disconnects user dave: this connection is his
            server.cent_client.disconnect(
                cent.DisconnectRequest(user="dave", disconnect=cent.Disconnect(code=4000,
                                                                               reason="bye"))
            )
            rest = [orjson.loads(line) for line in lines if line]
            assert rest[0]["join"]["info"]["user"] == "dave"  # its own join (join_leave)
            assert rest[-1] == {"disconnect": {"code": 4000, "reason": "bye"}}
        finally:
            response.close()


def test_anonymous_access_wins_over_the_header(tmp_path: Path) -> None:
    """With ``allow_anonymous_connect_without_token`` a connect without a token is anonymous."""
    over = {
        "client": {**OVERRIDES["client"], "allow_anonymous_connect_without_token": True},
        "channel": {"without_namespace": {"allow_subscribe_for_anonymous": True}},
    }
    with run_server(tmp_path, over) as running:
        assert ws_user(running, {HEADER: "alice"}) == {"users": [""]}
