"""The NATS connection's protocol handling on an injected clock and an in-memory socket.

What users rely on (a node never wedges or buffers without bound): a server that sends
garbage, an overlong control line or an oversized message gets its connection dropped
and the link reconnects; a socket that stops draining is dropped after
``write_timeout`` and publishes fail instead of queueing without bound; a server that
stops answering PINGs is treated as gone; every subscription is sent again before the
link reports itself ready.
"""

from __future__ import annotations

from typing import Any

import pytest
from nats_support import warnings_logged
from twisted.internet.interfaces import ITCPTransport, ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.config import NatsAddress
from rtserver.engines.natsconn import (
    MAX_CONTROL_LINE,
    NatsLink,
    NatsProtocol,
    NatsUnavailable,
)


@implementer(ITCPTransport, ITLSTransport)
class Socket(StringTransport):
    """An in-memory TCP transport that records aborts and the switch to TLS."""

    aborted = False
    tls_options: Any = None

    def abortConnection(self) -> None:
        self.aborted = True

    def startTLS(self, options: Any) -> None:
        self.tls_options = options


class Harness:
    def __init__(self, addresses: list[NatsAddress] | None = None, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.messages: list[tuple[int, bytes, bytes]] = []
        self.link = NatsLink(
            addresses or [NatsAddress("nats.example", 4222, "u", "p")],
            self.reactor,
            self.reactor,
            on_message=lambda *m: self.messages.append(m),
            **kwargs,
        )
        self.link.start()
        self.proto: NatsProtocol
        self.socket: Socket

    def connect(self, info: bytes = b'INFO {"max_payload":64}\r\n') -> None:
        factory = self.reactor.tcpClients[-1][2]
        self.proto = factory.buildProtocol(None)
        self.socket = Socket()
        self.proto.makeConnection(self.socket)
        self.proto.dataReceived(info)

    def sent(self) -> bytes:
        data = self.socket.value()
        self.socket.clear()
        return data

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))


def test_handshake_sends_credentials_and_subscriptions_before_ready() -> None:
    h = Harness()
    sid, d = h.link.subscribe(b"a.b")
    assert not h.link.ready and d.called  # failed at once: not connected
    d.addErrback(lambda f: f.trap(NatsUnavailable))
    h.connect()
    out = h.sent()
    assert out.startswith(b"CONNECT {") and b'"user":"u"' in out and b'"pass":"p"' in out
    assert out.endswith(b"SUB a.b %d\r\nPING\r\n" % sid)
    assert not h.link.ready
    h.proto.dataReceived(b"PONG\r\n")
    assert h.link.ready
    h.proto.dataReceived(b"MSG a.b %d 2\r\nhi\r\nMSG a.b 999 1\r\nx\r\n" % sid)
    assert h.messages == [(sid, b"a.b", b"hi")]  # unknown sid ignored


@pytest.mark.parametrize(
    "garbage",
    [
        b"X" * (MAX_CONTROL_LINE + 10),  # no CRLF within the limit
        b"MSG a 1 65\r\n",  # beyond the server's max_payload (64)
        b"MSG a 1 2\r\nhiXX",  # payload not followed by CRLF
        b"BOGUS\r\n",
        b"MSG a b c\r\n",
    ],
)
def test_protocol_errors_drop_the_connection_and_reconnect(garbage: bytes) -> None:
    h = Harness()
    h.connect()
    h.proto.dataReceived(b"PONG\r\n")
    h.proto.dataReceived(garbage)
    assert h.socket.aborted
    h.lose()
    assert not h.link.ready
    with pytest.raises(NatsUnavailable):
        h.link.publish(b"a", b"x")
    attempts = len(h.reactor.tcpClients)
    h.reactor.advance(3.0)  # backoff is capped at 2 s
    assert len(h.reactor.tcpClients) == attempts + 1


def test_blocked_socket_times_out_and_bounds_the_buffer() -> None:
    h = Harness(write_timeout=1.0, max_pending=100)
    h.connect()
    h.proto.dataReceived(b"PONG\r\n")
    h.sent()
    h.proto.pauseProducing()  # the kernel buffer is full
    h.link.publish(b"s", b"x" * 50)
    with pytest.raises(NatsUnavailable, match="not draining"):
        h.link.publish(b"s", b"x" * 60)
    h.reactor.advance(0.9)
    assert not h.socket.aborted
    h.reactor.advance(0.2)
    assert h.socket.aborted


def test_drained_socket_cancels_the_write_timeout() -> None:
    h = Harness(write_timeout=1.0)
    h.connect()
    h.proto.dataReceived(b"PONG\r\n")
    h.proto.pauseProducing()
    h.reactor.advance(0.5)
    h.proto.resumeProducing()
    h.reactor.advance(5.0)
    assert not h.socket.aborted


def test_unanswered_pings_drop_the_connection() -> None:
    h = Harness(ping_interval=10.0)
    h.connect()
    h.proto.dataReceived(b"PONG\r\n")
    h.sent()
    h.reactor.advance(10.0)
    assert h.sent() == b"PING\r\n"
    h.proto.dataReceived(b"PONG\r\n")  # answered: fine
    h.reactor.advance(10.0)
    h.reactor.advance(10.0)
    assert not h.socket.aborted
    h.reactor.advance(10.0)  # two unanswered
    assert h.socket.aborted


def test_server_ping_is_answered_and_publish_is_framed() -> None:
    h = Harness()
    h.connect()
    h.proto.dataReceived(b"PONG\r\n")
    h.sent()
    h.proto.dataReceived(b"PING\r\n")
    assert h.sent() == b"PONG\r\n"
    h.link.publish(b"subj", b"data")
    assert h.sent() == b"PUB subj 4\r\ndata\r\n"
    with pytest.raises(NatsUnavailable, match="max_payload"):
        h.link.publish(b"subj", b"x" * 65)


def test_no_handshake_within_dial_timeout() -> None:
    h = Harness(dial_timeout=1.0)
    h.connect(info=b"")  # the server never sends INFO
    h.reactor.advance(1.1)
    assert h.socket.aborted


def test_server_requiring_tls_gets_tls_before_connect() -> None:
    """As the official clients: TLS starts after the plaintext INFO, before CONNECT.

    Without ``broker.nats.tls`` the server's certificate is checked against the system's
    trust store and the URL's host name.
    """
    h = Harness()
    h.connect(info=b'INFO {"tls_required":true}\r\n')
    assert not h.socket.aborted
    options = h.socket.tls_options
    assert options is not None and options._hostname == "nats.example"
    out = h.sent()
    assert out.startswith(b"CONNECT {") and b'"tls_required":true' in out


def test_tls_configured_but_not_offered_is_refused() -> None:
    """A tls:// URL to a plaintext server: dropped before CONNECT, one warning, retried."""
    h = Harness([NatsAddress("nats.example", 4222, "u", "p", tls=True)])
    with warnings_logged() as warnings:
        h.connect(info=b"INFO {}\r\n")
        assert h.socket.aborted and h.socket.tls_options is None
        assert h.sent() == b""  # no credentials went out in the clear
        h.lose()
        attempts = len(h.reactor.tcpClients)
        h.reactor.advance(3.0)
        assert len(h.reactor.tcpClients) == attempts + 1
        h.connect(info=b"INFO {}\r\n")  # the same problem again: not warned again
        h.lose()
    assert warnings == [
        "nats link to tls://nats.example:4222: TLS is configured (broker.nats.tls or a "
        "tls:// URL) but the server does not offer it"
    ]


def test_tls_offered_and_configured_starts_tls() -> None:
    """``tls_available`` (a server accepting both) is enough for a TLS client."""
    h = Harness([NatsAddress("nats.example", tls=True)])
    h.connect(info=b'INFO {"tls_available":true}\r\n')
    assert not h.socket.aborted and h.socket.tls_options is not None


def test_failover_tries_the_servers_in_turn() -> None:
    """Start on the first; a failed attempt or a lost connection moves to the next."""
    servers = [NatsAddress("a.example"), NatsAddress("b.example"), NatsAddress("c.example")]
    h = Harness(servers)
    hosts = lambda: [c[0] for c in h.reactor.tcpClients]  # noqa: E731
    assert hosts() == ["a.example"]
    h.link.start()
    factory = h.reactor.tcpClients[-1][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
    assert not h.link.ever_tried  # b and c not tried yet: a start keeps waiting
    h.reactor.advance(3.0)
    assert hosts() == ["a.example", "b.example"]
    h.connect()
    h.proto.dataReceived(b"PONG\r\n")
    assert h.link.ready and h.link.address.host == "b.example"
    h.lose()
    h.reactor.advance(3.0)
    assert hosts()[-1] == "c.example"
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    h.reactor.advance(3.0)
    assert hosts()[-1] == "a.example"  # wraps around


def test_every_server_refusing_completes_a_start() -> None:
    h = Harness([NatsAddress("a.example"), NatsAddress("b.example")])
    for _ in range(2):
        h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        h.reactor.advance(3.0)
    assert h.link.ever_tried and not h.link.ready
