"""The admin web UI's HTTP side on the site the service builds (in-memory connections).

Login, session tokens (wrong, missing, forged, expired), CSRF safety (the token is a
header, never a cookie; no CORS), the server API and status behind it, the channel view
as a node-level observer, and the UI being off by default.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from twisted.internet.task import Clock
from web.web_http import Connections, parse_response

from rtserver import config as rtconfig
from rtserver.core.node import Node
from rtserver.service import build_node, build_site
from rtserver.web.admin import LOGIN_WINDOW, MAX_FAILED_LOGINS, SESSION_TTL, AdminAuth

PASSWORD = "correct horse"
SECRET = "admin-secret-for-tests"
ADMIN = {"enabled": True, "password": PASSWORD, "secret": SECRET}


@pytest.fixture
def http() -> Iterator[Connections]:
    connections = Connections()
    yield connections
    connections.close_all()


class Served:
    """A node on a Clock and the site the service builds for it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.config = rtconfig.from_mapping(settings)
        self.clock = Clock()
        self.node: Node = build_node(self.config, self.clock)
        self.site, _ = build_site(self.node, self.config, self.clock)
        self.node.start()


def request(
    method: bytes, path: bytes, body: bytes = b"", headers: dict[bytes, bytes] | None = None
) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: x", b"Content-Length: %d" % len(body)]
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def login(http: Connections, served: Served, password: str = PASSWORD) -> tuple[int, Any]:
    raw = request(
        b"POST",
        b"/admin/auth",
        b"password=" + password.replace(" ", "+").encode(),
        {b"Content-Type": b"application/x-www-form-urlencoded"},
    )
    code, headers, body = http.request(served.site, raw)
    assert "set-cookie" not in headers
    return code, json.loads(body)


def token_of(http: Connections, served: Served) -> str:
    code, reply = login(http, served)
    assert code == 200
    token: str = reply["token"]
    return token


def api(
    http: Connections, served: Served, token: str | None, method: str, params: object
) -> tuple[int, bytes]:
    headers = {b"Content-Type": b"application/json"}
    if token is not None:
        headers[b"Authorization"] = b"token " + token.encode()
    raw = request(b"POST", b"/admin/api/" + method.encode(), orjson.dumps(params), headers)
    code, _, body = http.request(served.site, raw)
    return code, body


# --- off by default ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [b"/", b"/admin/init", b"/admin/auth", b"/admin/api/info", b"/admin/status"]
)
def test_admin_is_off_by_default(http: Connections, path: bytes) -> None:
    """Without ``admin.enabled`` no admin path exists: 404, even with an API key."""
    served = Served({"http_api": {"key": "k"}})
    code, _, _ = http.request(served.site, request(b"POST", path, b"{}", {b"X-API-Key": b"k"}))
    assert code == 404


def test_enabled_admin_needs_password_and_secret() -> None:
    """A config that turns the UI on without credentials is refused, naming the keys."""
    with pytest.raises(rtconfig.ConfigError, match="admin: password and secret"):
        rtconfig.from_mapping({"admin": {"enabled": True, "password": "x"}})
    rtconfig.from_mapping({"admin": {"enabled": True, "insecure": True}})


# --- page --------------------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_strict_policy(http: Connections) -> None:
    """``/`` is the page, its script and style load from the server only; no framing."""
    served = Served({"admin": ADMIN})
    code, headers, body = http.request(served.site, request(b"GET", b"/"))
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-frame-options"] == "DENY"
    assert b'src="admin/static/admin.js"' in body
    for name in (b"admin.js", b"admin.css"):
        code, headers, body = http.request(
            served.site, request(b"GET", b"/admin/static/" + name)
        )
        assert code == 200 and body
    code, _, _ = http.request(served.site, request(b"GET", b"/admin/static/nope.js"))
    assert code == 404
    code, _, _ = http.request(served.site, request(b"GET", b"/unknown"))
    assert code == 404


def test_handler_prefix_moves_the_ui(http: Connections) -> None:
    """With ``admin.handler_prefix`` the root stays 404 and the prefix redirects to its slash."""
    served = Served({"admin": {**ADMIN, "handler_prefix": "/ui"}})
    assert http.request(served.site, request(b"GET", b"/"))[0] == 404
    code, headers, _ = http.request(served.site, request(b"GET", b"/ui"))
    assert (code, headers["location"]) == (302, "/ui/")
    assert http.request(served.site, request(b"GET", b"/ui/"))[0] == 200
    code, _, body = http.request(served.site, request(b"GET", b"/ui/admin/init"))
    assert (code, json.loads(body)["authenticated"]) == (200, False)


# --- login and tokens ------------------------------------------------------------------


def test_wrong_password_is_401(http: Connections) -> None:
    """A wrong or missing password gets 401 and no token."""
    served = Served({"admin": ADMIN})
    assert login(http, served, "wrong") == (401, {"error": "wrong password"})
    assert login(http, served, PASSWORD[:-1]) == (401, {"error": "wrong password"})
    code, _, body = http.request(served.site, request(b"POST", b"/admin/auth"))
    assert code == 401 and b"token" not in body


def test_failed_logins_are_throttled(http: Connections) -> None:
    """After ``MAX_FAILED_LOGINS`` wrong passwords in a minute, logins get 429 for a while."""
    served = Served({"admin": ADMIN})
    for _ in range(MAX_FAILED_LOGINS):
        assert login(http, served, "guess")[0] == 401
    raw = request(b"POST", b"/admin/auth", b"password=" + PASSWORD.replace(" ", "+").encode())
    code, headers, _ = http.request(served.site, raw)
    assert (code, headers["retry-after"]) == (429, str(int(LOGIN_WINDOW)))
    served.clock.advance(LOGIN_WINDOW)
    assert login(http, served)[0] == 200


def test_login_accepts_json_too(http: Connections) -> None:
    """``{"password": ...}`` with a JSON content type logs in as the form does."""
    served = Served({"admin": ADMIN})
    raw = request(
        b"POST",
        b"/admin/auth",
        orjson.dumps({"password": PASSWORD}),
        {b"Content-Type": b"application/json"},
    )
    code, _, body = http.request(served.site, raw)
    assert code == 200 and AdminAuth(
        rtconfig.AdminConfig(secret=SECRET, password=PASSWORD), served.clock
    ).valid(json.loads(body)["token"])


def test_api_needs_a_valid_token(http: Connections) -> None:
    """Missing, malformed, forged, other-secret and API-key credentials all get 401."""
    served = Served({"admin": ADMIN, "http_api": {"key": "api-key"}})
    token = token_of(http, served)
    payload, _, signature = token.partition(".")
    forged_payload = base64.urlsafe_b64encode(b'{"exp":99999999999}').rstrip(b"=").decode()
    other = AdminAuth(rtconfig.AdminConfig(password=PASSWORD, secret="other"), served.clock)
    other_token = other.login(PASSWORD)
    assert other_token is not None
    for bad in (None, "", "garbage", f"{forged_payload}.{signature}", f"{payload}.", other_token):
        assert api(http, served, bad, "info", {})[0] == 401, bad
    for path in (b"/admin/api/info", b"/admin/api", b"/admin/status", b"/admin/channel?channel=a"):
        for header in ({b"X-API-Key": b"api-key"}, {b"Authorization": b"apikey api-key"}):
            raw = request(b"GET" if b"api" not in path else b"POST", path, b"{}", header)
            assert http.request(served.site, raw)[0] == 401, (path, header)
    code, body = api(http, served, token, "info", {})
    assert code == 200
    assert json.loads(body)["result"]["nodes"][0]["uid"] == served.node.uid


def test_tokens_expire(http: Connections) -> None:
    """A session token stops working after ``SESSION_TTL`` seconds."""
    served = Served({"admin": ADMIN})
    token = token_of(http, served)
    served.clock.advance(SESSION_TTL - 1)
    assert api(http, served, token, "info", {})[0] == 200
    served.clock.advance(1)
    assert api(http, served, token, "info", {})[0] == 401


def test_csrf_a_cookie_or_cross_site_form_is_not_enough(http: Connections) -> None:
    """The token counts only in the Authorization header, never from a cookie or form.

    A cross-site form post (cookies, form body, Origin of another site) is refused, and
    no CORS header invites another origin to read anything.
    """
    served = Served({"admin": ADMIN})
    token = token_of(http, served)
    raw = request(
        b"POST",
        b"/admin/api/publish",
        b"channel=a&data=1&token=" + token.encode(),
        {
            b"Content-Type": b"application/x-www-form-urlencoded",
            b"Cookie": b"token=" + token.encode(),
            b"Origin": b"https://evil.example",
        },
    )
    code, headers, _ = http.request(served.site, raw)
    assert code == 401
    assert not any(name.startswith("access-control") for name in headers)
    raw = request(
        b"OPTIONS",
        b"/admin/api/publish",
        headers={b"Origin": b"https://evil.example", b"Access-Control-Request-Method": b"POST"},
    )
    _, headers, _ = http.request(served.site, raw)
    assert not any(name.startswith("access-control") for name in headers)


def test_legacy_api_route_and_init(http: Connections) -> None:
    """``POST /admin/api`` takes the legacy command lines; ``init`` reports the login."""
    served = Served({"admin": ADMIN})
    token = token_of(http, served)
    auth = {b"Authorization": b"token " + token.encode()}
    raw = request(b"POST", b"/admin/api", b'{"id":3,"method":"info","params":{}}', auth)
    code, _, body = http.request(served.site, raw)
    assert code == 200 and json.loads(body)["id"] == 3
    code, _, body = http.request(served.site, request(b"GET", b"/admin/init", headers=auth))
    assert json.loads(body) == {"insecure": False, "edition": "oss", "authenticated": True}


def test_insecure_admin_needs_no_login(http: Connections) -> None:
    """``admin.insecure``: every endpoint answers without a token."""
    served = Served({"admin": {"enabled": True, "insecure": True}})
    assert api(http, served, None, "info", {})[0] == 200
    _, _, body = http.request(served.site, request(b"GET", b"/admin/init"))
    assert json.loads(body)["insecure"] is True


# --- status and channel view ------------------------------------------------------------


def test_status_reports_nodes_engine_and_counters(http: Connections) -> None:
    """``/admin/status``: the info nodes, engine health and the API counters."""
    served = Served({"admin": ADMIN})
    token = token_of(http, served)
    api(http, served, token, "publish", {"channel": "a", "data": {}})
    raw = request(b"GET", b"/admin/status", headers={b"Authorization": b"token " + token.encode()})
    code, _, body = http.request(served.site, raw)
    status = json.loads(body)
    assert code == 200
    assert status["nodes"][0]["name"] == served.node.name
    assert status["engine"] == {"type": "memory", "healthy": True}
    assert status["api"]["publish"]["count"] == 1
    assert status["connections"]["open"] == 0


def _lines(data: bytes) -> list[Any]:
    code, headers, body = parse_response(data)
    assert code == 200 and headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in body.splitlines() if line]


def test_channel_view_streams_publications_without_being_a_user(http: Connections) -> None:
    """The channel view streams pushes and presence without being a client or user.

    It leaves the hub (and stops its presence timer) when the browser goes away.
    """
    served = Served(
        {"admin": ADMIN, "channel": {"without_namespace": {"presence": True, "join_leave": True}}}
    )
    token = token_of(http, served)
    auth = {b"Authorization": b"token " + token.encode()}
    stream = http.send(served.site, request(b"GET", b"/admin/channel?channel=news", headers=auth))
    assert api(http, served, token, "publish", {"channel": "news", "data": {"n": 1}})[0] == 200
    served.clock.advance(2)
    lines = _lines(stream.value())
    assert lines[0]["subscribed"]["channel"] == "news"
    assert {"push": {"channel": "news", "pub": {"data": {"n": 1}}}} in lines
    assert lines.count({"presence": {}}) == 2  # at once and after 2 s
    info = served.node.node_info()
    assert (info.num_clients, info.num_users, info.num_subs) == (0, 0, 1)
    stream.loseConnection()
    http.close_all()
    assert not served.node.hub.has_subscribers("news")
    served.clock.advance(10)  # the presence timer is gone with it
    assert served.node.node_info().num_subs == 0


def test_channel_view_refuses_bad_channels(http: Connections) -> None:
    """An unknown namespace or a missing name is a 400 with the API's error object."""
    served = Served({"admin": ADMIN})
    auth = {b"Authorization": b"token " + token_of(http, served).encode()}
    code, _, body = http.request(
        served.site, request(b"GET", b"/admin/channel?channel=nope:x", headers=auth)
    )
    assert (code, json.loads(body)["error"]["code"]) == (400, 102)
    code, _, body = http.request(served.site, request(b"GET", b"/admin/channel", headers=auth))
    assert (code, json.loads(body)["error"]["code"]) == (400, 107)
