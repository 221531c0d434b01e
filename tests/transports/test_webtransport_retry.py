"""QUIC address validation (Retry) on the HTTP/3 listener, in memory and on a real server.

While a quarter of ``webtransport.max_connections`` connections are in their handshake,
a new Initial without a token gets a stateless Retry; the client comes back with the
token and completes (aioquic's client checks the connection ids the server then reports).
A token from another address, an expired or a forged one is dropped.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from harness import make_certificate, stop_server
from test_webtransport import WTServer, _start, connected
from twisted.internet.task import Clock

from rtserver import config as rtconfig
from rtserver.service import build_node
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.webtransport import QuicListener, quic_configuration

SERVER = ("127.0.0.1", 4433)


def _client_config() -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    config.server_name = "localhost"
    return config


def _packet_type(datagram: bytes) -> QuicPacketType:
    return pull_quic_header(Buffer(data=datagram), host_cid_length=8).packet_type


class Wire:
    """The listener's UDP transport: what it sends, by address."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def take(self, addr: Any) -> list[bytes]:
        mine = [d for d, a in self.sent if a == addr]
        self.sent = [(d, a) for d, a in self.sent if a != addr]
        return mine


class Peer:
    """An aioquic client at ``addr`` talking to a listener through memory."""

    def __init__(self, clock: Clock, port: int) -> None:
        self.clock = clock
        self.addr = ("127.0.0.1", port)
        self.quic = QuicConnection(configuration=_client_config())
        self.quic.connect(SERVER, now=clock.seconds())
        self.completed = False
        self.terminated = False

    def outgoing(self) -> list[bytes]:
        return [d for d, _ in self.quic.datagrams_to_send(now=self.clock.seconds())]

    def receive(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            self.quic.receive_datagram(data, SERVER, now=self.clock.seconds())
        event = self.quic.next_event()
        while event is not None:
            self.completed |= isinstance(event, quic_events.HandshakeCompleted)
            self.terminated |= isinstance(event, quic_events.ConnectionTerminated)
            event = self.quic.next_event()

    def talk(self, listener: QuicListener, wire: Wire, rounds: int = 10) -> None:
        """Exchange datagrams until the handshake completes (or ``rounds`` pass)."""
        for _ in range(rounds):
            for data in self.outgoing():
                listener.datagramReceived(data, self.addr)
            self.receive(wire.take(self.addr))
            if self.completed or self.terminated:
                for data in self.outgoing():  # the client's Finished
                    listener.datagramReceived(data, self.addr)
                self.receive(wire.take(self.addr))
                return


@pytest.fixture
def setup(tmp_path: Path) -> tuple[QuicListener, Wire, Clock]:
    cert, key, _ = make_certificate(tmp_path)
    cfg = rtconfig.from_mapping({
        "http_server": {
            "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
            "http3": {"enabled": True},
        },
        "webtransport": {"enabled": True, "max_connections": 4},
    })
    clock = Clock()
    clock.advance(1_000_000)  # tokens carry the time
    node = build_node(cfg, clock)
    quic = quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0)
    listener = QuicListener(node, OriginPolicy([]), cfg.webtransport, quic, clock)
    wire = Wire()
    listener.transport = wire
    return listener, wire, clock


def test_retry_only_under_pressure_and_the_retried_client_completes(
    setup: tuple[QuicListener, Wire, Clock],
) -> None:
    listener, wire, clock = setup
    assert listener.retry_threshold == 1  # a quarter of max_connections: 4
    stuck = Peer(clock, 1001)
    for data in stuck.outgoing():  # an Initial, then silence
        listener.datagramReceived(data, stuck.addr)
    replies = wire.take(stuck.addr)
    assert _packet_type(replies[0]) == QuicPacketType.INITIAL
    assert (len(listener.peers), listener.handshaking, listener.retries_sent) == (1, 1, 0)

    fresh = Peer(clock, 1002)
    (initial,) = fresh.outgoing()
    listener.datagramReceived(initial, fresh.addr)
    (retry,) = wire.take(fresh.addr)
    assert _packet_type(retry) == QuicPacketType.RETRY
    assert len(retry) < len(initial)  # no amplification
    assert (len(listener.peers), listener.handshaking, listener.retries_sent) == (1, 1, 1)

    fresh.receive([retry])
    fresh.talk(listener, wire)
    assert fresh.completed and not fresh.terminated
    assert (len(listener.peers), listener.handshaking) == (2, 1)

    # the stuck one completes too: nothing is in its handshake, no Retry for the next
    stuck.receive(replies)
    stuck.talk(listener, wire)
    assert stuck.completed and listener.handshaking == 0
    other = Peer(clock, 1003)
    other.talk(listener, wire)
    assert other.completed and listener.retries_sent == 1


def _retried_initial(listener: QuicListener, wire: Wire, peer: Peer) -> bytes:
    """The Initial ``peer`` sends back with the token of the Retry it got."""
    for data in peer.outgoing():
        listener.datagramReceived(data, peer.addr)
    (retry,) = wire.take(peer.addr)
    assert _packet_type(retry) == QuicPacketType.RETRY
    peer.receive([retry])
    (initial,) = peer.outgoing()
    return initial


def _fill(listener: QuicListener, wire: Wire, clock: Clock, port: int) -> None:
    """One connection left in its handshake: the threshold (1) is reached."""
    stuck = Peer(clock, port)
    for data in stuck.outgoing():
        listener.datagramReceived(data, stuck.addr)
    wire.take(stuck.addr)
    assert listener.handshaking == 1


def test_a_token_from_another_address_expired_or_forged_is_dropped(
    setup: tuple[QuicListener, Wire, Clock], tmp_path: Path
) -> None:
    listener, wire, clock = setup
    _fill(listener, wire, clock, 1001)

    moved = Peer(clock, 2001)
    initial = _retried_initial(listener, wire, moved)
    listener.datagramReceived(initial, ("127.0.0.1", 2002))  # another port
    listener.datagramReceived(initial, ("127.0.0.2", 2001))  # another host
    assert not wire.sent
    assert (len(listener.peers), listener.tokens_refused) == (1, 2)

    late = Peer(clock, 2003)
    initial = _retried_initial(listener, wire, late)
    clock.advance(10.5)
    listener.datagramReceived(initial, late.addr)
    assert not wire.sent
    assert listener.tokens_refused == 3

    # a token another server (another key) made
    cert, key, _ = make_certificate(tmp_path / "other")
    other_listener = QuicListener(
        listener.node, OriginPolicy([]), listener.config,
        quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0), clock,
    )
    other_wire = Wire()
    other_listener.transport = other_wire
    other_listener.handshaking = other_listener.retry_threshold  # Retry everything
    forged = Peer(clock, 2004)
    initial = _retried_initial(other_listener, other_wire, forged)
    listener.datagramReceived(initial, forged.addr)
    assert not wire.sent
    assert listener.tokens_refused == 4
    # a valid token for this address is still accepted after all that (the stuck
    # connection timed out meanwhile: another one)
    assert listener.handshaking == 0
    _fill(listener, wire, clock, 1002)
    good = Peer(clock, 2005)
    good_initial = _retried_initial(listener, wire, good)
    listener.datagramReceived(good_initial, good.addr)
    good.receive(wire.take(good.addr))
    good.talk(listener, wire)
    assert good.completed and len(listener.peers) == 2
    assert listener.tokens_refused == 4


# --- against a real server -------------------------------------------------------------


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[WTServer]:
    """A server with 8 QUIC connections at most: Retry once 2 are in their handshake."""
    server = _start(
        tmp_path,
        webtransport={"enabled": True, "idle_timeout": "30s", "max_connections": 8},
        client={"stale_close_delay": "30s"},
    )
    try:
        yield server
    finally:
        server.close()
        stop_server(server.server)


class RawInitial:
    """An aioquic client on its own UDP socket that sends its Initial and no more."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.target = ("127.0.0.1", port)
        self.quic = QuicConnection(configuration=_client_config())
        self.quic.connect(self.target, now=time.monotonic())
        for data, _ in self.quic.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, self.target)

    def close(self) -> None:
        self.sock.close()


def _wait_metric(server: WTServer, name: str, value: float) -> None:
    deadline = time.monotonic() + 10
    while server.metric(name) != value:
        assert time.monotonic() < deadline, f"{name}: {server.metric(name)}, not {value}"
        time.sleep(0.05)  # another process: nothing to await but its answers


def test_a_fresh_client_connects_through_a_retry_while_handshakes_pile_up(
    busy: WTServer,
) -> None:
    stuck = [RawInitial(busy.udp_port) for _ in range(2)]
    probe = RawInitial(busy.udp_port)
    elsewhere = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    elsewhere.bind(("127.0.0.1", 0))
    try:
        _wait_metric(busy, "rtserver_http3_handshakes", 2)
        # the probe's Initial came after the two stuck ones (same sender order, one
        # listener): it is answered by a Retry and holds no connection
        retry, _ = probe.sock.recvfrom(2048)
        assert _packet_type(retry) == QuicPacketType.RETRY
        assert busy.metric("rtserver_http3_connections") == 2
        assert busy.metric("rtserver_http3_retries_sent_total") == 1

        # its token, replayed from another address, is dropped
        probe.quic.receive_datagram(retry, probe.target, now=time.monotonic())
        (initial, _), = probe.quic.datagrams_to_send(now=time.monotonic())
        elsewhere.sendto(initial, probe.target)
        _wait_metric(busy, "rtserver_http3_retry_tokens_refused_total", 1)
        assert busy.metric("rtserver_http3_connections") == 2

        # a real client gets a Retry too, comes back with its token and connects
        client = busy.client()
        try:
            stream = connected(client)
            client.send(stream, b'{"id":2,"subscribe":{"channel":"news"}}\n')
            client.read_until(stream, lambda b: b'"id":2' in b)
        finally:
            client.close()
        assert busy.metric("rtserver_http3_retries_sent_total") == 2
        assert busy.metric("rtserver_http3_retry_tokens_refused_total") == 1
    finally:
        for raw in (*stuck, probe):
            raw.close()
        elsewhere.close()
