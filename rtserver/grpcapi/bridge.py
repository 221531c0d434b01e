"""Run reactor work on behalf of grpcio's worker threads.

grpcio's synchronous server calls servicer methods on threads of its own pool. Nothing
in rtserver's core may be touched from those threads, so a servicer hands each call to
the reactor with :meth:`ReactorBridge.call`: the function runs in the reactor thread
(``callFromThread``), its Deferred's outcome comes back through a lock the worker
thread waits on. The reactor never waits
for a worker; a worker waits for at most one call at a time.

:meth:`ReactorBridge.close` (run in the reactor when the service stops) fails every call
still pending and every later one with :class:`BridgeClosed`, so no worker thread can
outlive the reactor waiting on a result that will never come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from threading import Lock
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["BridgeClosed", "ReactorBridge", "ThreadCaller", "to_loop"]

T = TypeVar("T")

#: How often a waiting worker thread checks whether the bridge was closed meanwhile.
_POLL_SECONDS = 1.0


class ThreadCaller(Protocol):
    """The part of a reactor the bridge uses (IReactorFromThreads)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` in the reactor thread soon; safe from any thread."""


def to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    """``loop.call_soon_threadsafe(fn, *args)``; nothing once the loop is closed.

    For the reactor's side of a ``grpc.aio`` service: after its service stopped, a late
    notification has nobody to reach and must not raise in the reactor.
    """
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


class BridgeClosed(Exception):
    """The service is stopping: the call did not run, or its outcome was abandoned."""


class ReactorBridge:
    """Hands calls from foreign threads to the reactor and waits for their Deferreds.

    Args:
        reactor: provides ``callFromThread``.
    """

    def __init__(self, reactor: ThreadCaller) -> None:
        self._reactor = reactor
        self._pending: set[_Waiter | _Notify] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Calls started in the reactor whose outcome has not arrived yet."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the service is stopping)."""
        return self._closed

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
        waiter = _Waiter()
        self._reactor.callFromThread(self._start, fn, waiter)
        while not waiter.done.acquire(timeout=_POLL_SECONDS):
            if self._closed:
                waiter.abandon()
                break
        return waiter.outcome()

    def submit(self, fn: Callable[[], Deferred[T]], done: Callable[[object], object]) -> None:
        """Run ``fn()`` in the reactor; ``done(result or Failure)`` gets the outcome.

        The non-blocking twin of :meth:`call`, for callers on an event loop: ``done`` runs
        in the reactor thread (hand it on with ``loop.call_soon_threadsafe``), exactly
        once; with a :class:`BridgeClosed` failure when the bridge is or gets closed.
        """
        waiter = _Notify(done)
        if self._closed:
            waiter.abandon()
            return
        self._reactor.callFromThread(self._start, fn, waiter)

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` in the reactor soon, without waiting; nothing once closed.

        For notifications from grpcio threads (a stream's consumer read or went away).
        """
        if not self._closed:
            self._reactor.callFromThread(self._run_posted, fn)

    def _run_posted(self, fn: Callable[[], object]) -> None:
        """Reactor thread: run a posted call unless the bridge closed meanwhile."""
        if not self._closed:
            fn()

    def _start(self, fn: Callable[[], Deferred[T]], waiter: _Waiter | _Notify) -> None:
        """Reactor thread: run ``fn`` and route its outcome to ``waiter``."""
        if self._closed:
            waiter.abandon()
            return
        self._pending.add(waiter)
        d = maybeDeferred(fn)
        d.addBoth(self._finish, waiter)

    def _finish(self, outcome: object, waiter: _Waiter | _Notify) -> None:
        self._pending.discard(waiter)
        waiter.settle(outcome)

    def close(self) -> None:
        """Reactor thread: fail pending and later calls with :class:`BridgeClosed`."""
        self._closed = True
        pending, self._pending = self._pending, set()
        for waiter in pending:
            waiter.abandon()


class _Waiter:
    """One call's outcome, handed from the reactor thread to the one waiting thread.

    A bare lock, acquired at creation and released once the outcome is set, is the
    cheapest cross-thread wake-up CPython has (no Condition, no Future bookkeeping:
    this sits on every GRPC call's path).
    """

    __slots__ = ("_outcome", "_settled", "done")

    def __init__(self) -> None:
        self.done = Lock()
        self.done.acquire()
        self._settled = False
        self._outcome: object = None

    def settle(self, outcome: object) -> None:
        """Reactor thread: the first outcome wins; wakes the waiting thread."""
        if self._settled:
            return
        self._settled = True
        self._outcome = outcome
        self.done.release()

    def abandon(self) -> None:
        """The call will not complete: its waiter gets :class:`BridgeClosed`."""
        self.settle(Failure(BridgeClosed()))

    def outcome(self) -> Any:
        """The result; raises the failure's exception."""
        if isinstance(self._outcome, Failure):
            self._outcome.raiseException()
        return self._outcome


class _Notify:
    """One call's outcome, handed to a callback (the first outcome wins)."""

    __slots__ = ("_done", "_settled")

    def __init__(self, done: Callable[[object], object]) -> None:
        self._done = done
        self._settled = False

    def settle(self, outcome: object) -> None:
        """Reactor thread: pass the outcome on, once."""
        if self._settled:
            return
        self._settled = True
        self._done(outcome)

    def abandon(self) -> None:
        """The call will not complete: the callback gets :class:`BridgeClosed`."""
        self.settle(Failure(BridgeClosed()))
