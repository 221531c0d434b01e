"""``log.format: json``: one JSON object per line, with level, time, message and fields.

Unit level: the record of an event (fields kept, secrets left out, failures as
``error``). Server level: a real ``twistd rtserver`` with ``log.format: json`` writes
only JSON lines, including its start-up line with its structured fields, and no secret.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import requests
from harness import base_config, merge, spawn_server, stop_server
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from rtserver import config as rtconfig
from rtserver import logs
from rtserver.config import ConfigError


def test_record_has_level_time_message_and_fields() -> None:
    event = {
        "log_format": "node {name} started on {port}",
        "log_level": LogLevel.warn,
        "log_namespace": "rtserver.service",
        "log_time": 1_700_000_000.25,
        "name": "n1",
        "port": 8000,
        "ratio": float("nan"),
        "where": object(),
        "hmac_secret_key": "s3cr3t",
        "api_key": "k3y",
        "password": "pw",
        "token": "tok",
    }
    record = logs.json_record(event)
    assert record["time"] == "2023-11-14T22:13:20.250Z"
    assert record["level"] == "warn"
    assert record["logger"] == "rtserver.service"
    assert record["message"] == "node n1 started on 8000"
    assert record["name"] == "n1" and record["port"] == 8000 and record["ratio"] == "nan"
    assert record["where"].startswith("<object")
    text = json.dumps(record)
    for secret in ("s3cr3t", "k3y", "pw", "tok"):
        assert secret not in text


def test_record_levels_and_failure() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    for level, name in ((LogLevel.debug, "debug"), (LogLevel.critical, "fatal")):
        record = logs.json_record(
            {"log_format": "x", "log_level": level, "log_time": 0, "log_failure": failure}
        )
        assert record["level"] == name
        assert "ValueError: boom" in record["error"]
    assert logs.json_record({"log_format": "y" * 5000, "long": "z" * 5000})["long"].endswith("...")


def test_observer_writes_one_line_per_event() -> None:
    out = io.StringIO()
    observer = logs.JSONLogObserver(out)
    observer({"log_format": "a\nb", "log_level": LogLevel.info, "log_time": 0})
    observer({"log_format": "c", "log_level": LogLevel.error, "log_time": 0})
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["a\nb", "c"]


def test_json_observer_writes_to_stdout_without_a_logfile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for logfile in (None, "-"):
        logs.set_json_output(logfile)
        logs.json_observer()({"log_format": "to stdout", "log_time": 0})
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["to stdout", "to stdout"]


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"log\.format: unknown format 'xml'"):
        rtconfig.from_mapping({"log": {"format": "xml"}})
    assert rtconfig.from_mapping({"log": {"format": "json"}}).log.format == "json"


def test_twistd_writes_json_lines(tmp_path: Path) -> None:
    secret, api_key = "s-" + uuid.uuid4().hex, "k-" + uuid.uuid4().hex
    config = merge(base_config(secret, api_key), {"log": {"level": "info", "format": "json"}})
    server = spawn_server(tmp_path, config, secret=secret, api_key=api_key)
    try:
        session = requests.Session()
        session.trust_env = False
        reply = session.post(
            f"{server.url}/api/publish",
            json={"channel": "c", "data": {}},
            headers={"X-API-Key": api_key},
            timeout=5,
        )
        assert "result" in reply.json()
    finally:
        stop_server(server)
    lines = [line for line in server.log(10**9).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    (start,) = [
        r for r in records if r["logger"] == "rtserver.service" and "listening" in r["message"]
    ]
    assert start["level"] == "info" and start["engine"] == "memory engine"
    assert any(r["message"].startswith("twistd") for r in records)
    text = "\n".join(lines)
    assert secret not in text and api_key not in text


def test_reload_keeps_the_format_and_says_so() -> None:
    """log.format needs a restart: a reload applies log.level and reports the format."""
    from typing import Any

    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from rtserver.service import Reloader, build_node, build_sites

    cfg = rtconfig.from_mapping({"http_api": {"key": "a"}})
    clock = Clock()
    node = build_node(cfg, clock)
    sites = build_sites(node, cfg, clock)
    new = rtconfig.from_mapping(
        {"http_api": {"key": "a"}, "log": {"level": "warn", "format": "json"}}
    )
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "rtserver.service":
            seen.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observe)
    try:
        assert Reloader(node, sites, lambda: (new, []), clock).reload()
    finally:
        globalLogPublisher.removeObserver(observe)
        logs.set_level("info")
    assert seen == ["config reloaded, but changes to log.format need a restart"]
    assert node.config.log.level == "warn" and node.config.log.format == "text"
