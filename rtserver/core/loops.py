"""Periodic work of the core on the injected clock."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from rtserver.logs import Logger

__all__ = ["run_every"]

_log = Logger()


def run_every(
    clock: IReactorTime, interval: float, call: Callable[[], object], what: str, *, now: bool
) -> LoopingCall:
    """Run ``call`` every ``interval`` seconds (first at once when ``now``).

    A call that raises stops the loop; that is logged as "<what> stopped".
    """
    loop = LoopingCall(call)
    loop.clock = clock
    loop.start(interval, now=now).addErrback(_stopped, what)
    return loop


def _stopped(failure: Failure, what: str) -> None:
    _log.failure("{what} stopped", failure, what=what)
