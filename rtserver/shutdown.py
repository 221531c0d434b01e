"""Stop signals that arrive while the server is already stopping.

twistd's reactor stops on SIGTERM and SIGINT by calling ``reactor.stop()``; a second
signal while it stops (the drain takes ``health.drain_delay`` and the shutdown timeout)
calls it again, which raises ``ReactorNotRunning`` and is logged as a critical
traceback. That second signal is ordinary: systemd's default ``KillMode=control-group``
sends SIGTERM to every process of the unit, so each worker of ``--workers N`` gets one
from systemd and one from its supervisor, and Ctrl-C reaches every process of the
terminal's group. :class:`StopSignalGuard` passes the first stop signal to the
reactor's handler and only notes the later ones.

:func:`bounded` is the other end of a stop: ``shutdown.timeout``, Centrifugo's bound on
a graceful shutdown, after which the process stops without waiting for the rest.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from rtserver.logs import Logger

__all__ = ["StopSignalGuard", "bounded"]

_T = TypeVar("_T")

_log = Logger()

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignalGuard:
    """Wraps the reactor's SIGTERM/SIGINT handlers so only the first stop signal acts.

    :meth:`install` once the reactor runs (it installs its handlers during start-up);
    :meth:`uninstall` puts the previous handlers back unless a stop signal came (then
    the process is stopping and later signals must still find the guard).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._previous: dict[int, Callable[[int, Any], Any]] = {}
        #: The stop signal that arrived first (0: none yet).
        self.signalled = 0

    def install(self) -> None:
        """Wrap the current handlers of SIGTERM and SIGINT (those that are callables)."""
        for signum in _SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler) and signum not in self._previous:
                self._previous[signum] = handler
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Restore the wrapped handlers (not once a stop signal has come)."""
        if self.signalled:
            return
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signalled:
            # a signal handler must not log directly: the reactor thread does it
            self._reactor.callFromThread(
                _log.info,
                "{name} again while stopping: ignored (still stopping on {first})",
                name=signal.Signals(signum).name,
                first=signal.Signals(self.signalled).name,
            )
            return
        self.signalled = signum
        self._previous[signum](signum, frame)


def bounded(stopping: Deferred[_T], timeout: float, clock: IReactorTime) -> Deferred[_T | None]:
    """``stopping``, or None after ``timeout`` seconds if it has not fired by then.

    The latter is logged as one error line (``shutdown.timeout``); the reactor then
    stops, dropping the connections still open. ``stopping`` is not cancelled: what it
    waits for ends with the process.
    """
    out: Deferred[_T | None] = Deferred()

    def expire() -> None:
        _log.error(
            "shutdown timeout reached: stopping after {timeout:g}s (shutdown.timeout) "
            "without waiting for the rest",
            timeout=timeout,
        )
        out.callback(None)

    timer = clock.callLater(timeout, expire)

    def finished(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if out.called:
            return  # late: the stop went on without it (a failure is dropped with it)
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)

    stopping.addBoth(finished)
    return out
