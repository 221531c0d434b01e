"""The twisted.web site: resource tree, request body limits, request-head deadlines.

Every HTTP connection (server API, its fast path, HTTP transports, SockJS, WebSocket
upgrades) is a :class:`TrackedChannel`, which enforces two limits against slow or
stalled clients (slowloris):

* a request head must be complete within ``http_server.read_header_timeout`` of its
  first byte (of the connection, for the first request); otherwise the client gets
  ``408 Request Timeout`` and the connection closes;
* while ``http_server.max_unfinished_request_heads`` connections are inside an
  unfinished head, a new connection gets ``503 Service Unavailable`` and is closed
  before any of its bytes is read.

Both are counted in :class:`HTTPStats` (Prometheus, ``web/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ITransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.http import HTTPChannel
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from rtserver._compat import take_unparsed_bytes
from rtserver.logs import Logger
from rtserver.web.apifast import APIFastPath, FastConnection

__all__ = ["Branch", "HTTPStats", "LimitedRequest", "RTSite", "mount"]

_log = Logger()

_DEFAULT_BODY_LIMIT = 65536
_PIPELINE_LIMIT = 65536  # bytes waiting behind a pending fast-path command before pausing
_TOO_LARGE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 24\r\n"
    b"Connection: close\r\n\r\n"
    b"request body too large\r\n"
)
_HEAD_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 22\r\n"
    b"Connection: close\r\n\r\n"
    b"request head too slow\n"
)
_TOO_MANY_HEADS = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 30\r\n"
    b"Connection: close\r\n\r\n"
    b"too many unfinished requests\r\n"
)


class HTTPStats:
    """Counters of the HTTP front door, read by the Prometheus collector.

    Attributes:
        unfinished_heads: connections inside a request head right now.
        head_timeouts: connections closed because a head missed its deadline.
        heads_refused: connections refused because of the unfinished-head cap.
    """

    __slots__ = ("head_timeouts", "heads_refused", "unfinished_heads")

    def __init__(self) -> None:
        self.unfinished_heads = 0
        self.head_timeouts = 0
        self.heads_refused = 0


class LimitedRequest(Request):
    """A request whose body is capped by path prefix; over the cap it gets 413.

    The cap is checked against ``Content-Length`` before any body byte is stored, and
    against the running total for chunked bodies.
    """

    _limit = 0
    _received = 0
    _refused = False
    #: The request-target of the request line, set by the channel as soon as it is read.
    target = b"/"

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if isinstance(channel, TrackedChannel):
            self._limit = channel.site.body_limit(self.target)
        else:  # a channel of another site: the default cap
            self._limit = _DEFAULT_BODY_LIMIT
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
    """An HTTP connection the site can close at shutdown, with a request-head deadline.

    With the API fast path on, its bytes go to :class:`APIFastPath` first, which hands
    them to twisted.web (for the rest of the connection) when they are not a simple
    server API request.

    The head deadline runs from the connection's start and, later, from the first byte
    received while no request is in progress; a complete head stops it, and the end of
    that request lets the next byte start it again. On the fast path it is settled once
    per read (:meth:`dataReceived`), from the state the read leaves: a request head that
    arrives whole within one read costs no deadline bookkeeping at all.
    """

    site: RTSite
    _fast: FastConnection | None = None
    _in_head = False  # registered with the site's head deadlines
    _paused_reading = False  # the fast path stopped reading behind a pending command
    _busy = False  # a head is complete and its request is not finished yet
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        site.channel_opened(self)
        cap = site.max_unfinished_heads
        transport = self.transport
        if cap and site.stats.unfinished_heads >= cap and transport is not None:
            self._refused = True
            site.stats.heads_refused += 1
            transport.write(_TOO_MANY_HEADS)
            transport.loseConnection()
            return
        if site.api_fast_path is not None and transport is not None:
            self._fast = FastConnection(
                transport.write,
                self._close_fast,
                self._to_twisted,
                request_done=self._fast_request_done,
            )
        self._arm_head_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        fast = self._fast
        if fast is None or fast.slow:
            if not self._busy:
                self._arm_head_deadline()
            transport = self.transport
            super().dataReceived(data)
            if self.transport is None and transport is not None:
                self._handed_over(transport)
            return
        self.resetTimeout()
        path = self.site.api_fast_path
        assert path is not None  # ``_fast`` exists only when the site has a fast path
        path.feed(fast, data)
        if fast.slow:
            return  # handed over: twisted.web's hooks keep the head deadline from now on
        # The fast path's head deadline is settled once per read, on the state the read
        # left: a head that began and ended within it never needed one.
        if fast.in_head:
            if not self._in_head:
                self._arm_head_deadline()
        elif self._in_head:
            self._cancel_head_deadline()
        if fast.pending and len(fast.buffer) > _PIPELINE_LIMIT and not self._paused_reading:
            # Requests pipelined behind a running command: stop reading until it is
            # answered (as twisted.web does), so the waiting bytes stay bounded.
            producer = IPushProducer(self.transport, None)
            if producer is not None:
                self._paused_reading = True
                producer.pauseProducing()

    # --- request-head deadline -----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        requests = self.requests
        count = len(requests)
        super().lineReceived(line)
        if len(requests) > count:  # that line was a request line: remember its target
            parts = line.split(b" ")
            if len(parts) == 3:
                requests[-1].target = parts[1]

    def allHeadersReceived(self) -> None:
        self._head_complete()
        super().allHeadersReceived()

    def requestDone(self, request: Request) -> None:
        self._busy = False
        count = len(self.requests)
        super().requestDone(request)
        # Replayed pipelined bytes may have started (not finished) the next head.
        if not self._busy and len(self.requests) >= count:
            self._arm_head_deadline()

    def _fast_request_done(self) -> None:
        """A fast-path command answered after its read, and the bytes behind it taken on."""
        if self._paused_reading:
            self._paused_reading = False
            producer = IPushProducer(self.transport, None)
            if producer is not None:
                producer.resumeProducing()
        fast = self._fast
        if fast is None or fast.slow:
            return
        if fast.in_head:
            self._arm_head_deadline()
        else:
            self._cancel_head_deadline()

    def _arm_head_deadline(self) -> None:
        if not self._in_head and not _closing(self.transport):
            self._in_head = self.site.head_started(self)

    def _head_complete(self) -> None:
        self._busy = True
        self._cancel_head_deadline()

    def _cancel_head_deadline(self) -> None:
        if self._in_head:
            self._in_head = False
            self.site.head_finished(self)

    def head_expired(self) -> None:
        """The site's sweep found this connection's head past its deadline: 408, close."""
        self._in_head = False
        transport = self.transport
        if transport is None or _closing(transport):
            return
        self.site.stats.head_timeouts += 1
        _log.debug("closing a connection whose request head was not complete in time")
        transport.write(_HEAD_TIMEOUT)
        transport.loseConnection()

    # --- fast path -----------------------------------------------------------------------

    def _close_fast(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _to_twisted(self, data: bytes) -> None:
        # A hand-over happens between requests: the head it passes on is unfinished until
        # twisted.web's ``allHeadersReceived`` (its deadline runs from its first byte).
        self._busy = False
        self._arm_head_deadline()
        transport = self.transport
        HTTPChannel.dataReceived(self, data)
        if self.transport is None and transport is not None:
            self._handed_over(transport)

    def _handed_over(self, transport: Any) -> None:
        """A WebSocket upgrade took the transport: nothing may follow its request head.

        RFC 6455 4.1: a client sends nothing before the 101. Bytes that came with the
        upgrade request (a frame sent early) would stay here, never read, and the client
        would wait for a reply forever: the connection is closed instead, and logged
        (Centrifugo refuses such a client too).
        """
        early = take_unparsed_bytes(self)
        if early:
            _log.info(
                "websocket upgrade from {peer}: {size} bytes sent before the handshake "
                "completed; connection closed",
                peer=_peer_of(transport), size=len(early),
            )
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_head_deadline()
        if self._fast is not None:
            self._fast.gone = True
        super().connectionLost(reason)
        self.site.channel_closed(self)


class RTSite(Site):
    """The server's Site: per-prefix body limits, quiet access log, closable connections.

    Args:
        resource: the root of the resource tree.
        body_limits: ``(path prefix, bytes)`` body caps; longest prefix wins.
        default_body_limit: the cap elsewhere.
        api_fast_path: answers plain server API requests before twisted.web.
        read_header_timeout: seconds a request head may take (0: no deadline).
        max_unfinished_heads: new connections are refused while this many heads are
            unfinished (0: no cap).
        stats: counters for metrics (a fresh one by default).
        reactor: the reactor; its ``callLater`` drives the deadlines (a Clock in tests).
    """

    displayTracebacks = False
    requestFactory = LimitedRequest
    #: twisted.web annotates ``protocol`` as a factory of its HTTP/2-capable wrapper, but
    #: any HTTPChannel subclass is a valid channel factory for HTTP/1.1.
    protocol = cast("Callable[[], Any]", TrackedChannel)

    def __init__(
        self,
        resource: Resource,
        *,
        body_limits: Sequence[tuple[str, int]] = (),
        default_body_limit: int = _DEFAULT_BODY_LIMIT,
        api_fast_path: APIFastPath | None = None,
        read_header_timeout: float = 10.0,
        max_unfinished_heads: int = 0,
        stats: HTTPStats | None = None,
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
        self.read_header_timeout = read_header_timeout
        self.max_unfinished_heads = max_unfinished_heads
        self.stats = stats if stats is not None else HTTPStats()
        # Connections inside a request head -> their deadline. Insertion order is deadline
        # order (one timeout for all), so one timer for the oldest entry serves them all:
        # starting and finishing a head is a dict insert and a pop, not a timer each.
        self._heads: dict[TrackedChannel, float] = {}
        self._sweep: IDelayedCall | None = None
        self._channels: dict[TrackedChannel, Deferred[None]] = {}

    def head_started(self, channel: TrackedChannel) -> bool:
        """Start ``channel``'s head deadline; False when deadlines are off."""
        timeout = self.read_header_timeout
        if not timeout:
            return False
        self._heads[channel] = self.reactor.seconds() + timeout
        self.stats.unfinished_heads += 1
        if self._sweep is None:
            self._sweep = self.reactor.callLater(timeout, self._expire_heads)
        return True

    def head_finished(self, channel: TrackedChannel) -> None:
        """``channel``'s head is complete (or the connection is gone)."""
        if self._heads.pop(channel, None) is not None:
            self.stats.unfinished_heads -= 1

    def _expire_heads(self) -> None:
        self._sweep = None
        heads = self._heads
        now = self.reactor.seconds() + 1e-6  # a timer may fire a float's rounding early
        while heads:
            channel, deadline = next(iter(heads.items()))
            if deadline > now:
                self._sweep = self.reactor.callLater(deadline - now, self._expire_heads)
                return
            del heads[channel]
            self.stats.unfinished_heads -= 1
            channel.head_expired()

    def stopFactory(self) -> None:
        """No more connections: stop the head-deadline timer."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        super().stopFactory()

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

    def log(self, request: HTTPRequest) -> None:
        """Access lines at debug level only."""
        _log.debug(
            "{method} {path} {code}",
            method=request.method,
            path=request.path,
            code=request.code,
        )


def _closing(transport: ITransport | None) -> bool:
    """Whether a connection is gone or already closing (``loseConnection`` was called)."""
    return transport is None or bool(getattr(transport, "disconnecting", False))


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
        if not isinstance(child, Resource):
            child = Branch()
            node.putChild(part, child)
        node = child
    node.putChild(parts[-1], resource)


def _peer_of(transport: Any) -> str:
    """``host:port`` of the peer of ``transport`` (for log lines)."""
    try:
        peer = transport.getPeer()
    except Exception:
        return "?"
    host, port = getattr(peer, "host", "?"), getattr(peer, "port", "")
    return f"{host}:{port}" if port else str(host)

