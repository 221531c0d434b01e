"""The subprocess-server guard of tests/harness.py: what counts as a logged failure."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from harness import Server, unexpected_log_alarms

LOG = """\
2026-12-03T08:00:00+0000 [rtserver.service#info] rtserver 0.1.0 node a: listening
2026-12-03T08:00:01+0000 [-] Unhandled Error
\tTraceback (most recent call last):
\tbuiltins.ValueError: boom
2026-12-03T08:00:02+0000 [rtserver.engines.redis#warn] redis engine is unhealthy
"""


def server(tmp_path: Path, log: str, alarms: str | None = None) -> Server:
    log_path = tmp_path / "server.log"
    log_path.write_text(log)
    alarms_path = tmp_path / "server.alarms"
    if alarms is not None:
        alarms_path.write_text(alarms)
    process: Any = subprocess.Popen  # never started: only the logs are read
    return Server(url="", ws_url="", api_url="", api_key="", secret="", log_path=log_path,
                  process=process, alarms_path=alarms_path)


def test_a_traceback_in_the_text_log_is_an_alarm(tmp_path: Path) -> None:
    """A traceback written to the log (e.g. via stderr) is reported with its lines."""
    [alarm] = unexpected_log_alarms(server(tmp_path, LOG))
    assert "Unhandled Error" in alarm and "ValueError: boom" in alarm


def test_a_critical_event_recorded_by_the_hook_is_an_alarm(tmp_path: Path) -> None:
    """Critical lines (invisible in twistd's text log) come from the start-up hook's file."""
    quiet = "2026-12-03T08:00:00+0000 [-] started\n"
    recorded = "[rtserver.core.node] <LogLevel=critical>: something broke\n\n"
    assert unexpected_log_alarms(server(tmp_path, quiet, recorded)) == [
        "[rtserver.core.node] <LogLevel=critical>: something broke"
    ]
    assert unexpected_log_alarms(server(tmp_path, quiet, "")) == []


def test_declared_failures_are_not_alarms(tmp_path: Path) -> None:
    """A pattern declared with expect_logged_failure silences the matching entries only."""
    srv = server(tmp_path, LOG, "[x] <LogLevel=critical>: other\n\n")
    srv.expect_logged_failure(r"Unhandled Error.*ValueError: boom")
    assert unexpected_log_alarms(srv) == ["[x] <LogLevel=critical>: other"]
