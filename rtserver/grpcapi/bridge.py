"""Run reactor work on behalf of grpcio's worker threads.

grpcio's synchronous server calls servicer methods on threads of its own pool. Nothing
in rtserver's core may be touched from those threads, so a servicer hands each call to
the reactor with :meth:`ReactorBridge.call`: the function runs in the reactor thread
(``callFromThread``), its Deferred's outcome comes back through a
:class:`concurrent.futures.Future` the worker thread waits on. The reactor never waits
for a worker; a worker waits for at most one call at a time.

:meth:`ReactorBridge.close` (run in the reactor when the service stops) fails every call
still pending and every later one with :class:`BridgeClosed`, so no worker thread can
outlive the reactor waiting on a result that will never come.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["BridgeClosed", "ReactorBridge", "ThreadCaller"]

T = TypeVar("T")

#: How often a waiting worker thread checks whether the bridge was closed meanwhile.
_POLL_SECONDS = 1.0


class ThreadCaller(Protocol):
    """The part of a reactor the bridge uses (IReactorFromThreads)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` in the reactor thread soon; safe from any thread."""


class BridgeClosed(Exception):
    """The service is stopping: the call did not run, or its outcome was abandoned."""


class ReactorBridge:
    """Hands calls from foreign threads to the reactor and waits for their Deferreds.

    Args:
        reactor: provides ``callFromThread``.
    """

    def __init__(self, reactor: ThreadCaller) -> None:
        self._reactor = reactor
        self._pending: set[Future[Any]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Calls started in the reactor whose outcome has not arrived yet."""
        return len(self._pending)

    def call(self, fn: Callable[[], Deferred[T]]) -> T:
        """Run ``fn()`` in the reactor; block this (non-reactor) thread for its outcome.

        Returns:
            The result ``fn``'s Deferred fires with.

        Raises:
            BridgeClosed: the bridge is (or got) closed before the outcome arrived.
            Exception: whatever ``fn`` or its Deferred failed with.
        """
        if self._closed:
            raise BridgeClosed()
        future: Future[T] = Future()
        self._reactor.callFromThread(self._start, fn, future)
        while True:
            try:
                return future.result(_POLL_SECONDS)
            except TimeoutError:
                if self._closed:
                    future.cancel()
                    raise BridgeClosed() from None

    def _start(self, fn: Callable[[], Deferred[T]], future: Future[T]) -> None:
        """Reactor thread: run ``fn`` and route its outcome to ``future``."""
        if self._closed or not future.set_running_or_notify_cancel():
            if not future.done():
                future.set_exception(BridgeClosed())
            return
        self._pending.add(future)
        d = maybeDeferred(fn)
        d.addBoth(self._finish, future)

    def _finish(self, outcome: T | Failure, future: Future[T]) -> None:
        self._pending.discard(future)
        if future.done():  # abandoned by close()
            return
        if isinstance(outcome, Failure):
            future.set_exception(outcome.value)
        else:
            future.set_result(outcome)

    def close(self) -> None:
        """Reactor thread: fail pending and later calls with :class:`BridgeClosed`."""
        self._closed = True
        pending, self._pending = self._pending, set()
        for future in pending:
            if not future.done():
                future.set_exception(BridgeClosed())
