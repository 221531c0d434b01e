"""Autouse guards for every test: no DelayedCalls left behind, no unexpected logged failure.

A test that provokes a logged failure on purpose declares it with the
``expect_logged_failure`` fixture; anything else logged with a failure attached
(``log.failure``, ``log.err``, an unhandled error in a Deferred) or at critical level
fails the test that was running.

Also the ``redis_server`` fixture: one throw-away ``redis-server`` per test module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redisserver import RedisServer, require_redis_server
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` on a free port for the test module (skip without the binary)."""
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _reactor_is_clean() -> Iterator[None]:
    """Fail a test that leaves DelayedCalls on the global reactor."""
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    yield
    leftover = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    for call in leftover:
        call.cancel()
    assert not leftover, f"test left delayed calls behind: {leftover}"


@dataclass
class LoggedFailures:
    """Failure and critical events logged during one test, and the ones it declared."""

    events: list[dict[str, Any]] = field(default_factory=list)
    expected: list[tuple[type[BaseException] | str, int | None]] = field(default_factory=list)

    def observe(self, event: dict[str, Any]) -> None:
        """Log observer: keep failure-carrying and critical events."""
        if "log_failure" in event or event.get("log_level") is LogLevel.critical:
            self.events.append(event)

    @staticmethod
    def describe(event: dict[str, Any]) -> str:
        """One event as text: namespace, level, message and traceback."""
        level = getattr(event.get("log_level"), "name", "?")
        text = f"[{event.get('log_namespace')}] {level}: {formatEvent(event)}"
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            text += "\n" + failure.getTraceback()
        return text

    @staticmethod
    def matches(event: dict[str, Any], what: type[BaseException] | str) -> bool:
        """Whether ``event`` is the declared failure: its exception type, or text in it."""
        failure = event.get("log_failure")
        if isinstance(what, type):
            return isinstance(failure, Failure) and failure.check(what) is not None
        return what in LoggedFailures.describe(event)

    def problems(self) -> list[str]:
        """Unexpected events, and declared failures that were not logged."""
        unexpected = list(self.events)
        out = []
        for what, count in self.expected:
            hits = [e for e in unexpected if self.matches(e, what)]
            if (count is None and not hits) or (count is not None and len(hits) != count):
                name = what.__name__ if isinstance(what, type) else repr(what)
                wanted = "one or more" if count is None else str(count)
                out.append(f"expected {wanted} logged failure(s) {name}, got {len(hits)}")
            unexpected = [e for e in unexpected if not any(e is h for h in hits)]
        out += [self.describe(e) for e in unexpected]
        return out


@pytest.fixture(autouse=True)
def _logged_failures() -> Iterator[LoggedFailures]:
    """Fail a test during which a failure or a critical event was logged, unless declared."""
    record = LoggedFailures()
    globalLogPublisher.addObserver(record.observe)
    try:
        yield record
    finally:
        globalLogPublisher.removeObserver(record.observe)
    problems = record.problems()
    if problems:
        pytest.fail(
            "logged failures differ from what the test declared (declare expected ones with "
            "the expect_logged_failure fixture):\n\n" + "\n\n".join(problems),
            pytrace=False,
        )


@pytest.fixture
def expect_logged_failure(
    _logged_failures: LoggedFailures,
) -> Callable[..., None]:
    """Declare a failure the test provokes: ``expect_logged_failure(ValueError)``.

    The argument is an exception type the logged failure must be an instance of, or a
    substring of the logged text (message or traceback); ``count`` is the exact number of
    such events (None: one or more). A declared failure logged a different number of times
    fails the test too.
    """

    def expect(what: type[BaseException] | str, count: int | None = 1) -> None:
        _logged_failures.expected.append((what, count))

    return expect
