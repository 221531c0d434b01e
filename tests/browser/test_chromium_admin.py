"""The admin web UI in a real headless Chromium against two real ``twistd rtserver`` nodes.

The nodes share a real ``redis-server``. The driver (``admin_driver.mjs``) acts as an
operator on node A: every admin API is 401 before login, a wrong password is refused,
the right one shows the status page with both nodes, a channel followed in the inspector
shows the presence of a centrifuge-python client connected to node B and receives what
the actions page publishes, which that client receives too; logging out ends the
session. Screenshots of each
page land in the test's temporary directory (``RTSERVER_ADMIN_SCREENSHOTS`` picks
another), never in the repository.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysdk
import pytest
from harness import NodeScenario, Server, base_config, merge, spawn_server, stop_server
from pysdk import Recorder, bounded, in_thread, run_scenario, sdk_client, subscribe
from redisserver import RedisServer, require_redis_server

pytestmark = [pytest.mark.interop, pytest.mark.browser, pytest.mark.timeout(90)]

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "admin_driver.mjs"
PASSWORD = "admin-" + uuid.uuid4().hex[:12]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Server]]:
    """Nodes ``node-a`` and ``node-b`` with the admin UI on, sharing one Redis."""
    redis = RedisServer(binary=require_redis_server()).start()
    secret, api_key = "browser-" + uuid.uuid4().hex, "api-" + uuid.uuid4().hex
    config = merge(
        base_config(secret, api_key),
        {
            "log": {"level": "info"},
            "admin": {"enabled": True, "password": PASSWORD, "secret": uuid.uuid4().hex},
            "engine": {
                "type": "redis",
                "redis": {"address": [redis.address], "prefix": "a" + uuid.uuid4().hex[:8]},
            },
        },
    )
    nodes: dict[str, Server] = {}
    try:
        for label in ("node-a", "node-b"):
            nodes[label] = spawn_server(
                tmp_path, {**config, "node": {"name": label}}, secret=secret,
                api_key=api_key, log_name=f"{label}.log",
            )
        yield nodes
    finally:
        for server in nodes.values():
            stop_server(server)
        redis.stop()


def _run(node: str, env: dict[str, str]) -> list[dict[str, Any]]:
    driver = NodeScenario(node, DRIVER, env, timeout=60.0)
    try:
        events = driver.finish(timeout=70.0)
    finally:
        driver.close()
    return events


@pytest.fixture(autouse=True)
def _longer_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium start-up plus four pages take longer than an SDK-only scenario."""
    monkeypatch.setattr(pysdk, "SCENARIO_TIMEOUT", 80.0)


def test_operator_logs_in_sees_both_nodes_publishes_and_watches(
    browser_node: str, chromium: Path, cluster: dict[str, Server], tmp_path: Path
) -> None:
    """Login, status of both nodes, publish from the actions page, see it in the inspector."""
    shots = Path(os.environ.get("RTSERVER_ADMIN_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "profile"
    profile.mkdir()
    channel = "admin" + uuid.uuid4().hex[:8]
    env = {
            "CHROMIUM": str(chromium),
            "USER_DATA_DIR": str(profile),
            "ADMIN_URL": cluster["node-a"].url + "/",
            "PASSWORD": PASSWORD,
            "CHANNEL": channel,
            "NODE_NAMES": "node-a,node-b",
            "SCREENSHOT_DIR": str(shots),
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
    }
    rec = Recorder()

    async def scenario() -> list[dict[str, Any]]:
        b = cluster["node-b"]
        client, _ = sdk_client(b, rec, token=b.token("watched-user"))
        sub = subscribe(client, channel, rec)
        await client.connect()
        await sub.subscribe()
        await bounded(sub.ready())
        try:
            events = await in_thread(_run, browser_node, env)
            await rec.wait("publication")
        finally:
            await client.disconnect()
        return events

    events = run_scenario(scenario())
    steps = {e["step"]: e for e in events if "step" in e}
    # the browser logs the 401s this test provokes (anonymous calls, wrong password)
    problems = [
        e for e in events
        if "fatal" in e
        or e.get("step") == "pageerror"
        or (e.get("step") == "console" and "status of 401" not in e["text"])
    ]
    assert not problems, events
    assert events[-1] == {"done": True}, events

    assert set(steps["anonymous"]["statuses"].values()) == {401}
    assert steps["wrong-password"]["text"] == "Wrong password."
    assert steps["wrong-password"]["appHidden"] is True

    rows = steps["status"]["rows"]
    by_name = {row[0].removesuffix(" (this node)"): row for row in rows}
    assert set(by_name) == {"node-a", "node-b"}
    assert by_name["node-a"][0] == "node-a (this node)"
    assert all(row[1] for row in rows)  # version
    assert "redis (healthy)" in steps["status"]["summary"]

    reply = json.loads(steps["reply"]["text"])["result"]  # history is on: a position
    assert reply["offset"] == 1 and reply["epoch"]
    pubs = [text for kind, text in steps["inspector"]["events"] if kind == "pub"]
    assert pubs == ['{"text":"hello from the actions page"} #1']
    (presence,) = steps["inspector"]["presence"]
    assert presence[1] == "watched-user"
    (received,) = rec.find("publication")
    assert received["data"] == {"text": "hello from the actions page"}

    assert steps["logout"] == {"step": "logout", "status": 401, "token": 0}
    for name in ("admin-login", "admin-status", "admin-actions", "admin-channel"):
        assert (shots / f"{name}.png").stat().st_size > 1000
