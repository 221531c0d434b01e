"""``/health`` on the site the service builds: 200, 405 for other methods, 503 while down.

Fast unit tests over a StringTransport: the Redis engine of the 503 case is a real one
that has not connected yet (its links are down until it reaches Redis).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from web_http import parse_response

from rtserver import config as rtconfig
from rtserver.service import build_node, build_site


def site_for(settings: dict[str, Any]) -> Any:
    cfg = rtconfig.from_mapping(settings)
    clock = Clock()
    node = build_node(cfg, clock)
    site, _ = build_site(node, cfg, clock)
    return site


@pytest.fixture
def request_site() -> Iterator[Any]:
    """``request(site, raw) -> (code, headers, body)`` over a fresh connection each time."""
    protos: list[Any] = []

    def request(site: Any, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        protos.append(proto)
        proto.dataReceived(raw)
        return parse_response(transport.value())

    yield request
    for proto in protos:
        proto.connectionLost(Failure(ConnectionDone()))


def test_health_is_200_while_the_engine_serves(request_site: Any) -> None:
    """GET and HEAD answer 200 ``{}`` (no-store) on the memory engine."""
    site = site_for({})
    code, headers, body = request_site(site, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, body) == (200, b"{}")
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    code, _, body = request_site(site, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, body) == (200, b"")


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE"])
def test_health_other_methods_are_405(request_site: Any, method: bytes) -> None:
    """Any method but GET and HEAD is 405 with ``Allow: GET, HEAD``."""
    raw = method + b" /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    code, headers, _ = request_site(site_for({}), raw)
    assert code == 405
    assert headers["allow"] == "GET, HEAD"


def test_health_is_503_while_the_engine_is_down(request_site: Any) -> None:
    """A Redis engine whose links are down (never connected here) makes /health 503."""
    site = site_for({"engine": {"type": "redis", "redis": {"address": ["127.0.0.1:1"]}}})
    code, headers, body = request_site(site, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 503
    assert headers["content-type"] == "application/json"
    assert body == b'{"error":"engine unavailable"}'
