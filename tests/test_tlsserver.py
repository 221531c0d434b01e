"""rtserver/tlsserver.py: server TLS options from a TLS object, client CA included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import tls_handshake_in_memory
from OpenSSL import SSL
from redisserver import TLSFiles, make_tls

from rtserver.config import TLSConfig
from rtserver.tlsserver import client_trust_root, server_options


def _connect(options: Any, client: TLSFiles | None) -> Any:
    """Handshake a client (with ``client``'s certificate, if any) against ``options``."""
    client_context = SSL.Context(SSL.TLS_METHOD)
    if client is not None:
        client_context.use_certificate_file(str(client.client_cert))
        client_context.use_privatekey_file(str(client.client_key))
    server = SSL.Connection(options.getContext(), None)
    server.set_accept_state()
    conn = SSL.Connection(client_context, None)
    conn.set_connect_state()
    tls_handshake_in_memory(server, conn)
    return conn


@pytest.fixture
def pki(tmp_path: Path) -> tuple[TLSFiles, TLSFiles]:
    for sub in ("good", "other"):
        (tmp_path / sub).mkdir()
    return make_tls(tmp_path / "good"), make_tls(tmp_path / "other")


def test_the_whole_certificate_chain_is_served(pki: tuple[TLSFiles, TLSFiles]) -> None:
    """Certificates after the first in ``cert_pem`` go out as the chain (an intermediate)."""
    good, _ = pki
    chain = good.cert.read_text() + good.ca_cert.read_text()
    tls = TLSConfig(enabled=True, cert_pem=chain, key_pem=str(good.key))
    conn = _connect(server_options(tls, "grpc_api.tls", alpn=(b"h2",)), None)
    served = conn.get_peer_cert_chain(as_cryptography=True)
    assert [c.subject.rfc4514_string() for c in served] == ["CN=localhost", "CN=rtserver test CA"]


def test_client_ca_pem_requires_a_certificate_of_that_ca(pki: tuple[TLSFiles, TLSFiles]) -> None:
    """With ``client_ca_pem`` only the CA's clients get through; without, anyone does.

    No certificate, or another CA's, fails the handshake.
    """
    good, other = pki
    plain = TLSConfig(enabled=True, cert_pem=str(good.cert), key_pem=str(good.key))
    assert client_trust_root(plain, "grpc_api.tls") is None
    _connect(server_options(plain, "grpc_api.tls"), None)
    mutual = TLSConfig(
        enabled=True, cert_pem=str(good.cert), key_pem=str(good.key),
        client_ca_pem=str(good.ca_cert),
    )
    options = server_options(mutual, "grpc_api.tls")
    _connect(options, good)
    with pytest.raises(SSL.Error, match="did not return a certificate"):
        _connect(options, None)
    with pytest.raises(SSL.Error, match="certificate"):
        _connect(options, other)
