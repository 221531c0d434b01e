"""CORS for the HTTP transports and ``/emulation``, driven by ``client.allowed_origins``.

An allowed ``Origin`` gets ``Access-Control-Allow-Origin: <origin>`` with credentials, and
preflight ``OPTIONS`` requests are answered here (204). A request from a foreign origin is
refused with 403 and gets no CORS headers; requests without ``Origin`` (non-browser
clients) pass untouched.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from rtserver.transports.origin import OriginPolicy

__all__ = ["CORSResource"]


class CORSResource(Resource):
    """Wraps a leaf resource with the method list, the origin policy and CORS headers."""

    isLeaf = True

    def __init__(self, wrapped: Resource, origins: OriginPolicy, methods: bytes) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._origins = origins
        self._allowed = {m.strip() for m in methods.split(b",")} | {b"OPTIONS"}
        self._methods = methods + b", OPTIONS"

    def render(self, request: Request) -> Any:
        if request.method not in self._allowed:
            request.setResponseCode(405)
            request.setHeader(b"Allow", self._methods)
            return b""
        origin = request.getHeader(b"origin")
        if origin is not None:
            if not self._origins.allows(origin.decode("latin-1")):
                request.setResponseCode(403)
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                return b"origin not allowed\n"
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
            request.setHeader(b"Vary", b"Origin")
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"Access-Control-Allow-Methods", self._methods)
            asked = request.getHeader(b"access-control-request-headers")
            if asked and asked != b"null":
                request.setHeader(b"Access-Control-Allow-Headers", asked)
            request.setHeader(b"Access-Control-Max-Age", b"300")
            return b""
        return self._wrapped.render(request)
