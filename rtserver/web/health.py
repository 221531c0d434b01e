"""``GET /health``: 200 ``{}`` while the node is serving."""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = ["HealthResource"]


class HealthResource(Resource):
    """Liveness endpoint for load balancers and orchestrators."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"{}"
