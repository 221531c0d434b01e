"""Instructions per delivery with ``--workers 2`` vs one process (Redis engine).

::

    python bench/workers_instr.py                    # N=200,1000, cases 1x4 and 16x2 (~10 min)
    python bench/workers_instr.py --n 1000 --pubs 96

S8 (``bench/workers.py``) compares CPU time, which a shared 2-core machine makes noisy
(other processes, two workers time-sharing one CPU). This variant counts instructions,
which do not depend on the load: the server (the ``twistd rtserver`` supervisor and every
worker, ``--trace-children=yes``) and ``redis-server`` run under ``valgrind
--tool=callgrind``. The load generator (``loadgen.py`` fanout mode, as S8: N WebSocket
subscribers of one channel, API publications through the same port, B publications per
request and C requests in flight) warms each case up with callgrind's instrumentation off,
then switches it on and zeroes the counters (``callgrind_control --instr=on -z``) in every
server and Redis process, publishes the measured publications, waits for every delivery
and dumps (``callgrind_control -d``): each dump holds the instructions (user space only:
the kernel's work for the system calls is not counted) of the measured window alone.

Reported per configuration and case: server instructions per delivery (all processes) and
the ratio to one process; Redis instructions per publication. With two values of N, the
instructions of each configuration are split into a per-publication and a per-delivery
part (``I = a * publications + b * deliveries``, one equation per N). ``--annotate DIR``
keeps the dumps there for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster import node_config
from fanout import (
    _SIGNALS,
    _free_port,
    _on_signal,
    _spawn,
    _stop,
    _stop_all,
    _twistd,
    machine,
    start_rtserver,
)
from run import HOST, Progress, drive, parse_cases
from workers import children

#: Instrumentation off until the measured window (start-up and warm-up run ~5x faster).
VALGRIND = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no"]


def _listeners(port: int) -> set[int]:
    """Pids with a listening TCP socket on ``port``."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                         text=True, check=False).stdout
    return {int(m) for m in re.findall(r"pid=(\d+)", out)}


def _wait(what: str, done: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = done()
        if got:
            return got
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = ""
    for path in (log, log.with_suffix(".out")):
        if path.exists():
            tail += path.read_text(errors="replace")[-2000:]
    raise SystemExit(f"{what} not ready after {timeout:.0f}s:\n{tail}")


@contextlib.contextmanager
def redis(outdir: Path) -> Iterator[tuple[int, int]]:
    """``redis-server`` under callgrind; yields ``(port, pid)``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    cmd = [*VALGRIND, f"--callgrind-out-file={outdir}/redis.%p", binary, "--port", str(port),
           "--bind", HOST, "--save", "", "--appendonly", "no", "--loglevel", "warning"]
    log = outdir / f"redis-{port}.log"
    with log.open("wb") as out:
        proc = _spawn(cmd, None, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait("redis-server", lambda: _listeners(port), 60, proc, log)
        yield port, proc.pid
    finally:
        _stop(proc, grace=30)


@contextlib.contextmanager
def server(outdir: Path, workers: int, redis_port: int) -> Iterator[tuple[int, list[int]]]:
    """``twistd rtserver --workers N`` under callgrind; yields ``(port, every pid)``."""
    port = _free_port()
    engine = {"type": "redis", "redis": {"address": [f"redis://{HOST}:{redis_port}"]}}
    cfg = outdir / f"w{workers}-{port}.json"
    cfg.write_text(json.dumps({**node_config(engine), "node": {"name": f"w{workers}"}}))
    log = outdir / f"w{workers}-{port}.log"
    cmd = [*VALGRIND, f"--callgrind-out-file={outdir}/w{workers}.%p", *_twistd(), "--pidfile=",
           "-n", f"--logfile={log}", "rtserver", "--config", str(cfg),
           "-l", f"tcp:{port}:interface={HOST}:backlog=1024", "--workers", str(workers)]
    with log.with_suffix(".out").open("wb") as out:
        proc = _spawn(cmd, None, stdout=out, stderr=subprocess.STDOUT)
    try:
        if workers == 1:
            _wait("rtserver", lambda: proc.pid in _listeners(port), 180, proc, log)
            pids = [proc.pid]
        else:
            def ready() -> list[int] | None:
                kids = children(proc.pid)
                return kids if len(kids) == workers and set(kids) <= _listeners(port) else None

            pids = [proc.pid, *_wait("workers", ready, 240, proc, log)]
        time.sleep(5)  # every node announced on Redis, start-up work done
        yield port, pids
    finally:
        _stop(proc, grace=60)


@contextlib.contextmanager
def publisher(args: argparse.Namespace, outdir: Path, redis_port: int) -> Iterator[int | None]:
    """With ``--publisher node``: one more rtserver on the same Redis (not under valgrind,
    not counted) that takes the API requests; yields its port, or None (API on the server)."""
    if args.publisher != "node":
        yield None
        return
    port = _free_port()
    engine = {"type": "redis", "redis": {"address": [f"redis://{HOST}:{redis_port}"]}}
    proc = start_rtserver(outdir, {**node_config(engine), "node": {"name": "publisher"}},
                          port, None, name=f"publisher-{port}")
    try:
        yield port
    finally:
        _stop(proc)


def _instructions(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise ValueError(f"no summary in {path}")


def _calls(path: Path, name: str) -> int:
    """Calls to the C function ``name`` recorded in a callgrind dump (``send``: one
    system call each)."""
    ids: dict[str, str] = {}
    target = None
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("fn=(", "cfn=(")):
            ref, _, label = line.partition("=")[2].partition(" ")
            if label:
                ids[ref] = label
            target = ids.get(ref) if line.startswith("cfn=") else None
        elif target == name and line.startswith("calls="):
            total += int(line[6:].split()[0])
    return total


def _fit(points: list[tuple[int, int, int, int, int]]) -> list[float] | None:
    """Solve ``I = a * P + e * P * (workers == 2) + b * D + c * S`` for four points
    ``(workers, P, D, S, I)``; None when singular or numpy is missing."""
    try:
        import numpy as np
    except ImportError:
        return None
    rows = [[p, p * (w == 2), d, sends] for w, p, d, sends, _ in points]
    try:
        return [float(x) for x in np.linalg.solve(np.array(rows, float),
                                                  np.array([i for *_, i in points], float))]
    except np.linalg.LinAlgError:
        return None


def measure(args: argparse.Namespace, ui: Progress, outdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in args.n:
        for workers in args.workers:
            label = f"workers={workers} N={n}"
            run_dir = outdir / f"w{workers}-n{n}"
            run_dir.mkdir()
            with contextlib.ExitStack() as stack:
                rport, rpid = stack.enter_context(redis(run_dir))
                port, pids = stack.enter_context(server(run_dir, workers, rport))
                api_port = stack.enter_context(publisher(args, run_dir, rport))
                every = [*pids, rpid]
                params: dict[str, Any] = {
                    "mode": "fanout", "kind": "rtserver", "n": n, "channel": "bench",
                    "cases": args.cases, "pubs": args.pubs, "warmup": args.warmup,
                    "window": 16, "nofile": n + 2000, "timeout": 900, "port": port,
                    "api_port": api_port,
                    "paced": args.paced,
                    "connect_concurrency": 8, "stall": 300,  # a fan-out turn can take seconds
                    "before_measure": [["callgrind_control", opt, str(p)]
                                       for p in every for opt in ("--instr=on", "-z")],
                    "after_measure": [["callgrind_control", opt, str(p)]
                                      for p in every for opt in ("-d", "--instr=off")],
                }
                res = drive(params, pids[0], label, ui, 1800)
            cases = res.get("cases") or [{"case": "-", "error": res.get("error")}]
            for k, case in enumerate(cases):
                case.update(n=n, workers=workers, pids=pids)
                if case.get("delivered"):
                    # dump k+1 of each process is case k's measured window
                    case["server_ir"] = {
                        str(p): _instructions(run_dir / f"w{workers}.{p}.{k + 1}") for p in pids
                    }
                    case["sends"] = sum(
                        _calls(run_dir / f"w{workers}.{p}.{k + 1}", "send") for p in pids
                    )
                    case["redis_ir"] = _instructions(run_dir / f"redis.{rpid}.{k + 1}")
                    case["pubs"] = case["expected"] // n
                rows.append(case)
                per = sum(case.get("server_ir", {}).values()) / max(1, case.get("delivered", 0))
                ui.log(f"  {label} {case['case']}: {per:,.0f} Ir/delivery")
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, Any]], elapsed: float) -> str:
    out = [
        "### S8i `--workers 2` vs one process in instructions (Redis engine, callgrind)",
        "",
        f"`{args.command}` — {elapsed:.0f} s, load average at start {args.loadavg}; "
        f"{machine()}",
        "",
        "| N | case | workers | publications | server Ir/delivery (all processes) "
        "| ratio to 1 worker | Ir per process (supervisor first), millions "
        "| deliveries per WebSocket frame | send() calls per 1000 deliveries "
        "| Redis Ir/publication | lost | late requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[tuple[int, str], float] = {}
    fits: dict[str, list[tuple[int, int, int, int, int]]] = {}
    for r in rows:
        if not r.get("complete") or "server_ir" not in r:
            out.append(f"| {r['n']} | {r['case']} | {r['workers']} | failed: "
                       f"{str(r.get('error'))[:80]} | | | | | | | | |")
            continue
        total = sum(r["server_ir"].values())
        per = total / r["delivered"]
        key = (r["n"], r["case"])
        if r["workers"] == 1:
            base[key] = per
        ratio = f"{per / base[key]:.3f}" if key in base else "-"
        split = " / ".join(f"{v / 1e6:,.0f}" for v in r["server_ir"].values())
        out.append(
            f"| {r['n']:,} | {r['case']} | {r['workers']} | {r['pubs']} | {per:,.0f} | {ratio} "
            f"| {split} | {r['delivered'] / max(1, r['frames']):.2f} "
            f"| {r['sends'] * 1000 / r['delivered']:.0f} | {r['redis_ir'] / r['pubs']:,.0f} "
            f"| {r['expected'] - r['delivered']} | {r.get('late_requests', 0)} |"
        )
        fits.setdefault(r["case"], []).append(
            (r["workers"], r["pubs"], r["delivered"], r["sends"], total))
    lines = []
    for case, pts in fits.items():
        if len(pts) != 4:
            continue
        x = _fit(pts)
        if x is not None and min(x[0], x[2], x[3]) > 0:
            lines.append(f"| {case} | {x[0]:,.0f} | {x[1]:,.0f} | {x[2]:,.0f} | {x[3]:,.0f} |")
        else:  # e.g. deliveries and send() calls in the same proportion on every row
            lines.append(f"| {case} | no consistent fit | | | |")
    if lines:
        out += ["", "Fit of `I = a * P + e * P * (2 workers) + b * D + c * S` (publications, "
                "deliveries, send() calls; four rows per case):", "",
                "| case | a: Ir per publication | e: extra Ir per publication with 2 workers "
                "| b: Ir per delivery | c: Ir per send() |", "|---|---|---|---|---|", *lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=lambda t: [int(x) for x in t.split(",")], default=[200, 1000])
    p.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2])
    p.add_argument("--cases", type=parse_cases, default=parse_cases("1x4,16x2"))
    p.add_argument("--pubs", type=int, default=96, help="measured publications per case")
    p.add_argument("--warmup", type=int, default=32, help="warm-up publications per case")
    p.add_argument("--annotate", type=Path, help="keep the callgrind dumps in this directory")
    p.add_argument("--paced", type=float, default=0.0,
                   help="open loop: requests at a fixed pace of this many deliveries per "
                        "second (requests/s = paced / (N * B)) instead of the self-clocked "
                        "window, so both configurations get the same arrivals")
    p.add_argument("--publisher", choices=("server", "node"), default="server",
                   help="where the API publishes: the measured server (its own port) or a "
                        "separate rtserver node on the same Redis, not counted")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    args.command = "python bench/workers_instr.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    args.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)
    ui = Progress(not args.no_progress)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="rtbench-s8i-") as tmp:
            outdir = Path(tmp)
            if args.annotate:
                args.annotate.mkdir(parents=True, exist_ok=True)
                outdir = args.annotate
            rows = measure(args, ui, outdir)
    finally:
        _stop_all()
    ui.log("")
    if args.annotate:
        (args.annotate / "rows.json").write_text(json.dumps(rows, indent=1))
    print(report(args, rows, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
