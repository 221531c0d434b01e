"""The twisted.web site: resource tree, request body limits, quiet access logging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.web import pages
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from rtserver.logs import Logger
from rtserver.web.apifast import APIFastPath, FastConnection

__all__ = ["Branch", "LimitedRequest", "RTSite", "mount"]

_log = Logger()

_TOO_LARGE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 24\r\n"
    b"Connection: close\r\n\r\n"
    b"request body too large\r\n"
)


class LimitedRequest(Request):
    """A request whose body is capped by path prefix; over the cap it gets 413.

    The cap is checked against ``Content-Length`` before any body byte is stored, and
    against the running total for chunked bodies.
    """

    _limit = 0
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        site: RTSite = self.channel.site
        self._limit = site.body_limit(getattr(self.channel, "_path", b"") or b"/")
        if length is not None and length > self._limit:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        transport = self.channel.transport
        if transport is not None:
            transport.write(_TOO_LARGE)
            transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def render(self, resrc: IResource) -> None:
        super().render(resrc)
        channel = getattr(self, "channel", None)  # gone once a request has finished
        if channel is not None and channel.transport is None:
            # A WebSocket upgrade took the socket over: the HTTP connection is done, and
            # the WebSocket factory tracks the connection from now on.
            channel.site.channel_closed(channel)


class TrackedChannel(HTTPChannel):
    """An HTTP connection the site can close at shutdown.

    With the API fast path on, its bytes go to :class:`APIFastPath` first, which hands
    them to twisted.web (for the rest of the connection) when they are not a simple
    server API request.
    """

    site: RTSite
    _fast: FastConnection | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channel_opened(self)
        if self.site.api_fast_path is not None:
            self._fast = FastConnection(self._write_fast, self._close_fast, self._to_twisted)

    def dataReceived(self, data: bytes) -> None:
        fast = self._fast
        if fast is None or fast.slow:
            super().dataReceived(data)
            return
        self.resetTimeout()
        path = self.site.api_fast_path
        assert path is not None  # ``_fast`` exists only when the site has a fast path
        path.feed(fast, data)

    def _write_fast(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close_fast(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _to_twisted(self, data: bytes) -> None:
        HTTPChannel.dataReceived(self, data)

    def connectionLost(self, reason: Any) -> None:
        if self._fast is not None:
            self._fast.gone = True
        super().connectionLost(reason)
        self.site.channel_closed(self)


class RTSite(Site):
    """The server's Site: per-prefix body limits, quiet access log, closable connections."""

    displayTracebacks = False
    requestFactory = LimitedRequest
    protocol = TrackedChannel

    def __init__(
        self,
        resource: Resource,
        *,
        body_limits: Sequence[tuple[str, int]] = (),
        default_body_limit: int = 65536,
        api_fast_path: APIFastPath | None = None,
        reactor: Any = None,
    ) -> None:
        try:
            # No endpoint takes HTML forms: skip twisted.web's MIME parsing of every POST
            # (~100 us per API request).
            super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        except TypeError:  # Twisted without the option
            super().__init__(resource, reactor=reactor)
        self.noisy = False
        self._limits = sorted(
            ((p.encode("utf-8"), n) for p, n in body_limits), key=lambda x: -len(x[0])
        )
        self._default_limit = default_body_limit
        self.api_fast_path = api_fast_path
        self._channels: dict[TrackedChannel, Deferred[None]] = {}

    def channel_opened(self, channel: TrackedChannel) -> None:
        """Track an open HTTP connection."""
        self._channels[channel] = Deferred()

    def channel_closed(self, channel: TrackedChannel) -> None:
        """Forget a closed HTTP connection."""
        waiter = self._channels.pop(channel, None)
        if waiter is not None:
            waiter.callback(None)

    def wait_closed(self, timeout: float) -> Deferred[Any]:
        """Close every HTTP connection (idle keep-alive ones too) and wait for them."""
        waits = []
        for channel, waiter in list(self._channels.items()):
            if channel.transport is None:  # taken over by a WebSocket
                del self._channels[channel]
                continue
            channel.transport.loseConnection()
            waits.append(waiter)
        if not waits:
            return succeed(None)
        d = DeferredList(waits, consumeErrors=True)
        d.addTimeout(timeout, self.reactor)
        return d

    def body_limit(self, path: bytes) -> int:
        """The body cap for a request path (longest matching prefix wins)."""
        path = path.split(b"?", 1)[0]
        for prefix, limit in self._limits:
            if path == prefix or path.startswith(prefix.rstrip(b"/") + b"/"):
                return limit
        return self._default_limit

    def log(self, request: Request) -> None:
        """Access lines at debug level only."""
        _log.debug(
            "{method} {path} {code}",
            method=request.method,
            path=request.path,
            code=request.code,
        )


class Branch(Resource):
    """An inner node of the resource tree: unknown children are a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return pages.notFound()

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"not found\n"


def mount(root: Resource, prefix: str, resource: IResource) -> None:
    """Put ``resource`` at ``prefix`` (e.g. ``/connection/websocket``) under ``root``."""
    parts = [p.encode("utf-8") for p in prefix.strip("/").split("/") if p]
    if not parts:
        raise ValueError("cannot mount at the root")
    node = root
    for part in parts[:-1]:
        child = node.children.get(part)
        if child is None:
            child = Branch()
            node.putChild(part, child)
        node = child
    node.putChild(parts[-1], resource)
