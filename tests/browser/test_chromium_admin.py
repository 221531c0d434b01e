"""The admin web UI in a real headless Chromium against two real ``twistd rtserver`` nodes.

The nodes share a real ``redis-server`` and run the config ``rtserver genconfig`` wrote
(its generated password and secrets), with the Redis engine added. centrifuge-js clients
(Node, ``tests/interop/js/follow.mjs``) subscribe to a channel: alice on node A, bob on
node B. The driver (``admin_driver.mjs``) acts as an operator on node A: every admin API
is 401 before login, a wrong password is refused, the printed password shows the status
page with both nodes (node B's client appears there live); the channel inspector follows
the channel, sees carol join on node B and the presence of all three, and receives what
the actions page publishes and what its own Publish button sends (the README's quick
start), which the three JS clients receive too; the connections page sums the cluster
while they stay connected; logging out ends the session.

Screenshots of each page land in the test's temporary directory, or in
``RTSERVER_ADMIN_SCREENSHOTS`` when set (``scripts/admin_screenshots.sh`` refreshes the
copies in ``docs/_static/`` that way).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    INTEROP_DIR,
    NodeScenario,
    Server,
    base_config,
    merge,
    spawn_server,
    stop_server,
)
from redisserver import RedisServer, require_redis_server

from rtserver.cli import main as rtserver_cli

pytestmark = [
    pytest.mark.interop, pytest.mark.browser, pytest.mark.redis, pytest.mark.timeout(90)
]

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "admin_driver.mjs"
FOLLOW = INTEROP_DIR / "js" / "follow.mjs"
PAGES = ("admin-login", "admin-status", "admin-actions", "admin-channel", "admin-connections")


@dataclass
class Cluster:
    nodes: dict[str, Server]
    password: str


@pytest.fixture
def cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cluster]:
    """Nodes ``node-a`` and ``node-b`` on one Redis, with the config genconfig wrote."""
    generated = tmp_path / "generated.json"
    assert rtserver_cli(["genconfig", "-c", str(generated)]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"admin password:\s+(\S+)", printed)
    assert match, printed
    config = json.loads(generated.read_text(encoding="utf-8"))
    assert config["admin"]["enabled"] is True
    secret = config["client"]["token"]["hmac_secret_key"]
    api_key = config["http_api"]["key"]
    redis = RedisServer(binary=require_redis_server()).start()
    config = merge(
        merge(base_config(secret, api_key), config),
        {
            "log": {"level": "info"},
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
        yield Cluster(nodes, match.group(1))
    finally:
        for server in nodes.values():
            stop_server(server)
        redis.stop()


def test_operator_logs_in_sees_both_nodes_publishes_and_watches(
    browser_node: str, chromium: Path, cluster: Cluster, tmp_path: Path
) -> None:
    """Login, both nodes, publish from the actions page, see it in the inspector and in JS."""
    shots = Path(os.environ.get("RTSERVER_ADMIN_SCREENSHOTS") or tmp_path / "screenshots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "profile"
    profile.mkdir()
    channel = "news"  # a fresh Redis server and key prefix: nothing else uses it
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    followers: dict[str, NodeScenario] = {}

    def follow(user: str, server: Server) -> str:
        env = {"WS_URL": server.ws_url, "TOKEN": server.token(user), "CHANNEL": channel,
               "COUNT": "2"}
        followers[user] = NodeScenario(browser_node, FOLLOW, env, timeout=80.0)
        return str(followers[user].expect("subscribed")["id"])

    try:
        client_ids = {"alice": follow("alice", node_a), "bob": follow("bob", node_b)}
        driver = NodeScenario(
            browser_node, DRIVER,
            {
                "CHROMIUM": str(chromium),
                "USER_DATA_DIR": str(profile),
                "ADMIN_URL": node_a.url + "/",
                "PASSWORD": cluster.password,
                "CHANNEL": channel,
                "NODE_NAMES": "node-a,node-b",
                "PRESENCE": "3",
                "CLIENTS": "3",
                "SCREENSHOT_DIR": str(shots),
                "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
            },
            timeout=60.0,
        )
        try:
            driver.expect(lambda e: e.get("step") == "following" or "fatal" in e, timeout=40.0)
            client_ids["carol"] = follow("carol", node_b)  # joins while the page follows
            events = driver.finish(timeout=70.0)
        finally:
            driver.close()
        for js in followers.values():
            js.expect("received")
            js.send("close")
        received = {user: js.finish(timeout=10.0) for user, js in followers.items()}
    finally:
        for js in followers.values():
            js.close()

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

    anonymous = steps["anonymous"]["statuses"]
    assert set(anonymous.values()) == {401}, anonymous
    assert len(anonymous) == 13 + 3  # every server API method, /admin/api, status, channel
    assert steps["wrong-password"]["text"] == "Wrong password."
    assert steps["wrong-password"]["appHidden"] is True

    rows = steps["status"]["rows"]
    by_name = {row[0].removesuffix(" (this node)"): row for row in rows}
    assert set(by_name) == {"node-a", "node-b"}
    assert by_name["node-a"][0] == "node-a (this node)"
    assert all(row[1] for row in rows)  # version
    # Name, Version, Uptime, Clients, Users, Subscriptions, Channels: one JS client each.
    assert [by_name[name][3:6] for name in ("node-a", "node-b")] == [["1", "1", "1"]] * 2, rows
    assert "redis (healthy)" in steps["status"]["summary"]

    reply = json.loads(steps["reply"]["text"])["result"]  # history is on: a position
    assert reply["offset"] == 1 and reply["epoch"]
    pubs = [text for kind, text in steps["inspector"]["events"] if kind == "pub"]
    assert pubs == ['{"text":"hello from the actions page"} #1', '{"text":"hello"} #2']
    assert steps["quick-publish"]["result"] == "published #2"
    joins = [text for kind, text in steps["inspector"]["events"] if kind == "join"]
    assert joins == [f"carol {client_ids['carol']}"]  # from node B, through Redis
    presence = {client: user for client, user in steps["inspector"]["presence"]}
    assert presence == {client_id: user for user, client_id in client_ids.items()}

    for user, js_events in received.items():
        pubs = [(e["data"], e["offset"]) for e in js_events if e.get("event") == "publication"]
        assert pubs == [({"text": "hello from the actions page"}, 1), ({"text": "hello"}, 2)], user

    assert set(received) == {"alice", "bob", "carol"}
    totals = dict(zip(*[iter(steps["connections"]["totals"])] * 2, strict=True))
    assert totals["Clients in the cluster"] == "3", totals
    assert totals["Users in the cluster"] == "3", totals
    assert totals["Open connections on this node"] == "1", totals
    assert steps["connections"]["transports"] == [["websocket", "1"]]
    calls = {row[0]: row for row in steps["connections"]["api"]}
    assert calls["publish"][1] == "2" and calls["publish"][3] == "0", calls
    assert calls["info"][1] == "1", calls

    assert steps["logout"] == {"step": "logout", "status": 401, "token": 0}
    for name in PAGES:
        assert (shots / f"{name}.png").stat().st_size > 1000
