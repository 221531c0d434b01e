"""``GET /health``: 200 ``{}`` while the node can serve, 503 while its engine is down."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = ["HealthResource"]


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
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if self._engine is not None and not self._engine.healthy:
            request.setResponseCode(503)
            return b'{"error":"engine unavailable"}'
        return b"{}"
