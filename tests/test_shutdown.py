"""The stop-signal guard: the first SIGTERM/SIGINT acts, later ones are only noted.

Real signals, sent by a child process to itself (the test process's own handlers belong
to pytest and its reactor).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import json, os, signal
from twisted.internet.task import Clock
from rtserver.shutdown import StopSignalGuard

class Reactor(Clock):
    def __init__(self):
        super().__init__()
        self.from_thread = []
    def callFromThread(self, f, *args, **kwargs):
        self.from_thread.append(kwargs.get("name"))

seen = []
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda n, frame: seen.append(signal.Signals(n).name))
reactor = Reactor()
guard = StopSignalGuard(reactor)
def kill(name):
    os.kill(os.getpid(), getattr(signal, name))
"""


def run(body: str) -> Any:
    """Run ``PRELUDE`` + ``body`` in a child; it prints one JSON value."""
    code = PRELUDE + textwrap.dedent(body)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def test_only_the_first_stop_signal_reaches_the_handler() -> None:
    result = run("""
        guard.install()
        kill("SIGTERM"); kill("SIGTERM"); kill("SIGINT")
        first = list(seen)
        guard.uninstall()  # stopping: the guard stays for the signals still to come
        kill("SIGINT")
        print(json.dumps([first, seen, reactor.from_thread, guard.signalled]))
    """)
    first, after, noted, signalled = result
    assert first == ["SIGTERM"]
    assert after == ["SIGTERM"]
    assert noted == ["SIGTERM", "SIGINT", "SIGINT"]  # one info line per ignored signal
    assert signalled == 15


def test_uninstall_without_a_signal_puts_the_handlers_back() -> None:
    result = run("""
        guard.install(); guard.install()  # twice: still one layer
        guard.uninstall()
        kill("SIGINT"); kill("SIGINT")
        print(json.dumps(seen))
    """)
    assert result == ["SIGINT", "SIGINT"]


def test_default_handlers_are_left_alone() -> None:
    result = run("""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        guard.install()
        print(json.dumps(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL))
    """)
    assert result is True


def test_bounded_stop_passes_the_outcome_or_gives_up_at_the_timeout() -> None:
    """``shutdown.timeout``: the stop's own outcome in time; None (and one error) after."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock
    from twisted.logger import LogLevel, globalLogPublisher

    from rtserver.shutdown import bounded

    errors: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is LogLevel.error:
            errors.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    try:
        clock = Clock()
        quick: Deferred[str] = Deferred()
        got: list[object] = []
        bounded(quick, 2.0, clock).addCallback(got.append)
        quick.callback("stopped")
        assert got == ["stopped"] and clock.getDelayedCalls() == []

        stuck: Deferred[str] = Deferred()
        bounded(stuck, 2.0, clock).addCallback(got.append)
        clock.advance(1.9)
        assert got == ["stopped"]
        clock.advance(0.1)
        assert got == ["stopped", None]
        stuck.errback(RuntimeError("late"))  # dropped: the stop went on without it
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == [
        "shutdown timeout reached: stopping after 2s (shutdown.timeout) without waiting for "
        "the rest"
    ]
