"""TLS of rtserver's client connections (Redis, Sentinel, NATS, HTTPS and GRPC proxies).

One place builds it for every adapter that opens a TLS connection.

:class:`~rtserver.config.ClientTLSConfig` is Centrifugo's TLS object; this module turns
it into Twisted client TLS options: the server's certificate is verified against
``server_ca_pem`` (or the system's trust store) and its name against ``server_name``
(or the host connected to), unless ``insecure_skip_verify``; ``cert_pem``/``key_pem``
are presented as the client certificate (mutual TLS). :func:`tls_failure`
turns what a failed handshake reports into one readable line for the log.
"""

from __future__ import annotations

import ipaddress
import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.config import ClientTLSConfig, load_pem, pem_certificates

__all__ = ["load_tls_material", "tls_connection_creator", "tls_failure"]

@cache
def load_tls_material(options: ClientTLSConfig, key: str) -> tuple[Any, Any]:
    """(trust root or None, client certificate or None), loaded once per TLS object.

    Called at start by the engines, so a bad file fails then rather than on connect.

    Raises:
        ValueError: when a PEM value cannot be loaded (ConfigError is a ValueError).
    """
    from twisted.internet import ssl

    trust = None
    if options.server_ca_pem:
        pem = load_pem(options.server_ca_pem, f"{key}.server_ca_pem")
        certs = [ssl.Certificate.loadPEM(block) for block in pem_certificates(pem)]
        if not certs:
            raise ValueError(f"{key}.server_ca_pem: no certificate in it")
        trust = ssl.trustRootFromCertificates(certs)
    client = None
    if options.cert_pem and options.key_pem:
        cert = load_pem(options.cert_pem, f"{key}.cert_pem")
        private = load_pem(options.key_pem, f"{key}.key_pem")
        client = ssl.PrivateCertificate.loadPEM(cert + b"\n" + private)
    return trust, client


def _is_dns_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def tls_connection_creator(
    options: ClientTLSConfig, host: str, key: str, *, alpn: Sequence[bytes] = ()
) -> Any:
    """The Twisted TLS client options for a connection to ``host``.

    Verifies the server's certificate against ``server_ca_pem`` (or the system's trust
    store) and its name against ``server_name`` (or ``host``; an IP address is checked
    against the certificate's IP addresses), unless ``insecure_skip_verify``; presents
    ``cert_pem``/``key_pem`` when set. The server name is sent as SNI when it is a DNS
    name, verified or not.

    Args:
        options: The TLS object (``engine.redis.tls``, ``sentinel_tls``,
            ``broker.nats.tls``, a GRPC proxy's ``grpc.tls``, an HTTP proxy's ``http.tls``).
        host: The host connected to.
        key: The configuration key, for error messages.
        alpn: Application protocols to offer (``(b"h2",)`` for GRPC); none by default.

    Raises:
        ValueError: when a PEM value cannot be loaded (ConfigError is a ValueError).
    """
    from twisted.internet import ssl

    trust, client = load_tls_material(options, key)
    if client is not None:
        # Twisted hands the client certificate and key to pyOpenSSL as X509/PKey objects,
        # which pyOpenSSL >= 24.3 deprecates. The context is built later, in the reactor,
        # so a scoped filter cannot cover it: this exact message is ignored process-wide.
        warnings.filterwarnings(
            "ignore", "Passing pyOpenSSL (X509|PKey) objects is deprecated", DeprecationWarning
        )
    protocols = list(alpn) or None
    name = options.server_name or host
    if not options.insecure_skip_verify:
        return ssl.optionsForClientTLS(
            name,
            trustRoot=trust if trust is not None else ssl.platformTrust(),
            clientCertificate=client,
            acceptableProtocols=protocols,
        )
    mine: dict[str, Any] = {}
    if client is not None:
        mine = {"privateKey": client.privateKey.original, "certificate": client.original}
    with warnings.catch_warnings():  # pyOpenSSL >= 24.3 deprecates X509/PKey objects
        warnings.simplefilter("ignore", DeprecationWarning)
        unverified = ssl.CertificateOptions(verify=False, acceptableProtocols=protocols, **mine)
        unverified.getContext()  # built now: a key that does not match fails at start
    if not _is_dns_name(name):
        return unverified
    return _WithServerName(unverified, name.encode("idna"))


@implementer(IOpenSSLClientConnectionCreator)
class _WithServerName:
    """Unverified client TLS options that still send SNI (servers may pick by it)."""

    def __init__(self, options: Any, name: bytes) -> None:
        self._options = options
        self._name = name

    def clientConnectionForTLS(self, tls_protocol: Any) -> Any:  # noqa: N802 - Twisted's name
        connection = self._options.clientConnectionForTLS(tls_protocol)
        connection.set_tlsext_host_name(self._name)
        return connection


def tls_failure(reason: Failure) -> str | None:
    """One line for the log when a connection was lost to a TLS failure, else None.

    An OpenSSL error becomes its reason (``certificate verify failed``, ``tlsv13 alert
    certificate required``); a certificate issued for another name says so.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError

    if reason.check(VerificationError):
        return "the server's certificate is not valid for the name connected to"
    if reason.check(SSL.Error):
        args = reason.value.args if reason.value is not None else ()
        errors = args[0] if args and isinstance(args[0], list) else []
        texts = [str(e[-1]) for e in errors if isinstance(e, tuple) and e and e[-1]]
        # OpenSSL's queue ends with the TLS layer's reason; what precedes it is detail
        # from inside the library ("EVP lib", "provider signature failure").
        return texts[-1] if texts else reason.getErrorMessage()
    return None
