"""A TLS relay for GRPC proxies with ``grpc.tls.insecure_skip_verify``.

grpcio always verifies a TLS peer, so an unverified connection is made by the reactor
instead: grpcio talks plaintext HTTP/2 to a Unix socket in a private directory (mode
0700, socket 0600: no other user can reach the backend through it), and each
connection to it is relayed over TLS to the backend, without verifying the backend's
certificate, with ALPN ``h2`` (GRPC servers require it), SNI (``server_name``, or the
endpoint's host when it is a DNS name) and the client certificate of ``cert_pem``/
``key_pem`` when set. A failed TLS connection is logged here with its reason (grpcio only
sees the Unix connection close), and closes the relayed connection: grpcio reports
``UNAVAILABLE`` and retries with backoff.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from rtserver.config import ClientTLSConfig
from rtserver.logs import Logger
from rtserver.tlsclient import tls_connection_creator

__all__ = ["TLSRelay"]

_log = Logger()


class _Outbound(Protocol):
    """The TLS side: bytes from the backend go to grpcio's connection."""

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound
        self.received = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.inbound.paired(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.received = True
        self.inbound.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        from OpenSSL import SSL

        # Closed by the backend before it spoke HTTP/2 (not because grpcio hung up).
        if not self.inbound.closed and (reason.check(SSL.Error) or not self.received):
            _log.warn(
                "proxy {name}: TLS to {target} failed: {error}",
                name=self.inbound.relay.name, target=self.inbound.relay.target,
                error=str(reason.value) or repr(reason.value),
            )
        self.inbound.transport.loseConnection()  # type: ignore[union-attr]


class _Inbound(Protocol):
    """grpcio's side: held until the TLS connection is made, then relayed."""

    def __init__(self, relay: TLSRelay) -> None:
        self.relay = relay
        self.outbound: _Outbound | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.transport.pauseProducing()  # type: ignore[union-attr]  # read again once paired
        d = self.relay.endpoint.connect(_OutboundFactory(self))
        d.addErrback(self._failed)

    def paired(self, outbound: _Outbound) -> None:
        if self.closed:
            outbound.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.outbound = outbound
        inbound: Any = self.transport
        tls: Any = outbound.transport
        inbound.registerProducer(tls, True)  # backpressure both ways
        tls.registerProducer(inbound, True)
        for data in self.pending:
            tls.write(data)
        self.pending = []
        inbound.resumeProducing()

    def _failed(self, reason: Failure) -> None:
        _log.warn(
            "proxy {name}: cannot connect to {target}: {error}",
            name=self.relay.name, target=self.relay.target, error=str(reason.value),
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.outbound is None:
            self.pending.append(data)
        else:
            self.outbound.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.closed = True
        if self.outbound is not None:
            self.outbound.transport.loseConnection()  # type: ignore[union-attr]


class _OutboundFactory(Factory):
    noisy = False

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def buildProtocol(self, addr: Any) -> _Outbound:  # noqa: N802 - Twisted's name
        return _Outbound(self.inbound)


class _InboundFactory(Factory):
    noisy = False

    def __init__(self, relay: TLSRelay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _Inbound:  # noqa: N802 - Twisted's name
        return _Inbound(self.relay)


class TLSRelay:
    """A private Unix socket relayed over unverified TLS to ``host:port``."""

    def __init__(
        self,
        name: str,
        target: str,
        *,
        reactor: Any,
        tls: ClientTLSConfig,
        key: str,
        connect_timeout: float = 10.0,
    ) -> None:
        """Listen on a new Unix socket (in the reactor's thread).

        Args:
            name: The proxy's name in log lines.
            target: ``host:port`` (``[v6]:port`` for an IPv6 literal) of the backend.
            reactor: The server's reactor.
            tls: The proxy's ``grpc.tls`` (``insecure_skip_verify``; ``server_name`` as
                SNI, default the host when it is a DNS name; ``cert_pem``/``key_pem`` for
                mutual TLS).
            key: Its configuration key, for error messages.
            connect_timeout: Seconds a TCP connect to the backend may take.
        """
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        self.name = name
        self.target = target
        host, _, port = target.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        creator = tls_connection_creator(tls, host, key, alpn=(b"h2",))
        self.endpoint = wrapClientTLS(
            creator, HostnameEndpoint(reactor, host, int(port), timeout=connect_timeout)
        )
        self._directory = Path(tempfile.mkdtemp(prefix="rtserver-grpc-"))
        #: The socket's path; grpcio's target is ``unix:<path>``.
        self.path = str(self._directory / "relay.sock")
        self._port = reactor.listenUNIX(self.path, _InboundFactory(self), mode=0o600)

    def close(self) -> Deferred[None]:
        """Stop listening, then remove the directory (open relays end with the channel)."""
        stopped: Deferred[None] = maybeDeferred(self._port.stopListening)

        def remove(_: object) -> None:
            shutil.rmtree(self._directory, ignore_errors=True)

        stopped.addBoth(remove)
        return stopped
