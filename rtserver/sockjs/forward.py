"""One SockJS endpoint served by several processes of one host (``--workers N``).

A SockJS session is a series of HTTP requests (a poll or stream that receives, and
``xhr_send`` posts that send) which the kernel may hand to any of the processes sharing
the port. Each session has one owner, a pure function of its id (CRC-32 modulo the
number of processes), so every process finds it without asking anyone: a session request
that reaches another process is relayed, as it is, to the owner's private Unix socket,
and the owner's answer (a poll, or a stream of frames) is relayed back while it lasts.

The relay speaks HTTP/1.1 to the owner over kept-alive connections (a pool per owner,
one request at a time on each): streaming responses come chunked and pass through frame by
frame, with the client's send buffer pausing the read from the owner. A client that goes
away aborts the relayed request's connection, which the owner sees as a client abort (the
session ends, as SockJS says). A kept-alive connection found closed before any answer
came (the owner closed it while idle) is replaced by a new one, once. An owner that
cannot be reached (restarting) is replaced by the process the request reached: it serves
the session itself, so a new session opens anyway and a session of the dead owner gets
what SockJS gives a lost session.

Why not through the broker, as ``/emulation`` posts are forwarded between nodes: a
SockJS poll or stream is a response held open while frames arrive, which would cost
broker round trips per frame plus a survey per request to find the session's node; the
processes of one host reach each other directly, and between hosts a balancer's sticky
routing does this job (docs/transports.rst).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from rtserver.connections import request_body
from rtserver.logs import Logger

__all__ = ["Forwarder", "Siblings"]

_log = Logger()

#: Hop-by-hop headers, not relayed in either direction.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
#: Headers twisted.web sets on every response; the owner's values replace them.
_REPLACE = frozenset({b"server", b"date", b"content-type"})
#: Largest response head accepted from an owner.
MAX_HEAD = 64 * 1024
#: Idle kept-alive connections kept per owner.
MAX_IDLE = 16
#: Longest chunk-size or trailer line accepted from an owner.
_MAX_LINE = 1024


class Siblings:
    """The processes sharing one endpoint: this one's index, everyone's Unix socket.

    Args:
        index: This process's position in ``paths``.
        paths: The private Unix socket of each process, by index.
    """

    def __init__(self, index: int, paths: Sequence[str]) -> None:
        if not 0 <= index < len(paths):
            raise ValueError(f"worker index {index} outside 0..{len(paths) - 1}")
        self.index = index
        self.paths = tuple(paths)

    @property
    def own_path(self) -> str:
        """The Unix socket this process serves its sessions on."""
        return self.paths[self.index]

    def owner_index(self, session_id: str) -> int:
        """The index of the process that owns ``session_id``."""
        return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % len(self.paths)

    def owner(self, session_id: str) -> str | None:
        """The owner's socket, or None when this process owns ``session_id``."""
        index = self.owner_index(session_id)
        return None if index == self.index else self.paths[index]


class Forwarder:
    """Relays session requests to their owner; counts what it relayed.

    Args:
        siblings: Who owns which session.
        reactor: Connects to the owners' Unix sockets.
        timeout: Seconds to connect to an owner before serving the request here.
    """

    def __init__(self, siblings: Siblings, reactor: IReactorUNIX, *, timeout: float = 5.0) -> None:
        self.siblings = siblings
        self._reactor = reactor
        self._timeout = timeout
        self._idle: dict[str, list[_Upstream]] = {}
        #: Requests relayed to another process.
        self.forwarded = 0
        #: Requests served here because their owner could not be reached.
        self.unreachable = 0
        #: Connections opened to owners (the rest of the requests reused one).
        self.connections = 0

    def forward(self, request: Request, session_id: str, local: Callable[[], Any]) -> Any:
        """Relay ``request`` to the owner of ``session_id``; ``local()`` when that is us.

        ``local`` renders the request here (a ``render`` result); it also serves the
        request when the owner cannot be reached.
        """
        path = self.siblings.owner(session_id)
        if path is None:
            return local()
        self.forwarded += 1
        _log.debug(
            "sockjs session {id}: request relayed to worker {owner}",
            id=session_id,
            owner=self.siblings.owner_index(session_id),
        )
        body = request_body(request)
        if request.content is not None:
            request.content.seek(0)  # served here after all if the owner is unreachable
        relay = _Relay(request, session_id, body, local, self)
        idle = self._idle.get(path)
        while idle:
            upstream = idle.pop()
            if upstream.usable:
                upstream.start(relay, reused=True)
                return NOT_DONE_YET
        self.connect(path, relay)
        return NOT_DONE_YET

    def connect(self, path: str, relay: _Relay) -> None:
        """Open a new connection to the owner at ``path`` for ``relay``."""
        self.connections += 1
        self._reactor.connectUNIX(path, _RelayFactory(self, path, relay), timeout=self._timeout)

    def park(self, upstream: _Upstream) -> None:
        """Keep an idle connection for the next request to its owner (or close it)."""
        idle = self._idle.setdefault(upstream.path, [])
        if len(idle) >= MAX_IDLE or not upstream.usable:
            upstream.close()
            return
        idle.append(upstream)

    def forget(self, upstream: _Upstream) -> None:
        """A connection closed: it is no longer available."""
        idle = self._idle.get(upstream.path)
        if idle and upstream in idle:
            idle.remove(upstream)


class _Chunks:
    """Decodes a chunked response body (RFC 9112, 7.1); trailers are skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0
        self._state = "size"
        self.done = False
        #: Why the body is malformed (nothing more is decoded), or empty.
        self.error = ""

    def feed(self, data: bytes) -> bytes:
        """The body bytes in ``data``; on a malformed body, those before it and ``error``."""
        out: list[bytes] = []
        try:
            self._feed(self._buffer + data, out)
        except ValueError as e:
            self.error = str(e)
            self._buffer = b""
        return b"".join(out)

    def _feed(self, buffer: bytes, out: list[bytes]) -> None:
        while buffer and not self.done:
            if self._state == "data":
                take = buffer[: self._left]
                out.append(take)
                self._left -= len(take)
                buffer = buffer[len(take) :]
                if not self._left:
                    self._state = "crlf"
                continue
            if self._state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                buffer = buffer[2:]
                self._state = "size"
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _MAX_LINE:
                    raise ValueError("chunk line too long")
                break
            line, buffer = buffer[:end], buffer[end + 2 :]
            if self._state == "trailer":
                self.done = not line
                continue
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                raise ValueError("bad chunk size")
            self._left = int(size, 16)
            self._state = "data" if self._left else "trailer"
        self._buffer = buffer

    @property
    def leftover(self) -> bool:
        """Bytes after the end of the body (the connection cannot be reused)."""
        return bool(self._buffer)


class _Relay:
    """One relayed request: the client's request, the owner's answer."""

    def __init__(
        self,
        request: Request,
        session_id: str,
        body: bytes,
        local: Callable[[], Any],
        forwarder: Forwarder,
    ) -> None:
        self.request = request
        self.session_id = session_id
        self.body = body
        self.local = local
        self.forwarder = forwarder
        self.upstream: _Upstream | None = None
        self.done = False
        self._retried = False
        self._head = b""
        self._headed = False
        self._received = False
        self._producing = False
        #: Body framing of the owner's answer: bytes left, chunked, or until close.
        self._length: int | None = None
        self._chunks: _Chunks | None = None
        self._reusable = True
        request.notifyFinish().addBoth(self._client_gone)

    # --- client side -----------------------------------------------------------------

    def _client_gone(self, result: object) -> None:
        """The response finished, or the client left: drop the owner's connection."""
        self.done = True
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            self.request.unregisterProducer()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._stop_producing()
        self.request.finish()

    def fallback(self, reason: Failure) -> None:
        """The owner is unreachable: serve the request here."""
        if self.done:
            return
        self._stop_producing()
        self.forwarder.unreachable += 1
        _log.info(
            "sockjs session {id}: its worker is unreachable ({reason}): served here",
            id=self.session_id,
            reason=reason.getErrorMessage(),
        )
        result = self.local()
        if isinstance(result, bytes) and not self.done:
            self.request.setHeader(b"Content-Length", b"%d" % len(result))
            self.request.write(result)
            self._finish()

    # --- owner side ------------------------------------------------------------------

    def connected(self, upstream: _Upstream) -> None:
        """``upstream`` carries this request: send it."""
        if self.done:
            self.forwarder.park(upstream)
            return
        self.upstream = upstream
        request = self.request
        lines = [b"%s %s HTTP/1.1" % (request.method, request.uri)]
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP:
                lines.extend(name + b": " + value for value in values)
        lines.append(b"Content-Length: %d" % len(self.body))
        transport = upstream.transport
        assert transport is not None
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + self.body)
        if not self._producing:
            request.registerProducer(transport, True)
            self._producing = True

    def received(self, data: bytes) -> None:
        if self.done:
            return
        self._received = True
        if self._headed:
            self._body(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._bad_gateway("its response head is too large")
            return
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        if not self._start(head):
            self._bad_gateway("its response head is malformed")
            return
        self._headed = True
        if self._length == 0:
            self._complete(leftover=bool(rest))
        elif rest:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        if self._chunks is not None:
            part = self._chunks.feed(data)
            if part:
                self.request.write(part)
            if self._chunks.error:
                self._bad_gateway(f"its chunked body is malformed ({self._chunks.error})")
                return
            if self._chunks.done and not self.done:
                self._complete(leftover=self._chunks.leftover)
            return
        if self._length is None:  # until the owner closes
            self.request.write(data)
            return
        part = data[: self._length]
        self._length -= len(part)
        if part:
            self.request.write(part)
        if not self._length and not self.done:
            self._complete(leftover=len(data) > len(part))

    def _complete(self, *, leftover: bool) -> None:
        """The whole answer arrived: finish the client's response, free the connection."""
        upstream, self.upstream = self.upstream, None
        self._finish()
        if upstream is not None:
            if self._reusable and not leftover:
                upstream.release()
            else:
                upstream.close()

    def _start(self, head: bytes) -> bool:
        """Copy the owner's status line and headers onto the client's response."""
        status, *lines = head.split(b"\r\n")
        parts = status.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return False
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep:
                return False
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        code = int(parts[1])
        request = self.request
        request.setResponseCode(code, parts[2] if len(parts) > 2 else None)
        for name, values in headers.items():
            if name in _HOP and name != b"content-length":
                continue
            if name in _REPLACE or name == b"content-length":
                request.responseHeaders.setRawHeaders(name, values[-1:])
            else:
                request.responseHeaders.setRawHeaders(name, values)
        if b"content-type" not in headers:
            request.defaultContentType = None
        if b"close" in b",".join(headers.get(b"connection", [])).lower() or parts[0] != b"HTTP/1.1":
            self._reusable = False
        if code in (204, 304) or 100 <= code < 200:
            self._length = 0
        elif b"chunked" in b",".join(headers.get(b"transfer-encoding", [])).lower():
            self._chunks = _Chunks()
        elif headers.get(b"content-length"):
            length = headers[b"content-length"][-1]
            if not length.isdigit():
                return False
            self._length = int(length)
        else:
            self._reusable = False  # the body ends when the owner closes
        return True

    def _bad_gateway(self, why: str, *, expected: bool = False) -> None:
        """Answer 502 (unless the answer has begun) and drop the owner's connection.

        ``expected``: the owner went away (a worker restarting), a warning, not an error.
        """
        log = _log.warn if expected else _log.error
        log("sockjs session {id}: relaying failed: {why}", id=self.session_id, why=why)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        if not self._headed:
            self.request.setResponseCode(502)
            self.request.setHeader(b"Content-Type", b"text/plain; charset=UTF-8")
            self.request.write(b"Bad gateway\n")
        self._finish()

    def lost(self, upstream: _Upstream) -> None:
        """The owner's connection closed while carrying this request."""
        if upstream is not self.upstream:
            return
        self.upstream = None
        if self.done:
            return
        self._stop_producing()  # that connection no longer paces this response
        if upstream.reused and not self._received and not self._retried:
            # Closed by the owner while idle, before this request reached it: a new one.
            self._retried = True
            self.forwarder.connect(upstream.path, self)
            return
        if not self._headed:
            self._bad_gateway("its worker closed before answering", expected=True)
            return
        self._finish()  # the end of an until-close body, or the owner went away mid-answer


class _Upstream(Protocol):
    """A connection to one owner, carrying one relayed request at a time."""

    def __init__(self, forwarder: Forwarder, path: str, relay: _Relay) -> None:
        self.forwarder = forwarder
        self.path = path
        self.relay: _Relay | None = relay
        self.reused = False
        self._closed = False

    @property
    def usable(self) -> bool:
        """Open, and not closing."""
        transport = self.transport
        return (
            not self._closed
            and transport is not None
            and not getattr(transport, "disconnecting", False)
        )

    def start(self, relay: _Relay, *, reused: bool) -> None:
        self.relay = relay
        self.reused = reused
        relay.connected(self)

    def release(self) -> None:
        """The answer is complete: back to the pool, reading again."""
        self.relay = None
        transport: Any = self.transport
        if self.usable:
            transport.resumeProducing()  # a slow client may have paused it
        self.forwarder.park(self)

    def close(self) -> None:
        self.relay = None
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.relay = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionMade(self) -> None:
        relay = self.relay
        if relay is not None:
            self.start(relay, reused=False)

    def dataReceived(self, data: bytes) -> None:
        relay = self.relay
        if relay is None:  # nothing asked: not an HTTP peer to keep
            self.abort()
            return
        relay.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self.forwarder.forget(self)
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.lost(self)


class _RelayFactory(ClientFactory):
    noisy = False

    def __init__(self, forwarder: Forwarder, path: str, relay: _Relay) -> None:
        self.forwarder = forwarder
        self.path = path
        self.relay = relay

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Upstream(self.forwarder, self.path, self.relay)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.relay.fallback(reason)
