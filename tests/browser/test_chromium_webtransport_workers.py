"""centrifuge-js in headless Chromium over WebTransport to ``twistd rtserver --workers 2``.

Twelve clients in one page, a QUIC connection each (from its own UDP port), land on both
workers (``info`` counts them per node); a publication made through the HTTP API reaches
every one. Each worker is then killed with SIGKILL once, the busier first, while the
clients send a command: the killed worker's clients are reset by its successor and
reconnect, once each, over WebTransport again (not the WebSocket fallback the page also
lists) and recover what was published meanwhile; the other worker's clients stay
connected; once the successor serves, every connection answers a command (its datagrams
still reach the worker that holds it: before the supervisor kept the workers' sockets, a
restart reordered the kernel's socket group and the other worker's clients lost their
connections here); every client receives every publication once and in order.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import cent
import pytest
from harness import (
    NodeScenario,
    Server,
    base_config,
    free_udp_port,
    make_certificate,
    merge,
    spawn_server,
    stop_server,
)
from pages import CENTRIFUGE_BROWSER_BUILD, HTML, JS, PAGE_DIR, serve_pages
from redisserver import RedisServer, require_redis_server

pytestmark = [
    pytest.mark.interop, pytest.mark.browser, pytest.mark.redis, pytest.mark.timeout(90)
]

DRIVER = Path(__file__).resolve().parent / "chromium_driver.mjs"
ROUTES = {
    "/": (PAGE_DIR / "webtransport-workers.html", HTML),
    "/webtransport-workers.js": (PAGE_DIR / "webtransport-workers.js", JS),
    "/centrifuge.js": (CENTRIFUGE_BROWSER_BUILD, JS),
}
#: Clients in the page: all on one worker by chance with probability 2 / 2**12.
CLIENTS = 12
TIMEOUT = 20.0


def wait_until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` until it returns a truthy value (another process: nothing to await)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except cent.CentError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def nodes(server: Server) -> dict[str, int]:
    """Node name -> its number of clients, as ``info`` tells."""
    return {n.name: n.num_clients for n in server.cent_client.info(cent.InfoRequest()).nodes}


def worker_pids(server: Server) -> dict[int, int]:
    """``--worker-index`` -> pid of each of the supervisor's children."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(server.process.pid)],
        capture_output=True, text=True, check=False,
    ).stdout
    found: dict[int, int] = {}
    for pid in map(int, out.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if b"--worker-index" in argv:  # (not yet: forked, before exec)
            found[int(argv[argv.index(b"--worker-index") + 1])] = pid
    return found


def restarted(server: Server, index: int, old: int) -> bool:
    """Whether worker ``index`` runs again, in a process other than ``old``."""
    now = worker_pids(server)
    return len(now) == 2 and now.get(index, old) != old


def serving(server: Server, starts: int) -> bool:
    """Whether workers started serving HTTP/3 ``starts`` times (2 at start, 1 per restart)."""
    return server.log(tail=10**8).count("HTTP/3 (WebTransport) on UDP port") == starts


def publish(server: Server, data: Any) -> None:
    """Publish into ``news``; again when the kept-alive API connection was to a dead worker."""
    for _ in range(3):
        try:
            server.publish("news", data)
            return
        except cent.CentNetworkError:  # reset before an answer: the request was not read
            continue
    server.publish("news", data)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Server, int, bytes]]:
    """``--workers 2`` on one Redis with HTTP/3 and WebTransport on; the UDP port, cert hash."""
    redis = RedisServer(binary=require_redis_server()).start()
    cert, key, digest = make_certificate(tmp_path / "tls", days=10)
    udp_port = free_udp_port()
    secret = "wtw-" + uuid.uuid4().hex + uuid.uuid4().hex
    api_key = "api-" + uuid.uuid4().hex
    config = merge(
        base_config(secret, api_key),
        {
            "log": {"level": "info"},
            "node": {"name": "w"},
            "engine": {
                "type": "redis",
                "redis": {"address": [redis.address], "prefix": "w" + uuid.uuid4().hex[:8]},
            },
            "http_server": {
                "port": udp_port,
                "address": "127.0.0.1",
                "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
                "http3": {"enabled": True},
            },
            "webtransport": {"enabled": True},
            "client": {"allowed_origins": ["*"]},
        },
    )
    try:
        server = spawn_server(
            tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
        )
        server.expect_logged_failure(
            r"unsubscribe \S+ failed.*RedisUnavailable: [^\n]*connection lost"
        )
        try:
            wait_until(lambda: len(nodes(server)) == 2, "info lists both workers")
            yield server, udp_port, digest
        finally:
            stop_server(server)
    finally:
        redis.stop()


def _of(events: list[dict[str, Any]], name: str, client: int) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name and e.get("client") == client]


def test_js_webtransport_clients_on_two_workers_survive_a_killed_worker(
    workers: tuple[Server, int, bytes], browser_node: str, chromium: Path, tmp_path: Path
) -> None:
    server, udp_port, digest = workers
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with serve_pages(ROUTES) as origin:
        query = urlencode(
            {
                "wt": f"https://127.0.0.1:{udp_port}/connection/webtransport",
                "ws": server.ws_url,
                "hash": base64.b64encode(digest).decode(),
                "token": server.token("dora"),
                "channel": "news",
                "clients": str(CLIENTS),
            }
        )
        page = NodeScenario(
            browser_node,
            DRIVER,
            {
                "CHROMIUM": str(chromium),
                "CHROMIUM_QUIC": "1",
                "USER_DATA_DIR": str(profile),
                "PAGE_URL": f"{origin}/?{query}",
                "RT_URL": server.url,
                "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
            },
            timeout=80.0,
        )
        try:
            _scenario(server, page)
        finally:
            page.close()


def settled(server: Server) -> dict[str, int]:
    """``info``'s clients per node once both count ``CLIENTS`` in all, unchanged for 3.5 s.

    A node's count of another comes with that one's announcement (every 3 s).
    """
    seen: list[tuple[float, dict[str, int]]] = []

    def check() -> dict[str, int] | None:
        spread = nodes(server)
        if len(spread) != 2 or sum(spread.values()) != CLIENTS:
            seen.clear()
            return None
        now = time.monotonic()
        if seen and seen[0][1] != spread:
            seen.clear()
        seen.append((now, spread))
        return spread if now - seen[0][0] >= 3.5 else None

    result: dict[str, int] = wait_until(check, f"info counts {CLIENTS} clients on two nodes")
    return result


def _scenario(server: Server, page: NodeScenario) -> None:
    subscribed: set[int] = set()

    def all_subscribed(e: dict[str, Any]) -> bool:
        if e.get("event") == "subscribed":
            subscribed.add(e["client"])
        return len(subscribed) == CLIENTS

    page.expect(all_subscribed, timeout=TIMEOUT)
    connected = [e for e in page.events if e.get("event") == "connected"]
    assert [e["transport"] for e in connected] == ["webtransport"] * CLIENTS, connected
    spread = settled(server)
    assert all(n > 0 for n in spread.values()), spread  # both workers serve WebTransport

    got: dict[int, list[int]] = {i: [] for i in range(CLIENTS)}

    def delivered(n: int) -> Callable[[dict[str, Any]], bool]:
        def match(e: dict[str, Any]) -> bool:
            if e.get("event") == "publication":
                got[e["client"]].append(e["data"]["n"])
            return all(n in seen for seen in got.values())

        return match

    publish(server, {"n": 1})
    page.expect(delivered(1), timeout=TIMEOUT)
    # Each worker is killed once, the busier first: whatever the kernel's order of the
    # workers' sockets, one of the kills would reorder a group that workers leave and
    # join again (most client addresses would then map to the other worker's socket).
    first = max(spread, key=lambda n: spread[n])
    n, rounds = 1, 0
    for victim in (first, *(name for name in spread if name != first)):
        if victim != first:
            spread = settled(server)
        index = int(victim.rsplit("-", 1)[1])
        before = worker_pids(server)
        mark = len(page.events)
        os.kill(before[index], signal.SIGKILL)
        publish(server, {"n": n + 1})
        publish(server, {"n": n + 2})
        n += 2
        # every client sends a command: the killed worker's clients' packets wait in its
        # socket, where its successor answers them with a Stateless Reset (an idle client
        # sends its next packet with QUIC's keepalive, up to 15 s later in Chromium)
        page.send("call poke")
        wait_until(partial(restarted, server, index, before[index]), "the worker restarted")
        wait_until(partial(serving, server, 3 + rounds), "the restarted worker serves HTTP/3")
        rounds += 1
        page.expect(delivered(n), timeout=TIMEOUT)
        # every connection carries commands both ways, on whichever worker it is
        page.send("call ask")
        answers = page.expect(lambda e: e.get("result") == "ask")["value"]
        assert answers == ["ok"] * CLIENTS, answers
        # the killed worker's clients came back, over WebTransport, and recovered what
        # they missed; the other worker's clients were not disturbed
        after = page.events[mark:]
        reconnects = sorted(e["client"] for e in after if e.get("event") == "connecting")
        away = set(reconnects)
        assert len(away) == spread[victim], (victim, spread, reconnects)
        assert reconnects == sorted(away), reconnects  # once each
        for i in away:
            assert [e["transport"] for e in _of(after, "connected", i)] == ["webtransport"], i
            again = _of(after, "subscribed", i)
            assert [(e["wasRecovering"], e["recovered"]) for e in again] == [(True, True)]
    publish(server, {"n": n + 1})
    page.expect(delivered(n + 1), timeout=TIMEOUT)
    assert got == {i: list(range(1, n + 2)) for i in range(CLIENTS)}, got
    page.send("close")
    page.finish()
