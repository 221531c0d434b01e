"""SIGHUP reload of a running ``twistd rtserver``: new keys and options, old connections kept.

The config file is rewritten while a centrifuge-python client is connected: a new HMAC
key, a new API key, a new namespace and history turned on for an existing one. After
SIGHUP the old connection still receives publications, a token signed with the new key
connects and one with the old key is refused (3500), the API takes only the new key and
the namespaces behave as the new file says. A broken file is then refused with a log
line and everything keeps working as before.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import requests
from harness import Server, base_config, merge, spawn_server, stop_server
from pysdk import Recorder, run_scenario, sdk_client, subscribed

RELOAD_TIMEOUT = 10.0


def _token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


def _api(server: Server, key: str, method: str, params: dict[str, Any]) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    try:
        return session.post(
            f"{server.url}/api/{method}", json=params, headers={"X-API-Key": key}, timeout=5
        )
    finally:
        session.close()


def _sighup_and_wait(server: Server, line: str) -> None:
    """Send SIGHUP and wait until the log shows ``line`` once more than before."""
    before = server.log(10**9).count(line)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while server.log(10**9).count(line) <= before:
        assert time.monotonic() < deadline, f"no {line!r} after SIGHUP:\n{server.log()}"
        time.sleep(0.05)


def _config(secret: str, api_key: str, **extra: Any) -> dict[str, Any]:
    return merge(base_config(secret, api_key), {"log": {"level": "info"}, **extra})


def test_sighup_applies_keys_and_namespaces_and_keeps_connections(tmp_path: Path) -> None:
    """Keys, API key and namespaces change on SIGHUP; connected clients stay.

    A broken file is then refused and the running configuration stays.
    """
    old_secret, old_key = "old-" + uuid.uuid4().hex, "old-api-" + uuid.uuid4().hex
    new_secret, new_key = "new-" + uuid.uuid4().hex, "new-api-" + uuid.uuid4().hex
    namespaces = base_config(old_secret, old_key)["channel"]["namespaces"]
    plain_ns = {"name": "plain", "allow_subscribe_for_client": True}
    server = spawn_server(
        tmp_path,
        _config(old_secret, old_key, channel={"namespaces": [*namespaces, plain_ns]}),
        secret=old_secret,
        api_key=old_key,
    )
    config_file = tmp_path / "server.json"
    channel = "room" + uuid.uuid4().hex[:8]
    try:
        assert _api(server, old_key, "history", {"channel": "plain:x"}).json()["error"]["code"] == 108
        assert _api(server, old_key, "publish", {"channel": "fresh:x", "data": {}}).json()[
            "error"
        ]["code"] == 102
        rec = Recorder()

        async def scenario() -> None:
            async with subscribed(server, channel, rec, token=_token(old_secret, "kept")):
                history_ns = {**plain_ns, "history_size": 10, "history_ttl": "60s"}
                config_file.write_text(json.dumps(_config(new_secret, new_key, channel={
                    "namespaces": [*namespaces, history_ns, {"name": "fresh"}]})))
                await asyncio.to_thread(_sighup_and_wait, server, "config reloaded")

                # the connection made with the old key is still served
                reply = await asyncio.to_thread(
                    _api, server, new_key, "publish", {"channel": channel, "data": {"n": 1}}
                )
                assert "result" in reply.json()
                await rec.wait("publication", data={"n": 1})
                assert not rec.find("disconnected")

                # new connections: the new key is accepted, the old one refused
                fresh, _ = sdk_client(server, rec, token=_token(new_secret, "new"), label="new")
                await fresh.connect()
                await rec.wait("connected", client="new")
                await fresh.disconnect()
                stale, _ = sdk_client(server, rec, token=_token(old_secret, "old"), label="old")
                await stale.connect()
                (refused,) = await rec.wait("disconnected", client="old")
                assert refused["code"] == 3500
                await stale.disconnect()

                # a broken file is refused: everything stays as the last good one
                config_file.write_text('{"client": {"ping_interval": "1s", "pong_timeout": "5s"}}')
                await asyncio.to_thread(_sighup_and_wait, server, "config reload refused")
                again, _ = sdk_client(server, rec, token=_token(new_secret, "again"), label="again")
                await again.connect()
                await rec.wait("connected", client="again")
                await again.disconnect()

        run_scenario(scenario())
        assert _api(server, old_key, "info", {}).status_code == 401
        assert _api(server, new_key, "publish", {"channel": "fresh:x", "data": {}}).json() == {
            "result": {}
        }
        assert "result" in _api(server, new_key, "history", {"channel": "plain:x"}).json()
        log = server.log(10**9)
        assert "pong_timeout: must be less than client.ping_interval" in log
        assert new_secret not in log and new_key not in log
    finally:
        stop_server(server)


def test_sections_that_need_a_restart_are_reported_not_applied() -> None:
    """A changed port or transport is logged as needing a restart and left as is.

    The reloadable parts of the same file apply.
    """
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from rtserver import config as rtconfig
    from rtserver.service import Reloader, build_node, build_sites

    cfg = rtconfig.from_mapping({"http_api": {"key": "a"}})
    clock = Clock()
    node = build_node(cfg, clock)
    sites = build_sites(node, cfg, clock)
    new = rtconfig.from_mapping(
        {"http_api": {"key": "b"}, "http_server": {"port": 9999}, "sse": {"enabled": True}}
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
    assert seen == ["config reloaded, but changes to http_server, sse need a restart"]
    assert node.config.http_server.port == 8000 and not node.config.sse.enabled
    assert node.config.http_api.key == "b"
    assert sites.api is not None and sites.api.authorized([b"b"])
    assert not sites.api.authorized([b"a"])
