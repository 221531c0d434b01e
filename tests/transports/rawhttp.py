"""A raw HTTP/1.x client for streaming tests: reads a response the way ``curl -N`` does."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol


class StreamReader(Protocol):
    """Sends one request and accumulates the decoded response body as it arrives.

    ``complete`` fires at the end of the response (last chunk, or close for HTTP/1.0);
    ``closed`` when the connection is gone.
    """

    def __init__(self) -> None:
        self.raw = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.chunked = False
        self._pending = b""
        self._waiters: list[tuple[bytes, Deferred[bytes]]] = []
        self.closed: Deferred[None] = Deferred()
        self.complete: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        if not self.status:
            if b"\r\n\r\n" not in self.raw:
                return
            head, rest = self.raw.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.chunked = self.headers.get("transfer-encoding") == "chunked"
            data = rest
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if not self.chunked:
            self.body += data
        else:
            self._pending += data
            while True:
                size_line, sep, rest = self._pending.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                if size == 0 and not self.complete.called:
                    self.complete.callback(None)
                self.body += rest[:size]
                self._pending = rest[size + 2 :]
        self._check()

    def _check(self) -> None:
        if not self.status:
            return
        for marker, d in list(self._waiters):
            if marker in self.body:
                self._waiters.remove((marker, d))
                d.callback(self.body)

    def wait_for(self, marker: bytes) -> Deferred[bytes]:
        """Fires with the body so far once ``marker`` has arrived (b"": the headers)."""
        d: Deferred[bytes] = Deferred()
        self._waiters.append((marker, d))
        self._check()
        return d

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self._waiters:
            d.errback(ConnectionError(f"closed before marker; body={self.body!r}"))
        self._waiters = []
        if not self.complete.called:
            self.complete.callback(None)
        self.closed.callback(None)


async def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> StreamReader:
    """Open a connection, send the request, return the reader (response still streaming)."""
    reader = StreamReader()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    reader.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return reader
