"""tests/harness.py: what counts as a logged failure; the recovery handshake and its check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import NodeScenario, Server, check_recovered, unexpected_log_alarms

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


# --- NodeScenario.run_recovery and check_recovered ----------------------------------------

#: Stands in for a js/*_recover.mjs script: prints each stage's lines of $STAGES and, after
#: a stage ending in a ready line, reads the command pytest answers with (printed back).
FAKE_SCRIPT = """\
import json, os, sys
for stage in json.loads(os.environ["STAGES"]):
    for line in stage:
        print(json.dumps(line), flush=True)
    if stage and "ready" in stage[-1]:
        print(json.dumps({"command": sys.stdin.readline().strip()}), flush=True)
"""


def recover_stages(live: int, missed: int, mode: str, transport: str) -> list[list[dict[str, Any]]]:
    """What ``runRecover`` prints when every publication arrives once, in order."""
    main = {"client": "main", "channel": "ch"}

    def pub(n: int, data: dict[str, Any]) -> dict[str, Any]:
        return {**main, "event": "publication", "data": data, "offset": n}

    def subscribed(again: bool) -> dict[str, Any]:
        return {**main, "event": "subscribed", "recoverable": True, "positioned": True,
                "wasRecovering": again, "recovered": again,
                "streamPosition": {"offset": live if again else 0, "epoch": "e1"}}

    connected = {"client": "main", "event": "connected", "id": "c", "transport": transport}
    if mode == "disconnect":
        away = [{"client": "main", "event": "disconnected", "code": 0, "reason": "disconnect called"}]
        back: list[dict[str, Any]] = []
    else:
        away = [{"dropped": 1}, {"client": "main", "event": "connecting", "code": 1,
                                  "reason": "transport closed"}]
        back = [{"released": 1}]
    counts = {"mode": mode, "live": live, "missed": missed}
    return [
        [connected, subscribed(False), {"ready": "subscribed", "transport": transport, **counts}],
        [pub(i + 1, {"live": i}) for i in range(live)]
        + away + [{"away_state": "x", "sub_state": "y"}, {"ready": "away"}],
        [*back, connected, subscribed(True)]
        + [pub(live + i + 1, {"missed": i}) for i in range(missed)]
        + [{"ready": "recovered", "transport": transport}],
        [pub(live + missed + 1, {"sentinel": True}), {"done": True}],
    ]


def fake_recover(tmp_path: Path, stages: list[list[dict[str, Any]]]) -> NodeScenario:
    script = tmp_path / "fake_recover.py"
    script.write_text(FAKE_SCRIPT)
    return NodeScenario(sys.executable, script, {"STAGES": json.dumps(stages)}, timeout=10.0)


@pytest.mark.parametrize("mode", ["disconnect", "drop"])
def test_run_recovery_publishes_at_each_step_and_returns_the_events(
    tmp_path: Path, mode: str
) -> None:
    """Live ones once subscribed, the away check, missed ones while away, then the sentinel."""
    calls: list[Any] = []
    js = fake_recover(tmp_path, recover_stages(2, 3, mode, "sse"))
    try:
        events = js.run_recovery(
            lambda channel, data: calls.append((channel, data)), "ch", live=2, missed=3,
            mode=mode, transport="sse", while_away=lambda: calls.append("away check"),
        )
    finally:
        js.close()
    assert calls == [
        ("ch", {"live": 0}), ("ch", {"live": 1}), "away check",
        ("ch", {"missed": 0}), ("ch", {"missed": 1}), ("ch", {"missed": 2}),
        ("ch", {"sentinel": True}),
    ]
    commands = [e["command"] for e in events if "command" in e]
    assert commands == ["published_live", "published_missed", "published_sentinel"]
    assert events[-1] == {"done": True}


@pytest.mark.parametrize(
    ("called_with", "message"),
    [
        ({"live": 3}, "the script runs"),
        ({"mode": "drop"}, "the script runs"),
        ({"transport": "websocket"}, "subscribed over 'sse', not 'websocket'"),
    ],
)
def test_run_recovery_refuses_what_the_script_does_not_run(
    tmp_path: Path, called_with: dict[str, Any], message: str
) -> None:
    """Counts, mode or transport other than the script's fail at once, saying what it runs."""
    args: dict[str, Any] = {"live": 2, "missed": 3, "mode": "disconnect", **called_with}
    js = fake_recover(tmp_path, recover_stages(2, 3, "disconnect", "sse"))
    try:
        with pytest.raises(AssertionError, match=message):
            js.run_recovery(lambda channel, data: None, "ch", **args)
    finally:
        js.close()


def recover_events(mode: str = "disconnect") -> list[dict[str, Any]]:
    return [e for stage in recover_stages(2, 3, mode, "websocket") for e in stage]


def replaced(events: list[dict[str, Any]], old: dict[str, Any], *new: dict[str, Any]) -> list[dict[str, Any]]:
    index = events.index(old)
    return events[:index] + list(new) + events[index + 1:]


def missed(n: int, offset: int) -> dict[str, Any]:
    return {"client": "main", "channel": "ch", "event": "publication", "data": {"missed": n},
            "offset": offset}


def test_check_recovered_accepts_a_recovery_once_in_order() -> None:
    check_recovered(recover_events(), live=2, missed=3, mode="disconnect")
    check_recovered(recover_events("drop"), live=2, missed=3, mode="drop")


@pytest.mark.parametrize(
    ("mode", "edit", "message"),
    [
        ("disconnect", lambda ev: replaced(ev, missed(1, 4), missed(1, 4), missed(1, 4)),
         "exactly once"),
        ("disconnect", lambda ev: replaced(ev, missed(1, 4), missed(2, 4)), "exactly once"),
        ("disconnect", lambda ev: [*ev, {"client": "main", "event": "error", "type": "transport"}],
         "no transport"),
        ("disconnect", lambda ev: [*ev, {"client": "main", "event": "sub_error", "code": 1}],
         "subscription errors"),
        ("drop", lambda ev: [e for e in ev if e.get("code") != 1], r"connecting \(1\)"),
        ("drop", lambda ev: replaced(ev, {"dropped": 1}, {"dropped": 2}), "one live connection"),
    ],
)
def test_check_recovered_fails_a_broken_recovery(mode: str, edit: Any, message: str) -> None:
    """A duplicate or reordered publication, an error, or another way of going away fails."""
    with pytest.raises(AssertionError, match=message):
        check_recovered(edit(recover_events(mode)), live=2, missed=3, mode=mode)
