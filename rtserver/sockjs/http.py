"""Response headers SockJS prescribes: caching, CORS, JSESSIONID, plain statuses."""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.http import datetimeToString
from twisted.web.server import Request

__all__ = [
    "ONE_YEAR",
    "cacheable",
    "cors",
    "error",
    "method_not_allowed",
    "no_cache",
    "preflight",
    "request_headers",
    "session_cookie",
]

ONE_YEAR = 31536000
_NO_CACHE = b"no-store, no-cache, no-transform, must-revalidate, max-age=0"

OriginCheck = Callable[[str | None], bool]


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether ``origin`` is the server's own (``scheme://`` + the request's Host).

    rtserver's own pages (the SockJS iframe page) are always allowed, whatever
    ``allowed_origins`` says: the iframe transports send from that page.
    """
    if not origin or not host:
        return False
    return origin.lower().split("://", 1)[-1] == host.lower()


def no_cache(request: Request) -> None:
    """Responses that must never be cached (everything dynamic, POSTs included)."""
    request.setHeader(b"Cache-Control", _NO_CACHE)


def cacheable(request: Request, now: float) -> None:
    """Cache for a year (iframe page, preflights, the bundled client script)."""
    request.setHeader(b"Cache-Control", b"public, max-age=%d" % ONE_YEAR)
    request.setHeader(b"Expires", datetimeToString(int(now) + ONE_YEAR))


def cors(request: Request) -> None:
    """Echo ``Origin`` with credentials (``null`` stays ``null``), else ``*``."""
    origin = request.getHeader(b"origin")
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
    else:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.setHeader(b"Vary", b"Origin")


def preflight(request: Request, methods: bytes, now: float) -> bytes:
    """Answer ``OPTIONS``: 204, cacheable, CORS, requested headers echoed."""
    request.setResponseCode(204)
    cacheable(request, now)
    cors(request)
    request.setHeader(b"Access-Control-Max-Age", b"%d" % ONE_YEAR)
    request.setHeader(b"Access-Control-Allow-Methods", methods)
    asked = request.getHeader(b"access-control-request-headers")
    if asked:
        request.setHeader(b"Access-Control-Allow-Headers", asked)
    return b""


def session_cookie(request: Request) -> None:
    """``Set-Cookie: JSESSIONID=<theirs or dummy>; Path=/`` (cookie_needed mode)."""
    value = request.getCookie(b"JSESSIONID") or b"dummy"
    request.addCookie(b"JSESSIONID", value, path=b"/")


def method_not_allowed(request: Request, allow: bytes) -> bytes:
    """405 with ``Allow``, no Content-Type and an empty body."""
    request.setResponseCode(405)
    request.setHeader(b"Allow", allow)
    request.defaultContentType = None
    return b""


def error(request: Request, code: int, text: str) -> bytes:
    """A plain-text error page."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=UTF-8")
    return text.encode("utf-8")


def request_headers(request: Request) -> dict[str, str]:
    """The request's headers as a ``str`` mapping with lower-case names."""
    out = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = values[-1].decode("latin-1")
    return out
