"""Raw HTTP/1.x and WebSocket helpers for the SockJS conformance tests.

Responses are read the way the upstream suite reads them: status and headers, then the
body chunk by chunk (HTTP/1.1 chunked) or until close (HTTP/1.0).
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from rtserver.sockjs.conformance import services
from rtserver.web.site import Branch, RTSite

_END = b"<end>"


class Response(Protocol):
    """One request's response: headers, decoded chunks as they arrive, the end."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.raw = b""
        self.received = b""
        self.status = 0
        self.version = ""
        self.headers: dict[str, list[str]] = {}
        self.body = b""
        self.chunked = False
        self.length: int | None = None
        self.head: Deferred[Response] = Deferred()
        self.complete: Deferred[bytes] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._chunks: DeferredQueue[bytes] = DeferredQueue()
        self._pending = b""

    def header(self, name: str) -> str:
        """The last value of a header, or ''."""
        values = self.headers.get(name.lower())
        return values[-1] if values else ""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.status:
            self.raw += data
            if b"\r\n\r\n" not in self.raw:
                return
            head, data = self.raw.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            self.version, code = lines[0].split()[:2]
            self.status = int(code)
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers.setdefault(name.strip().lower(), []).append(value.strip())
            self.chunked = self.header("transfer-encoding").lower() == "chunked"
            if self.header("content-length"):
                self.length = int(self.header("content-length"))
            self.head.callback(self)
            if self.method == "HEAD" or self.status in (101, 204, 304) or self.length == 0:
                self._done()
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self.complete.called:
            return
        if not self.chunked:
            if data:
                self.body += data
                self._chunks.put(data)
            if self.length is not None and len(self.body) >= self.length:
                self._done()
            return
        self._pending += data
        while True:
            size_line, sep, rest = self._pending.partition(b"\r\n")
            if not sep or len(rest) < int(size_line, 16) + 2:
                return
            size = int(size_line, 16)
            self._pending = rest[size + 2 :]
            if size == 0:
                self._done()
                return
            self.body += rest[:size]
            self._chunks.put(rest[:size])

    def _done(self) -> None:
        if not self.complete.called:
            self._chunks.put(_END)
            self.complete.callback(self.body)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.head.called:
            self.head.errback(ConnectionError(f"closed before headers: {self.raw!r}"))
        self._done()
        self.closed.callback(None)

    async def read(self) -> bytes:
        """The next chunk; b'' once the response has ended."""
        chunk = await self._chunks.get()
        return b"" if chunk is _END else chunk

    def abort(self) -> None:
        """Drop the connection (a client going away mid-response)."""
        self.transport.abortConnection()


class SockJSServer:
    """The conformance services on 127.0.0.1, plus every client connection opened."""

    def __init__(self) -> None:
        self.resources = services(reactor)
        root = Branch()
        for name, resource in self.resources.items():
            root.putChild(name.encode("ascii"), resource)
        self.site = RTSite(root, reactor=reactor)
        self.listening = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        self.base = f"http://127.0.0.1:{self.port}"
        self._clients: list[Response] = []

    def session_url(self, service: str = "echo") -> str:
        """A path for a fresh session of ``service``."""
        return f"/{service}/000/{uuid.uuid4()}"

    async def open(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        version: str = "HTTP/1.1",
        length: bool = True,
        head: bool = True,
    ) -> Response:
        """Send a request; fires once the headers arrived (at once when not ``head``)."""
        response = Response(method)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await connectProtocol(endpoint, response)
        self._clients.append(response)
        lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
        if length:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        response.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if head:
            await response.head
        else:
            response.head.addErrback(lambda _: None)  # nobody waits for it
        return response

    async def attached(self, path: str, service: str = "echo") -> None:
        """Wait (reactor turns, no sleeping) until the session at ``path`` has a receiver."""
        session_id = path.rstrip("/").split("/")[3]
        registry = self.resources[service].sessions
        for _ in range(1000):
            session = registry.get(session_id)
            if session is not None and session.attached:
                return
            await task.deferLater(reactor, 0, lambda: None)
        raise AssertionError(f"no receiver attached to {session_id}")

    async def fetch(self, method: str, path: str, body: bytes = b"", **kwargs: Any) -> Response:
        """Send a request and wait for the whole response."""
        response = await self.open(method, path, body, **kwargs)
        await response.complete
        return response

    async def stop(self) -> None:
        """Close every client, session and connection; stop listening."""
        for client in self._clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        await defer.DeferredList([c.closed for c in self._clients], consumeErrors=True)
        for _ in range(100):  # let the server see the aborts before closing what is left
            if not any(r.websocket_connections for r in self.resources.values()):
                break
            await task.deferLater(reactor, 0, lambda: None)
        waits = [r.wait_closed(3) for r in self.resources.values()]
        await defer.DeferredList(waits, consumeErrors=True)
        await self.site.wait_closed(3)
        await self.listening.stopListening()
