"""centrifuge-js (browser build) in a real headless Chromium over HTTP-stream and SSE emulation.

The page comes from another origin than rtserver, so the browser enforces CORS on the stream
request, the SSE EventSource and every ``POST /emulation`` (a JSON POST: preflighted).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import cent
import pytest
from emulation_server import PageServers
from harness import NodeScenario, Server

RunChromium = Callable[..., NodeScenario]

pytestmark = [pytest.mark.interop, pytest.mark.browser, pytest.mark.timeout(90)]

TRANSPORTS = ["http_stream", "sse"]
#: Bound for the first page events: Chromium start-up, page load, connect (a deadline:
#: Chromium on a loaded 2-core machine has needed more than 15 s).
START_TIMEOUT = 40.0


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _page(kind: str, **match: Any) -> Callable[[dict[str, Any]], bool]:
    def predicate(e: dict[str, Any]) -> bool:
        return (
            e.get("source") == "page"
            and e.get("event") == kind
            and all(e.get(k) == v for k, v in match.items())
        )

    return predicate


def _wait(
    browser: NodeScenario,
    predicate: Callable[[dict[str, Any]], bool] | str,
    count: int = 1,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Lines matching ``predicate`` (or a ``ready`` label) once ``count`` have arrived.

    Unlike ``NodeScenario.expect`` this also sees lines read while waiting for something else.
    """
    if isinstance(predicate, str):
        label = predicate

        def predicate(e: dict[str, Any]) -> bool:
            return e.get("ready") == label

    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in browser.events if predicate(e)]
        if len(found) >= count:
            return found
        browser.expect(predicate, timeout=max(0.0, deadline - time.monotonic()))


def _seen(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if _page(kind)(e)]


def _net(events: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("source") == "net" and e.get("path") == path]


def _result(browser: NodeScenario, name: str) -> Any:
    browser.send(f"eval {name}")
    return browser.expect(lambda e: e.get("result") == name)["value"]


@pytest.mark.parametrize("origin", ["allowed", "wildcard"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_browser_receives_publication(
    rt_server: Server,
    page_servers: PageServers,
    run_chromium: RunChromium,
    transport: str,
    origin: str,
) -> None:
    """A cross-origin page in Chromium connects over HTTP-stream/SSE alone and receives cent publications."""
    page_origin = getattr(page_servers, origin)
    user, channel = _name("br-u-"), _name("br-ch-")
    browser = run_chromium(page_origin, transport, rt_server.token(user), channel)
    [loaded] = _wait(browser, "loaded", timeout=START_TIMEOUT)
    assert "Chrome/" in loaded["userAgent"]
    [ready] = _wait(browser, _page("page_ready"))
    assert ready["origin"] == page_origin and ready["origin"] != rt_server.url
    assert ready["version"] == "function", "the browser build defines globalThis.Centrifuge"
    [connected] = _wait(browser, _page("connected"), timeout=START_TIMEOUT)
    assert connected["transport"] == transport
    _wait(browser, _page("subscribed", channel=channel))

    sent = [{"n": 1, "from": "cent"}, {"n": 2, "from": "cent"}]
    offsets = [rt_server.publish(channel, data).offset for data in sent]
    pubs = _wait(browser, _page("publication"), count=2)
    assert [p["data"] for p in pubs] == sent
    assert [p["offset"] for p in pubs] == offsets == [1, 2]

    history = _result(browser, "history")
    assert [p["data"] for p in history["publications"]] == sent
    assert _result(browser, "presence") == [connected["client"]]
    presence = rt_server.cent_client.presence(cent.PresenceRequest(channel=channel)).presence
    assert list(presence) == [connected["client"]]
    assert presence[connected["client"]].user == user
    assert _result(browser, "state") == {"client": "connected", "sub": "subscribed"}
    # Closing the browser aborts whatever is still in flight: judge the traffic before that.
    before_close = list(browser.events)
    browser.send("close")
    events = browser.finish()

    assert not _seen(events, "error"), "no transport or command errors"
    assert [e["transport"] for e in _seen(events, "connected")] == [transport]
    failed = [e for e in before_close if e.get("source") == "net" and "failed" in e]
    assert not failed, "no request refused or failed while the page was open"
    stream = _net(events, f"/connection/{transport}")
    assert stream and stream[0].get("status") == 200, stream
    statuses = {e["status"] for e in _net(events, "/emulation") if "status" in e}
    assert statuses == {204}, "subscribe/history/presence went through POST /emulation"
    assert not [e for e in events if e.get("source") == "pageerror"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_browser_foreign_origin_never_connects(
    rt_server: Server,
    page_servers: PageServers,
    run_chromium: RunChromium,
    transport: str,
) -> None:
    """A page from an origin missing in client.allowed_origins never gets connected (CORS refused)."""
    user, channel = _name("br-u-"), _name("br-no-")
    browser = run_chromium(page_servers.foreign, transport, rt_server.token(user), channel)
    _wait(browser, "loaded", timeout=START_TIMEOUT)
    [ready] = _wait(browser, _page("page_ready"))
    assert ready["origin"] == page_servers.foreign
    # The first attempt and the first retry both fail (bounded: no fixed sleep): each ends in
    # a transport error and a connect error 11 ("connection closed", no connect reply).
    failed = _wait(browser, _page("error", type="connect"), count=2, timeout=5.0)
    assert [e["error"]["code"] for e in failed] == [11, 11], browser.describe()
    errors = _seen(browser.events, "error")
    assert {e["type"] for e in errors} == {"transport", "connect"}, browser.describe()
    assert _result(browser, "state") == {"client": "connecting", "sub": "subscribing"}
    presence = rt_server.cent_client.presence(cent.PresenceRequest(channel=channel)).presence
    assert presence == {}
    browser.send("close")
    events = browser.finish()

    assert not _seen(events, "connected") and not _seen(events, "subscribed")
    stream = _net(events, f"/connection/{transport}")
    assert stream and all("failed" in e for e in stream), stream
    assert not [e for e in _net(events, "/emulation") if "status" in e]
    console = [e["text"] for e in events if e.get("source") == "console"]
    assert any("blocked by CORS policy" in text for text in console), console
