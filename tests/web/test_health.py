"""``/health`` on the site the service builds: 200, 405 for other methods, 503 while down.

Fast unit tests over a StringTransport: the Redis engine of the 503 case is a real one
that has not connected yet (its links are down until it reaches Redis).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web_http import Connections, service_site


@pytest.fixture
def http() -> Iterator[Connections]:
    connections = Connections()
    yield connections
    connections.close_all()


def test_health_is_200_while_the_engine_serves(http: Connections) -> None:
    """GET and HEAD answer 200 ``{}`` (no-store) on the memory engine."""
    site = service_site({})
    code, headers, body = http.request(site, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, body) == (200, b"{}")
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    code, _, body = http.request(site, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, body) == (200, b"")


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE"])
def test_health_other_methods_are_405(http: Connections, method: bytes) -> None:
    """Any method but GET and HEAD is 405 with ``Allow: GET, HEAD``."""
    raw = method + b" /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    code, headers, _ = http.request(service_site({}), raw)
    assert code == 405
    assert headers["allow"] == "GET, HEAD"


def test_health_is_503_while_the_engine_is_down(http: Connections) -> None:
    """A Redis engine whose links are down (never connected here) makes /health 503."""
    site = service_site({"engine": {"type": "redis", "redis": {"address": ["127.0.0.1:1"]}}})
    code, headers, body = http.request(site, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 503
    assert headers["content-type"] == "application/json"
    assert body == b'{"error":"engine unavailable"}'
