"""S7: the publishing node's CPU per publication, NATS broker vs Redis engine, in-process.

::

    PYTHONPATH=. python bench/broker_publish.py                 # 20k publications x 3 rounds
    PYTHONPATH=. python bench/broker_publish.py --pubs 50000 --rounds 5
    PYTHONPATH=. python bench/broker_publish.py --backends nats,nats-tls   # TLS cost

A ``Node`` (no clients, no HTTP) publishes through each backend against a real
``redis-server`` / ``nats-server`` on loopback: ``Node.publish`` -> engine -> socket,
``--batch`` publications per reactor turn, each batch awaited (Redis replies; for NATS a
PING round trip after the batch, so every byte is on the wire and the server has
processed it). Backends: ``redis`` (the Redis engine: PUBLISH, or one EVALSHA of the
history script), ``nats`` (``broker.type: nats`` on the memory engine), ``redis+nats``
(``engine.type: redis`` + NATS: the history script without its PUBLISH, then a NATS
PUB), and only when ``--backends`` names them ``redis-cluster`` (the Redis engine on a
3-master Redis Cluster started for the run: commands routed by hash slot, one EVALSHA or
PUBLISH on the channel's master), ``memory`` (the memory engine) and ``nats-tls`` (the
NATS broker on the memory engine over TLS: a second nats-server with ``--tls`` and a
certificate of a test CA made for the run, ``tls://`` URL, ``broker.nats.tls`` with that
CA; TLS 1.3 as the server and OpenSSL agree on it). Channels:
``plain`` (no history) and ``hist`` (history 100); with ``--versions`` also ``hist:v``,
history 100 with every publication carrying the next ``version`` (all accepted: the
version check's full cost, one more HMGET and HSET in the Lua script). Rounds interleave
the backends so machine noise hits all of them alike; the table shows the median of the
rounds of this process's CPU time (user+system) per publication, and the ratio to the
Redis engine of the same channel kind; for the backends on the standalone redis-server,
also that server's CPU (``INFO cpu``) per publication. NATS' own CPU is not included.
This process is pinned to CPU0 and the servers to CPU1 when possible.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the test CA of the TLS tests

from fanout import _cpus, _free_port, _spawn, _stop, _wait_listening, machine  # noqa: E402
from run import HOST  # noqa: E402


@contextlib.contextmanager
def server(kind: str, cpu: int | None, tls: Any = None) -> Iterator[int]:
    """A throw-away redis-server or nats-server (``tls``: TLSFiles, TLS only); its port."""
    port = _free_port()
    if kind == "redis":
        binary = shutil.which("redis-server")
        cmd = [str(binary), "--port", str(port), "--bind", HOST, "--save", "",
               "--appendonly", "no", "--loglevel", "warning"]
    else:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        cmd = [binary, "-a", HOST, "-p", str(port)]
        if tls is not None:
            cmd += ["--tls", "--tlscert", str(tls.cert), "--tlskey", str(tls.key)]
    if binary is None or not Path(binary).exists():
        raise SystemExit(f"{kind}-server is not installed")
    proc = _spawn(cmd, cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, Path("/dev/null"), timeout=10)
        yield port
    finally:
        _stop(proc)


@contextlib.contextmanager
def redis_cluster(cpu: int | None, masters: int = 3) -> Iterator[tuple[str, list[int]]]:
    """A throw-away Redis Cluster of ``masters`` masters; yields its URL and the pids."""
    import tempfile

    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        raise SystemExit("redis-server and redis-cli are needed for redis-cluster")
    ports = [_free_port() for _ in range(masters)]
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for port in ports:
                cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "",
                       "--appendonly", "no", "--loglevel", "warning",
                       "--cluster-enabled", "yes",
                       "--cluster-config-file", f"{tmp}/nodes-{port}.conf",
                       "--cluster-port", str(_free_port())]
                procs.append(_spawn(cmd, cpu, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
                _wait_listening(procs[-1], port, Path("/dev/null"), timeout=10)
            subprocess.run([cli, "--cluster", "create", *(f"{HOST}:{p}" for p in ports),
                            "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                           timeout=30)
            deadline = time.monotonic() + 20
            while any(b"cluster_state:ok" not in subprocess.run(
                    [cli, "-p", str(p), "CLUSTER", "INFO"], capture_output=True,
                    check=True).stdout for p in ports):
                if time.monotonic() > deadline:
                    raise SystemExit("the Redis Cluster did not come up")
                time.sleep(0.1)
            url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in ports)
            yield url, [proc.pid for proc in procs]
        finally:
            for proc in procs:
                _stop(proc)


def make_config(
    kind: str, redis_port: int, nats_port: int, cluster_url: str = "", tls: Any = None
) -> Any:
    from rtserver import config

    data: dict[str, Any] = {
        "channel": {"namespaces": [{"name": "hist", "history_size": 100,
                                    "history_ttl": "300s"}]},
    }
    if kind == "redis-cluster":
        data["engine"] = {"type": "redis",
                          "redis": {"address": cluster_url, "prefix": f"b{os.getpid()}"}}
    elif "redis" in kind:
        data["engine"] = {"type": "redis",
                          "redis": {"address": [f"redis://{HOST}:{redis_port}"],
                                    "prefix": f"b{os.getpid()}"}}
    if kind == "nats-tls":
        port, files = tls
        data["broker"] = {"enabled": True, "type": "nats",
                          "nats": {"url": f"tls://{HOST}:{port}",
                                   "tls": {"enabled": True,
                                           "server_ca_pem": str(files.ca_cert)}}}
    elif "nats" in kind:
        data["broker"] = {"enabled": True, "type": "nats",
                          "nats": {"url": f"nats://{HOST}:{nats_port}"}}
    return config.from_mapping(data)


def redis_cpu(port: int) -> float:
    """The redis-server's CPU seconds so far (user + system, ``INFO cpu``)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return float("nan")
    out = subprocess.run([cli, "-h", HOST, "-p", str(port), "INFO", "cpu"],
                         capture_output=True, check=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


#: The next publication version of ``hist:v`` (every one accepted).
_VERSION = [0]


async def one_round(node: Any, channel: str, pubs: int, batch: int) -> float:
    """CPU seconds of this process for ``pubs`` publications."""
    from twisted.internet.defer import DeferredList

    from rtserver.engines.composite import CompositeEngine
    from rtserver.engines.nats import NatsBroker

    engine = node.engine
    broker = engine.broker if isinstance(engine, CompositeEngine) else engine
    data = b'{"text":"a publication of about eighty bytes of json","n":12345,"ok":true}'
    start = time.process_time()
    versioned = channel == "hist:v"
    for i in range(0, pubs, batch):
        ds = []
        for _ in range(min(batch, pubs - i)):
            if versioned:
                _VERSION[0] += 1
                ds.append(node.publish(channel, data, version=_VERSION[0], version_epoch="e"))
            else:
                ds.append(node.publish(channel, data))
        await DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        if isinstance(broker, NatsBroker):
            await broker.sync()
    return time.process_time() - start


async def measure(
    args: argparse.Namespace,
    redis_port: int,
    nats_port: int,
    cluster_url: str = "",
    tls: Any = None,
) -> dict[str, Any]:
    from twisted.internet import reactor

    from rtserver.core.node import Node
    from rtserver.service import build_engine

    nodes = {}
    for kind in args.backends:
        cfg = make_config(kind, redis_port, nats_port, cluster_url, tls)
        node = Node(build_engine(cfg, reactor), cfg, clock=reactor)
        await node.start()
        assert node.engine.healthy, kind
        nodes[kind] = node
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for channel in channels(args):
            for kind, node in nodes.items():
                await one_round(node, channel, args.pubs // 10, args.batch)  # warm-up
                on_redis = "redis" in kind and kind != "redis-cluster"
                redis_before = redis_cpu(redis_port) if on_redis else 0.0
                cpu = await one_round(node, channel, args.pubs, args.batch)
                results.setdefault((kind, channel), []).append(cpu / args.pubs * 1e6)
                if on_redis:
                    used = redis_cpu(redis_port) - redis_before
                    results.setdefault((kind, channel, "redis"), []).append(
                        used / args.pubs * 1e6)
    for node in nodes.values():
        await node.stop()
    return {k: statistics.median(v) for k, v in results.items()}


def channels(args: argparse.Namespace) -> tuple[str, ...]:
    """The channels measured: no history, history, and with ``--versions`` versioned."""
    return ("plain", "hist:x", "hist:v") if args.versions else ("plain", "hist:x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pubs", type=int, default=20000)
    p.add_argument("--batch", type=int, default=100, help="publications per reactor turn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", type=lambda t: t.split(","),
                   default=["redis", "nats", "redis+nats"])
    p.add_argument("--versions", action="store_true",
                   help="also a history channel whose publications carry a version")
    args = p.parse_args(argv)
    command = "PYTHONPATH=. python bench/broker_publish.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    here_cpu, side_cpu = _cpus()
    if here_cpu is not None:
        os.sched_setaffinity(0, {here_cpu})
    started = time.monotonic()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    with contextlib.ExitStack() as stack:
        redis_port = stack.enter_context(server("redis", side_cpu))
        nats_port = stack.enter_context(server("nats", side_cpu))
        cluster_url = (
            stack.enter_context(redis_cluster(side_cpu))[0]
            if "redis-cluster" in args.backends
            else ""
        )
        tls = None
        if "nats-tls" in args.backends:
            import tempfile

            from redisserver import make_tls

            files = make_tls(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            tls = (stack.enter_context(server("nats", side_cpu, files)), files)
        out: dict[str, Any] = {}

        def run(_: Any) -> Deferred[None]:
            async def go() -> None:
                out.update(await measure(args, redis_port, nats_port, cluster_url, tls))

            return Deferred.fromCoroutine(go())

        def start() -> None:
            # Started with the reactor: a backend that answers at once (memory) would
            # otherwise finish, and stop the reactor, before it runs.
            d = Deferred.fromCoroutine(_wrap(run))
            d.addBoth(lambda r: (out.setdefault("_error", r) if r is not None else None,
                                 reactor.stop()))

        reactor.callWhenRunning(start)
        reactor.run()
    if "_error" in out:
        print(out["_error"], file=sys.stderr)
        return 1
    lines = [
        "### S7 Publishing node CPU per publication, in-process (no HTTP)",
        "",
        f"`{command}` — {time.monotonic() - started:.0f} s, load average at start {loadavg}; "
        f"{machine()}",
        "",
        "| channel | backend | CPU µs/publication (median of rounds) | redis ÷ this "
        "| redis-server CPU µs/publication |",
        "|---|---|---|---|---|",
    ]
    labels = {"plain": "no history", "hist:x": "history 100",
              "hist:v": "history 100, versioned"}
    for channel in channels(args):
        base = out.get(("redis", channel))
        for kind in args.backends:
            v = out[(kind, channel)]
            ratio = f"{base / v:.2f}" if base and kind != "redis" else "-"
            server_cpu = out.get((kind, channel, "redis"))
            on_server = "-" if server_cpu is None else f"{server_cpu:.1f}"
            lines.append(f"| {labels[channel]} | {kind} | {v:.1f} | {ratio} | {on_server} |")
    print("\n".join(lines))
    return 0


async def _wrap(run: Any) -> None:
    await run(None)


if __name__ == "__main__":
    raise SystemExit(main())
