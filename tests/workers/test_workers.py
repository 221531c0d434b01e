"""``twistd rtserver --workers 2``: two worker processes on one port, one cluster.

Real processes: twistd (the supervisor and its workers), redis-server, the official
centrifuge-python and centrifuge-js clients.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cent
import pytest
import requests
from harness import (
    INTEROP_DIR,
    REPO_ROOT,
    NodeScenario,
    Server,
    _twistd,
    base_config,
    free_port,
    free_udp_port,
    make_certificate,
    merge,
    run_emulation_pubsub,
    spawn_server,
    stop_server,
)
from pysdk import (
    ClientEvents,
    Recorder,
    bounded,
    in_thread,
    name,
    run_scenario,
    sdk_client,
    subscribe,
)

TIMEOUT = 20.0


def wait_until(check: Any, what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` (a callable returning a truthy value) until it holds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, cent.CentError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def worker_pids(server: Server) -> list[int]:
    """Pids of the supervisor's children."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(server.process.pid)],
        capture_output=True, text=True, check=False,
    ).stdout
    return sorted(int(p) for p in out.split())


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def nodes(server: Server) -> dict[str, int]:
    """Node name -> its number of clients, as ``info`` tells."""
    return {n.name: n.num_clients for n in server.cent_client.info(cent.InfoRequest()).nodes}


def publish_again_on_reset(server: Server, channel: str, data: Any) -> None:
    """Publish; once more when the API client's kept-alive connection was to a killed worker.

    A reset before any answer means the dead worker never read the request.
    """
    for _ in range(3):  # the pool may hold more than one connection to the dead worker
        try:
            server.publish(channel, data)
            return
        except cent.CentNetworkError:
            continue
    server.publish(channel, data)


def counted(server: Server, count: int) -> dict[str, int]:
    """``info``'s clients per node once two nodes count ``count`` clients in all.

    The counts of other nodes come with their periodic announcements.
    """

    def check() -> dict[str, int] | None:
        spread = nodes(server)
        return spread if len(spread) == 2 and sum(spread.values()) == count else None

    result: dict[str, int] = wait_until(check, f"info counts {count} clients on two nodes")
    return result


def wait_ready(server: Server) -> None:
    """Until both workers listen and each knows the other.

    /health answers once the first worker listens; a worker that does not know the
    session's worker yet cannot forward an /emulation post to it.
    """
    wait_until(lambda: len(nodes(server)) == 2, "info lists both workers")
    joined = re.compile(r"node (\S+) \(\S+\) joined the cluster")
    wait_until(
        lambda: len(set(joined.findall(server.log()))) == 2, "each worker saw the other join"
    )


@pytest.fixture
def workers(tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]) -> Iterator[Server]:
    config, secret, api_key = redis_config
    config = {**config, "node": {"name": "w"}}
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


async def both_workers_deliver(server: Server, rec: Recorder, channel: str, count: int) -> None:
    """Subscribers ``c0``.. are on both workers, and every one gets the same publication."""
    # counts of other nodes come with their periodic announcements
    spread = await in_thread(counted, server, count)
    assert all(n > 0 for n in spread.values()), spread
    await in_thread(server.publish, channel, {"n": 1})
    got = await rec.wait("publication", count=count)
    assert sorted(e["client"] for e in got) == sorted(f"c{i}" for i in range(count))
    assert all(e["data"] == {"n": 1} for e in got)


async def subscribed_client(server: Server, rec: Recorder, token: str, channel: str,
                            label: str) -> Any:
    client, _ = sdk_client(server, rec, token=token, label=label)
    sub = subscribe(client, channel, rec, label=label)
    await client.connect()
    await sub.subscribe()
    await bounded(sub.ready())
    return client


def test_connections_spread_over_workers_and_all_deliver(workers: Server) -> None:
    """Sixteen WebSocket clients land on both workers; a publication reaches all of them."""
    channel = name("room-")
    count = 16  # all on one worker by chance: 2 / 2**16

    async def scenario() -> None:
        rec = Recorder()
        clients = [
            await subscribed_client(workers, rec, workers.token(name("u-")), channel, f"c{i}")
            for i in range(count)
        ]
        try:
            await both_workers_deliver(workers, rec, channel, count)
        finally:
            for client in clients:
                await client.disconnect()

    run_scenario(scenario())


def test_killed_worker_comes_back_and_its_clients_recover(workers: Server) -> None:
    """SIGKILL one worker: the supervisor restarts it; its clients reconnect and recover."""
    channel = name("room-")
    count = 6
    before = worker_pids(workers)
    assert len(before) == 2, before
    victim: list[int] = []

    async def scenario() -> None:
        rec = Recorder()
        clients = [
            await subscribed_client(workers, rec, workers.token(name("u-")), channel, f"c{i}")
            for i in range(count)
        ]
        try:
            await in_thread(workers.publish, channel, {"n": 1})
            await rec.wait("publication", count=count)
            # the worker serving the most clients: the kernel may have put all six on one.
            # Wait for fresh counts: another worker's count comes with its periodic
            # announcement, and a stale 0 could make the victim a worker with no clients
            spread = await in_thread(counted, workers, count)
            doomed = int(max(spread, key=lambda n: spread[n]).rsplit("-", 1)[1])
            victim.append(next(p for p in before if worker_index(p) == doomed))
            os.kill(victim[0], signal.SIGKILL)
            await rec.wait("connecting", count=count + 1)
            for i in (2, 3, 4):
                await in_thread(publish_again_on_reset, workers, channel, {"n": i})
            await rec.wait("subscribed", count=count + 1, timeout=TIMEOUT)
            resubscribed = rec.find("subscribed")[count:]
            assert resubscribed and all(
                e["was_recovering"] and e["recovered"] for e in resubscribed
            ), resubscribed
            await in_thread(publish_again_on_reset, workers, channel, {"n": 5})
            got = await rec.wait("publication", count=count * 5)
            for i in range(count):
                mine = [e["data"]["n"] for e in got if e["client"] == f"c{i}"]
                assert mine == [1, 2, 3, 4, 5], (i, mine)
        finally:
            for client in clients:
                await client.disconnect()

    run_scenario(scenario())
    def restarted() -> list[int] | None:
        pids = worker_pids(workers)
        return pids if len(pids) == 2 and victim[0] not in pids else None

    after = wait_until(restarted, "the killed worker restarted")
    assert next(p for p in before if p != victim[0]) in after  # the other one kept running
    wait_until(lambda: sorted(nodes(workers)) == ["w-0", "w-1"], "info lists both workers again")
    assert "restarting in" in workers.log()


def test_sighup_reaches_every_worker(workers: Server) -> None:
    """SIGHUP to the supervisor: each worker reloads the configuration file."""
    workers.process.send_signal(signal.SIGHUP)
    wait_until(lambda: workers.log().count("config reloaded") == 2, "both workers reloaded")
    assert len(worker_pids(workers)) == 2  # nobody died of the signal


def test_sigterm_drains_every_worker(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """SIGTERM to the supervisor: each worker sends 3001 to its clients, all exit cleanly."""
    config, secret, api_key = redis_config
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    channel = name("room-")
    wait_ready(server)
    pids = worker_pids(server)
    assert len(pids) == 2, pids
    argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
    private = Path(argv[argv.index(b"--worker-dir") + 1].decode())
    assert private.is_dir() and private.stat().st_mode & 0o777 == 0o700
    rec = Recorder()
    count = 12  # all on one worker by chance: 2 / 2**12

    async def scenario() -> None:
        clients = [
            await subscribed_client(server, rec, server.token(name("u-")), channel, f"c{i}")
            for i in range(count)
        ]
        spread = await in_thread(counted, server, count)
        assert all(n > 0 for n in spread.values()), spread
        server.process.send_signal(signal.SIGTERM)
        # 3001 (shutdown) lets clients reconnect: the SDK reports "connecting" with it.
        got = await rec.wait("connecting", count=count, timeout=TIMEOUT, code=3001)
        for client in clients:
            await client.disconnect()
        assert sorted(e["client"] for e in got) == sorted(f"c{i}" for i in range(count))

    try:
        run_scenario(scenario())
        server.process.wait(timeout=TIMEOUT)  # the supervisor exits once its workers have
    finally:
        stop_server(server)  # exit code, "Server Shut Down." and logged failures checked
    assert not [pid for pid in pids if running(pid)]
    assert not private.exists()  # the workers' private sockets are removed with them


def test_sigterm_to_every_process_at_once_stops_cleanly(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """SIGTERM to the supervisor and every worker at once: no error logged.

    systemd's default ``KillMode=control-group`` does that, so each worker gets SIGTERM
    twice (from systemd and from the supervisor); Ctrl-C reaches the whole group too. A
    second SIGTERM or SIGINT while stopping is no error.
    """
    config, secret, api_key = redis_config
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    try:
        wait_ready(server)
        pids = worker_pids(server)
        assert len(pids) == 2, pids
        for pid in (server.process.pid, *pids):
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            os.kill(pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group too
        server.process.wait(timeout=TIMEOUT)
    finally:
        stop_server(server)  # exit code, "Server Shut Down." and no logged failure

    assert "ReactorNotRunning" not in server.log(tail=10**9)
    assert not [pid for pid in pids if running(pid)]


def test_emulation_session_spans_workers(workers: Server, node_js: str) -> None:
    """centrifuge-js over http_stream on two workers: delivery, presence and publishing work.

    The stream and its /emulation posts use separate connections, so the kernel may put
    them on different workers (then the post is forwarded through the cluster).
    """
    run_emulation_pubsub(node_js, workers, workers, TIMEOUT)


def test_workers_stop_when_the_supervisor_is_killed(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """SIGKILL to the supervisor: its workers notice and drain instead of lingering."""
    config, secret, api_key = redis_config
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    pids = worker_pids(server)
    assert len(pids) == 2, pids
    argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
    private = Path(argv[argv.index(b"--worker-dir") + 1].decode())
    server.process.kill()
    server.process.wait(timeout=TIMEOUT)

    def gone() -> bool:
        return not any(running(pid) for pid in pids)

    wait_until(gone, "orphaned workers exited")
    assert server.log().count("the supervisor (pid") == 2
    assert server.log().count("Server Shut Down.") == 2  # the workers' clean exits
    assert not private.exists()  # removed by the workers in place of the supervisor


@pytest.mark.parametrize(
    ("script", "transport"),
    [("recover", "websocket"), ("emulation_recover", "http_stream")],
)
def test_js_client_reconnects_to_any_worker_and_recovers(
    workers: Server, node_js: str, script: str, transport: str
) -> None:
    """centrifuge-js reconnects to either worker and recovers what it missed, once, in order."""
    channel = name("js-rec-")
    live, missed = 2, 5
    js = NodeScenario(
        node_js,
        INTEROP_DIR / "js" / f"{script}.mjs",
        {
            "WS_URL": workers.ws_url,
            "BASE_URL": workers.url,
            "TRANSPORT": transport,
            "TOKEN": workers.token(name("u-")),
            "CHANNEL": channel,
            "MODE": "disconnect",
            "LIVE": str(live),
            "MISSED": str(missed),
        },
        timeout=30.0,
    )
    try:
        js.run_recovery(
            workers.publish, channel, live=live, missed=missed, transport=transport,
            timeout=TIMEOUT,
        )
    finally:
        js.close()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "set engine.type to redis"),
    ],
)
def test_configurations_workers_cannot_share_are_refused(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    """The memory engine with --workers 2: twistd refuses to start, saying why."""
    config = {**base_config("s" * 40, "k"), **overrides}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [_twistd(), "-n", "--pidfile=", "rtserver", "-c", str(path), "--workers", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30, check=False,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "--workers 2 cannot run this configuration" in output, output
    assert expected in output, output


@pytest.fixture
def sockjs_workers(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> Iterator[Server]:
    """``--workers 2`` with SockJS on; debug log, which names every relayed request."""
    config, secret, api_key = redis_config
    config = {
        **config,
        "node": {"name": "w"},
        "sockjs": {"enabled": True},
        "log": {"level": "debug"},
        "prometheus": {"enabled": True},
    }
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    server.expect_logged_failure(r"unsubscribe \S+ failed.*RedisUnavailable: [^\n]*connection lost")
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


RELAYED = re.compile(r"sockjs session (\S+): request relayed to worker (\d)")


def fresh_post(url: str, body: str | None = None) -> requests.Response:
    """POST on a new TCP connection (the kernel picks a worker per connection)."""
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=body, headers={"Connection": "close"}, timeout=TIMEOUT)


def test_sockjs_session_requests_on_either_worker_reach_its_owner(
    sockjs_workers: Server,
) -> None:
    """A SockJS xhr session whose every request is a new connection works on two workers.

    Each request lands on either worker; those that land on the worker not owning the
    session are relayed to its owner (the debug log names them), and the client sees
    one session: the open frame once, replies and publications in order.
    """
    server = sockjs_workers
    sid = uuid.uuid4().hex
    base = f"{server.url}/connection/sockjs/123/{sid}"
    channel = name("sj-")
    assert fresh_post(f"{base}/xhr").text == "o\n"

    def send(*commands: dict[str, Any]) -> None:
        frame = json.dumps([json.dumps(c) for c in commands])
        assert fresh_post(f"{base}/xhr_send", frame).status_code == 204

    replies: list[dict[str, Any]] = []

    def poll_until(check: Any) -> None:
        for _ in range(20):
            text = fresh_post(f"{base}/xhr").text
            assert text.endswith("\n"), text
            if text.startswith("a"):
                for message in json.loads(text[1:]):
                    replies.extend(json.loads(line) for line in message.splitlines())
            else:
                assert text == "h\n", text  # a heartbeat, never a second "o"
            if check():
                return
        raise AssertionError(f"not received: {replies}")

    send({"id": 1, "connect": {"token": server.token(name("u-"))}})
    poll_until(lambda: any(r.get("id") == 1 for r in replies))
    send({"id": 2, "subscribe": {"channel": channel, "recover": True}})
    poll_until(lambda: any(r.get("id") == 2 for r in replies))
    assert "error" not in replies[-1], replies
    for i in range(8):
        server.publish(channel, {"n": i})
    pubs: list[Any] = []

    def got_all() -> bool:
        pubs[:] = [r["push"]["pub"]["data"]["n"] for r in replies if "pub" in r.get("push", {})]
        return len(pubs) == 8

    poll_until(got_all)
    assert pubs == list(range(8))
    # A session nobody owns: 404 whichever worker the post reaches (SockJS says so).
    for _ in range(4):
        missing = fresh_post(f"{server.url}/connection/sockjs/123/{uuid.uuid4().hex}/xhr_send",
                             '["{}"]')
        assert missing.status_code == 404
    def relayed_requests() -> list[tuple[str, str]]:
        return [m for m in RELAYED.findall(server.log(tail=10**7)) if m[0] == sid]

    # The kernel hands each new connection to either worker, so the requests above may all
    # have reached the owner (about 1 run in 100): send pongs (an empty command, answered
    # by nothing) until one has crossed, 40 at most (all on the owner: 2**-40).
    for _ in range(40):
        if relayed_requests():
            break
        send({})
    relayed = relayed_requests()
    assert relayed, "no request of the session reached the worker not owning it"
    assert len({owner for _, owner in relayed}) == 1  # one owner for the whole session
    # /metrics of the worker that relayed counts them (each scrape reaches either worker).
    counts = set()
    for _ in range(12):
        with requests.Session() as session:
            session.trust_env = False
            text = session.get(f"{server.url}/metrics", timeout=TIMEOUT).text
        found = re.search(r"^rtserver_sockjs_relayed_requests_total (\S+)$", text, re.M)
        assert found, text
        counts.add(float(found.group(1)))
    assert max(counts) >= 1, counts


@pytest.mark.parametrize("transport", ["xhr-polling", "xhr-streaming"])
def test_js_sockjs_client_on_two_workers_delivers_and_recovers(
    sockjs_workers: Server, node_js: str, transport: str
) -> None:
    """centrifuge-js over SockJS, every request on a new connection, on two workers.

    Its polls, streams and sends land on either worker: those reaching the worker that
    does not own the session are relayed (the log names them; a streaming session makes
    too few requests to be sure one crosses), and the client receives
    every publication once, in order, and recovers the ones it missed while away.
    """
    server = sockjs_workers
    if not (INTEROP_DIR / "node_modules" / "sockjs-client" / "package.json").is_file():
        pytest.fail("sockjs-client is missing: run npm ci --prefix tests/interop", pytrace=False)
    channel = name("js-sj-")
    live, missed = 2, 5
    js = NodeScenario(
        node_js,
        INTEROP_DIR / "js" / "sockjs_recover.mjs",
        {
            "BASE_URL": server.url,
            "SOCKJS_TRANSPORT": transport,
            "FRESH_CONNECTIONS": "1",
            "TOKEN": server.token(name("u-")),
            "CHANNEL": channel,
            "LIVE": str(live),
            "MISSED": str(missed),
        },
        timeout=30.0,
    )
    try:
        js.run_recovery(
            server.publish, channel, live=live, missed=missed, transport=f"sockjs-{transport}",
            timeout=TIMEOUT,
        )
    finally:
        js.close()
    if transport == "xhr-polling":  # a dozen polls and sends: some reach the other worker
        relayed = RELAYED.findall(server.log(tail=10**7))
        assert relayed, "no SockJS request reached the worker not owning its session"


def worker_index(pid: int) -> int:
    """The ``--worker-index`` of worker process ``pid``."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--worker-index") + 1])


#: Log lines naming a request that reached a worker other than its session's.
CROSSED = {
    "sockjs": RELAYED,
    "http_stream": re.compile(r"emulation session (\S+): commands forwarded to node (\S+)"),
}


@pytest.mark.parametrize("transport", ["websocket", "http_stream", "sockjs"])
def test_killed_worker_comes_back_and_its_js_clients_recover(
    sockjs_workers: Server, node_js: str, transport: str
) -> None:
    """SIGKILL the worker serving most of twelve centrifuge-js clients: they all recover.

    The clients spread over both workers (``info`` counts them per node); the requests of
    one HTTP session (SockJS xhr-polling, every request a new connection; http_stream and
    its /emulation posts) cross between workers (the debug log names each crossing). The
    killed worker is restarted; every client receives every publication once, in order,
    those that reconnected through recovery.
    """
    server = sockjs_workers
    channel = name("js-kill-")
    clients = 12  # all on one worker by chance: 2 / 2**12
    js = NodeScenario(
        node_js,
        INTEROP_DIR / "js" / "many_clients.mjs",
        {
            "BASE_URL": server.url,
            "WS_URL": server.ws_url,
            "TRANSPORT": transport,
            "SOCKJS_TRANSPORT": "xhr-polling",
            "FRESH_CONNECTIONS": "1",
            "TOKEN": server.token(name("u-")),
            "CHANNEL": channel,
            "CLIENTS": str(clients),
            "COUNT": "5",
        },
        timeout=60.0,
    )
    try:
        js.expect("subscribed", timeout=TIMEOUT)
        spread = counted(server, clients)
        assert all(n > 0 for n in spread.values()), spread  # both workers serve clients
        server.publish(channel, {"n": 1})
        seen: set[str] = set()

        def first_publication(e: dict[str, Any]) -> bool:
            if e.get("event") == "publication":
                seen.add(e["client"])
            return len(seen) == clients

        js.expect(first_publication, timeout=TIMEOUT)
        doomed = int(max(spread, key=lambda n: spread[n]).rsplit("-", 1)[1])
        victim = next(pid for pid in worker_pids(server) if worker_index(pid) == doomed)
        os.kill(victim, signal.SIGKILL)
        for i in (2, 3, 4):
            publish_again_on_reset(server, channel, {"n": i})

        def restarted() -> list[int] | None:
            now = worker_pids(server)
            return now if len(now) == 2 and victim not in now else None

        wait_until(restarted, "the killed worker restarted")
        wait_until(lambda: sorted(nodes(server)) == ["w-0", "w-1"], "info lists both workers")
        js.send("go")
        publish_again_on_reset(server, channel, {"n": 5})
        events = js.finish(timeout=40.0)
    finally:
        js.close()
    for i in range(clients):
        mine = [
            e["data"]["n"]
            for e in events
            if e.get("event") == "publication" and e["client"] == f"c{i}"
        ]
        assert mine == [1, 2, 3, 4, 5], (i, mine)
    resubscribed = [
        e for e in events if e.get("event") == "subscribed" and e.get("wasRecovering")
    ]
    assert len({e["client"] for e in resubscribed}) >= spread[f"w-{doomed}"], resubscribed
    assert all(e["recovered"] for e in resubscribed), resubscribed
    if transport in CROSSED:
        crossed = CROSSED[transport].findall(server.log(tail=10**8))
        assert crossed, "no request reached the worker not serving its session"


def test_grpc_api_and_uni_grpc_are_served_by_every_worker(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """``grpc_api`` and ``uni_grpc`` share their ports between the workers (SO_REUSEPORT).

    Twelve uni_grpc consumers (a channel each, so a connection each) land on both workers;
    publications made through the GRPC API (a connection per call) reach all of them.
    """
    import grpc

    from rtserver.grpcapi.proto import api_pb2, api_pb2_grpc, unistream_pb2_grpc
    from rtserver.grpcapi.proto import unistream_pb2 as uni_pb

    config, secret, api_key = redis_config
    api_port, uni_port, key = free_port(), free_port(), "grpc-" + uuid.uuid4().hex
    config = merge(
        config,
        {
            "node": {"name": "w"},
            "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": api_port, "key": key},
            "uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": uni_port},
        },
    )
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    server.expect_logged_failure(r"unsubscribe \S+ failed.*RedisUnavailable: [^\n]*connection lost")
    channel = name("grpc-")
    consumers: list[tuple[Any, Any, Any]] = []
    # grpcio shares one connection between channels to one target unless told otherwise.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    try:
        wait_ready(server)
        token = server.token(name("u-"), channels=[channel])
        for _ in range(12):  # all on one worker by chance: 2 / 2**12
            link = grpc.insecure_channel(f"127.0.0.1:{uni_port}", options=own_connection)
            stub = unistream_pb2_grpc.CentrifugoUniStreamStub(link)
            call = stub.Consume(uni_pb.ConnectRequest(token=token), timeout=60)
            pushes = iter(call)
            assert next(pushes).HasField("connect")
            consumers.append((link, call, pushes))
        spread = counted(server, 12)
        assert all(n > 0 for n in spread.values()), spread
        for i in range(4):
            with grpc.insecure_channel(f"127.0.0.1:{api_port}", options=own_connection) as link:
                reply = api_pb2_grpc.CentrifugoApiStub(link).Publish(
                    api_pb2.PublishRequest(channel=channel, data=json.dumps({"n": i}).encode()),
                    metadata=[("authorization", f"apikey {key}")],
                    timeout=10,
                )
            assert not reply.HasField("error"), reply
        for _, _, pushes in consumers:
            got = []
            for push in pushes:
                if push.HasField("pub"):
                    got.append(json.loads(push.pub.data)["n"])
                    if len(got) == 4:
                        break
            assert got == [0, 1, 2, 3]
    finally:
        for link, call, _ in consumers:
            call.cancel()
            link.close()
        stop_server(server)


def test_tls_listener_is_served_by_every_worker(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """An ``ssl:`` listener with --workers 2: each worker serves TLS on the shared port.

    Sixteen centrifuge-python clients over wss (verifying the server's certificate with
    it as the CA) land on both workers; a publication reaches all of them.
    """
    from centrifuge import Client

    config, secret, api_key = redis_config
    cert, key, _ = make_certificate(tmp_path / "tls")
    tls_port = free_port()
    listen = f"ssl:{tls_port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    server = spawn_server(
        tmp_path, {**config, "node": {"name": "w"}}, secret=secret, api_key=api_key,
        extra_args=("-l", listen, "--workers", "2"),
    )
    channel = name("tls-")
    count = 16  # all on one worker by chance: 2 / 2**16
    trust = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        rec = Recorder()
        clients = []
        try:
            for i in range(count):
                client = Client(
                    f"wss://127.0.0.1:{tls_port}/connection/websocket",
                    events=ClientEvents(rec, f"c{i}"),
                    token=server.token(name("u-")),
                    ssl_context=trust,
                    max_reconnect_delay=1.0,
                    proxy=None,
                )
                clients.append(client)
                sub = subscribe(client, channel, rec, label=f"c{i}")
                await client.connect()
                await sub.subscribe()
                await bounded(sub.ready())
            await both_workers_deliver(server, rec, channel, count)
        finally:
            for client in clients:
                await client.disconnect()

    try:
        wait_ready(server)
        run_scenario(scenario())
    finally:
        stop_server(server)


def test_webtransport_sessions_are_served_by_every_worker(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """HTTP/3 with --workers 2: each worker has its own SO_REUSEPORT UDP socket.

    Twelve WebTransport sessions (a QUIC connection each, from its own UDP port) land on
    both workers (the kernel hashes each client address to one worker, which keeps that
    connection); a publication reaches all of them.
    """
    from wtclient import WTClient

    config, secret, api_key = redis_config
    cert, key, _ = make_certificate(tmp_path / "tls")
    udp_port = free_udp_port()
    config = merge(
        config,
        {
            "node": {"name": "w"},
            "http_server": {
                "port": udp_port,
                "address": "127.0.0.1",
                "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
                "http3": {"enabled": True},
            },
            "webtransport": {"enabled": True},
        },
    )
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, extra_args=("--workers", "2")
    )
    channel = name("wt-")
    count = 12  # all on one worker by chance: 2 / 2**12
    clients: list[tuple[WTClient, int]] = []

    def lines(data: bytes) -> list[dict[str, Any]]:
        return [json.loads(line) for line in data.split(b"\n")[:-1] if line]

    try:
        wait_ready(server)
        assert server.log().count(f"HTTP/3 (WebTransport) on UDP port {udp_port}") == 2
        for _ in range(count):
            client = WTClient("127.0.0.1", udp_port, cafile=cert)
            stream = client.open_stream(client.open_session("/connection/webtransport"))
            clients.append((client, stream))
            connect = {"token": server.token(name("u-"))}
            client.send(stream, json.dumps({"id": 1, "connect": connect}).encode() + b"\n")
            client.send(stream, json.dumps({"id": 2, "subscribe": {"channel": channel}})
                        .encode() + b"\n")
            data = client.read_until(stream, lambda b: b'"id":2' in b and b.endswith(b"\n"))
            replies = [m for m in lines(data) if "id" in m]  # joins are pushes
            assert [reply["id"] for reply in replies] == [1, 2], replies
            assert "connect" in replies[0] and "subscribe" in replies[1], replies
        spread = counted(server, count)
        assert all(n > 0 for n in spread.values()), spread  # both workers serve HTTP/3
        server.publish(channel, {"text": "over QUIC"})
        for client, stream in clients:
            data = client.read_until(stream, lambda b: b"over QUIC" in b)
            pubs = [m["push"]["pub"]["data"] for m in lines(data) if "pub" in m.get("push", {})]
            assert pubs == [{"text": "over QUIC"}]
    finally:
        for client, _ in clients:
            client.close()
        stop_server(server)


def test_mutual_tls_is_required_by_every_worker(
    tmp_path: Path, redis_config: tuple[dict[str, Any], str, str]
) -> None:
    """``client_ca_pem`` in ``http_server.tls`` and ``grpc_api.tls`` with --workers 2.

    Each worker builds its TLS from the config: sixteen handshakes of each kind (all on
    one worker by chance: 2 / 2**16) without a certificate, or with another CA's, are
    refused; with the CA's certificate /health answers, the HTTP API and the GRPC API
    publish.
    """
    import grpc
    from mtls import REFUSED, https_session, make_pki, mtls_config, tls_exchange

    from rtserver.grpcapi.proto import api_pb2, api_pb2_grpc

    config, secret, api_key = redis_config
    good, other = make_pki(tmp_path / "pki")
    http_port, api_port, grpc_key = free_port(), free_port(), "grpc-" + uuid.uuid4().hex
    tls = mtls_config(good, http_port, api_port, free_port())
    config = merge(config, {"node": {"name": "w"}, "http_server": tls["http_server"],
                            "grpc_api": {**tls["grpc_api"], "key": grpc_key}})
    server = spawn_server(
        tmp_path, config, secret=secret, api_key=api_key, port=http_port, listen=(),
        health=https_session(good.ca_cert, good), extra_args=("--workers", "2"),
    )
    joined = re.compile(r"node (\S+) \(\S+\) joined the cluster")
    try:
        wait_until(lambda: len(set(joined.findall(server.log()))) == 2, "both workers run")
        for _ in range(16):
            assert tls_exchange(http_port, good.ca_cert, good) == "HTTP/1.1 200 OK"
            for client in (None, other):
                outcome = tls_exchange(http_port, good.ca_cert, client)
                assert re.search(REFUSED, outcome), outcome
        with https_session(good.ca_cert, good) as session:
            reply = session.post(server.api_url + "/publish", timeout=TIMEOUT,
                                 json={"channel": name("w-"), "data": {}},
                                 headers={"X-API-Key": api_key})
        assert reply.status_code == 200 and "error" not in reply.json(), reply.text
        request = api_pb2.PublishRequest(channel=name("g-"), data=b"{}")
        metadata = [("authorization", f"apikey {grpc_key}")]
        for client in (good, None):
            pair = {} if client is None else {
                "private_key": client.client_key.read_bytes(),
                "certificate_chain": client.client_cert.read_bytes(),
            }
            credentials = grpc.ssl_channel_credentials(good.ca_cert.read_bytes(), **pair)
            options = [("grpc.ssl_target_name_override", "localhost"),
                       ("grpc.use_local_subchannel_pool", 1)]
            with grpc.secure_channel(f"127.0.0.1:{api_port}", credentials, options) as link:
                stub = api_pb2_grpc.CentrifugoApiStub(link)
                if client is None:
                    with pytest.raises(grpc.RpcError) as failed:
                        stub.Publish(request, metadata=metadata, timeout=TIMEOUT)
                    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                else:
                    reply = stub.Publish(request, metadata=metadata, timeout=TIMEOUT)
                    assert not reply.HasField("error"), reply
    finally:
        stop_server(server)
