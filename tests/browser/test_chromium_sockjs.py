"""centrifuge-js (browser build) over SockJS in a real headless Chromium, one transport at a time.

The page comes from another origin than rtserver; it loads sockjs-client from rtserver's
bundled copy. ``htmlfile`` only runs same-origin in sockjs-client, so cross-origin it is
exercised as ``iframe-htmlfile`` (rtserver's iframe.html loading the same bundled client).
Each case connects with a JWT, subscribes, receives API publications, disconnects, misses
publications and recovers them after reconnecting.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import NodeScenario, Server, run_server
from pages import CENTRIFUGE_BROWSER_BUILD, HTML, JS, PAGE_DIR, serve_pages
from test_chromium_emulation import START_TIMEOUT, _page, _seen, _wait

pytestmark = [pytest.mark.interop, pytest.mark.browser, pytest.mark.timeout(90)]

TRANSPORTS = [
    "websocket",
    "xhr-streaming",
    "xhr-polling",
    "eventsource",
    "iframe-htmlfile",
    "jsonp-polling",
]


@pytest.fixture(scope="module")
def sockjs_page_origin() -> Iterator[str]:
    """A static server for the SockJS page on another port than rtserver."""
    routes = {
        "/": (PAGE_DIR / "sockjs.html", HTML),
        "/sockjs.js": (PAGE_DIR / "sockjs.js", JS),
        "/centrifuge.js": (CENTRIFUGE_BROWSER_BUILD, JS),
    }
    with serve_pages(routes) as origin:
        yield origin


@pytest.fixture(scope="module")
def rt_server(
    browser_node: str, tmp_path_factory: pytest.TempPathFactory, sockjs_page_origin: str
) -> Iterator[Server]:
    """An rtserver with SockJS on; the page's origin is the only allowed browser origin."""
    overrides = {"sockjs": {"enabled": True}, "client": {"allowed_origins": [sockjs_page_origin]}}
    with run_server(tmp_path_factory.mktemp("rtserver-sockjs-browser"), overrides) as server:
        yield server


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _eval(browser: NodeScenario, name: str) -> Any:
    browser.send(f"eval {name}")
    return browser.expect(lambda e: e.get("result") == name)["value"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_browser_sockjs_transport(
    rt_server: Server,
    sockjs_page_origin: str,
    run_chromium: Callable[..., NodeScenario],
    transport: str,
) -> None:
    """Connect, subscribe, receive, then recover missed publications over one SockJS transport."""
    user, channel = _name("sj-u-"), _name("sj-ch-")
    browser = run_chromium(sockjs_page_origin, transport, rt_server.token(user), channel)
    _wait(browser, "loaded", timeout=START_TIMEOUT)
    [ready] = _wait(browser, _page("page_ready"))
    assert ready["sockjs"] == "function", "sockjs-client loaded from rtserver"
    assert ready["origin"] != rt_server.url
    [connected] = _wait(browser, _page("connected"), timeout=START_TIMEOUT)
    assert connected["transport"] == f"sockjs-{transport}"
    _wait(browser, _page("subscribed", channel=channel))
    rt_server.publish(channel, {"n": 1})
    _wait(browser, _page("publication"))

    _eval(browser, "history")  # the page's hook for client.disconnect()
    _wait(browser, _page("disconnected"))
    rt_server.publish(channel, {"n": 2})
    rt_server.publish(channel, {"n": 3})
    _eval(browser, "presence")  # the page's hook for client.connect()
    _wait(browser, _page("connected"), count=2, timeout=START_TIMEOUT)
    pubs = _wait(browser, _page("publication"), count=3)
    assert [p["data"] for p in pubs] == [{"n": 1}, {"n": 2}, {"n": 3}]
    again = _wait(browser, _page("subscribed", channel=channel), count=2)[1]
    assert again["wasRecovering"] is True and again["recovered"] is True
    browser.send("close")
    events = browser.finish()
    assert not _seen(events, "error"), [e for e in events if e.get("source") != "net"]
    assert {e["transport"] for e in _seen(events, "connected")} == {f"sockjs-{transport}"}
    errors = [e["message"] for e in events if e.get("source") == "pageerror"]
    if transport == "jsonp-polling":
        # sockjs-client drops its JSONP callback on close; a poll script still in flight then
        # calls a missing ``_jp.<id>`` (client-side noise, the session itself is fine).
        errors = [m for m in errors if "_jp." not in m]
    assert not errors
