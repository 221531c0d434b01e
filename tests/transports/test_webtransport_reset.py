"""Stateless Reset (RFC 9000 10.3) on the HTTP/3 listener, in memory.

A listener that does not hold a client's connection (another worker of ``--workers N``,
or the server restarted with the same TLS key) answers its packets with a Stateless
Reset carrying the token the client learned from the listener that does: the tokens are
an HMAC of the connection id under a secret derived from the TLS private key.
"""

from __future__ import annotations

from pathlib import Path

from harness import make_certificate
from test_webtransport_retry import Peer, Wire
from twisted.internet.task import Clock

from rtserver import config as rtconfig
from rtserver.service import build_node
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.webtransport import QuicListener, quic_configuration, reset_secret


def _listener(directory: Path, clock: Clock) -> tuple[QuicListener, Wire]:
    """A listener with the certificate in ``directory`` (made on first use)."""
    cert, key = directory / "wt-cert.pem", directory / "wt-key.pem"
    if not cert.exists():
        directory.mkdir(exist_ok=True)
        cert, key, _ = make_certificate(directory)
    cfg = rtconfig.from_mapping({
        "http_server": {
            "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
            "http3": {"enabled": True},
        },
        "webtransport": {"enabled": True},
    })
    quic = quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0)
    listener = QuicListener(
        build_node(cfg, clock), OriginPolicy([]), cfg.webtransport, quic, clock,
        reset_key=reset_secret(key.read_bytes()),
    )
    wire = Wire()
    listener.transport = wire
    return listener, wire


def test_another_listener_with_the_key_resets_a_connection_it_does_not_hold(
    tmp_path: Path,
) -> None:
    clock = Clock()
    holder, holder_wire = _listener(tmp_path / "a", clock)
    peer = Peer(clock, 2001)
    peer.talk(holder, holder_wire)
    assert peer.completed
    for ping in range(3):  # more round trips: the server's NEW_CONNECTION_ID frames
        clock.advance(0.05)
        peer.quic.send_ping(ping)
        for data in peer.outgoing():
            holder.datagramReceived(data, peer.addr)
        peer.receive(holder_wire.take(peer.addr))
    # the tokens the client learned: the first id's (transport parameters) and the others'
    learned = {peer.quic._peer_cid.cid: peer.quic._peer_cid.stateless_reset_token}
    learned.update({c.cid: c.stateless_reset_token for c in peer.quic._peer_cid_available})
    assert len(learned) == 8
    assert all(holder.reset_token(cid) == token for cid, token in learned.items())

    other, wire = _listener(tmp_path / "a", clock)  # a restarted worker: same key
    peer.quic.send_ping(1)
    (packet,) = peer.outgoing()
    other.datagramReceived(packet, peer.addr)
    (reset,) = wire.take(peer.addr)
    assert reset[-16:] == learned[peer.quic._peer_cid.cid]
    assert reset[0] & 0xC0 == 0x40  # looks like a short header
    assert 21 <= len(reset) < len(packet)  # no amplification, no loop
    assert other.resets_sent == 1

    stranger, stranger_wire = _listener(tmp_path / "b", clock)  # another key
    stranger.datagramReceived(packet, peer.addr)
    (foreign,) = stranger_wire.take(peer.addr)
    assert foreign[-16:] != learned[peer.quic._peer_cid.cid]  # the client ignores it


def test_small_packets_are_not_answered_and_resets_are_rate_limited(tmp_path: Path) -> None:
    clock = Clock()
    listener, wire = _listener(tmp_path, clock)
    addr = ("127.0.0.1", 2002)
    listener.datagramReceived(b"\x41" + b"\x01" * 20, addr)  # 21 bytes: no smaller reset
    assert wire.take(addr) == [] and listener.dropped == 1
    short = b"\x41" + b"\x02" * 60
    for _ in range(1200):
        listener.datagramReceived(short, addr)
    assert len(wire.take(addr)) == 1000 and listener.dropped == 201
    clock.advance(1.0)
    listener.datagramReceived(short, addr)
    assert len(wire.take(addr)) == 1
