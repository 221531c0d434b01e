"""``GET /health`` (liveness) and ``GET /ready`` (readiness), docs/operations.rst.

``/health`` answers 200 ``{}`` while the node can serve, 503 while its engine is down.
``/ready`` also answers 503 while the node starts (engine not started yet) and while it
drains on shutdown, so a balancer sends new clients elsewhere.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.web.resource import Resource
from twisted.web.server import Request

from rtserver.core.node import Node

__all__ = ["HealthResource", "ReadyResource"]


def _probe(request: Request) -> bool:
    """Whether ``request`` is a probe (GET/HEAD): its JSON, uncached headers set; else 405."""
    if request.method not in (b"GET", b"HEAD"):
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"GET, HEAD")
        return False
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return True


class HealthResource(Resource):
    """Readiness endpoint for load balancers and orchestrators.

    ``engine`` is the node's engine: while its ``healthy`` flag is False (Redis link
    lost, not yet resubscribed) the answer is 503 so a balancer sends clients elsewhere.
    """

    isLeaf = True

    def __init__(self, engine: Any = None) -> None:
        super().__init__()
        self._engine = engine

    def render(self, request: Request) -> bytes:
        if not _probe(request):
            return b""
        if self._engine is not None and not self._engine.healthy:
            request.setResponseCode(503)
            return b'{"error":"engine unavailable"}'
        return b"{}"


class ReadyResource(Resource):
    """Readiness: 200 ``{"status":"ready"}``, else 503 with the reason as ``status``."""

    isLeaf = True

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def render(self, request: Request) -> bytes:
        if not _probe(request):
            return b""
        status = self._node.readiness()
        if status != "ready":
            request.setResponseCode(503)
        return orjson.dumps({"status": status})
