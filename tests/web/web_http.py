"""Raw HTTP/1.1 over in-memory connections to the site the service builds (web tests)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtserver import config as rtconfig
from rtserver.service import build_node, build_site


def service_site(settings: dict[str, Any]) -> Any:
    """The site ``service.build_site`` makes for ``settings`` (node on a Clock, not started)."""
    cfg = rtconfig.from_mapping(settings)
    clock = Clock()
    node = build_node(cfg, clock)
    site, _ = build_site(node, cfg, clock)
    return site


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """``(status, lower-cased headers, body)`` of the response at the start of ``data``."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest[: int(headers.get("content-length", len(rest)))]
    return int(status.split()[1]), headers, body


class Connections:
    """Opens in-memory connections to a site; ``close_all`` ends them (fixture teardown)."""

    def __init__(self) -> None:
        self._protos: list[Any] = []

    def send(self, site: Any, *chunks: bytes) -> StringTransport:
        """Feed ``chunks`` to a new connection; returns its transport (what was written)."""
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        self._protos.append(proto)
        for chunk in chunks:
            proto.dataReceived(chunk)
        return transport

    def request(self, site: Any, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection; its parsed response."""
        return parse_response(self.send(site, raw).value())

    def close_all(self) -> None:
        for proto in self._protos:
            proto.connectionLost(Failure(ConnectionDone()))
        self._protos.clear()
