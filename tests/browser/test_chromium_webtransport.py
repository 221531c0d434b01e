"""centrifuge-js in headless Chromium over WebTransport (HTTP/3) to a real rtserver.

The server has a fresh ECDSA certificate valid for 10 days, which the page trusts through
``serverCertificateHashes``; the page lists WebTransport first and WebSocket second. With
WebTransport on, the client reports ``transport == 'webtransport'``, receives API
publications, publishes, and recovers missed publications after a server-forced
reconnect, with the JSON and the Protobuf build of centrifuge-js; with it off, the same
page falls back to WebSocket; and while QUIC handshakes pile up, Chromium connects
through the server's Retry (address validation).
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from harness import (
    NodeScenario,
    Server,
    base_config,
    free_udp_port,
    make_certificate,
    merge,
    spawn_server,
    stop_server,
)
from pages import CENTRIFUGE_BROWSER_BUILD, HTML, JS, PAGE_DIR, serve_pages

pytestmark = pytest.mark.browser

#: The Playwright driver the other browser tests use (its fixtures live in conftest.py).
DRIVER = Path(__file__).resolve().parent / "chromium_driver.mjs"
DRIVER_TIMEOUT = 25.0

ROUTES = {
    "/": (PAGE_DIR / "webtransport.html", HTML),
    "/protobuf": (PAGE_DIR / "webtransport-protobuf.html", HTML),
    "/centrifuge.protobuf.js": (CENTRIFUGE_BROWSER_BUILD.with_name("centrifuge.protobuf.js"), JS),
    "/webtransport.js": (PAGE_DIR / "webtransport.js", JS),
    "/centrifuge.js": (CENTRIFUGE_BROWSER_BUILD, JS),
}


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    with serve_pages(ROUTES) as origin:
        yield origin


class Browser:
    def __init__(self, server: Server, udp_port: int, digest: bytes, origin: str) -> None:
        self.server = server
        self.udp_port = udp_port
        self.digest = digest
        self.origin = origin


def _start(
    directory: Path, origin: str, webtransport: bool, max_connections: int = 10000
) -> Browser:
    cert, key, digest = make_certificate(directory, days=10)
    udp_port = free_udp_port()
    secret = "wt-" + uuid.uuid4().hex + uuid.uuid4().hex
    api_key = "api-" + uuid.uuid4().hex
    overrides: dict[str, Any] = {
        "http_server": {
            "port": udp_port,
            "address": "127.0.0.1",
            "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
            "http3": {"enabled": webtransport},
        },
        "webtransport": {"enabled": webtransport, "max_connections": max_connections},
        "client": {"allowed_origins": [origin]},
        "prometheus": {"enabled": True},
    }
    config = merge(base_config(secret, api_key), overrides)
    server = spawn_server(directory, config, secret=secret, api_key=api_key)
    return Browser(server, udp_port, digest, origin)


@pytest.fixture
def open_page(
    browser_node: str, chromium: Path, tmp_path: Path, page_origin: str
) -> Iterator[Callable[..., tuple[Browser, NodeScenario]]]:
    started: list[tuple[Browser, NodeScenario]] = []

    def start(
        webtransport: bool,
        codec: str = "json",
        max_connections: int = 10000,
        before: Callable[[Browser], None] | None = None,
    ) -> tuple[Browser, NodeScenario]:
        run = _start(
            tmp_path / f"server-{len(started)}", page_origin, webtransport, max_connections
        )
        if before is not None:
            before(run)
        query = urlencode(
            {
                "wt": f"https://127.0.0.1:{run.udp_port}/connection/webtransport",
                "ws": run.server.ws_url,
                "hash": base64.b64encode(run.digest).decode(),
                "token": run.server.token("carol"),
                "channel": "news",
                "chat": "chat:room",
                "codec": codec,
            }
        )
        profile = tmp_path / f"chromium-profile-{len(started)}"
        profile.mkdir()
        env = {
            "CHROMIUM": str(chromium),
            "CHROMIUM_QUIC": "1",
            "USER_DATA_DIR": str(profile),
            "PAGE_URL": f"{page_origin}/{'protobuf' if codec == 'protobuf' else ''}?{query}",
            "RT_URL": run.server.url,
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        }
        scenario = NodeScenario(browser_node, DRIVER, env, DRIVER_TIMEOUT)
        started.append((run, scenario))
        return run, scenario

    yield start
    for run, scenario in started:
        scenario.close()
        stop_server(run.server)


def _event(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def match(e: dict[str, Any]) -> bool:
        return e.get("event") == name and all(e.get(k) == v for k, v in fields.items())

    return match


def _seen(page: NodeScenario, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """An event already printed, or the next one that matches.

    The order of the page's callbacks across channels and replies is not fixed.
    """
    for event in page.events:
        if match(event):
            return event
    return page.expect(match)


def _disconnect(server: Server, code: int, reason: str) -> None:
    with requests.Session() as http:
        http.trust_env = False
        http.post(
            server.api_url + "/disconnect",
            json={"user": "carol", "disconnect": {"code": code, "reason": reason}},
            headers={"X-API-Key": server.api_key},
            timeout=5,
        ).raise_for_status()


def _history(server: Server, channel: str) -> list[Any]:
    with requests.Session() as http:
        http.trust_env = False
        reply = http.post(
            server.api_url + "/history",
            json={"channel": channel, "limit": 10},
            headers={"X-API-Key": server.api_key},
            timeout=5,
        ).json()
    return [p["data"] for p in reply["result"].get("publications", [])]


@pytest.mark.parametrize("codec", ["json", "protobuf"])
def test_centrifuge_js_over_webtransport(
    open_page: Callable[..., tuple[Browser, NodeScenario]], codec: str
) -> None:
    run, page = open_page(True, codec)
    server = run.server
    assert page.expect(_event("connected"))["transport"] == "webtransport"
    page.expect(_event("subscribed", channel="news"))
    page.expect(_event("subscribed", channel="chat:room"))
    server.publish("news", {"n": 1})
    page.expect(_event("publication", channel="news", data={"n": 1}))
    # the browser publishes; the server fans it out back to it and keeps it in history
    page.send("call publish")
    assert page.expect(lambda e: e.get("result") == "publish")["value"] == "ok"
    _seen(page, _event("publication", channel="chat:room", data={"from": "browser"}))
    assert _history(server, "chat:room") == [{"from": "browser"}]
    # a reconnect forced by the server: what was published meanwhile is recovered
    _disconnect(server, 4000, "reconnect please")
    server.publish("news", {"n": 2})
    page.expect(_event("connecting", code=4000))
    assert page.expect(_event("connected"))["transport"] == "webtransport"
    resubscribed = page.expect(_event("subscribed", channel="news"))
    assert resubscribed["wasRecovering"] and resubscribed["recovered"], resubscribed
    _seen(page, _event("publication", channel="news", data={"n": 2}))
    # a terminal code reaches the page as such: no reconnect
    _disconnect(server, 4501, "go away")
    page.expect(_event("disconnected", code=4501, reason="go away"))
    page.send("close")
    page.finish()
    assert not [e for e in page.events[-3:] if e.get("event") == "connecting"]


def test_falls_back_to_websocket_without_webtransport(
    open_page: Callable[..., tuple[Browser, NodeScenario]],
) -> None:
    run, page = open_page(False)
    assert page.expect(_event("connected"), timeout=20)["transport"] == "websocket"
    page.expect(_event("subscribed", channel="news"))
    run.server.publish("news", {"n": 1})
    page.expect(_event("publication", channel="news", data={"n": 1}))
    page.send("close")
    page.finish()


def _metric(server: Server, name: str) -> float:
    with requests.Session() as http:
        http.trust_env = False
        text = http.get(server.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_chromium_connects_through_a_quic_retry(
    open_page: Callable[..., tuple[Browser, NodeScenario]],
) -> None:
    """One unfinished handshake of 4 connections at most: Chromium connects via a Retry.

    New connections must prove their address; Chromium gets a Retry, returns the token
    and connects over WebTransport (not the WebSocket fallback).
    """
    stuck: list[socket.socket] = []

    def fill(run: Browser) -> None:
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
        config.verify_mode = ssl.CERT_NONE
        target = ("127.0.0.1", run.udp_port)
        quic = QuicConnection(configuration=config)
        quic.connect(target, now=time.monotonic())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stuck.append(sock)
        for data, _ in quic.datagrams_to_send(now=time.monotonic()):
            sock.sendto(data, target)  # and never a word more
        deadline = time.monotonic() + 10
        while _metric(run.server, "rtserver_http3_handshakes") != 1:
            assert time.monotonic() < deadline, "the Initial made no connection"
            time.sleep(0.05)  # another process: nothing to await but its answers

    try:
        run, page = open_page(True, max_connections=4, before=fill)
        assert page.expect(_event("connected"))["transport"] == "webtransport"
        page.expect(_event("subscribed", channel="news"))
        run.server.publish("news", {"n": 1})
        page.expect(_event("publication", channel="news", data={"n": 1}))
        assert _metric(run.server, "rtserver_http3_retries_sent_total") >= 1
        assert _metric(run.server, "rtserver_http3_retry_tokens_refused_total") == 0
        page.send("close")
        page.finish()
    finally:
        for sock in stuck:
            sock.close()
