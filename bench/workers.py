"""Server CPU per delivery with ``--workers 2`` vs one process (Redis engine).

::

    python bench/workers.py                      # N=1000, cases 1x4 and 16x2 (~1 min)
    python bench/workers.py --n 1000,5000
    python bench/workers.py --cases 16x2 --profile prof/   # then bench/pyspy_top.py prof/*.txt

One ``twistd rtserver`` on the Redis engine, started with ``--workers 1`` and with
``--workers 2``, in the same run. N WebSocket subscribers of one channel (the kernel
spreads them over the workers) and the API publishes through the same port (the API
connections land on either worker; a publication made on one worker reaches the other's
subscribers through Redis). The server (supervisor and workers) is pinned to one CPU and
the load generator plus ``redis-server`` to the other, so the two configurations get the
same CPU: the figure compared is the server's CPU time (every process of it) per
delivery, not throughput. A 2-core machine cannot show the throughput of 2 workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster import node_config, redis_server
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
from run import HOST, Progress, drive, parse_cases


def children(pid: int) -> list[int]:
    """Pids of the child processes of ``pid``."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return sorted(int(p) for p in out.split())


@contextlib.contextmanager
def server(workdir: Path, workers: int, redis_port: int, cpu: int | None
           ) -> Iterator[tuple[int, int, list[int]]]:
    """``twistd rtserver --workers N``; yields ``(port, supervisor pid, worker pids)``."""
    port = _free_port()
    engine = {"type": "redis", "redis": {"address": [f"redis://{HOST}:{redis_port}"]}}
    cfg = workdir / f"w{workers}-{port}.json"
    cfg.write_text(json.dumps({**node_config(engine), "node": {"name": f"w{workers}"}}))
    log = workdir / f"w{workers}-{port}.log"
    cmd = [*_twistd(), "--pidfile=", "-n", f"--logfile={log}", "rtserver", "--config", str(cfg),
           "-l", f"tcp:{port}:interface={HOST}:backlog=1024", "--workers", str(workers)]
    with log.with_suffix(".out").open("wb") as out:
        proc = _spawn(cmd, cpu, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, log, timeout=30)
        deadline = time.monotonic() + 30
        pids = children(proc.pid) if workers > 1 else []
        while workers > 1 and len(pids) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = children(proc.pid)
        time.sleep(3 if workers > 1 else 0.5)  # every worker listening and announced
        yield port, proc.pid, pids
    finally:
        _stop(proc, grace=10)


@contextlib.contextmanager
def profiled(outdir: Path, label: str, pids: list[int], cpu: int | None) -> Iterator[None]:
    """py-spy on each server process (``--profile``): ``<label>-<pid>.txt`` in ``outdir``,
    for ``bench/pyspy_top.py``."""
    outdir.mkdir(parents=True, exist_ok=True)
    name = label.replace(" ", "-").replace("=", "")
    procs = [
        _spawn(["py-spy", "record", "--pid", str(p), "--format", "raw", "-r", "200", "-o",
                str(outdir / f"{name}-{p}.txt")], cpu,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in pids
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            _stop(proc)


def _own_cores(pids: list[int]) -> None:
    """Each server process on a CPU of its own (``--own-cores``): worker i on CPU i."""
    cpus = sorted(os.sched_getaffinity(0))
    for i, pid in enumerate(pids):
        os.sched_setaffinity(pid, {cpus[i % len(cpus)]})


def measure(args: argparse.Namespace, ui: Progress, workdir: Path) -> list[dict[str, Any]]:
    server_cpu, side_cpu = (None, None) if args.spread or args.own_cores else _cpus()
    rows: list[dict[str, Any]] = []
    for n in args.n:
        for workers in (1, 2):
            label = f"workers={workers} N={n}"
            with contextlib.ExitStack() as stack:
                rport, _ = stack.enter_context(redis_server(side_cpu))
                port, pid, pids = stack.enter_context(server(workdir, workers, rport, server_cpu))
                if args.own_cores:
                    _own_cores(pids or [pid])
                if args.profile is not None:
                    stack.enter_context(profiled(args.profile, label, pids or [pid], side_cpu))
                params: dict[str, Any] = {
                    "mode": "fanout", "kind": "rtserver", "n": n, "channel": "bench",
                    "cases": args.cases, "pubs": max(200, args.deliveries // n),
                    "warmup": max(10, 50_000 // n), "window": 16, "nofile": n + 2000,
                    "timeout": 60, "port": port, "extra_pids": pids, "paced": args.paced,
                }
                res = drive(params, pid, label, ui, 300)
            for case in res.get("cases") or [{"case": "-", "error": res.get("error")}]:
                extra = case.get("extra_cpu_s", {})
                case.update(n=n, workers=workers)
                if case.get("delivered"):
                    case["total_cpu_s"] = case["server_cpu_s"] + sum(extra.values())
                    case["per_worker"] = [extra.get(str(p), 0.0) for p in pids]
                rows.append(case)
                ui.log(f"  {label} {case['case']}: {case.get('rate', 0):,.0f}/s")
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, Any]], elapsed: float) -> str:
    out = [
        "### S8 `--workers 2` vs one process (Redis engine, server pinned to one CPU)",
        "",
        f"`{args.command}` — {elapsed:.0f} s, load average at start {args.loadavg}; "
        f"{machine()}",
        "",
        "| N | case | workers | deliveries/s | server CPU µs/delivery (all processes) "
        "| ratio to 1 worker | CPU s per worker | deliveries per WebSocket frame | lost "
        "| late requests |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[tuple[int, str], float] = {}
    for r in rows:
        if not r.get("delivered"):
            out.append(f"| {r['n']} | {r['case']} | {r['workers']} | failed: "
                       f"{str(r.get('error'))[:80]} | | | | | | |")
            continue
        per = r["total_cpu_s"] * 1e6 / r["delivered"]
        key = (r["n"], r["case"])
        if r["workers"] == 1:
            base[key] = per
        ratio = f"{per / base[key]:.2f}" if key in base else "-"
        split = " / ".join(f"{c:.2f}" for c in r.get("per_worker", [])) or "-"
        out.append(
            f"| {r['n']:,} | {r['case']} | {r['workers']} | {r['rate']:,.0f} | {per:.2f} | "
            f"{ratio} | {split} | {r['delivered'] / max(1, r['frames']):.2f} "
            f"| {r['expected'] - r['delivered']} | {r.get('late_requests', 0)} |"
        )
        if r["expected"] != r["delivered"] or not r.get("complete", True):
            out.append(f"|  | ^ incomplete: closed {r.get('closed') or {}}, "
                       f"error {str(r.get('error') or '-')[:80]} | | | | | | | | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=lambda t: [int(x) for x in t.split(",")], default=[1000])
    p.add_argument("--cases", type=parse_cases, default=parse_cases("1x4,16x2"))
    p.add_argument("--deliveries", type=int, default=1_000_000)
    p.add_argument("--paced", type=float, default=0.0,
                   help="open loop: requests at a fixed pace offering this many deliveries "
                        "per second instead of the self-clocked window (same arrivals for "
                        "both configurations)")
    p.add_argument("--spread", action="store_true",
                   help="pin nothing: the workers (and Redis, the load generator) run on any "
                        "CPU, as workers on a host do, instead of the server on one CPU")
    p.add_argument("--own-cores", action="store_true",
                   help="each server process on a CPU of its own (one process on CPU0; "
                        "worker i on CPU i), the load generator and Redis on any CPU: "
                        "workers as deployed, one core each, as far as 2 CPUs allow")
    p.add_argument("--profile", type=Path, help="py-spy every server process into this directory")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.command = "python bench/workers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)
    ui = Progress(not args.no_progress)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="rtbench-s8-") as tmp:
            rows = measure(args, ui, Path(tmp))
    finally:
        _stop_all()
    ui.log("")
    print(report(args, rows, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
