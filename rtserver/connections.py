"""What the listeners (rtserver's own transports and SockJS's) share.

:class:`OpenConnections`: connections register when they open and leave when they close;
:meth:`OpenConnections.wait_empty` fires once none are left (shutdown), or after a
timeout. :func:`websocket_server_options`: the Autobahn factory options both use.
:func:`take_over_producer`: backpressure registration on a connection's transport.
:func:`request_body`: the body twisted.web stored for a request.
:func:`reuse_port_socket`: a socket bound with ``SO_REUSEPORT`` (``--workers N``), IPv4
or IPv6 by :func:`address_family`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.web.http import Request

__all__ = [
    "Consumer",
    "OpenConnections",
    "address_family",
    "request_body",
    "reuse_port_socket",
    "split_description",
    "take_over_producer",
    "websocket_server_options",
]

T = TypeVar("T")


class OpenConnections(Generic[T]):
    """A set of open connections with waiters for "all closed"."""

    __slots__ = ("_open", "_reactor", "_waiters")

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._open: set[T] = set()
        self._waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[T]:
        """A snapshot: closing connections while iterating is fine."""
        return iter(list(self._open))

    def add(self, connection: T) -> None:
        """A connection opened."""
        self._open.add(connection)

    def discard(self, connection: T) -> None:
        """A connection closed; fire the waiters when it was the last one."""
        self._open.discard(connection)
        if not self._open:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def wait_empty(self, timeout: float) -> Deferred[None]:
        """Fires when every connection has closed, or fails after ``timeout`` seconds."""
        if not self._open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        d.addTimeout(timeout, self._reactor)
        return d


def websocket_server_options(
    message_size_limit: int, close_timeout: float = 5.0
) -> dict[str, Any]:  # keywords of Autobahn's setProtocolOptions: values of many types
    """``setProtocolOptions`` keywords for a WebSocket server factory.

    Inbound messages and frames are capped at ``message_size_limit`` (1009 beyond, with a
    clean close); no permessage-deflate (no decompression bombs); the origin policy is
    applied by the protocols themselves; pings are the application's (Centrifugo's
    ``{}``), not Autobahn's.
    """
    return {
        "maxFramePayloadSize": message_size_limit,
        "maxMessagePayloadSize": message_size_limit,
        "failByDrop": False,
        "openHandshakeTimeout": 10,
        "closeHandshakeTimeout": close_timeout,
        "autoPingInterval": 0,
        "perMessageCompressionAccept": lambda offers: None,
        "tcpNoDelay": True,
        "allowedOrigins": ["*"],
        "allowNullOrigin": True,
        "webStatus": False,
    }


@runtime_checkable
class Consumer(Protocol):
    """A transport that takes a producer (TCP and TLS transports both do)."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:  # noqa: N802
        """Report the transport's buffer state to ``producer``."""

    def unregisterProducer(self) -> None:  # noqa: N802
        """Stop reporting to the registered producer."""


def take_over_producer(transport: object, producer: IPushProducer) -> bool:
    """Make ``producer`` the streaming producer of ``transport``, replacing any other.

    Autobahn registers its own producer on every connection; rtserver's pauses the
    client's writer instead.

    Returns:
        False when the transport takes no producer (output is then bounded by the
        client's queue only).
    """
    if not isinstance(transport, Consumer):
        return False
    try:
        transport.unregisterProducer()
        transport.registerProducer(producer, True)
    except RuntimeError:  # the transport is already disconnecting
        return False
    return True


def request_body(request: Request) -> bytes:
    """The request body twisted.web stored (empty once the request has finished)."""
    content = request.content
    return b"" if content is None else content.read()


def split_description(description: str) -> list[str]:
    """Split an endpoint description on unescaped colons, removing the escapes."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def address_family(interface: str) -> socket.AddressFamily:
    """IPv6 for an interface address with a colon, IPv4 otherwise ("" included)."""
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def reuse_port_socket(kind: socket.SocketKind, interface: str, port: int) -> socket.socket:
    """A socket of ``kind`` (stream or datagram) bound to ``(interface, port)``.

    Bound with ``SO_REUSEPORT``: the workers of ``--workers N`` each bind one to the same
    address, and the kernel spreads connections (TCP) or client addresses (UDP) over them.
    IPv6 when ``interface`` has a colon.

    Raises:
        OSError: the address cannot be bound.
    """
    sock = socket.socket(address_family(interface), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
    except BaseException:
        sock.close()
        raise
    return sock
