"""Interop fixtures: a real ``twistd -n rtserver`` process and drivers for the official clients.

The server runs as a subprocess on a free loopback port with a config written for these tests
(``harness.base_config``). Node scenarios (``js/*.mjs``) are run by ``run_js``; they print one JSON
object per line and read one command per line from stdin when the Python side has to act mid-way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import NODE_MODULES, run_server
from interop_support import HERE, NodeScenario, Server

JS_DIR = HERE / "js"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``interop``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


# --- the server process ----------------------------------------------------------------


@pytest.fixture(scope="session")
def rt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``twistd -n rtserver`` on a free loopback port, stopped at session end."""
    with run_server(tmp_path_factory.mktemp("rtserver")) as server:
        yield server


#: The Protobuf suites: client publish in channels without namespace, HTTP-streaming on.
PROTOBUF_OVERRIDES: dict[str, Any] = {
    "channel": {"without_namespace": {"allow_publish_for_subscriber": True}},
    "http_stream": {"enabled": True},
    "emulation": {"enabled": True},
}


@pytest.fixture(scope="session")
def pb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``twistd -n rtserver`` for the Protobuf suites (:data:`PROTOBUF_OVERRIDES`)."""
    with run_server(tmp_path_factory.mktemp("rtserver-pb"), PROTOBUF_OVERRIDES) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the server log tail to a failing interop test."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("rt_server") or funcargs.get("pb_server")
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
