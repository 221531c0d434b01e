"""rtserver/tlsclient.py against a real TLS server on loopback: SNI and ALPN.

The unverified path (``insecure_skip_verify``, used by Redis, NATS and the GRPC proxy
relay) still names the server (SNI) when the name is a DNS name and offers the ALPN
protocols asked for; an IP address is never sent as SNI (RFC 6066). The verified path
sends the name it checks.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest_twisted
from harness import make_certificate
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from rtserver.config import ClientTLSConfig
from rtserver.tlsclient import tls_connection_creator

#: What the server saw of a handshake: (SNI name or None, ALPN protocol or None).
Seen = tuple[bytes | None, bytes | None]


class _Client(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done

    def connectionMade(self) -> None:
        self.transport.write(b"hi")  # type: ignore[union-attr]  # sent after the handshake

    def dataReceived(self, data: bytes) -> None:
        if not self.done.called:
            self.done.callback(data)


class _Server(Protocol):
    def __init__(self, names: list[bytes | None], seen: list[Seen]) -> None:
        self.names = names
        self.seen = seen

    def dataReceived(self, data: bytes) -> None:
        tls: Any = self.transport
        self.seen.append((self.names[-1] if self.names else None,
                          tls.negotiatedProtocol))
        tls.write(b"hello")


async def _handshake(tmp_path: Path, tls: ClientTLSConfig, host: str,
                     alpn: tuple[bytes, ...] = ()) -> Seen:
    """Connect with ``tls`` to a local TLS server (cert for localhost/127.0.0.1)."""
    cert, key, _ = make_certificate(tmp_path)
    pair = ssl.PrivateCertificate.loadPEM(cert.read_bytes() + key.read_bytes())
    names: list[bytes | None] = []
    with warnings.catch_warnings():  # pyOpenSSL >= 24.3 deprecates X509/PKey objects
        warnings.simplefilter("ignore", DeprecationWarning)
        options = ssl.CertificateOptions(
            privateKey=pair.privateKey.original, certificate=pair.original,
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        options.getContext().set_tlsext_servername_callback(
            lambda conn: names.append(conn.get_servername())
        )
    seen: list[Seen] = []
    factory = TLSMemoryBIOFactory(
        options, False, Factory.forProtocol(lambda: _Server(names, seen))
    )
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        done: Deferred[bytes] = Deferred()
        endpoint = wrapClientTLS(
            tls_connection_creator(tls, host, "test.tls", alpn=alpn),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5),
        )
        client = await endpoint.connect(Factory.forProtocol(lambda: _Client(done)))
        done.addTimeout(5, reactor)
        assert await done == b"hello"
        client.transport.loseConnection()
    finally:
        await port.stopListening()
    return seen[0]


@pytest_twisted.ensureDeferred
async def test_unverified_sends_the_server_name_and_alpn(tmp_path: Path) -> None:
    tls = ClientTLSConfig(enabled=True, insecure_skip_verify=True, server_name="billing.example")
    assert await _handshake(tmp_path, tls, "127.0.0.1", alpn=(b"h2",)) == (
        b"billing.example", b"h2"
    )


@pytest_twisted.ensureDeferred
async def test_unverified_to_an_ip_address_sends_no_name(tmp_path: Path) -> None:
    tls = ClientTLSConfig(enabled=True, insecure_skip_verify=True)
    assert await _handshake(tmp_path, tls, "127.0.0.1") == (None, None)


@pytest_twisted.ensureDeferred
async def test_verified_sends_the_name_it_checks(tmp_path: Path) -> None:
    cert = tmp_path / "wt-cert.pem"  # make_certificate's file, self-signed: its own CA
    tls = ClientTLSConfig(enabled=True, server_ca_pem=str(cert))
    assert await _handshake(tmp_path, tls, "localhost", alpn=(b"h2",)) == (b"localhost", b"h2")
