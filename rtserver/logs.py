"""Logging for rtserver's own events: a process-wide level (``log.level``) and format.

twistd owns the log observer, so the level is applied where events are emitted:
:class:`Logger` drops events below the configured level before formatting anything.

``log.format: json`` replaces twistd's text lines with one JSON object per line
(docs/operations.rst, "Logs"): ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, the structured fields of the event, and ``error`` (the traceback) when the
event carries a failure. Fields whose names suggest a secret are left out.
"""

from __future__ import annotations

import datetime
import math
import re
import sys
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.logger import Logger as _TwistedLogger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "FORMATS",
    "JSONLogObserver",
    "Logger",
    "json_observer",
    "log_failure",
    "set_json_output",
    "set_level",
]

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

#: Values of ``log.format``.
FORMATS = ("text", "json")


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


# --- JSON lines --------------------------------------------------------------------------

#: Field names never written: they may hold a key, a password or a token.
_SECRET_FIELD = re.compile(r"secret|password|passwd|token|key|authorization|cookie", re.I)
#: Longest string field written (the message itself is not cut).
_MAX_FIELD = 1024
_LEVEL_NAMES = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "fatal",
}


def _field(value: object) -> object:
    """A JSON-safe rendering of one structured field."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_FIELD else text[:_MAX_FIELD] + "..."


def json_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object written for ``event``."""
    when = event.get("log_time")
    stamp = datetime.datetime.fromtimestamp(
        when if isinstance(when, int | float) else 0, tz=datetime.UTC
    )
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": _LEVEL_NAMES.get(level, "info"),
        "logger": str(event.get("log_namespace", "")),
        "message": formatEvent(event),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in record or name in ("format", "message"):
            continue
        if name.startswith("_") or _SECRET_FIELD.search(name):
            continue
        record[name] = _field(value)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["error"] = failure.getTraceback()
    return record


@implementer(ILogObserver)
class JSONLogObserver:
    """Writes each event as one JSON object per line to ``out``."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        """Write ``event`` as one line."""
        line = orjson.dumps(json_record(event), default=str).decode()
        self._out.write(line + "\n")
        self._out.flush()


#: Where :func:`json_observer` writes: ``--logfile`` of twistd ("" or "-" = stdout).
_output = {"logfile": ""}


def set_json_output(logfile: str | None) -> None:
    """Remember twistd's ``--logfile`` for :func:`json_observer`."""
    _output["logfile"] = logfile or ""


def json_observer() -> JSONLogObserver:
    """The twistd ``--logger`` factory: JSON lines to stdout or to ``--logfile``."""
    path = _output["logfile"]
    if not path or path == "-":
        return JSONLogObserver(sys.stdout)
    from twisted.python.logfile import LogFile

    return JSONLogObserver(LogFile.fromFullPath(path))
