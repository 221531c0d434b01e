"""The open connections of one listener, for draining them at shutdown.

Shared by the WebSocket factories (rtserver's own and SockJS's): connections register
when they open and leave when they close; :meth:`OpenConnections.wait_empty` fires once
none are left, or after a timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

__all__ = ["OpenConnections"]

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
