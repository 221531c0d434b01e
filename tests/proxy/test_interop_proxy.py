"""The proxies end to end: a real backend process, a real ``twistd -n rtserver``, official SDKs.

centrifuge-js 5.7.4 (Node) and centrifuge-python connect without a token: the connect proxy
authenticates the session Cookie of the WebSocket upgrade (or, over HTTP-streaming, the SDK's
emulated ``headers``). Then the subscribe, publish, rpc, refresh and sub_refresh proxies, and
the faults: a backend sleeping past the timeout, answering garbage or 503, stopped mid-run.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from centrifuge import ReplyError
from harness import INTEROP_DIR, NODE_MODULES, NodeScenario, Server, run_server
from proxy_support import Backend, proxy_config
from pysdk import ClientEvents, Recorder, bounded, name, run_scenario, subscribe

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

JS_DIR = INTEROP_DIR / "js"
RunJS = Callable[..., NodeScenario]


@pytest.fixture(scope="module")
def rt_server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An rtserver sending every proxy event to the module's backend (timeouts 500 ms)."""
    with run_server(tmp_path_factory.mktemp("rtserver-proxy"), proxy_config(backend.url)) as s:
        yield s


@pytest.fixture
def run_js(rt_server: Server) -> Iterator[RunJS]:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "centrifuge" / "package.json").is_file():
        pytest.skip("node and tests/interop/node_modules are needed for centrifuge-js")
    started: list[NodeScenario] = []

    def start(script: str, **env: Any) -> NodeScenario:
        values = {"WS_URL": rt_server.ws_url, "BASE_URL": rt_server.url}
        values.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
        scenario = NodeScenario(node, JS_DIR / f"{script}.mjs", values, 30.0)
        started.append(scenario)
        return scenario

    yield start
    for scenario in started:
        scenario.close()


def failure_lines(server: Server, client_id: str) -> list[str]:
    """The server's proxy-failure log lines about one client."""
    return [
        line for line in server.log(tail=10**7).splitlines()
        if re.search(rf"proxy \S+: \w+ for client {client_id} failed", line)
    ]


# --- centrifuge-js ----------------------------------------------------------------------------


def test_js_cookie_session_subscribe_presence_publish_rpc(
    run_js: RunJS, fresh_backend: Backend
) -> None:
    """Cookie auth without a token; subscribe allowed/refused; presence; publish rewritten; rpc."""
    channel, forbidden = name("proxied:allowed-"), name("proxied:nope-")
    js = run_js(
        "proxy_cookie",
        COOKIE="theme=dark; session=alice",
        PEER_COOKIE="session=bob",
        CHANNEL=channel,
        FORBIDDEN=forbidden,
    )
    connected = js.expect(lambda e: "connected" in e)["connected"]
    assert connected["transport"] == "websocket" and connected["data"] == {"welcome": "alice"}
    assert js.expect(lambda e: "subscribed" in e)["subscribed"]["data"] == {"topic": channel}
    assert js.expect(lambda e: "refused" in e)["refused"] == {"code": 1403, "reason": "not a member"}
    presence = js.expect(lambda e: "presence" in e)["presence"]
    me = presence[connected["id"]]
    assert (me["user"], me["connInfo"], me["chanInfo"]) == ("alice", {"name": "Alice"},
                                                             {"seat": "alice"})
    received = js.expect(lambda e: "peer_received" in e)["peer_received"]
    assert received["data"] == {"text": "HELLO", "by": "alice"}
    assert received["info"]["user"] == "alice"
    rpc = js.expect(lambda e: "rpc" in e)["rpc"]
    assert rpc == {"client": connected["id"], "user": "alice", "transport": "websocket",
                   "protocol": "json", "encoding": "json", "echo": {"n": 1}}
    assert js.expect(lambda e: "rpc_error" in e)["rpc_error"] == {
        "code": 1404, "message": "no such thing"
    }
    js.expect(lambda e: e.get("done"))

    (connect,) = [
        r for r in fresh_backend.requests("connect") if r["body"]["client"] == connected["id"]
    ]
    assert connect["headers"]["cookie"] == "theme=dark; session=alice"
    assert connect["body"]["transport"] == "websocket" and connect["body"]["protocol"] == "json"
    assert connect["body"]["name"] == "js"


def test_js_without_cookie_gets_the_backends_terminal_disconnect(
    run_js: RunJS, fresh_backend: Backend
) -> None:
    js = run_js("proxy_unauthorized")
    result = js.expect(lambda e: "disconnected" in e)
    assert result["disconnected"] == {"code": 4501, "reason": "unauthorized"}
    assert result["state"] == "disconnected" and result["connect_attempts_after"] == 0
    (connect,) = fresh_backend.requests("connect")
    assert "cookie" not in connect["headers"]


def test_js_emulated_headers_over_http_stream(run_js: RunJS, fresh_backend: Backend) -> None:
    if not (NODE_MODULES / "eventsource" / "package.json").is_file():
        pytest.skip("tests/interop/node_modules lacks eventsource")
    js = run_js("proxy_emulated", TRANSPORT="http_stream", SESSION="carol")
    connected = js.expect(lambda e: "connected" in e)["connected"]
    assert connected["transport"] == "http_stream" and connected["data"] == {"welcome": "carol"}
    rpc = js.expect(lambda e: "rpc" in e)["rpc"]
    assert (rpc["user"], rpc["transport"]) == ("carol", "http_stream")
    (connect,) = fresh_backend.requests("connect")
    assert connect["headers"]["x-session"] == "carol"
    assert connect["body"]["transport"] == "http_stream"


def test_js_refresh_and_sub_refresh_renew_without_reconnect(
    run_js: RunJS, fresh_backend: Backend
) -> None:
    channel = name("proxied:short-")
    js = run_js("proxy_refresh", COOKIE="session=short-dave", CHANNEL=channel, WAIT_MS=5000)
    result = js.expect(lambda e: "state" in e, timeout=20)
    assert (result["state"], result["sub_state"]) == ("connected", "subscribed")
    assert (result["connects"], result["subscribes"]) == (1, 1)
    (me,) = result["presence"].values()
    assert me["user"] == "short-dave"
    assert len(fresh_backend.requests("refresh")) >= 2
    assert len(fresh_backend.requests("sub_refresh")) >= 2
    assert all(r["body"]["user"] == "short-dave" for r in fresh_backend.requests("refresh"))


# --- centrifuge-python ------------------------------------------------------------------------


def test_python_cookie_session_subscribe_publish_rpc(
    rt_server: Server, fresh_backend: Backend
) -> None:
    channel, forbidden = name("proxied:allowed-"), name("proxied:nope-")

    async def scenario() -> None:
        rec = Recorder()
        from centrifuge import Client

        client = Client(rt_server.ws_url, events=None, headers={"Cookie": "session=erin"},
                        max_reconnect_delay=1.0, proxy=None)
        peer = Client(rt_server.ws_url, headers={"Cookie": "session=frank"},
                      max_reconnect_delay=1.0, proxy=None)
        sub = subscribe(client, channel, rec)
        nope = subscribe(client, forbidden, rec)
        peer_sub = subscribe(peer, channel, rec, label="peer")
        try:
            await client.connect()
            await peer.connect()
            await bounded(client.ready())
            for s in (sub, nope, peer_sub):
                await s.subscribe()
            await bounded(sub.ready())
            await bounded(peer_sub.ready())
            (refused,) = await rec.wait("unsubscribed", channel=forbidden)
            assert (refused["code"], refused["reason"]) == (1403, "not a member")
            await sub.publish({"text": "py"})
            (pub,) = await rec.wait("publication", client="peer")
            assert pub["data"] == {"text": "PY", "by": "erin"}
            rpc = await bounded(client.rpc("whoami", {"x": 1}))
            assert (rpc.data["user"], rpc.data["echo"]) == ("erin", {"x": 1})
            with pytest.raises(ReplyError) as err:
                await bounded(client.rpc("fail", {}))
            assert err.value.code == 1404
        finally:
            await client.disconnect()
            await peer.disconnect()

    run_scenario(scenario())
    connects = fresh_backend.requests("connect")
    assert {r["body"]["name"] for r in connects} == {"python"}
    assert {r["headers"]["cookie"] for r in connects} == {"session=erin", "session=frank"}


def test_python_refresh_sub_refresh_and_terminal_disconnect(
    rt_server: Server, fresh_backend: Backend
) -> None:
    """Expiring connection and subscription renewed in place; no cookie: 4501 for good."""
    channel = name("proxied:short-")

    async def scenario() -> None:
        from centrifuge import Client

        rec = Recorder()
        client = Client(rt_server.ws_url, events=ClientEvents(rec),
                        headers={"Cookie": "session=short-omar"}, max_reconnect_delay=1.0,
                        proxy=None)
        sub = subscribe(client, channel, rec)
        stranger_rec = Recorder()
        stranger = Client(rt_server.ws_url, events=ClientEvents(stranger_rec, "stranger"),
                          max_reconnect_delay=0.2, proxy=None)
        try:
            await client.connect()
            await sub.subscribe()
            await bounded(sub.ready())
            await asyncio.sleep(5)  # past two 2 s expiries of both
            assert len(rec.find("connected")) == 1 and len(rec.find("subscribed")) == 1
            assert not rec.find("disconnected") and not rec.find("unsubscribed")
            await bounded(client.rpc("whoami", {}))  # still connected
            await stranger.connect()
            (gone,) = await stranger_rec.wait("disconnected")
            assert (gone["code"], gone["reason"]) == (4501, "unauthorized")
            await asyncio.sleep(1)
            assert len(stranger_rec.find("connecting")) == 1  # no reconnect attempt
        finally:
            await client.disconnect()
            await stranger.disconnect()

    run_scenario(scenario())
    assert len(fresh_backend.requests("refresh")) >= 2
    assert len(fresh_backend.requests("sub_refresh")) >= 2


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sleep", "garbage", "status"])
def test_a_failing_backend_is_error_100_and_the_sdk_connects_once_it_recovers(
    rt_server: Server, fresh_backend: Backend, mode: str
) -> None:
    """Connect errors are temporary (100): the SDK retries and connects after recovery."""
    fresh_backend.mode(mode)

    async def scenario() -> None:
        from centrifuge import Client

        rec = Recorder()
        client = Client(rt_server.ws_url, events=ClientEvents(rec),
                        headers={"Cookie": "session=gina"}, max_reconnect_delay=0.5, proxy=None)
        try:
            await client.connect()
            errors = await rec.wait("error", count=2, timeout=10)
            assert {e["code"] for e in errors} == {100}
            assert not rec.find("connected")
            fresh_backend.mode("ok")
            (connected,) = await rec.wait("connected")
            assert failure_lines(rt_server, connected["id"]) == []
        finally:
            await client.disconnect()

    run_scenario(scenario())
    reason = {"sleep": "no answer within 0.5s", "garbage": "invalid JSON",
              "status": "unexpected HTTP status 503"}[mode]
    lines = [line for line in rt_server.log(tail=10**7).splitlines()
             if "proxy connect: connect for client" in line and reason in line]
    assert len(lines) >= 2


def test_backend_stopped_mid_run_then_back(rt_server: Server, fresh_backend: Backend) -> None:
    """A connected client's rpc gets 100 while the backend is down, one log line per call."""

    async def scenario() -> None:
        from centrifuge import Client

        client = Client(rt_server.ws_url, headers={"Cookie": "session=hank"},
                        max_reconnect_delay=1.0, proxy=None)
        try:
            await client.connect()
            await bounded(client.ready())
            me = (await bounded(client.rpc("whoami", {}))).data["client"]
            fresh_backend.stop()
            for _ in range(2):
                with pytest.raises(ReplyError) as err:
                    await bounded(client.rpc("whoami", {}))
                assert (err.value.code, err.value.temporary) == (100, True)
            await asyncio.sleep(0.2)
            assert len(failure_lines(rt_server, me)) == 2
            await asyncio.to_thread(fresh_backend.start)
            assert (await bounded(client.rpc("whoami", {}))).data["client"] == me
        finally:
            await client.disconnect()

    run_scenario(scenario())


def test_server_stops_cleanly_with_proxies_in_flight(
    backend: Backend, tmp_path: Path
) -> None:
    """A proxy call hanging at shutdown neither blocks nor leaks: twistd exits cleanly."""
    backend.reset()
    backend.mode("sleep")
    config = proxy_config(backend.url, timeout="30s")
    with run_server(tmp_path, config) as server:

        async def scenario() -> None:
            from centrifuge import Client

            client = Client(server.ws_url, headers={"Cookie": "session=ivy"}, proxy=None)
            await client.connect()
            while not backend.requests("connect"):
                await asyncio.sleep(0.05)
            await client.disconnect()

        run_scenario(scenario())
    backend.mode("ok")
