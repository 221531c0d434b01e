"""Shared pieces of the property-based fuzz suites: settings and a log watcher.

Every suite runs a bounded, derandomized number of examples (CI-friendly, reproducible)
and keeps no example database, so a run never depends on an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, settings
from twisted.logger import LogLevel, globalLogPublisher

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class LogWatch:
    """Log events at error level and above, and every logged traceback."""

    def __init__(self) -> None:
        self.bad: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            self.bad.append(event)

    def lines(self) -> list[str]:
        """The offending events, formatted (with their tracebacks)."""
        from twisted.logger import formatEvent

        out = []
        for event in self.bad:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            out.append(text)
        return out


@contextmanager
def watch_log() -> Iterator[LogWatch]:
    """Collect error/critical events and tracebacks logged inside the block."""
    watch = LogWatch()
    globalLogPublisher.addObserver(watch)
    try:
        yield watch
    finally:
        globalLogPublisher.removeObserver(watch)
