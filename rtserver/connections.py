"""What the WebSocket listeners (rtserver's own and SockJS's) share.

:class:`OpenConnections`: connections register when they open and leave when they close;
:meth:`OpenConnections.wait_empty` fires once none are left (shutdown), or after a
timeout. :func:`websocket_server_options`: the Autobahn factory options both use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

__all__ = ["OpenConnections", "websocket_server_options"]

T = TypeVar("T")


class OpenConnections(Generic[T]):
    """A set of open connections with waiters for "all closed"."""

    __slots__ = ("_open", "_reactor", "_waiters")

    def __init__(self, reactor: Any) -> None:
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


def websocket_server_options(message_size_limit: int, close_timeout: float = 5.0) -> dict[str, Any]:
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
