"""TLS of rtserver's listening servers on the reactor (the HTTP server, the GRPC API).

:class:`~rtserver.config.TLSConfig` is Centrifugo's TLS object on the server side. Its
``client_ca_pem`` makes the server require a client certificate signed by one of those
CAs (mutual TLS, Go's ``tls.RequireAndVerifyClientCert``): a client without one, or with
one from another CA, fails the TLS handshake. :func:`client_trust_root` loads it for
Twisted (the ``ssl:`` listeners of the HTTP server, through ``_compat``);
:func:`server_options` builds the whole server TLS options from PEM values (the GRPC
API's HTTP/2 server). grpcio's servers take the PEM bytes of
:func:`~rtserver.config.server_client_ca_pem` directly (``grpcapi/server.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from rtserver.config import TLSConfig, pem_certificates, server_client_ca_pem, server_tls_pem

__all__ = ["client_trust_root", "server_options"]

def client_trust_root(tls: TLSConfig, key: str) -> Any:
    """The Twisted trust root of ``tls.client_ca_pem``; None without it or with TLS off.

    Raises:
        ConfigError: the value loads no certificate.
    """
    pem = server_client_ca_pem(tls, key)
    if pem is None:
        return None
    from twisted.internet import ssl

    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(block) for block in pem_certificates(pem)]
    )


def server_options(tls: TLSConfig, key: str, *, alpn: Sequence[bytes] = ()) -> Any:
    """Twisted server TLS options of ``tls``: certificate chain, key, client CA.

    With ``client_ca_pem``, a client must present a certificate signed by those CAs.
    The certificates after the first in ``cert_pem`` are sent as the chain.

    Args:
        tls: An enabled server TLS object (``grpc_api.tls``).
        key: The configuration key, for error messages.
        alpn: Application protocols to accept (``(b"h2",)`` for GRPC).

    Raises:
        ConfigError: a PEM value cannot be loaded.
        OpenSSL.crypto.Error: the certificate or key is not usable.
    """
    from OpenSSL import crypto
    from twisted.internet import ssl

    cert, private = server_tls_pem(tls, key)
    chain = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in pem_certificates(cert)]
    trust = client_trust_root(tls, key)
    extra: dict[str, Any] = {} if trust is None else {"trustRoot": trust}
    with warnings.catch_warnings():  # pyOpenSSL >= 24.3 deprecates X509/PKey objects
        warnings.simplefilter("ignore", DeprecationWarning)
        options = ssl.CertificateOptions(
            privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, private),
            certificate=chain[0] if chain else crypto.load_certificate(crypto.FILETYPE_PEM, cert),
            extraCertChain=chain[1:],
            acceptableProtocols=list(alpn) or None,
            **extra,
        )
        options.getContext()  # built now: a key that does not match fails at start
    return options
