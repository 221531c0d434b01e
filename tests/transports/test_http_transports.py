"""HTTP-streaming, SSE, /emulation and the unidirectional transports over real sockets."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import pytest_twisted
from liveserver import Server
from rawhttp import request
from twisted.internet import reactor, task
from wsclient import connect

from rtserver.core.types import DisconnectControl

ORIGIN = "https://app.example.com"
SETTINGS: dict[str, Any] = {
    "client": {
        "allow_anonymous_connect_without_token": True,
        "allowed_origins": ["https://*.example.com"],
        "queue_max_size": 65536,
    },
    "http_stream": {"enabled": True},
    "sse": {"enabled": True},
    "uni_http_stream": {"enabled": True},
    "uni_sse": {"enabled": True},
    "uni_websocket": {"enabled": True},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "history_size": 10,
            "history_ttl": "60s",
            "force_recovery": True,
        }
    },
}


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(SETTINGS)
    yield srv
    await srv.stop()


def lines(body: bytes) -> list[Any]:
    return [orjson.loads(x) for x in body.split(b"\n") if x.strip()]


def events(body: bytes) -> list[Any]:
    chunks = body.removeprefix(b"\r\n").split(b"\n\n")
    return [orjson.loads(x[len(b"data: ") :]) for x in chunks if x.startswith(b"data: ")]


async def turn() -> None:
    await task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_http_stream_bidirectional_session(server: Server) -> None:
    """Connect on the stream, subscribe via /emulation, receive an API publication."""
    stream = await request(server.port, "POST", "/connection/http_stream", b'{"id":1,"connect":{}}')
    body = await stream.wait_for(b'"connect"')
    assert stream.status == 200 and stream.chunked
    assert stream.headers["x-accel-buffering"] == "no"
    assert "no-store" in stream.headers["cache-control"]
    connect = lines(body)[0]["connect"]
    assert connect["session"] and connect["node"] == server.node.uid
    emu = await request(
        server.port,
        "POST",
        "/emulation",
        orjson.dumps({"session": connect["session"], "node": connect["node"],
                      "data": '{"id":2,"subscribe":{"channel":"news"}}'}),
    )
    await emu.wait_for(b"")
    assert emu.status == 204
    await stream.wait_for(b'"id":2')
    await server.node.publish("news", b'{"n":1}')
    body = await stream.wait_for(b'"pub"')
    assert lines(body)[-1] == {"push": {"channel": "news", "pub": {"data": {"n": 1}, "offset": 1}}}
    await server.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    await stream.complete
    assert lines(stream.body)[-1] == {"push": {"disconnect": {"code": 3503, "reason": "force disconnect"}}}
    stream.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_emulation_errors(server: Server) -> None:
    """/emulation: 404 for unknown session or node, 400 malformed, 405 GET, 413 too large."""
    stream = await request(server.port, "POST", "/connection/http_stream", b'{"id":1,"connect":{}}')
    connect = lines(await stream.wait_for(b'"connect"'))[0]["connect"]
    cases = [
        ("POST", orjson.dumps({"session": "nope", "node": connect["node"], "data": "{}"}), 404),
        ("POST", orjson.dumps({"session": connect["session"], "node": "other", "data": "{}"}), 404),
        ("POST", b"{not json", 400),
        ("POST", orjson.dumps({"session": connect["session"], "data": 5}), 400),
        ("GET", b"", 405),
        ("POST", b"x" * 70000, 413),
    ]
    for method, body, status in cases:
        reply = await request(server.port, method, "/emulation", body)
        await (reply.closed if status == 413 else reply.wait_for(b""))
        assert reply.status == status, (body[:40], reply.status)
        reply.transport.loseConnection()
    pong = await request(server.port, "POST", "/emulation", orjson.dumps(
        {"session": connect["session"], "node": connect["node"], "data": "{}"}))
    await pong.wait_for(b"")
    assert pong.status == 204
    pong.transport.loseConnection()
    stream.transport.loseConnection()
    await stream.closed


@pytest_twisted.ensureDeferred
async def test_sse_bidirectional_connect(server: Server) -> None:
    r"""SSE: cf_connect in the query, ``\\r\\n`` then ``data:`` events; no cf_connect is 400."""
    missing = await request(server.port, "GET", "/connection/sse")
    await missing.wait_for(b"cf_connect")
    assert missing.status == 400
    query = urllib.parse.quote('{"id":1,"connect":{}}')
    stream = await request(server.port, "GET", f"/connection/sse?cf_connect={query}")
    body = await stream.wait_for(b"\n\n")
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert body.startswith(b"\r\n")
    assert events(body)[0]["connect"]["session"]
    stream.transport.loseConnection()
    await stream.closed


@pytest_twisted.ensureDeferred
async def test_uni_http_stream_like_curl(server: Server) -> None:
    """uni_http_stream: connect push with subs, then bare publication pushes per line."""
    stream = await request(server.port, "POST", "/connection/uni_http_stream",
                           b'{"subs":{"news":{}}}')
    body = await stream.wait_for(b'"connect"')
    connect = lines(body)[0]["connect"]
    assert connect["subs"]["news"]["recoverable"] is True and "pong" not in connect
    await server.node.publish("news", b'{"n":2}')
    body = await stream.wait_for(b'"pub"')
    assert lines(body)[-1] == {"channel": "news", "pub": {"data": {"n": 2}, "offset": 1}}
    await server.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    await stream.complete
    assert lines(stream.body)[-1] == {"disconnect": {"code": 3503, "reason": "force disconnect"}}
    stream.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_uni_http_stream_over_http_10(server: Server) -> None:
    """HTTP/1.0 clients get raw (unchunked) lines and the stream ends by closing."""
    stream = await request(server.port, "POST", "/connection/uni_http_stream",
                           b'{"subs":{"news":{}}}', version="HTTP/1.0")
    await stream.wait_for(b'"connect"')
    assert not stream.chunked and "connection" not in stream.headers
    await server.node.publish("news", b'{"n":3}')
    await stream.wait_for(b'"pub"')
    await server.node.control(DisconnectControl(user="", code=3001, reason="shutdown"))
    await stream.closed
    assert lines(stream.body)[-1] == {"disconnect": {"code": 3001, "reason": "shutdown"}}


@pytest_twisted.ensureDeferred
async def test_uni_sse_get_with_cf_connect(server: Server) -> None:
    """uni_sse: a browser EventSource-style GET receives connect and publications."""
    query = urllib.parse.quote('{"subs":{"news":{}}}')
    stream = await request(server.port, "GET", f"/connection/uni_sse?cf_connect={query}")
    await stream.wait_for(b'"connect"')
    await server.node.publish("news", b'{"n":4}')
    body = await stream.wait_for(b'"pub"')
    assert events(body)[-1] == {"channel": "news", "pub": {"data": {"n": 4}, "offset": 1}}
    stream.transport.loseConnection()
    await stream.closed


@pytest_twisted.ensureDeferred
async def test_uni_subs_skip_forbidden_channels(server: Server) -> None:
    """Channels the client may not subscribe to are skipped silently, the rest work."""
    stream = await request(server.port, "POST", "/connection/uni_http_stream",
                           b'{"subs":{"$private":{},"news":{}}}')
    connect = lines(await stream.wait_for(b'"connect"'))[0]["connect"]
    assert list(connect["subs"]) == ["news"]
    stream.transport.loseConnection()
    await stream.closed


@pytest_twisted.ensureDeferred
async def test_uni_websocket(server: Server) -> None:
    """uni_websocket: first message connects; each push is its own WebSocket message."""
    factory = connect(f"ws://127.0.0.1:{server.port}/connection/uni_websocket")
    proto = await factory.opened
    proto.sendMessage(b'{"subs":{"news":{}}}')
    (connect_push,) = await factory.next_messages()
    assert connect_push["connect"]["subs"]["news"]["positioned"] is True
    server.node.publish("news", b'{"n":5}')
    server.node.publish("news", b'{"n":6}')
    assert await factory.next_messages() == [{"channel": "news", "pub": {"data": {"n": 5}, "offset": 1}}]
    assert await factory.next_messages() == [{"channel": "news", "pub": {"data": {"n": 6}, "offset": 2}}]
    await server.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    assert await factory.next_messages() == [{"disconnect": {"code": 3503, "reason": "force disconnect"}}]
    assert await factory.closed == (3503, "force disconnect")


@pytest_twisted.ensureDeferred
async def test_uni_websocket_connect_in_query(server: Server) -> None:
    """uni_websocket with ``?cf_connect=``: connected on open; later messages are ignored."""
    query = quote('{"subs":{"news":{}}}')
    factory = connect(f"ws://127.0.0.1:{server.port}/connection/uni_websocket?cf_connect={query}")
    proto = await factory.opened
    (connect_push,) = await factory.next_messages()
    assert list(connect_push["connect"]["subs"]) == ["news"]
    proto.sendMessage(b'{"subs":{"other":{}}}')  # one connect per connection: ignored
    server.node.publish("other", b'{"n":1}')
    server.node.publish("news", b'{"n":2}')
    assert await factory.next_messages() == [{"channel": "news", "pub": {"data": {"n": 2}, "offset": 1}}]
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_foreign_origin(server: Server) -> None:
    """Allowed origins get CORS headers and preflights; foreign origins get 403 and none."""
    pre = await request(server.port, "OPTIONS", "/emulation", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    await pre.wait_for(b"")
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert pre.headers["access-control-allow-credentials"] == "true"
    assert pre.headers["access-control-allow-headers"] == "content-type"
    assert "POST" in pre.headers["access-control-allow-methods"]
    stream = await request(server.port, "POST", "/connection/http_stream",
                           b'{"id":1,"connect":{}}', headers={"Origin": ORIGIN})
    await stream.wait_for(b'"connect"')
    assert stream.headers["access-control-allow-origin"] == ORIGIN
    stream.transport.loseConnection()
    await stream.closed
    foreign = await request(server.port, "POST", "/connection/http_stream",
                            b'{"id":1,"connect":{}}', headers={"Origin": "https://evil.test"})
    await foreign.wait_for(b"origin not allowed")
    assert foreign.status == 403
    assert not any(h.startswith("access-control") for h in foreign.headers)


@pytest_twisted.ensureDeferred
async def test_nothing_outlives_a_closed_stream(server: Server) -> None:
    """When the peer goes away, its client, session and timers are gone."""
    stream = await request(server.port, "POST", "/connection/http_stream", b'{"id":1,"connect":{}}')
    connect = lines(await stream.wait_for(b'"connect"'))[0]["connect"]
    assert server.node.hub.by_session(connect["session"]) is not None
    calls_with_client = len(reactor.getDelayedCalls())
    stream.transport.loseConnection()
    await stream.closed
    for _ in range(3):
        await turn()
    assert server.node.hub.by_session(connect["session"]) is None
    assert server.node.hub.num_clients == 0
    assert len(reactor.getDelayedCalls()) < calls_with_client


@pytest_twisted.ensureDeferred
async def test_stream_reader_that_stops_reading_is_cut(server: Server) -> None:
    """A streaming client that stops reading is disconnected at the output limit."""
    stream = await request(server.port, "POST", "/connection/uni_http_stream",
                           b'{"subs":{"news":{}}}')
    await stream.wait_for(b'"connect"')
    stream.transport.pauseProducing()
    big = b'{"blob":"' + b"x" * 60000 + b'"}'
    for _ in range(400):
        server.node.publish("news", big)
        await turn()
    assert server.node.hub.num_clients == 0
    stream.transport.resumeProducing()
    await stream.complete
    assert lines(stream.body)[-1]["disconnect"]["code"] in (3008, 3009)
    stream.transport.loseConnection()


@pytest.mark.parametrize("path", ["/connection/http_stream", "/connection/uni_sse"])
@pytest_twisted.ensureDeferred
async def test_disabled_transports_are_absent(path: str) -> None:
    """Transports are off unless enabled in the configuration."""
    srv = Server({"client": {"allow_anonymous_connect_without_token": True}})
    reply = await request(srv.port, "POST", path, b"{}")
    await reply.wait_for(b"")
    assert reply.status == 404
    reply.transport.loseConnection()
    await reply.closed
    await srv.stop()


@pytest_twisted.ensureDeferred
async def test_sse_endpoints_accept_post_bodies(server: Server) -> None:
    """Non-browser clients may POST the connect request to both SSE endpoints."""
    uni = await request(server.port, "POST", "/connection/uni_sse", b'{"subs":{"news":{}}}')
    subs = events(await uni.wait_for(b'"connect"'))[0]["connect"]["subs"]
    assert list(subs) == ["news"] and subs["news"]["recoverable"] is True
    bidi = await request(server.port, "POST", "/connection/sse", b'{"id":1,"connect":{}}')
    assert events(await bidi.wait_for(b'"connect"'))[0]["id"] == 1
    for stream in (uni, bidi):
        stream.transport.loseConnection()
        await stream.closed


@pytest_twisted.ensureDeferred
async def test_connection_limit_answers_503_on_every_transport() -> None:
    """At ``client.connection_limit`` new WebSocket and stream connections get HTTP 503."""
    settings = {**SETTINGS, "client": {**SETTINGS["client"], "connection_limit": 1}}
    srv = Server(settings)
    try:
        first = await request(srv.port, "POST", "/connection/http_stream", b'{"id":1,"connect":{}}')
        await first.wait_for(b'"connect"')
        second = await request(srv.port, "POST", "/connection/http_stream",
                               b'{"id":1,"connect":{}}')
        await second.wait_for(b"connection limit reached")
        assert second.status == 503
        second.transport.loseConnection()
        ws = connect(srv.url)
        with pytest.raises(ConnectionError, match="503"):
            await ws.opened
        await ws.closed
        first.transport.loseConnection()
        await first.closed
    finally:
        await srv.stop()
