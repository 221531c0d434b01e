"""Mutual TLS test helpers: certificates, HTTPS sessions, raw handshakes, configs.

Used by tests/web/test_mutual_tls.py (one process) and tests/workers (``--workers 2``).
"""

from __future__ import annotations

import base64
import socket
import ssl
from pathlib import Path
from typing import Any

import requests
from redisserver import TLSFiles, make_tls

#: What the client sees when the server refuses its certificate (or its lack of one):
#: TLS 1.3's ``certificate_required`` alert; for a certificate of the other CA, which has
#: the same name as the good one (tests/redisserver.py), ``decrypt_error`` (its signature
#: does not verify with the good CA's key), else ``unknown_ca``.
REFUSED = r"certificate required|unknown ca|decrypt error"
#: Bound of one exchange.
TIMEOUT = 10.0


def https_session(ca: Path, client: TLSFiles | None) -> requests.Session:
    """An HTTPS session trusting ``ca``, presenting ``client``'s certificate (or none)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    if client is not None:
        session.cert = (str(client.client_cert), str(client.client_key))
    return session


def tls_exchange(port: int, ca: Path, client: TLSFiles | None) -> str:
    """``GET /health`` over a raw TLS connection: the status line, or the TLS error."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.client_cert, client.client_key)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = tls.recv(4096)
        except (ssl.SSLError, ConnectionResetError) as e:
            return str(e)
    return head.split(b"\r\n", 1)[0].decode() if head else "closed without an answer"


def mtls_config(good: TLSFiles, http_port: int, api_port: int, uni_port: int) -> dict[str, Any]:
    """TLS with ``client_ca_pem`` on the HTTP server, the GRPC API and uni_grpc.

    The CA in each of the value forms: a file path, PEM text, base64 of PEM text.
    """
    ca_pem = good.ca_cert.read_text()

    def tls(client_ca: str) -> dict[str, Any]:
        return {
            "enabled": True,
            "cert_pem": str(good.cert),
            "key_pem": str(good.key),
            "client_ca_pem": client_ca,
        }

    return {
        "http_server": {"address": "127.0.0.1", "port": http_port, "tls": tls(str(good.ca_cert))},
        "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": api_port,
                     "tls": tls(ca_pem)},
        "uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": uni_port,
                     "tls": tls(base64.b64encode(ca_pem.encode()).decode())},
    }


def make_pki(directory: Path) -> tuple[TLSFiles, TLSFiles]:
    """The good CA (server and client certificates) and a client of another CA."""
    for sub in ("good", "other"):
        (directory / sub).mkdir(parents=True)
    return make_tls(directory / "good"), make_tls(directory / "other")
