"""The SockJS protocol, checked over real sockets against the conformance services.

The checks follow the upstream sockjs-protocol suite, class by class, with the
sockjs-client 1.x expectations of the SockJS spec (current iframe template,
``no-transform`` in Cache-Control, ``text/event-stream`` without charset).
"""

from __future__ import annotations

import json
import re

import pytest_twisted
from sockjs_http import SockJSServer
from twisted.internet import reactor, task
from wsclient import connect

NOT_CACHED = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
ANOTHER = b'c[2010,"Another connection still open"]\n'
GO_AWAY = b'c[3000,"Go away!"]\n'
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

IFRAME = re.compile(
    r"""^<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="(?P<url>[^"]*)"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe\(\);
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>$"""
)

HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.callback;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"""


def content_type(r: object) -> str:
    return r.header("content-type").replace(" ", "")  # type: ignore[attr-defined]


def assert_not_cached(r: object) -> None:
    assert r.header("cache-control") == NOT_CACHED  # type: ignore[attr-defined]
    assert not r.header("expires")  # type: ignore[attr-defined]
    assert not r.header("last-modified")  # type: ignore[attr-defined]


def assert_cors(r: object, origin: str | None) -> None:
    if origin:
        assert r.header("access-control-allow-origin") == origin  # type: ignore[attr-defined]
        assert r.header("access-control-allow-credentials") == "true"  # type: ignore[attr-defined]
    else:
        assert r.header("access-control-allow-origin") == "*"  # type: ignore[attr-defined]
        assert not r.header("access-control-allow-credentials")  # type: ignore[attr-defined]


def assert_cacheable(r: object) -> None:
    assert re.search(r"public", r.header("cache-control"))  # type: ignore[attr-defined]
    assert re.search(r"max-age=[1-9][0-9]{6}", r.header("cache-control"))  # type: ignore[attr-defined]
    assert r.header("expires")  # type: ignore[attr-defined]


async def assert_options(server: SockJSServer, path: str, methods: str) -> None:
    for origin in ("test", "null"):
        r = await server.fetch(
            "OPTIONS", path, headers={"Origin": origin, "Access-Control-Request-Method": methods}
        )
        assert r.status in (200, 204)
        assert_cacheable(r)
        assert int(r.header("access-control-max-age")) > 1000000
        for method in methods.split(","):
            assert method.strip() in r.header("access-control-allow-methods")
        assert not r.body
        assert_cors(r, origin)


def assert_405(r: object) -> None:
    assert r.status == 405  # type: ignore[attr-defined]
    assert not r.header("content-type")  # type: ignore[attr-defined]
    assert r.header("allow")  # type: ignore[attr-defined]
    assert not r.body  # type: ignore[attr-defined]


class TestBaseUrlGreeting:
    @pytest_twisted.ensureDeferred
    async def test_greeting(self, sockjs_server: SockJSServer) -> None:
        """The prefix, with or without a slash, greets in plain text and sets no cookie."""
        for path in ("/echo", "/echo/"):
            r = await sockjs_server.fetch("GET", path)
            assert r.status == 200
            assert content_type(r) == "text/plain;charset=UTF-8"
            assert r.body == b"Welcome to SockJS!\n"
            assert not r.header("set-cookie")

    @pytest_twisted.ensureDeferred
    async def test_not_found(self, sockjs_server: SockJSServer) -> None:
        """Other paths under the prefix are 404."""
        for suffix in ("/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a/"):
            r = await sockjs_server.fetch("GET", "/echo" + suffix)
            assert r.status == 404, suffix


class TestIframePage:
    async def verify(self, server: SockJSServer, path: str) -> None:
        r = await server.fetch("GET", path)
        assert r.status == 200
        assert content_type(r) == "text/html;charset=UTF-8"
        assert_cacheable(r)
        assert r.header("etag")
        assert not r.header("last-modified")
        match = IFRAME.match(r.body.decode().strip())
        assert match, r.body
        assert match.group("url").startswith(("/", "http"))
        assert not r.header("set-cookie")

    @pytest_twisted.ensureDeferred
    async def test_simple_url(self, sockjs_server: SockJSServer) -> None:
        """/iframe.html is the 1.x template loading the bundled client."""
        await self.verify(sockjs_server, "/echo/iframe.html")

    @pytest_twisted.ensureDeferred
    async def test_versioned_and_queried_urls(self, sockjs_server: SockJSServer) -> None:
        """Versioned names and cache-busting query strings get the same page."""
        for suffix in (
            "/iframe-a.html",
            "/iframe-.html",
            "/iframe-0.1.2.html",
            "/iframe-0.1.2abc-dirty.2144.html",
            "/iframe-a.html?t=1234",
            "/iframe-0.1.2.html?t=123414",
            "/iframe-0.1.2abc-dirty.2144.html?t=qweqweq123",
        ):
            await self.verify(sockjs_server, "/echo" + suffix)

    @pytest_twisted.ensureDeferred
    async def test_invalid_url(self, sockjs_server: SockJSServer) -> None:
        """Near-miss names are 404."""
        for suffix in (
            "/iframe.htm",
            "/iframe",
            "/IFRAME.HTML",
            "/IFRAME",
            "/iframe.HTML",
            "/iframe.xml",
            "/iframe-/.html",
        ):
            r = await sockjs_server.fetch("GET", "/echo" + suffix)
            assert r.status == 404, suffix

    @pytest_twisted.ensureDeferred
    async def test_cacheability(self, sockjs_server: SockJSServer) -> None:
        """The ETag is stable and If-None-Match gets a bodiless 304."""
        r1 = await sockjs_server.fetch("GET", "/echo/iframe.html")
        r2 = await sockjs_server.fetch("GET", "/echo/iframe.html")
        assert r1.header("etag") and r1.header("etag") == r2.header("etag")
        r = await sockjs_server.fetch(
            "GET", "/echo/iframe.html", headers={"If-None-Match": r1.header("etag")}
        )
        assert r.status == 304
        assert not r.header("content-type")
        assert not r.body

    @pytest_twisted.ensureDeferred
    async def test_bundled_client_script(self, sockjs_server: SockJSServer) -> None:
        """The script the iframe loads is served locally: sockjs-client 1.6.1, cacheable."""
        page = await sockjs_server.fetch("GET", "/echo/iframe.html")
        match = IFRAME.match(page.body.decode().strip())
        assert match is not None and match.group("url") == "/echo/sockjs.min.js"
        r = await sockjs_server.fetch("GET", match.group("url"))
        assert r.status == 200
        assert r.body.startswith(b"/* sockjs-client v1.6.1 | http://sockjs.org | MIT license */")
        assert_cacheable(r)


class TestInfo:
    @pytest_twisted.ensureDeferred
    async def test_basic(self, sockjs_server: SockJSServer) -> None:
        """/info: JSON capabilities, not cached, CORS, no cookie."""
        r = await sockjs_server.fetch("GET", "/echo/info", headers={"Origin": "test"})
        assert r.status == 200
        assert content_type(r) == "application/json;charset=UTF-8"
        assert not r.header("set-cookie")
        assert_not_cached(r)
        assert_cors(r, "test")
        data = json.loads(r.body)
        assert data["websocket"] is True
        assert data["cookie_needed"] is False
        assert data["origins"] == ["*:*"]
        assert isinstance(data["entropy"], int) and 0 <= data["entropy"] < 2**32

    @pytest_twisted.ensureDeferred
    async def test_entropy(self, sockjs_server: SockJSServer) -> None:
        """Every /info answer carries fresh entropy."""
        r1 = await sockjs_server.fetch("GET", "/echo/info")
        r2 = await sockjs_server.fetch("GET", "/echo/info")
        assert json.loads(r1.body)["entropy"] != json.loads(r2.body)["entropy"]

    @pytest_twisted.ensureDeferred
    async def test_options(self, sockjs_server: SockJSServer) -> None:
        """OPTIONS /info is a cacheable preflight."""
        await assert_options(sockjs_server, "/echo/info", "OPTIONS, GET")

    @pytest_twisted.ensureDeferred
    async def test_options_null_origin(self, sockjs_server: SockJSServer) -> None:
        """Origin null is echoed as null."""
        r = await sockjs_server.fetch(
            "OPTIONS",
            "/echo/info",
            headers={"Origin": "null", "Access-Control-Request-Method": "POST"},
        )
        assert r.status in (200, 204)
        assert not r.body
        assert r.header("access-control-allow-origin") == "null"

    @pytest_twisted.ensureDeferred
    async def test_disabled_websocket(self, sockjs_server: SockJSServer) -> None:
        """A service without WebSocket says so."""
        r = await sockjs_server.fetch("GET", "/disabled_websocket_echo/info")
        assert json.loads(r.body)["websocket"] is False


class TestSessionURLs:
    @pytest_twisted.ensureDeferred
    async def test_any_value(self, sockjs_server: SockJSServer) -> None:
        """Any server/session ids without dots or slashes open a session."""
        for part in ("/a/a123", "/_/_123", "/1/123", "/abcdefgh_i-j%20/abcdefg_i-j%20123"):
            r = await sockjs_server.fetch("POST", "/echo" + part + "/xhr")
            assert (r.status, r.body) == (200, b"o\n"), part

    @pytest_twisted.ensureDeferred
    async def test_invalid_paths(self, sockjs_server: SockJSServer) -> None:
        """Empty ids and ids with dots are 404, for GET and POST."""
        for suffix in ("//", "/a./a", "/a/a.", "/./.", "/", "///"):
            for method in ("GET", "POST"):
                r = await sockjs_server.fetch(method, "/echo" + suffix + "/xhr")
                assert r.status == 404, (method, suffix)

    @pytest_twisted.ensureDeferred
    async def test_ignoring_server_id(self, sockjs_server: SockJSServer) -> None:
        """Only the session id identifies a session."""
        sid = sockjs_server.session_url().rsplit("/", 1)[1]
        r = await sockjs_server.fetch("POST", f"/echo/000/{sid}/xhr")
        assert r.body == b"o\n"
        r = await sockjs_server.fetch("POST", f"/echo/000/{sid}/xhr_send", b'["a"]')
        assert (r.status, r.body) == (204, b"")
        r = await sockjs_server.fetch("POST", f"/echo/999/{sid}/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')


class TestProtocol:
    @pytest_twisted.ensureDeferred
    async def test_simple_session(self, sockjs_server: SockJSServer) -> None:
        """Open, send, receive the echo; unknown sessions 404; a second poll gets 2010."""
        url = sockjs_server.session_url()
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert (r.status, r.body) == (200, b"o\n")
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b'["a"]')
        assert (r.status, r.body) == (204, b"")
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')
        r = await sockjs_server.fetch("POST", "/echo/000/bad_session/xhr_send", b'["a"]')
        assert r.status == 404
        waiting = await sockjs_server.open("POST", url + "/xhr", head=False)
        await sockjs_server.attached(url)
        r2 = await sockjs_server.fetch("POST", url + "/xhr")
        assert (r2.status, r2.body) == (200, ANOTHER)
        waiting.abort()

    @pytest_twisted.ensureDeferred
    async def test_close_session(self, sockjs_server: SockJSServer) -> None:
        """A closed session answers every later poll with its close frame."""
        url = sockjs_server.session_url("close")
        assert (await sockjs_server.fetch("POST", url + "/xhr")).body == b"o\n"
        for _ in range(2):
            r = await sockjs_server.fetch("POST", url + "/xhr")
            assert (r.status, r.body) == (200, GO_AWAY)


class TestWebsocketHttpErrors:
    @pytest_twisted.ensureDeferred
    async def test_http_method(self, sockjs_server: SockJSServer) -> None:
        """A plain GET is not a WebSocket handshake: 400."""
        r = await sockjs_server.fetch("GET", "/echo/0/0/websocket")
        assert r.status == 400

    @pytest_twisted.ensureDeferred
    async def test_invalid_connection_header(self, sockjs_server: SockJSServer) -> None:
        """Upgrade without Connection: Upgrade is 400."""
        r = await sockjs_server.fetch(
            "GET", "/echo/0/0/websocket", headers={"Upgrade": "WebSocket", "Connection": "close"}
        )
        assert r.status == 400

    @pytest_twisted.ensureDeferred
    async def test_invalid_method(self, sockjs_server: SockJSServer) -> None:
        """POST is 405, with or without upgrade headers."""
        for headers in ({"Upgrade": "WebSocket", "Connection": "Upgrade"}, {}):
            assert_405(await sockjs_server.fetch("POST", "/echo/0/0/websocket", headers=headers))


class TestWebsocketHixie76:
    """Hixie-76 (pre-RFC 6455) is not spoken: Autobahn implements RFC 6455 only.

    The upstream suite's Hixie-76 cases cannot pass; what rtserver guarantees instead is
    a clean refusal, so a client falls back to another SockJS transport.
    """

    @pytest_twisted.ensureDeferred
    async def test_hixie76_handshake_is_refused(self, sockjs_server: SockJSServer) -> None:
        """A Hixie-76 upgrade gets 400 at once, never 101 or a hang."""
        headers = {
            "Upgrade": "WebSocket",
            "Connection": "Upgrade",
            "Origin": "http://example.com",
            "Sec-WebSocket-Key1": "4 @1  46546xW%0l 1 5",
            "Sec-WebSocket-Key2": "12998 5 Y3 1  .P00",
        }
        r = await sockjs_server.fetch(
            "GET", "/echo/0/0/websocket", headers=headers, body=b"^n:ds[4U"
        )
        assert r.status == 400


def ws_url(server: SockJSServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


class TestWebsocketHybi10:
    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """o, then each message echoed as an a-frame."""
        ws = connect(ws_url(sockjs_server, sockjs_server.session_url() + "/websocket"))
        proto = await ws.opened
        assert await ws.frames.get() == b"o"
        proto.sendMessage(b'["a"]')
        assert await ws.frames.get() == b'a["a"]'
        proto.sendClose(1000)
        await ws.closed

    @pytest_twisted.ensureDeferred
    async def test_close(self, sockjs_server: SockJSServer) -> None:
        """The application close arrives as c[...] and then the socket closes."""
        ws = connect(ws_url(sockjs_server, sockjs_server.session_url("close") + "/websocket"))
        await ws.opened
        assert await ws.frames.get() == b"o"
        assert await ws.frames.get() == b'c[3000,"Go away!"]'
        await ws.closed

    @pytest_twisted.ensureDeferred
    async def test_headers_sanity(self, sockjs_server: SockJSServer) -> None:
        """The RFC 6455 handshake answer is exact and has no Content-Length."""
        r = await sockjs_server.open(
            "GET",
            sockjs_server.session_url() + "/websocket",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Origin": "http://asd",
                "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw==",
            },
            length=False,
        )
        assert r.status == 101
        assert r.header("sec-websocket-accept") == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
        assert r.header("connection").lower() == "upgrade"
        assert r.header("upgrade").lower() == "websocket"
        assert not r.header("content-length")
        r.abort()

    @pytest_twisted.ensureDeferred
    async def test_empty_frame(self, sockjs_server: SockJSServer) -> None:
        """Empty messages and empty arrays are ignored."""
        ws = connect(ws_url(sockjs_server, sockjs_server.session_url() + "/websocket"))
        proto = await ws.opened
        assert await ws.frames.get() == b"o"
        for message in (b"", b"[]", b'["a"]'):
            proto.sendMessage(message)
        assert await ws.frames.get() == b'a["a"]'
        proto.sendClose(1000)
        await ws.closed

    @pytest_twisted.ensureDeferred
    async def test_reuse_session_id(self, sockjs_server: SockJSServer) -> None:
        """Two sockets with one session id are two sessions; the id can be reused."""
        url = ws_url(sockjs_server, sockjs_server.session_url() + "/websocket")
        ws1, ws2 = connect(url), connect(url)
        p1, p2 = await ws1.opened, await ws2.opened
        assert await ws1.frames.get() == b"o" and await ws2.frames.get() == b"o"
        p1.sendMessage(b'["a"]')
        p2.sendMessage(b'["b"]')
        assert await ws1.frames.get() == b'a["a"]'
        assert await ws2.frames.get() == b'a["b"]'
        p1.sendClose(1000)
        p2.sendClose(1000)
        await ws1.closed
        await ws2.closed
        ws3 = connect(url)
        p3 = await ws3.opened
        assert await ws3.frames.get() == b"o"
        p3.sendMessage(b'["a"]')
        assert await ws3.frames.get() == b'a["a"]'
        p3.sendClose(1000)
        await ws3.closed

    @pytest_twisted.ensureDeferred
    async def test_broken_json(self, sockjs_server: SockJSServer) -> None:
        """Unparsable JSON terminates the WebSocket at once: no SockJS close frame.

        Upstream ``Websocket.test_broken_json``: after ``o`` the next receive must find
        the connection closed (a WebSocket close, here 3000 "Broken framing.").
        """
        ws = connect(ws_url(sockjs_server, sockjs_server.session_url() + "/websocket"))
        proto = await ws.opened
        assert await ws.frames.get() == b"o"
        proto.sendMessage(b'["a')
        assert await ws.closed == (3000, "Broken framing.")
        assert ws.frames.pending == []

    @pytest_twisted.ensureDeferred
    async def test_deeply_nested_json(self, sockjs_server: SockJSServer) -> None:
        """JSON nested past the parser's recursion limit is broken framing, not a crash."""
        ws = connect(ws_url(sockjs_server, sockjs_server.session_url() + "/websocket"))
        proto = await ws.opened
        assert await ws.frames.get() == b"o"
        proto.sendMessage(b"[" * 30000)
        assert await ws.closed == (3000, "Broken framing.")
        assert ws.frames.pending == []

    @pytest_twisted.ensureDeferred
    async def test_disabled(self, sockjs_server: SockJSServer) -> None:
        """With websocket off, the session WebSocket URL does not exist."""
        r = await sockjs_server.fetch("GET", "/disabled_websocket_echo/0/0/websocket")
        assert r.status == 404


class TestXhrPolling:
    @pytest_twisted.ensureDeferred
    async def test_options(self, sockjs_server: SockJSServer) -> None:
        """Xhr and xhr_send answer preflights without creating sessions."""
        for suffix in ("/xhr", "/xhr_send"):
            await assert_options(sockjs_server, "/echo/abc/abc" + suffix, "OPTIONS, POST")
        assert len(sockjs_server.resources["echo"].sessions) == 0

    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """Content types, CORS and no-cache on the receive and the send requests."""
        url = sockjs_server.session_url()
        r = await sockjs_server.fetch("POST", url + "/xhr", headers={"Origin": "test"})
        assert (r.status, r.body) == (200, b"o\n")
        assert content_type(r) == "application/javascript;charset=UTF-8"
        assert_cors(r, "test")
        assert_not_cached(r)
        r = await sockjs_server.fetch(
            "POST", url + "/xhr_send", b'["x"]', headers={"Origin": "test"}
        )
        assert (r.status, r.body) == (204, b"")
        assert content_type(r) == "text/plain;charset=UTF-8"
        assert_cors(r, "test")
        assert_not_cached(r)
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert (r.status, r.body) == (200, b'a["x"]\n')

    @pytest_twisted.ensureDeferred
    async def test_invalid_session(self, sockjs_server: SockJSServer) -> None:
        """Sending to a session nobody opened is 404 and creates nothing."""
        r = await sockjs_server.fetch("POST", sockjs_server.session_url() + "/xhr_send", b'["x"]')
        assert r.status == 404
        assert len(sockjs_server.resources["echo"].sessions) == 0

    @pytest_twisted.ensureDeferred
    async def test_invalid_json(self, sockjs_server: SockJSServer) -> None:
        """Broken or missing payloads are 500 with the protocol's words; the session lives."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("POST", url + "/xhr")
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b'["x')
        assert r.status == 500 and b"Broken JSON encoding." in r.body
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b"")
        assert r.status == 500 and b"Payload expected." in r.body
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b'["a"]')
        assert (r.status, r.body) == (204, b"")
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')

    @pytest_twisted.ensureDeferred
    async def test_deeply_nested_json(self, sockjs_server: SockJSServer) -> None:
        """A body nested past the parser's recursion limit is the protocol's 500, not a crash."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("POST", url + "/xhr")
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b"[" * 30000)
        assert r.status == 500 and b"Broken JSON encoding." in r.body
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b'["a"]')
        assert r.status == 204

    @pytest_twisted.ensureDeferred
    async def test_content_types(self, sockjs_server: SockJSServer) -> None:
        """xhr_send ignores the request Content-Type; buffered messages go in one frame."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("POST", url + "/xhr")
        types = [
            "text/plain",
            "T",
            "application/json",
            "application/xml",
            "",
            "application/json; charset=utf-8",
            "text/xml; charset=utf-8",
            "text/xml",
        ]
        for ct in types:
            r = await sockjs_server.fetch(
                "POST", url + "/xhr_send", b'["a"]', headers={"Content-Type": ct}
            )
            assert (r.status, r.body) == (204, b"")
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert r.body == b"a[" + b",".join([b'"a"'] * len(types)) + b"]\n"

    @pytest_twisted.ensureDeferred
    async def test_request_headers_cors(self, sockjs_server: SockJSServer) -> None:
        """Requested headers are echoed when present and non-empty."""
        for asked, expected in (("a, b, c", "a, b, c"), ("", ""), (None, "")):
            headers = {"Origin": "test", "Access-Control-Request-Method": "POST"}
            if asked is not None:
                headers["Access-Control-Request-Headers"] = asked
            r = await sockjs_server.fetch(
                "OPTIONS", sockjs_server.session_url() + "/xhr", headers=headers
            )
            assert r.status in (200, 204)
            assert_cors(r, "test")
            assert r.header("access-control-allow-headers") == expected

    @pytest_twisted.ensureDeferred
    async def test_sending_empty_frame(self, sockjs_server: SockJSServer) -> None:
        """An empty array is accepted and delivers nothing."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("POST", url + "/xhr")
        assert (await sockjs_server.fetch("POST", url + "/xhr_send", b"[]")).status == 204
        assert (await sockjs_server.fetch("POST", url + "/xhr_send", b'["a"]')).status == 204
        assert (await sockjs_server.fetch("POST", url + "/xhr")).body == b'a["a"]\n'


class TestXhrStreaming:
    @pytest_twisted.ensureDeferred
    async def test_options(self, sockjs_server: SockJSServer) -> None:
        """xhr_streaming answers preflights."""
        await assert_options(sockjs_server, "/echo/abc/abc/xhr_streaming", "OPTIONS, POST")

    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """Prelude, o and each echo arrive as separate chunks."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("POST", url + "/xhr_streaming", headers={"Origin": "test"})
        assert r.status == 200
        assert content_type(r) == "application/javascript;charset=UTF-8"
        assert_cors(r, "test")
        assert_not_cached(r)
        assert await r.read() == b"h" * 2048 + b"\n"
        assert await r.read() == b"o\n"
        send = await sockjs_server.fetch("POST", url + "/xhr_send", b'["x"]')
        assert (send.status, send.body) == (204, b"")
        assert await r.read() == b'a["x"]\n'

    @pytest_twisted.ensureDeferred
    async def test_response_limit(self, sockjs_server: SockJSServer) -> None:
        """The response ends after 4096 bytes of frames (the prelude does not count)."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("POST", url + "/xhr_streaming")
        assert await r.read()
        assert await r.read() == b"o\n"
        msg = b'"' + b"x" * 128 + b'"'
        for _ in range(31):
            send = await sockjs_server.fetch("POST", url + "/xhr_send", b"[" + msg + b"]")
            assert send.status == 204
            assert await r.read() == b"a[" + msg + b"]\n"
        assert await r.read() == b""


class TestEventSource:
    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """SSE events; CR, LF and NUL stay JSON-escaped inside the data line."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("GET", url + "/eventsource")
        assert r.status == 200
        assert content_type(r) == "text/event-stream"
        assert_not_cached(r)
        assert await r.read() == b"\r\n"
        assert await r.read() == b"data: o\r\n\r\n"
        await sockjs_server.fetch("POST", url + "/xhr_send", b'["x"]')
        assert await r.read() == b'data: a["x"]\r\n\r\n'
        await sockjs_server.fetch("POST", url + "/xhr_send", rb'["  \u0000\n\r "]')
        assert await r.read() == b'data: a["  \\u0000\\n\\r "]\r\n\r\n'

    @pytest_twisted.ensureDeferred
    async def test_percent_is_escaped(self, sockjs_server: SockJSServer) -> None:
        """A % in a message is sent as %25 (the client decodeURI()s every event)."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("GET", url + "/eventsource")
        await r.read()
        await r.read()
        await sockjs_server.fetch("POST", url + "/xhr_send", b'["100%41"]')
        assert await r.read() == b'data: a["100%2541"]\r\n\r\n'

    @pytest_twisted.ensureDeferred
    async def test_response_limit(self, sockjs_server: SockJSServer) -> None:
        """One message past the limit ends the stream."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("GET", url + "/eventsource")
        assert await r.read()
        assert await r.read() == b"data: o\r\n\r\n"
        msg = b'"' + b"x" * 4096 + b'"'
        await sockjs_server.fetch("POST", url + "/xhr_send", b"[" + msg + b"]")
        assert await r.read() == b"data: a[" + msg + b"]\r\n\r\n"
        assert await r.read() == b""


class TestHtmlFile:
    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """A padded head calling parent.<callback>, then one script block per frame."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("GET", url + "/htmlfile?c=%63allback")
        assert r.status == 200
        assert content_type(r) == "text/html;charset=UTF-8"
        assert_not_cached(r)
        head = await r.read()
        assert head.strip().decode() == HTMLFILE_HEAD
        assert len(head) > 1024
        assert await r.read() == b'<script>\np("o");\n</script>\r\n'
        send = await sockjs_server.fetch("POST", url + "/xhr_send", b'["x"]')
        assert (send.status, send.body) == (204, b"")
        assert await r.read() == b'<script>\np("a[\\"x\\"]");\n</script>\r\n'

    @pytest_twisted.ensureDeferred
    async def test_script_tags_are_escaped(self, sockjs_server: SockJSServer) -> None:
        """A message cannot close the script block it travels in."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("GET", url + "/htmlfile?c=cb")
        await r.read()
        await r.read()
        await sockjs_server.fetch("POST", url + "/xhr_send", b'["</script><b>"]')
        chunk = await r.read()
        assert b"</script><b>" not in chunk and b"\\u003c/script\\u003e" in chunk

    @pytest_twisted.ensureDeferred
    async def test_no_callback(self, sockjs_server: SockJSServer) -> None:
        """A missing callback is 500."""
        r = await sockjs_server.fetch("GET", "/echo/a/a/htmlfile")
        assert r.status == 500 and b'"callback" parameter required' in r.body

    @pytest_twisted.ensureDeferred
    async def test_invalid_callback(self, sockjs_server: SockJSServer) -> None:
        """Callbacks outside [a-zA-Z0-9-_.] are 500."""
        for callback in ("%20", "*", "abc(", "abc%28"):
            r = await sockjs_server.fetch("GET", "/echo/a/a/htmlfile?c=" + callback)
            assert r.status == 500 and b'invalid "callback" parameter' in r.body

    @pytest_twisted.ensureDeferred
    async def test_response_limit(self, sockjs_server: SockJSServer) -> None:
        """One message past the limit ends the page."""
        url = sockjs_server.session_url()
        r = await sockjs_server.open("GET", url + "/htmlfile?c=callback")
        assert await r.read()
        assert await r.read() == b'<script>\np("o");\n</script>\r\n'
        msg = b"x" * 4096
        await sockjs_server.fetch("POST", url + "/xhr_send", b'["' + msg + b'"]')
        assert await r.read() == b'<script>\np("a[\\"' + msg + b'\\"]");\n</script>\r\n'
        assert await r.read() == b""


class TestJsonPolling:
    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """JSONP receive; jsonp_send answers 200 ok."""
        url = sockjs_server.session_url()
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=%63allback")
        assert r.status == 200
        assert content_type(r) == "application/javascript;charset=UTF-8"
        assert r.header("x-content-type-options") == "nosniff"
        assert_not_cached(r)
        assert r.body == b'/**/callback("o");\r\n'
        r = await sockjs_server.fetch("POST", url + "/jsonp_send", b"d=%5B%22x%22%5D", headers=FORM)
        assert (r.status, r.body) == (200, b"ok")
        assert content_type(r) == "text/plain;charset=UTF-8"
        assert_not_cached(r)
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=%63allback")
        assert r.body == b'/**/callback("a[\\"x\\"]");\r\n'

    @pytest_twisted.ensureDeferred
    async def test_no_and_invalid_callback(self, sockjs_server: SockJSServer) -> None:
        """Missing or unsafe callbacks are 500."""
        r = await sockjs_server.fetch("GET", "/echo/a/a/jsonp")
        assert r.status == 500 and b'"callback" parameter required' in r.body
        for callback in ("%20", "*", "abc(", "abc%28"):
            r = await sockjs_server.fetch("GET", "/echo/a/a/jsonp?c=" + callback)
            assert r.status == 500 and b'invalid "callback" parameter' in r.body

    @pytest_twisted.ensureDeferred
    async def test_invalid_json(self, sockjs_server: SockJSServer) -> None:
        """Broken or missing payloads are 500; a good one still goes through."""
        url = sockjs_server.session_url()
        assert (await sockjs_server.fetch("GET", url + "/jsonp?c=x")).body == b'/**/x("o");\r\n'
        r = await sockjs_server.fetch("POST", url + "/jsonp_send", b"d=%5B%22x", headers=FORM)
        assert r.status == 500 and b"Broken JSON encoding." in r.body
        for data in (b"", b"d=", b"p=p"):
            r = await sockjs_server.fetch("POST", url + "/jsonp_send", data, headers=FORM)
            assert r.status == 500 and b"Payload expected." in r.body
        r = await sockjs_server.fetch("POST", url + "/jsonp_send", b"d=%5B%22b%22%5D", headers=FORM)
        assert r.body == b"ok"
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        assert r.body == b'/**/x("a[\\"b\\"]");\r\n'

    @pytest_twisted.ensureDeferred
    async def test_content_types(self, sockjs_server: SockJSServer) -> None:
        """Form-encoded and raw text bodies are both accepted."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        r = await sockjs_server.fetch(
            "POST", url + "/jsonp_send", b"d=%5B%22abc%22%5D", headers=FORM
        )
        assert r.body == b"ok"
        r = await sockjs_server.fetch(
            "POST", url + "/jsonp_send", b'["%61bc"]', headers={"Content-Type": "text/plain"}
        )
        assert r.body == b"ok"
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        assert r.body == b'/**/x("a[\\"abc\\",\\"%61bc\\"]");\r\n'

    @pytest_twisted.ensureDeferred
    async def test_close(self, sockjs_server: SockJSServer) -> None:
        """The close frame repeats on every later poll."""
        url = sockjs_server.session_url("close")
        assert (await sockjs_server.fetch("GET", url + "/jsonp?c=x")).body == b'/**/x("o");\r\n'
        for _ in range(2):
            r = await sockjs_server.fetch("GET", url + "/jsonp?c=x")
            assert r.body == b'/**/x("c[3000,\\"Go away!\\"]");\r\n'

    @pytest_twisted.ensureDeferred
    async def test_sending_empty_frame(self, sockjs_server: SockJSServer) -> None:
        """d=[] is accepted and delivers nothing."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        for body in (b"d=%5B%5D", b"d=%5B%22x%22%5D"):
            r = await sockjs_server.fetch("POST", url + "/jsonp_send", body, headers=FORM)
            assert r.body == b"ok"
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        assert r.body == b'/**/x("a[\\"x\\"]");\r\n'

    @pytest_twisted.ensureDeferred
    async def test_form_body_with_non_latin1_text(self, sockjs_server: SockJSServer) -> None:
        """A form field with percent-encoded UTF-8 (how browsers post the form) is decoded."""
        url = sockjs_server.session_url()
        await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        body = b"d=%5B%22%E2%82%AC%20%C3%A9%20%E4%B8%AD%22%5D"
        r = await sockjs_server.fetch("POST", url + "/jsonp_send", body, headers=FORM)
        assert (r.status, r.body) == (200, b"ok")
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=x")
        assert json.loads(json.loads(r.body[len(b"/**/x(") : -len(b");\r\n")])[1:]) == [
            "\u20ac \u00e9 \u4e2d"
        ]


class TestJsessionidCookie:
    def assert_cookie(self, r: object, value: str = "dummy") -> None:
        cookie = r.header("set-cookie").split(";")  # type: ignore[attr-defined]
        assert cookie[0].strip() == f"JSESSIONID={value}"
        assert cookie[1].strip().lower() == "path=/"

    @pytest_twisted.ensureDeferred
    async def test_basic(self, sockjs_server: SockJSServer) -> None:
        """/info asks for the cookie but never sets it."""
        r = await sockjs_server.fetch("GET", "/cookie_needed_echo/info")
        assert not r.header("set-cookie")
        assert json.loads(r.body)["cookie_needed"] is True

    @pytest_twisted.ensureDeferred
    async def test_xhr(self, sockjs_server: SockJSServer) -> None:
        """Dummy by default; the client's own JSESSIONID is echoed."""
        r = await sockjs_server.fetch(
            "POST", sockjs_server.session_url("cookie_needed_echo") + "/xhr"
        )
        assert r.body == b"o\n"
        self.assert_cookie(r)
        r = await sockjs_server.fetch(
            "POST",
            sockjs_server.session_url("cookie_needed_echo") + "/xhr",
            headers={"Cookie": "JSESSIONID=abcdef"},
        )
        assert r.body == b"o\n"
        self.assert_cookie(r, "abcdef")

    @pytest_twisted.ensureDeferred
    async def test_streaming_transports(self, sockjs_server: SockJSServer) -> None:
        """xhr_streaming, eventsource and htmlfile set the cookie."""
        for method, suffix in (
            ("POST", "/xhr_streaming"),
            ("GET", "/eventsource"),
            ("GET", "/htmlfile?c=%63allback"),
        ):
            r = await sockjs_server.open(
                method, sockjs_server.session_url("cookie_needed_echo") + suffix
            )
            assert r.status == 200
            self.assert_cookie(r)
            r.abort()

    @pytest_twisted.ensureDeferred
    async def test_jsonp(self, sockjs_server: SockJSServer) -> None:
        """Jsonp and jsonp_send set the cookie."""
        url = sockjs_server.session_url("cookie_needed_echo")
        r = await sockjs_server.fetch("GET", url + "/jsonp?c=%63allback")
        self.assert_cookie(r)
        assert r.body == b'/**/callback("o");\r\n'
        r = await sockjs_server.fetch("POST", url + "/jsonp_send", b"d=%5B%22x%22%5D", headers=FORM)
        assert r.body == b"ok"
        self.assert_cookie(r)


class TestRawWebsocket:
    @pytest_twisted.ensureDeferred
    async def test_transport(self, sockjs_server: SockJSServer) -> None:
        """No framing: a message comes back as it was sent."""
        ws = connect(ws_url(sockjs_server, "/echo/websocket"))
        proto = await ws.opened
        proto.sendMessage("Hello world!\uffff".encode())
        assert (await ws.frames.get()).decode() == "Hello world!\uffff"
        proto.sendClose(1000)
        await ws.closed

    @pytest_twisted.ensureDeferred
    async def test_close(self, sockjs_server: SockJSServer) -> None:
        """An application close is a WebSocket close with its code and reason."""
        ws = connect(ws_url(sockjs_server, "/close/websocket"))
        await ws.opened
        assert await ws.closed == (3000, "Go away!")


ESCAPED_BY_SERVER = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff]")


class TestJSONEncoding:
    @pytest_twisted.ensureDeferred
    async def test_xhr_server_encodes(self, sockjs_server: SockJSServer) -> None:
        """Every code point browsers mangle comes back as a lowercase u-escape."""
        escaped = "".join(
            f"\\u{i:04x}" for i in range(255, 65536) if ESCAPED_BY_SERVER.match(chr(i))
        )
        url = sockjs_server.session_url()
        await sockjs_server.fetch("POST", url + "/xhr")
        payload = '["' + json.loads('"' + escaped + '"') + '"]'
        r = await sockjs_server.fetch(
            "POST", url + "/xhr_send", payload.encode("utf-8", "surrogatepass")
        )
        assert r.status == 204
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert r.body.strip()[2:-1].decode() == '"' + escaped + '"'

    @pytest_twisted.ensureDeferred
    async def test_xhr_server_decodes(self, sockjs_server: SockJSServer) -> None:
        """Escapes a client sends (all of the BMP, surrogates included) round-trip."""
        escaped = '"' + "".join(f"\\u{i:04x}" for i in range(0, 65536, 7)) + '"'
        url = sockjs_server.session_url()
        await sockjs_server.fetch("POST", url + "/xhr")
        r = await sockjs_server.fetch("POST", url + "/xhr_send", b"[" + escaped.encode() + b"]")
        assert r.status == 204
        r = await sockjs_server.fetch("POST", url + "/xhr")
        assert json.loads(r.body.strip()[2:-1]) == json.loads(escaped)


class TestHandlingClose:
    @pytest_twisted.ensureDeferred
    async def test_close_frame(self, sockjs_server: SockJSServer) -> None:
        """After an application close, a new receiver gets the close frame, not 2010."""
        url = sockjs_server.session_url("close")
        r1 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r1.read()
        assert await r1.read() == b"o\n"
        assert await r1.read() == GO_AWAY
        r2 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r2.read()
        assert await r2.read() == GO_AWAY
        assert await r1.read() == b""
        assert await r2.read() == b""

    @pytest_twisted.ensureDeferred
    async def test_close_request(self, sockjs_server: SockJSServer) -> None:
        """A second receiver gets 2010 and is ended; the first keeps going."""
        url = sockjs_server.session_url()
        r1 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r1.read()
        assert await r1.read() == b"o\n"
        r2 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r2.read()
        assert await r2.read() == ANOTHER
        assert await r2.read() == b""
        await sockjs_server.fetch("POST", url + "/xhr_send", b'["still here"]')
        assert await r1.read() == b'a["still here"]\n'

    @pytest_twisted.ensureDeferred
    async def test_abort_xhr_streaming(self, sockjs_server: SockJSServer) -> None:
        """A receiver the client drops ends the session; the next request starts afresh."""
        url = sockjs_server.session_url()
        r1 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r1.read()
        assert await r1.read() == b"o\n"
        r2 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r2.read()
        assert await r2.read() == ANOTHER
        r1.abort()
        await r1.closed
        r3 = await sockjs_server.open("POST", url + "/xhr_streaming")
        await r3.read()
        assert await r3.read() in (b"o\n", b'c[1002,"Connection interrupted"]\n')

    @pytest_twisted.ensureDeferred
    async def test_abort_xhr_polling(self, sockjs_server: SockJSServer) -> None:
        """The same for a long poll."""
        url = sockjs_server.session_url()
        assert (await sockjs_server.fetch("POST", url + "/xhr")).body == b"o\n"
        r1 = await sockjs_server.open("POST", url + "/xhr", head=False)
        await sockjs_server.attached(url)
        r2 = await sockjs_server.fetch("POST", url + "/xhr")
        assert r2.body == ANOTHER
        r1.abort()
        await r1.closed
        r3 = await sockjs_server.fetch("POST", url + "/xhr")
        assert r3.body in (b"o\n", b'c[1002,"Connection interrupted"]\n')


class TestHttp10:
    @pytest_twisted.ensureDeferred
    async def test_synchronous(self, sockjs_server: SockJSServer) -> None:
        """HTTP/1.0: a sized body, never chunked."""
        r = await sockjs_server.fetch(
            "GET", "/echo", version="HTTP/1.0", headers={"Connection": "Keep-Alive"}
        )
        assert r.status == 200
        assert not r.header("transfer-encoding")
        assert r.header("content-length") == "19"
        assert r.body == b"Welcome to SockJS!\n"

    @pytest_twisted.ensureDeferred
    async def test_streaming(self, sockjs_server: SockJSServer) -> None:
        """HTTP/1.0 streaming: no length, no chunking, the socket closes at the end."""
        url = sockjs_server.session_url("close")
        r = await sockjs_server.open(
            "POST",
            url + "/xhr_streaming",
            version="HTTP/1.0",
            headers={"Connection": "Keep-Alive"},
        )
        assert r.status == 200
        assert not r.header("transfer-encoding")
        assert not r.header("content-length")
        await r.closed
        assert r.body == b"h" * 2048 + b"\n" + b"o\n" + GO_AWAY


class TestHttp11:
    @pytest_twisted.ensureDeferred
    async def test_synchronous(self, sockjs_server: SockJSServer) -> None:
        """HTTP/1.1: keep-alive; a second request works on the same connection."""
        r = await sockjs_server.open("GET", "/echo", headers={"Connection": "Keep-Alive"})
        await r.complete
        assert r.header("connection").lower() in ("keep-alive", "")
        assert r.header("content-length") == "19"
        assert r.body == b"Welcome to SockJS!\n"
        r.transport.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for _ in range(1000):
            if r.received.count(b"Welcome to SockJS!\n") == 2:
                break
            await task.deferLater(reactor, 0, lambda: None)
        assert r.received.count(b"HTTP/1.1 200 OK") == 2
        assert not r.closed.called
        r.abort()

    @pytest_twisted.ensureDeferred
    async def test_streaming(self, sockjs_server: SockJSServer) -> None:
        """HTTP/1.1 streaming is chunked, one frame per chunk, ending with the zero chunk."""
        url = sockjs_server.session_url("close")
        r = await sockjs_server.open("POST", url + "/xhr_streaming")
        assert r.header("transfer-encoding").lower() == "chunked"
        assert not r.header("content-length")
        assert (await r.read())[:1] == b"h"
        assert await r.read() == b"o\n"
        assert await r.read() == GO_AWAY
        assert await r.read() == b""
        assert not r.closed.called


class TestHttpQuirks:
    """Upstream ``http-quirks.py``."""

    @pytest_twisted.ensureDeferred
    async def test_empty_content_length_for_post(self, sockjs_server: SockJSServer) -> None:
        """A POST to /xhr without Content-Length still opens the session."""
        r = await sockjs_server.fetch("POST", sockjs_server.session_url() + "/xhr", length=False)
        assert r.status == 200
        assert r.body == b"o\n"

