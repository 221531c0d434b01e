"""Request-head deadlines and the cap on unfinished heads, on every HTTP path.

The site is the one the server builds (``service.build_site``) on a Clock: the server
API (fast path and twisted.web), HTTP-streaming, SockJS and WebSocket upgrades.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtserver.config import from_mapping
from rtserver.service import build_site
from rtserver.testing import make_node
from rtserver.web.site import RTSite

KEY = "k"
TIMEOUT = 10.0


def settings(**server: Any) -> dict[str, Any]:
    return {
        "http_server": {"read_header_timeout": f"{TIMEOUT}s", **server},
        "http_api": {"key": KEY},
        "http_stream": {"enabled": True},
        "sockjs": {"enabled": True},
        "prometheus": {"enabled": True},
        "client": {"allow_anonymous_connect_without_token": True},
    }


class Server:
    def __init__(self, **server: Any) -> None:
        data = settings(**server)
        self.node, self.clock = make_node(data)
        self.site, _ = build_site(self.node, from_mapping(data), self.clock)
        self.conns: list[tuple[Any, StringTransport]] = []

    def connect(self) -> tuple[Any, StringTransport]:
        assert isinstance(self.site, RTSite)
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        transport.protocol = proto  # as a TCP transport has; a WebSocket upgrade swaps it
        proto.makeConnection(transport)
        self.conns.append((proto, transport))
        return proto, transport

    def close_all(self) -> None:
        for _, transport in self.conns:
            # After a WebSocket upgrade the transport's owner is the WebSocket protocol.
            owner = transport.protocol
            owner.connectionLost(Failure(ConnectionDone()))
        self.conns = []
        self.clock.advance(3600)  # let closed channels' timers (idle, abort) run out


def publish() -> bytes:
    body = b'{"channel":"a","data":{}}'
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


HEADS = {
    "API fast path": publish(),
    "API on twisted.web (HTTP/1.0)": publish().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "WebSocket upgrade": (
        b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    ),
    "SockJS": b"GET /connection/sockjs/info HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP-streaming": (
        b"POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    ),
}


@pytest.mark.parametrize("path", list(HEADS))
def test_slowloris_head_is_closed_with_408(path: str) -> None:
    """One byte every 2 s: each byte resets the idle timer, but the head deadline holds."""
    server = Server()
    proto, transport = server.connect()
    raw = HEADS[path]
    sent = 0
    while not transport.disconnecting and sent < len(raw) - 1:
        proto.dataReceived(raw[sent : sent + 1])
        sent += 1
        server.clock.advance(2)
    assert transport.disconnecting
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert sent == TIMEOUT / 2  # closed at the deadline, not later
    assert server.site.stats.head_timeouts == 1
    assert server.site.stats.unfinished_heads == 0
    server.close_all()


def test_silent_connection_is_closed_at_the_deadline() -> None:
    """A connection that never sends a byte is closed after the head deadline."""
    server = Server()
    _, transport = server.connect()
    server.clock.advance(TIMEOUT - 0.1)
    assert not transport.disconnecting
    server.clock.advance(0.1)
    assert transport.disconnecting and transport.value().startswith(b"HTTP/1.1 408 ")
    server.close_all()


@pytest.mark.parametrize("path", ["API fast path", "SockJS"])
def test_keep_alive_connection_gets_a_fresh_deadline_per_request(path: str) -> None:
    """A prompt request is answered; idle keep-alive is not a head; the next head is."""
    server = Server()
    proto, transport = server.connect()
    proto.dataReceived(HEADS[path])
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    server.clock.advance(TIMEOUT * 3)  # idle between requests (idle timeout is 60 s)
    assert not transport.disconnecting
    transport.clear()
    proto.dataReceived(HEADS[path][:5])
    server.clock.advance(TIMEOUT - 1)
    assert not transport.disconnecting
    server.clock.advance(1)
    assert transport.disconnecting and transport.value().startswith(b"HTTP/1.1 408 ")
    server.close_all()


def test_websocket_upgrade_is_not_cut_by_the_deadline() -> None:
    """Once the upgrade head is complete, the WebSocket lives past the head deadline."""
    # A 2 s deadline: the test stays inside client.stale_close_delay (10 s without a
    # connect command), so it is the head deadline alone that could close it.
    server = Server(read_header_timeout="2s")
    proto, transport = server.connect()
    proto.dataReceived(HEADS["WebSocket upgrade"])
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    server.clock.advance(5)
    assert not transport.disconnecting
    assert b"408" not in transport.value()
    assert server.site.stats.unfinished_heads == 0
    server.close_all()


def test_unfinished_heads_are_capped_and_counted_in_metrics() -> None:
    """Past the cap, new connections get 503 at once; a finished head frees a slot."""
    server = Server(max_unfinished_request_heads=3)
    conns = [server.connect() for _ in range(3)]
    for proto, _ in conns:
        proto.dataReceived(b"GET /conn")
    proto, transport = server.connect()
    assert transport.disconnecting
    assert transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    proto.dataReceived(publish())  # bytes of a refused connection are ignored
    assert transport.value().count(b"HTTP/1.1") == 1
    first, first_transport = conns[0]
    first.dataReceived(b"ection/sockjs/info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert first_transport.value().startswith(b"HTTP/1.1 200 ")
    _, fresh = server.connect()
    assert not fresh.disconnecting
    server.clock.advance(TIMEOUT)
    scrape, scraped = server.connect()  # GET /metrics on the server's own site
    scrape.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    text = scraped.value().decode()
    assert text.startswith("HTTP/1.1 200 ")
    assert "rtserver_http_connections_refused_total 1.0" in text
    assert "rtserver_http_request_head_timeouts_total 3.0" in text  # 2 slow + the fresh one
    assert "rtserver_http_unfinished_request_heads 0.0" in text
    server.close_all()


def test_deadline_zero_turns_it_off() -> None:
    """``read_header_timeout: 0`` keeps twisted.web's idle timeout only."""
    server = Server(read_header_timeout=0)
    proto, transport = server.connect()
    for _ in range(30):
        proto.dataReceived(b"G")
        server.clock.advance(2)
    assert not transport.disconnecting
    server.close_all()


def test_negative_limits_are_refused_by_config() -> None:
    """A negative deadline or cap is a configuration error naming the key."""
    from rtserver.config import ConfigError

    for key, value in (("read_header_timeout", "-1s"), ("max_unfinished_request_heads", -1)):
        with pytest.raises(ConfigError, match=f"http_server.{key}"):
            from_mapping({"http_server": {key: value}})
