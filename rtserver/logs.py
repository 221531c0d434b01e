"""Logging with a process-wide level (``log.level``) for rtserver's own events.

twistd owns the log observer, so the level is applied where events are emitted:
:class:`Logger` drops events below the configured level before formatting anything.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel
from twisted.python.failure import Failure

__all__ = ["Logger", "log_failure", "set_level"]

_LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "fatal": LogLevel.critical,
}
_ORDER = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}
_state = {"min": 1, "off": False}


def set_level(name: str) -> None:
    """Set the minimum level: trace, debug, info, warn, error, fatal or none."""
    if name == "none":
        _state["off"] = True
        return
    _state["off"] = False
    _state["min"] = _ORDER[_LEVELS[name]]


class Logger(_TwistedLogger):
    """A twisted Logger that honours :func:`set_level`."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        """Emit unless below the configured level."""
        if _state["off"] or _ORDER.get(level, 4) < _state["min"]:
            return
        super().emit(level, format, **kwargs)


def log_failure(log: _TwistedLogger, failure: Failure, format: str, **kwargs: Any) -> None:
    """Log a failed operation: a traceback for a bug, one warning line for an outage.

    Engines fail with a ``ConnectionError`` (``RedisUnavailable``, ``NatsUnavailable``)
    while their backend is unreachable (see docs/reliability.rst): an expected outage that
    the health check and the reconnecting links already report, so it gets one ``warn``
    line with the error text. Anything else is a bug and keeps its traceback.
    """
    if failure.check(ConnectionError):
        log.warn(format + ": {error}", error=str(failure.value), **kwargs)
    else:
        log.failure(format, failure, **kwargs)
