"""centrifuge-js 5.7.4 in Node over bidirectional emulation: HTTP-streaming and SSE + /emulation.

Each scenario gives the SDK exactly one transport (``http_stream`` or ``sse``) so a connection
can only succeed through it, and checks the transport the SDK reports. The server is a separate
rtserver process with ``http_stream.enabled`` and ``sse.enabled`` (``rt_server`` is overridden
for this module, so ``run_js`` and the failure-log hook of conftest.py use it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cent
import pytest
from harness import NodeScenario, Server, run_server
from interop_support import (
    check_pubsub_presence_history,
    events_of,
    last_with,
    unique,
)

RunJS = Callable[..., NodeScenario]

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

TRANSPORTS = ["http_stream", "sse"]


@pytest.fixture(scope="module")
def rt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An rtserver with HTTP-stream and SSE; Node's fetch sends no Origin: strict origin list."""
    overrides = {"http_stream": {"enabled": True}, "sse": {"enabled": True}}
    with run_server(tmp_path_factory.mktemp("rtserver-emulation"), overrides) as server:
        yield server


@pytest.fixture
def run_emulation(
    run_js: RunJS, node_modules: Path, rt_server: Server
) -> Callable[..., NodeScenario]:
    """Start ``js/emulation_<name>.mjs`` against the emulation server for one transport."""
    if not (node_modules / "eventsource" / "package.json").is_file():
        pytest.fail(
            f"{node_modules / 'eventsource'} is missing: run npm ci --prefix tests/interop",
            pytrace=False,
        )

    def start(name: str, transport: str, **env: Any) -> NodeScenario:
        return run_js(f"emulation_{name}", BASE_URL=rt_server.url, TRANSPORT=transport, **env)

    return start


def _presence_clients(server: Server, channel: str, count: int, timeout: float = 5.0) -> list[str]:
    """Poll presence until ``count`` clients remain (a dropped stream is noticed asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        clients = list(server.cent_client.presence(cent.PresenceRequest(channel=channel)).presence)
        if len(clients) == count or time.monotonic() > deadline:
            return clients
        time.sleep(0.05)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_emulation_pubsub_presence_history_publish(
    rt_server: Server, run_emulation: Callable[..., NodeScenario], transport: str
) -> None:
    """Over HTTP-stream/SSE alone the JS client gets cent publications, presence, history and publishes."""
    user, peer_user = unique("emu-u-"), unique("emu-p-")
    channel, chat = unique("emu-ch-"), unique("chat:emu-")
    info = {"name": "Alice"}
    js = run_emulation(
        "pubsub",
        transport,
        TOKEN=rt_server.token(user, info=info),
        PEER_TOKEN=rt_server.token(peer_user),
        CHANNEL=channel,
        CHAT_CHANNEL=chat,
        COUNT="3",
    )
    ready = js.expect("subscribed")
    assert ready["transport"] == transport, "the SDK connected through the only transport given"
    assert ready["peer_transport"] == transport
    client_id = ready["id"]
    sent = [{"n": i, "text": f"hello {i}"} for i in range(1, 4)]
    offsets = [rt_server.publish(channel, data).offset for data in sent]
    js.send("published")
    events = js.finish()

    connected = events_of(events, "connected", client="main")
    assert [e["transport"] for e in connected] == [transport]
    assert not events_of(events, "error"), "no transport or command errors"

    check_pubsub_presence_history(
        events,
        channel=channel,
        sent=sent,
        offsets=offsets,
        client_id=client_id,
        user=user,
        info=info,
    )

    denied = last_with(events, "denied_publish_error")["denied_publish_error"]
    assert denied == {"code": 103, "message": "permission denied"}

    own = last_with(events, "chat_publication")
    for pub in (own["chat_publication"], own["peer_publication"]):
        assert pub["data"] == {"text": "allowed"}
        assert pub["info"]["user"] == user
        assert pub["info"]["client"] == client_id
    result = rt_server.cent_client.history(cent.HistoryRequest(channel=chat, limit=-1))
    assert [p.data for p in result.publications] == [{"text": "allowed"}]
    assert last_with(events, "final_transport")["final_transport"] == transport


def released_session(server: Server, channel: str) -> None:
    """While the client is away the server has released its old session."""
    assert _presence_clients(server, channel, 0) == [], "the server released the old session"


@pytest.mark.parametrize("mode", ["disconnect", "drop"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_emulation_reconnect_recovers_missed(
    rt_server: Server, run_emulation: Callable[..., NodeScenario], transport: str, mode: str
) -> None:
    """After disconnect()/a dropped HTTP-stream/SSE connection the JS client recovers missed publications once, in order."""
    user, channel = unique("emu-u-"), unique("emu-rec-")
    live, missed = 2, 5
    js = run_emulation(
        "recover",
        transport,
        TOKEN=rt_server.token(user),
        CHANNEL=channel,
        MODE=mode,
        LIVE=str(live),
        MISSED=str(missed),
    )
    js.run_recovery(
        rt_server.publish,
        channel,
        live=live,
        missed=missed,
        mode=mode,
        transport=transport,
        while_away=lambda: released_session(rt_server, channel),
    )
