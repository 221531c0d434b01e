"""centrifuge-js 5.7.4 in Node over SockJS (sockjs-client 1.6.1), one SockJS transport at a time.

In Node, sockjs-client can use ``xhr-streaming`` and ``xhr-polling`` (and websocket); each
scenario forces one with the ``transports`` option, so a connection can only succeed through
it. The server is a real ``twistd -n rtserver`` process with ``sockjs.enabled``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import NodeScenario, Server, run_server
from interop_support import unique

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def rt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An rtserver with the SockJS endpoint on."""
    overrides = {"sockjs": {"enabled": True}}
    with run_server(tmp_path_factory.mktemp("rtserver-sockjs"), overrides) as server:
        yield server


@pytest.mark.parametrize("transport", ["xhr-streaming", "xhr-polling"])
def test_sockjs_pubsub_and_recovery(
    rt_server: Server, run_js: Callable[..., NodeScenario], node_modules: Path, transport: str
) -> None:
    """JWT connect, subscribe, API publications, then recovery of missed ones after reconnect."""
    if not (node_modules / "sockjs-client" / "package.json").is_file():
        pytest.fail("sockjs-client is missing: run npm ci --prefix tests/interop", pytrace=False)
    user, channel = unique("sockjs-u-"), unique("sockjs-ch-")
    live, missed = 2, 3
    js = run_js(
        "sockjs_recover",
        BASE_URL=rt_server.url,
        SOCKJS_TRANSPORT=transport,
        TOKEN=rt_server.token(user),
        CHANNEL=channel,
        LIVE=str(live),
        MISSED=str(missed),
    )
    js.run_recovery(
        rt_server.publish, channel, live=live, missed=missed, transport=f"sockjs-{transport}"
    )
