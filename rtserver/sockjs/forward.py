"""One SockJS endpoint served by several processes of one host (``--workers N``).

A SockJS session is a series of HTTP requests (a poll or stream that receives, and
``xhr_send`` posts that send) which the kernel may hand to any of the processes sharing
the port. Each session has one owner, a pure function of its id (CRC-32 modulo the
number of processes), so every process finds it without asking anyone: a session request
that reaches another process is relayed, as it is, to the owner's private Unix socket,
and the owner's answer (a poll, or a stream of frames) is relayed back while it lasts.

The relay speaks HTTP/1.0 with ``Connection: close`` to the owner, so the answer is the
body until the owner closes: streaming responses pass through frame by frame, with the
client's send buffer pausing the read from the owner. A client that goes away aborts the
relayed request, which the owner sees as a client abort (the session ends, as SockJS
says). An owner that cannot be reached (restarting) is replaced by the process the
request reached: it serves the session itself, so a new session opens anyway and a
session of the dead owner gets what SockJS gives a lost session.

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

from twisted.internet.interfaces import IReactorUNIX, ITransport
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
    }
)
#: Headers twisted.web sets on every response; the owner's values replace them.
_REPLACE = frozenset({b"server", b"date", b"content-type"})
#: Largest response head accepted from an owner.
MAX_HEAD = 64 * 1024


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
        #: Requests relayed to another process.
        self.forwarded = 0
        #: Requests served here because their owner could not be reached.
        self.unreachable = 0

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
        self._reactor.connectUNIX(path, _RelayFactory(relay), timeout=self._timeout)
        return NOT_DONE_YET


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
        self.upstream: ITransport | None = None
        self.done = False
        self._head = b""
        self._headed = False
        self._producing = False
        request.notifyFinish().addBoth(self._client_gone)

    # --- client side -----------------------------------------------------------------

    def _client_gone(self, result: object) -> None:
        """The response finished, or the client left: close the owner's side too."""
        self.done = True
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abortConnection()  # type: ignore[attr-defined]

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self._producing:
            self._producing = False
            self.request.unregisterProducer()
        self.request.finish()

    def fallback(self, reason: Failure) -> None:
        """The owner is unreachable: serve the request here."""
        if self.done:
            return
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

    def connected(self, transport: ITransport) -> None:
        if self.done:
            transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.upstream = transport
        request = self.request
        lines = [b"%s %s HTTP/1.0" % (request.method, request.uri)]
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP:
                lines.extend(name + b": " + value for value in values)
        lines.append(b"Content-Length: %d" % len(self.body))
        lines.append(b"Connection: close")
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + self.body)
        request.registerProducer(transport, True)
        self._producing = True

    def received(self, data: bytes) -> None:
        if self.done:
            return
        if self._headed:
            self.request.write(data)
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
        if rest:
            self.request.write(rest)

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
            headers.setdefault(name.strip(), []).append(value.strip())
        request = self.request
        request.setResponseCode(int(parts[1]), parts[2] if len(parts) > 2 else None)
        for name, values in headers.items():
            lower = name.lower()
            if lower in _HOP and lower != b"content-length":
                continue
            if lower in _REPLACE or lower == b"content-length":
                request.responseHeaders.setRawHeaders(name, values[-1:])
            else:
                request.responseHeaders.setRawHeaders(name, values)
        if b"content-type" not in {n.lower() for n in headers}:
            request.defaultContentType = None
        return True

    def _bad_gateway(self, why: str, *, expected: bool = False) -> None:
        """Answer 502 (unless the answer has begun) and drop the owner's connection.

        ``expected``: the owner went away (a worker restarting), a warning, not an error.
        """
        log = _log.warn if expected else _log.error
        log("sockjs session {id}: relaying failed: {why}", id=self.session_id, why=why)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abortConnection()  # type: ignore[attr-defined]
        if not self._headed:
            self.request.setResponseCode(502)
            self.request.setHeader(b"Content-Type", b"text/plain; charset=UTF-8")
            self.request.write(b"Bad gateway\n")
        self._finish()

    def lost(self) -> None:
        """The owner closed: the answer is complete (or cut short with the owner)."""
        self.upstream = None
        if self.done:
            return
        if not self._headed:
            self._bad_gateway("its worker closed before answering", expected=True)
            return
        self._finish()


class _Upstream(Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.connected(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self.relay.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay.lost()


class _RelayFactory(ClientFactory):
    noisy = False

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Upstream(self.relay)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.relay.fallback(reason)
