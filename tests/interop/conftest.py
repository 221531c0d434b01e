"""Interop fixtures: a real ``twistd -n rtserver`` process and drivers for the official clients.

The server runs as a subprocess on a free loopback port with a config written for these tests
(see ``_server_config``). Node scenarios (``js/*.mjs``) are run by ``run_js``; they print one JSON
object per line and read one command per line from stdin when the Python side has to act mid-way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from interop_support import EXPIRED_CLOSE_DELAY, HERE, NodeScenario, Server

REPO_ROOT = HERE.parents[1]
JS_DIR = HERE / "js"
NODE_MODULES = HERE / "node_modules"
SERVER_START_TIMEOUT = 15.0
SERVER_STOP_TIMEOUT = 10.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``interop``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


# --- the server process ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _twistd() -> str:
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if found is None:
        pytest.fail(f"no twistd next to {sys.executable} nor on PATH")
    return found


def _server_config(secret: str, api_key: str) -> dict[str, Any]:
    history = {"history_size": 100, "history_ttl": "300s", "force_recovery": True}
    return {
        "log": {"level": "debug"},
        "client": {
            "token": {"hmac_secret_key": secret},
            # Node's ws sends no Origin header; keep the strict default.
            "allowed_origins": [],
            "expired_close_delay": f"{EXPIRED_CLOSE_DELAY:g}s",
        },
        "http_api": {"key": api_key},
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "presence": True,
                "join_leave": True,
                "force_push_join_leave": True,
                "allow_history_for_subscriber": True,
                "allow_presence_for_subscriber": True,
                **history,
            },
            "namespaces": [
                # Clients may subscribe but never publish: publish → 103.
                {"name": "ro", "allow_subscribe_for_client": True, **history},
                {
                    "name": "chat",
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_subscriber": True,
                    **history,
                },
            ],
        },
    }


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    session = requests.Session()
    session.trust_env = False
    last_error = "no attempt"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"rtserver exited with {proc.returncode} during start-up; log:\n"
                    + log.read_text(errors="replace")
                )
            try:
                response = session.get(url + "/health", timeout=1.0)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except requests.RequestException as e:
                last_error = f"{type(e).__name__}"
            time.sleep(0.1)
    finally:
        session.close()
    raise RuntimeError(
        f"rtserver did not answer GET /health within {SERVER_START_TIMEOUT:g}s "
        f"(last: {last_error}); log:\n" + log.read_text(errors="replace")
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
            raise AssertionError(
                f"rtserver ignored SIGTERM for {SERVER_STOP_TIMEOUT:g}s and was killed"
            ) from None
    return proc.returncode


@pytest.fixture(scope="session")
def rt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``twistd -n rtserver`` on a free loopback port, stopped at session end."""
    workdir = tmp_path_factory.mktemp("rtserver")
    secret = "interop-" + uuid.uuid4().hex  # 40 bytes: PyJWT warns below 32
    api_key = "api-" + uuid.uuid4().hex
    cfg = workdir / "config.json"
    cfg.write_text(json.dumps(_server_config(secret, api_key), indent=2), encoding="utf-8")
    port = _free_port()
    log_path = workdir / "server.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    # Environment overrides of the config would make the server differ from the file.
    for name in list(env):
        if name.startswith(("RTSERVER_", "CENTRIFUGO_")):
            del env[name]
    cmd = [
        _twistd(),
        "-n",
        "--pidfile=",
        "rtserver",
        "--config",
        str(cfg),
        "-l",
        f"tcp:{port}:interface=127.0.0.1",
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    server = Server(
        url=base,
        ws_url=f"ws://127.0.0.1:{port}/connection/websocket",
        api_url=f"{base}/api",
        api_key=api_key,
        secret=secret,
        log_path=log_path,
        process=proc,
    )
    try:
        _wait_healthy(proc, base, log_path)
    except BaseException:
        _stop(proc)
        raise
    try:
        yield server
    finally:
        server.close_clients()
        code = _stop(proc)
    # twistd ends by re-raising the signal that stopped it: -SIGTERM is a clean exit.
    assert code in (0, -signal.SIGTERM), f"rtserver exited with {code}; log:\n{server.log()}"
    assert "Server Shut Down." in server.log(), server.log()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the server log tail to a failing interop test."""
    report = yield
    server = getattr(item, "funcargs", {}).get("rt_server")
    if report.failed and isinstance(server, Server):
        report.sections.append(("rtserver log (tail)", server.log(8000)))
    return report


# --- Node -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node() -> str:
    """Path of ``node``; skip without it (fail if ``RTSERVER_REQUIRE_ALL`` is set)."""
    path = shutil.which("node")
    reason = ""
    if path is None:
        reason = "node (Node.js 20+) is not installed: the centrifuge-js interop tests need it"
    else:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        major = version.lstrip("v").split(".")[0]
        if not major.isdigit() or int(major) < 20:
            reason = f"node {version or '?'} is too old: the centrifuge-js interop tests need 20+"
    if reason:
        if os.environ.get("RTSERVER_REQUIRE_ALL"):
            pytest.fail(reason + " (RTSERVER_REQUIRE_ALL is set)", pytrace=False)
        pytest.skip(reason)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def node_modules(node: str) -> Path:
    """``tests/interop/node_modules`` with the pinned clients; fail clearly if not installed."""
    for package in ("centrifuge", "ws"):
        if not (NODE_MODULES / package / "package.json").is_file():
            pytest.fail(
                f"{NODE_MODULES / package} is missing: run npm ci --prefix tests/interop",
                pytrace=False,
            )
    return NODE_MODULES


@pytest.fixture
def run_js(
    node: str, node_modules: Path, rt_server: Server
) -> Iterator[Callable[..., NodeScenario]]:
    """Start ``js/<name>.mjs`` with ``WS_URL`` and the given env; killed at teardown."""
    started: list[NodeScenario] = []

    def start(name: str, timeout: float = 20.0, **env: Any) -> NodeScenario:
        values = {"WS_URL": rt_server.ws_url}
        values.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
        scenario = NodeScenario(node, JS_DIR / f"{name}.mjs", values, timeout)
        started.append(scenario)
        return scenario

    yield start
    for scenario in started:
        scenario.close()
