"""Fixtures for the headless-Chromium tests: page servers, an emulation rtserver, the driver.

The test page is served by small static HTTP servers on other ports than rtserver, so every
request the page makes to rtserver is cross-origin and CORS is exercised for real:

* ``allowed`` — ``http://127.0.0.1:<port A>``, listed exactly in ``client.allowed_origins``;
* ``foreign`` — ``http://127.0.0.1:<port B>``, not listed: the SDK must never connect;
* ``wildcard`` — ``http://localhost:<port B>``, admitted by the pattern ``http://localhost:*``.

Chromium is driven by ``chromium_driver.mjs`` (playwright-core from tests/interop/node_modules)
with the system binary ``/usr/bin/chromium`` (never a browser downloaded by Playwright); without
it the tests skip, or fail when ``RTSERVER_REQUIRE_ALL`` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from emulation_server import NODE_MODULES, PageServers, emulation_server
from harness import NodeScenario, Server
from pages import CENTRIFUGE_BROWSER_BUILD, HTML, JS, PAGE_DIR, serve_pages

HERE = Path(__file__).resolve().parent
#: The Debian ``chromium`` package's binary; ``RTSERVER_TEST_CHROMIUM`` may point elsewhere.
CHROMIUM = Path(os.environ.get("RTSERVER_TEST_CHROMIUM") or "/usr/bin/chromium")
DRIVER = HERE / "chromium_driver.mjs"
DRIVER_TIMEOUT = 25.0


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("RTSERVER_REQUIRE_ALL"):
        pytest.fail(reason + " (RTSERVER_REQUIRE_ALL is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system Chromium binary; skip without it (fail if ``RTSERVER_REQUIRE_ALL`` is set)."""
    if not os.access(CHROMIUM, os.X_OK):
        _skip_or_fail(f"{CHROMIUM} is not installed (Debian: apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser_node(chromium: Path) -> str:
    """``node`` 20+ with playwright-core and the centrifuge browser build installed."""
    path = shutil.which("node")
    if path is None:
        _skip_or_fail("node (Node.js 20+) is not installed: the Chromium driver needs it")
    assert path is not None
    version = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    major = version.lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        _skip_or_fail(f"node {version or '?'} is too old: the Chromium driver needs 20+")
    for needed in (NODE_MODULES / "playwright-core" / "package.json", CENTRIFUGE_BROWSER_BUILD):
        if not needed.is_file():
            pytest.fail(f"{needed} is missing: run npm ci --prefix tests/interop", pytrace=False)
    return path


# --- static page servers ----------------------------------------------------------------


PAGE_ROUTES = {
    "/": (PAGE_DIR / "index.html", HTML),
    "/page.js": (PAGE_DIR / "page.js", JS),
    "/centrifuge.js": (CENTRIFUGE_BROWSER_BUILD, JS),
}


@pytest.fixture(scope="session")
def page_servers() -> Iterator[PageServers]:
    """Two static servers on loopback ports other than rtserver's."""
    with serve_pages(PAGE_ROUTES) as origin_a, serve_pages(PAGE_ROUTES) as origin_b:
        port_b = origin_b.rsplit(":", 1)[1]
        yield PageServers(
            allowed=origin_a,
            foreign=origin_b,
            wildcard=f"http://localhost:{port_b}",
            wildcard_pattern="http://localhost:*",
        )


@pytest.fixture(scope="session")
def rt_server(
    browser_node: str, tmp_path_factory: pytest.TempPathFactory, page_servers: PageServers
) -> Iterator[Server]:
    """An rtserver with HTTP-stream/SSE; allowed origins: page server A exactly, localhost:*."""
    origins = [page_servers.allowed, page_servers.wildcard_pattern]
    with emulation_server(tmp_path_factory.mktemp("rtserver-browser"), origins) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the server log tail to a failing browser test."""
    report = yield
    server = getattr(item, "funcargs", {}).get("rt_server")
    if report.failed and isinstance(server, Server) and HERE in Path(str(item.path)).parents:
        report.sections.append(("rtserver log (tail)", server.log(8000)))
    return report


# --- the driver ---------------------------------------------------------------------------


@pytest.fixture
def run_chromium(
    browser_node: str,
    chromium: Path,
    rt_server: Server,
    tmp_path: Path,
) -> Iterator[Callable[..., NodeScenario]]:
    """Open ``<origin>/?rt=..&transport=..&token=..&channel=..`` in a fresh headless Chromium."""
    started: list[NodeScenario] = []

    def start(origin: str, transport: str, token: str, channel: str) -> NodeScenario:
        query = urlencode(
            {"rt": rt_server.url, "transport": transport, "token": token, "channel": channel}
        )
        profile = tmp_path / f"chromium-profile-{len(started)}"
        profile.mkdir()
        env = {
            "CHROMIUM": str(chromium),
            "USER_DATA_DIR": str(profile),
            "PAGE_URL": f"{origin}/?{query}",
            "RT_URL": rt_server.url,
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        }
        scenario = NodeScenario(browser_node, DRIVER, env, DRIVER_TIMEOUT)
        started.append(scenario)
        return scenario

    yield start
    for scenario in started:
        scenario.close()
