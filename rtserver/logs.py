"""Logging with a process-wide level (``log.level``) for rtserver's own events.

twistd owns the log observer, so the level is applied where events are emitted:
:class:`Logger` drops events below the configured level before formatting anything.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

__all__ = ["Logger", "set_level"]

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
