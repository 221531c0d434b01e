"""S6: publications between two nodes through Redis or NATS, beside the memory engine.

::

    python bench/cluster.py                     # N=100 and 1000, cases 1x4 and 16x2 (~2 min)
    python bench/cluster.py --n 5000 --cases 1x4,16x2,64x2

For each channel kind (plain, and with history so every publish runs the Lua script that
appends to a Redis stream) and each case ``BxC`` (B publications per API request, C
requests in flight), the same load generator (``loadgen.py`` fanout mode) drives:

* **memory**: one node; N WebSocket subscribers and the API on it;
* **redis**: node A holds the N subscribers, the API requests go to node B, and every
  publication crosses Redis (B's Lua publish -> Redis PUB/SUB -> A's fan-out);
* **nats**: the same two nodes on the memory engine with ``broker.type: nats``: every
  publication crosses ``nats-server`` (no history: ``hist:bench`` publishes keep none,
  as with Centrifugo's NATS broker);
* **redis+nats**: ``engine.type: redis`` plus ``broker.type: nats``: PUB/SUB over NATS,
  history appended in Redis (the Lua script without its PUBLISH);
* **redis-cluster** (only when ``--engines`` names it): the two nodes on a 3-master
  Redis Cluster (``redis+cluster://``); Redis CPU is the three masters' together.

Node A (or the memory node) is pinned to CPU0; the load generator, node B and
``redis-server``/``nats-server`` share CPU1 (the machine has two cores). Reported:
deliveries/s and publications/s at node A's subscribers, node A's CPU per delivery, and
node B's, Redis's and NATS's CPU per publication. Loopback only, every child bounded
and killed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker_publish import redis_cluster
from fanout import (
    _SIGNALS,
    _cpus,
    _free_port,
    _on_signal,
    _spawn,
    _stop,
    _stop_all,
    _twistd,
    _wait_listening,
    machine,
)
from run import API_KEY, HOST, Progress, drive, parse_cases

HERE = Path(__file__).resolve().parent


def node_config(engine: dict[str, Any], broker: dict[str, Any] | None = None) -> dict[str, Any]:
    """Anonymous subscribers; ``bench`` without history, ``hist:bench`` with it."""
    return {
        "client": {"allow_anonymous_connect_without_token": True},
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
            },
            "namespaces": [
                {
                    "name": "hist",
                    "allow_subscribe_for_client": True,
                    "allow_subscribe_for_anonymous": True,
                    "history_size": 100,
                    "history_ttl": "300s",
                },
            ],
        },
        "http_api": {"key": API_KEY},
        "engine": engine,
        "broker": broker or {},
        "log": {"level": "warn"},
    }


@contextlib.contextmanager
def rtserver(
    workdir: Path,
    name: str,
    engine: dict[str, Any],
    cpu: int | None,
    broker: dict[str, Any] | None = None,
) -> Iterator[tuple[int, int]]:
    """One ``twistd rtserver`` node; yields ``(port, pid)``."""
    port = _free_port()
    log = workdir / f"{name}-{port}.log"
    cfg = workdir / f"{name}-{port}.json"
    cfg.write_text(json.dumps({**node_config(engine, broker), "node": {"name": name}}))
    cmd = [*_twistd(), "--pidfile=", "-n", f"--logfile={log}", "rtserver", "--config", str(cfg),
           "-l", f"tcp:{port}:interface={HOST}:backlog=1024"]
    with log.with_suffix(".out").open("wb") as out:
        proc = _spawn(cmd, cpu, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, log, timeout=30)
        yield port, proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def redis_server(cpu: int | None) -> Iterator[tuple[int, int]]:
    """A throw-away ``redis-server`` without persistence; yields ``(port, pid)``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
           "--loglevel", "warning"]
    proc = _spawn(cmd, cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, Path("/dev/null"), timeout=10)
        yield port, proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def nats_server(cpu: int | None) -> Iterator[tuple[int, int]]:
    """A throw-away ``nats-server``; yields ``(port, pid)``."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        raise SystemExit("nats-server is not installed (apt-get install nats-server)")
    port = _free_port()
    proc = _spawn([binary, "-a", HOST, "-p", str(port)], cpu,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, Path("/dev/null"), timeout=10)
        yield port, proc.pid
    finally:
        _stop(proc)


def measure(args: argparse.Namespace, ui: Progress, workdir: Path) -> list[dict[str, Any]]:
    """Every engine x channel x case; one row each."""
    server_cpu, side_cpu = _cpus()
    rows: list[dict[str, Any]] = []
    for n, channel in [(n, ch) for n in args.n for ch in ("bench", "hist:bench")]:
        for engine in args.engines:
            label = f"S6 {engine} {channel} N={n}"
            params: dict[str, Any] = {
                "mode": "fanout",
                "kind": "rtserver",
                "n": n,
                "channel": channel,
                "cases": args.cases,
                "pubs": max(200, args.deliveries // n),
                "warmup": max(10, 50_000 // n),
                "window": 16,
                "nofile": n + 2000,
                "timeout": 60,
            }
            with contextlib.ExitStack() as stack:
                extra: dict[str, int] = {}
                if engine == "memory":
                    port, pid = stack.enter_context(
                        rtserver(workdir, "memory", {"type": "memory"}, server_cpu)
                    )
                    params.update(port=port)
                else:
                    base: dict[str, Any] = {"type": "memory"}
                    broker: dict[str, Any] | None = None
                    if engine == "redis-cluster":
                        url, rpids = stack.enter_context(redis_cluster(side_cpu))
                        base = {"type": "redis", "redis": {"address": [url]}}
                        extra.update((f"redis{i}", rpid) for i, rpid in enumerate(rpids))
                    elif "redis" in engine:
                        rport, rpid = stack.enter_context(redis_server(side_cpu))
                        base = {"type": "redis",
                                "redis": {"address": [f"redis://{HOST}:{rport}"]}}
                        extra["redis"] = rpid
                    if "nats" in engine:
                        nport, npid = stack.enter_context(nats_server(side_cpu))
                        broker = {"enabled": True, "type": "nats",
                                  "nats": {"url": f"nats://{HOST}:{nport}"}}
                        extra["nats"] = npid
                    port, pid = stack.enter_context(
                        rtserver(workdir, "a", base, server_cpu, broker))
                    api_port, b_pid = stack.enter_context(
                        rtserver(workdir, "b", base, side_cpu, broker))
                    extra["node_b"] = b_pid
                    params.update(port=port, api_port=api_port, extra_pids=list(extra.values()))
                res = drive(params, pid, label, ui, 300)
            for case in res.get("cases") or [{"case": "-", "error": res.get("error")}]:
                case.update(engine=engine, channel=channel, n=n)
                for key, xpid in extra.items():
                    case[f"{key}_cpu_s"] = case.get("extra_cpu_s", {}).get(str(xpid), 0.0)
                if engine == "redis-cluster":  # the masters together
                    case["redis_cpu_s"] = sum(
                        case[f"{key}_cpu_s"] for key in extra if key.startswith("redis")
                    )
                rows.append(case)
                ui.log(f"  {label} {case['case']}: {brief(case)}")
    return rows


def brief(r: dict[str, Any]) -> str:
    """One line for the progress log."""
    if not r.get("delivered"):
        return f"FAILED {r.get('error', '')}"
    return (f"{r['rate']:,.0f} deliveries/s, {r['server_cpu_s'] * 1e6 / r['delivered']:.2f} "
            f"µs CPU/delivery{'' if r.get('complete') else ' INCOMPLETE'}")


def report(args: argparse.Namespace, rows: list[dict[str, Any]], elapsed: float) -> str:
    """The markdown table."""
    out = [
        "### S6 Two nodes over Redis or NATS (N subscribers on node A, API on node B)",
        "",
        f"`{args.command}` — {elapsed:.0f} s, load average at start {args.loadavg}; "
        f"{machine()}",
        "",
        "| N | channel | case | engine | deliveries/s | publications/s | node A CPU µs/delivery "
        "| node B CPU µs/publication | Redis CPU µs/publication | NATS CPU µs/publication "
        "| lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("delivered"):
            out.append(f"| {r['n']} | {r['channel']} | {r['case']} | {r['engine']} | failed: "
                       f"{str(r.get('error'))[:80]} | | | | | | |")
            continue
        pubs = r["delivered"] / r["n"]

        def per_pub(key: str, r: dict[str, Any] = r, pubs: float = pubs) -> str:
            return f"{r[key] * 1e6 / pubs:.1f}" if key in r else "-"

        b, red, nats = per_pub("node_b_cpu_s"), per_pub("redis_cpu_s"), per_pub("nats_cpu_s")
        lost = r["expected"] - r["delivered"]
        out.append(
            f"| {r['n']:,} | {r['channel']} | {r['case']} | {r['engine']} | {r['rate']:,.0f} | "
            f"{r['rate'] / r['n']:,.0f} | {r['server_cpu_s'] * 1e6 / r['delivered']:.2f} | "
            f"{b} | {red} | {nats} | {lost} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=lambda t: [int(x) for x in t.split(",")], default=[100, 1000],
                   help="subscriber counts on node A (100,1000)")
    p.add_argument("--cases", type=parse_cases, default=parse_cases("1x4,16x2"))
    p.add_argument("--deliveries", type=int, default=1_000_000,
                   help="measured deliveries per case (at least 200 publications)")
    p.add_argument("--engines", type=lambda t: t.split(","),
                   default=["memory", "redis", "nats", "redis+nats"],
                   help="memory,redis,nats,redis+nats,redis-cluster (a 3-master Redis Cluster)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.command = "python bench/cluster.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)
    ui = Progress(not args.no_progress)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="rtbench-s6-") as tmp:
            rows = measure(args, ui, Path(tmp))
    finally:
        _stop_all()
    ui.log("")
    print(report(args, rows, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
