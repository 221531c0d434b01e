"""Centrifugo's client protocol over /connection/sockjs (a real rtserver site)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from liveserver import Server
from sockjs_http import Response
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from wsclient import connect

from rtserver import config as rtconfig
from rtserver.core.types import DisconnectControl
from rtserver.service import enabled_transports
from rtserver.sockjs import SockJSResource

ORIGIN = "https://app.example.com"
SETTINGS: dict[str, Any] = {
    "client": {
        "allow_anonymous_connect_without_token": True,
        "allowed_origins": ["https://*.example.com"],
    },
    "sockjs": {"enabled": True},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
        }
    },
}
PREFIX = "/connection/sockjs"


class Client:
    """Raw HTTP requests against one server, all closed at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.responses: list[Response] = []

    async def open(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        response = Response(method)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), response)
        self.responses.append(response)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        response.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        response.head.addErrback(lambda _: None)
        return response

    async def fetch(self, method: str, path: str, body: bytes = b"", **kw: Any) -> Response:
        response = await self.open(method, path, body, **kw)
        await response.complete
        return response

    async def close(self) -> None:
        for r in self.responses:
            if r.transport.connected:
                r.transport.abortConnection()
        await defer.DeferredList([r.closed for r in self.responses], consumeErrors=True)


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[tuple[Server, Client]]:
    srv = Server(SETTINGS)
    client = Client(srv.port)
    yield srv, client
    await client.close()
    await srv.stop()


def messages(frame: bytes) -> list[Any]:
    """Centrifugo replies in an a-frame: each SockJS message holds JSON lines."""
    assert frame.startswith(b"a["), frame
    out = []
    for message in json.loads(frame.strip()[1:]):
        out += [json.loads(line) for line in message.split("\n") if line]
    return out


def send_body(*commands: dict[str, Any]) -> bytes:
    return json.dumps(["\n".join(json.dumps(c) for c in commands)]).encode()


def test_sockjs_is_listed_when_enabled() -> None:
    """enabled_transports names sockjs, and it is off by default."""
    assert "sockjs" in enabled_transports(rtconfig.from_mapping(SETTINGS))
    assert "sockjs" not in enabled_transports(rtconfig.from_mapping({}))


@pytest_twisted.ensureDeferred
async def test_xhr_streaming_session(server: tuple[Server, Client]) -> None:
    """Connect and subscribe through xhr_send; replies and a publication on the stream."""
    srv, http = server
    url = f"{PREFIX}/123/abcd1234"
    stream = await http.open("POST", url + "/xhr_streaming", headers={"Origin": ORIGIN})
    await stream.head
    assert stream.header("access-control-allow-origin") == ORIGIN
    assert await stream.read() == b"h" * 2048 + b"\n"
    assert await stream.read() == b"o\n"
    body = send_body({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "news"}})
    sent = await http.fetch("POST", url + "/xhr_send", body, headers={"Origin": ORIGIN})
    assert sent.status == 204
    replies = messages(await stream.read())
    if len(replies) == 1:
        replies += messages(await stream.read())
    assert replies[0]["id"] == 1 and replies[0]["connect"]["client"]
    assert replies[1] == {"id": 2, "subscribe": {}}
    await srv.node.publish("news", b'{"n":1}')
    assert messages(await stream.read()) == [
        {"push": {"channel": "news", "pub": {"data": {"n": 1}}}}
    ]
    await srv.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    assert await stream.read() == b'c[3503,"force disconnect"]\n'
    assert await stream.read() == b""


@pytest_twisted.ensureDeferred
async def test_xhr_polling_session_and_timeout(server: tuple[Server, Client]) -> None:
    """Polling carries the connect command and its reply."""
    _, http = server
    url = f"{PREFIX}/1/poller"
    assert (await http.fetch("POST", url + "/xhr")).body == b"o\n"
    await http.fetch("POST", url + "/xhr_send", send_body({"id": 1, "connect": {}}))
    reply = messages((await http.fetch("POST", url + "/xhr")).body)
    assert reply[0]["connect"]["client"]


@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused(server: tuple[Server, Client]) -> None:
    """client.allowed_origins applies to SockJS: 403 for another site."""
    _, http = server
    r = await http.fetch("POST", f"{PREFIX}/1/x/xhr", headers={"Origin": "https://evil.test"})
    assert r.status == 403


@pytest_twisted.ensureDeferred
async def test_websocket_session(server: tuple[Server, Client]) -> None:
    """SockJS over WebSocket: o, connect reply, then a close frame on disconnect."""
    srv, _ = server
    ws = connect(f"ws://127.0.0.1:{srv.port}{PREFIX}/000/wsabcdef/websocket")
    proto = await ws.opened
    assert await ws.frames.get() == b"o"
    proto.sendMessage(send_body({"id": 1, "connect": {}}))
    assert messages(await ws.frames.get())[0]["connect"]["client"]
    await srv.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    assert await ws.frames.get() == b'c[3503,"force disconnect"]'
    await ws.closed


@pytest_twisted.ensureDeferred
async def test_websocket_origin_policy_matches_the_http_transports(
    server: tuple[Server, Client],
) -> None:
    """Like the HTTP routes, the WebSocket accepts rtserver's own origin, refuses others."""
    srv, _ = server
    url = f"ws://127.0.0.1:{srv.port}{PREFIX}/000/wsorigin/websocket"
    own = connect(url, origin=f"http://127.0.0.1:{srv.port}")
    proto = await own.opened
    assert await own.frames.get() == b"o"
    proto.sendClose(1000)
    await own.closed
    foreign = connect(url.replace("wsorigin", "wsforeign"), origin="https://evil.test")
    with pytest.raises(Exception, match="403"):
        await foreign.opened


@pytest_twisted.ensureDeferred
async def test_unknown_session_is_404(server: tuple[Server, Client]) -> None:
    """A send for a session held by another node (or none) gets the protocol's 404."""
    _, http = server
    for transport in ("xhr_send", "jsonp_send"):
        r = await http.fetch("POST", f"{PREFIX}/000/elsewhere/{transport}", b'["{}"]')
        assert r.status == 404


@pytest_twisted.ensureDeferred
async def test_polling_client_keeps_receiving_after_a_large_poll(
    server: tuple[Server, Client],
) -> None:
    """A poll answer bigger than the socket buffer does not leave the client's output paused.

    Writing it pauses the session's producer; the poll ends at once, and the next poll must
    still get publications (not a write-timeout close, 3009).
    """
    srv, http = server
    url = f"{PREFIX}/1/bigpoll"
    assert (await http.fetch("POST", url + "/xhr")).body == b"o\n"
    body = send_body({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "news"}})
    await http.fetch("POST", url + "/xhr_send", body)
    replies = messages((await http.fetch("POST", url + "/xhr")).body)
    if len(replies) == 1:
        replies += messages((await http.fetch("POST", url + "/xhr")).body)
    assert replies[1] == {"id": 2, "subscribe": {}}
    big = json.dumps({"blob": "x" * 200_000}).encode()
    await srv.node.publish("news", big)
    for _ in range(5):  # the client's writer flushes on a later reactor turn
        await task.deferLater(reactor, 0, lambda: None)
    large = await http.fetch("POST", url + "/xhr")
    assert messages(large.body)[0]["push"]["pub"]["data"] == json.loads(big)
    poll = await http.open("POST", url + "/xhr")
    await srv.node.publish("news", b'{"n":2}')
    assert messages(await poll.complete) == [
        {"push": {"channel": "news", "pub": {"data": {"n": 2}}}}
    ]


@pytest_twisted.ensureDeferred
async def test_lone_surrogate_in_a_message_gets_a_reply(server: tuple[Server, Client]) -> None:
    """A message holding a lone surrogate is answered (U+FFFD, as Centrifugo does).

    Lone surrogates are legal in JavaScript strings; old browsers' JSON.stringify leaves them
    raw and sockjs-client escapes them. The handler failed on them and never answered.
    """
    srv, http = server
    sockjs = next(d for d in srv.drains if isinstance(d, SockJSResource))
    url = f"{PREFIX}/1/surrogate"
    assert (await http.fetch("POST", url + "/xhr")).body == b"o\n"
    body = b'["{\\"id\\":1,\\"connect\\":{\\"name\\":\\"js\\ud800\\"}}"]'
    assert json.loads(body)[0].endswith('"js\ud800"}}')  # the message holds U+D800 itself
    assert (await http.fetch("POST", url + "/xhr_send", body)).status == 204
    session = sockjs.sessions.get("surrogate")
    assert session is not None
    for _ in range(5):  # the reply is written on a later reactor turn
        await task.deferLater(reactor, 0, lambda: None)
    assert session.buffered_bytes > 0
    reply = messages((await http.fetch("POST", url + "/xhr")).body)
    assert reply[0]["id"] == 1 and reply[0]["connect"]["client"]
