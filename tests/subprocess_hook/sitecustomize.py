"""Start-up hook of the server processes the tests run (on their PYTHONPATH via harness.py).

Two jobs, both for test runs only:

* **Coverage.** When ``COVERAGE_PROCESS_START`` names a coverage config (``scripts/test.sh``
  sets it), measurement starts here (or was already started by coverage's own ``.pth``
  file). twistd ends a SIGTERM'd server by re-raising the signal with the default handler
  (``twisted.application.app._exitWithSignal``), so ``atexit`` never runs and coverage
  would lose the data: a process that signals itself saves its coverage data first.
* **Logged failures.** When ``RTSERVER_TEST_LOG_ALARMS`` names a file, every log event
  carrying a failure (``log.failure``, ``log.err``, an unhandled error in a Deferred) or
  logged at critical level is appended to it, one block per event. twistd's text log does
  not show levels, so this file is how ``harness.stop_server`` sees critical lines.
"""

from __future__ import annotations

import os


def _start_coverage() -> None:
    if not os.environ.get("COVERAGE_PROCESS_START"):
        return
    try:
        import coverage
    except ImportError:  # coverage not installed: nothing to measure
        return
    cov = coverage.process_startup() or getattr(coverage.process_startup, "coverage", None)
    if cov is None:
        return
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid == os.getpid():
            cov.stop()
            cov.save()
        real_kill(pid, sig)

    os.kill = kill


def _watch_log() -> None:
    path = os.environ.get("RTSERVER_TEST_LOG_ALARMS")
    if not path:
        return
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    from twisted.python.failure import Failure

    def observe(event: dict[str, object]) -> None:
        failure = event.get("log_failure")
        if failure is None and event.get("log_level") is not LogLevel.critical:
            return
        text = f"[{event.get('log_namespace')}] {event.get('log_level')!r}: {formatEvent(event)}"
        if isinstance(failure, Failure):
            text += "\n" + failure.getTraceback()
        with open(path, "a", encoding="utf-8") as out:
            out.write(text.rstrip("\n") + "\n\n")

    globalLogPublisher.addObserver(observe)


_start_coverage()
_watch_log()
