"""The benchmark suite: every scenario, one command, one markdown report.

::

    python bench/run.py                       # full suite (S1-S5 and baselines, ~10 min)
    python bench/run.py --quick               # smoke run, N <= 2000 (~1-2 min)
    python bench/run.py --scenarios S1,S3 --s1-n 1000,5000 --servers rtserver,nodews

Scenarios (bench/README.md has the details):

* S1 fan-out: one channel, N subscribers, cases ``BxC`` (B publications per API request,
  C requests in flight): ``1x1`` is one publication per reactor turn, ``16x2`` bursts.
  rtserver, the naive Autobahn server (``baseline_autobahn.py``) and a Node ``ws``
  server (``baseline_ws.js``), driven by the same load generator.
* S2 many channels: N connections, each on its own channel plus one shared channel;
  personal publications through the API.
* S3 latency: publish-to-receive p50/p99/max at 50% of S1's saturating rate.
* S4 idle: RSS per authenticated connection with one subscription.
* S5 HTTP API: keep-alive publish requests/s, and publications/s through ``batch``.

Each server runs pinned to CPU0 and the load generator (``loadgen.py``) to CPU1, on
127.0.0.1 only. Every child is bounded by a timeout and killed on exit. A live progress
line is drawn on stderr; the report goes to stdout and to ``--markdown``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
API_KEY = "bench-key"
SECRET = "bench-secret"
SERVER_LABELS = {
    "rtserver": "rtserver",
    "rtserver-wd": "rtserver (write_delay)",
    "rtserver-pb": "rtserver, Protobuf subscribers",
    "rtserver-mixed": "rtserver, half JSON half Protobuf",
    "autobahn": "naive Autobahn",
    "nodews": "Node ws",
}

#: Share of S1 subscribers that speak Protobuf, per server variant (the rest speak JSON).
PROTOBUF_SHARE = {"rtserver-pb": 1.0, "rtserver-mixed": 0.5}

#: Client CPU share above which a run measured the load generator as much as the server.
CLIENT_BOUND = 0.9
#: ``--profile``: py-spy records every server here (``<kind>-<port>.txt``)
PROFILE_DIR: Path | None = None

TARGETS = {
    "s1_1x1": 150_000.0,
    "s1_burst": 400_000.0,
    "vs_autobahn": 3.0,
    "vs_nodews": 1.5,
    "s3_p99_ms": 20.0,
    "s4_kb": 12.0,
    "s5_rps": 10_000.0,
    "s5_batch": 100_000.0,
}


# --- servers ----------------------------------------------------------------------------


def rtserver_config(write_delay: float = 0.0) -> dict[str, Any]:
    """Anonymous connect and subscribe, an HMAC secret for tokens, an API key."""
    client: dict[str, Any] = {
        "allow_anonymous_connect_without_token": True,
        "token": {"hmac_secret_key": SECRET},
    }
    if write_delay:
        client["write_delay"] = f"{write_delay * 1000:g}ms"
    return {
        "client": client,
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
            }
        },
        "http_api": {"key": API_KEY},
        "log": {"level": "warn"},
    }


@contextlib.contextmanager
def server(kind: str, workdir: Path, write_delay: float) -> Iterator[tuple[int, int]]:
    """Run one server pinned to the server CPU; yields ``(port, pid)``."""
    server_cpu, _ = _cpus()
    port = _free_port()
    log = workdir / f"{kind}-{port}.log"
    if kind.startswith("rtserver"):
        cfg = workdir / f"{kind}-{port}.json"
        cfg.write_text(json.dumps(rtserver_config(write_delay if kind == "rtserver-wd" else 0)))
        cmd = [*_twistd(), "--pidfile=", "-n", f"--logfile={log}", "rtserver"]
        cmd += ["--config", str(cfg), "-l", f"tcp:{port}:interface={HOST}:backlog=1024"]
    elif kind == "autobahn":
        cmd = [sys.executable, str(HERE / "baseline_autobahn.py"), "--port", str(port)]
    elif kind == "nodews":
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node is not installed (needed for the nodews baseline)")
        cmd = [node, str(HERE / "baseline_ws.js"), "--port", str(port)]
    else:
        raise SystemExit(f"unknown server {kind}")
    with log.with_suffix(".out").open("wb") as out:
        proc = _spawn(cmd, server_cpu, stdout=out, stderr=subprocess.STDOUT)
    profiler = None
    try:
        _wait_listening(proc, port, log, timeout=30)
        if PROFILE_DIR is not None:
            out_file = PROFILE_DIR / f"{kind}-{port}.txt"
            cmd = ["py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "-r", "250"]
            profiler = _spawn(
                [*cmd, "-o", str(out_file)],
                _cpus()[1],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        yield port, proc.pid
    finally:
        _stop(proc)
        if profiler is not None:
            # py-spy writes its profile once the target has exited
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
            _stop(profiler)


# --- the load generator with a live progress line ---------------------------------------


class Progress:
    """One status line redrawn on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"[:150]
        pad = max(0, self.width - len(line))
        sys.stderr.write("\r" + line + " " * pad)
        sys.stderr.flush()
        self.width = len(line)

    def log(self, text: str) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            self.width = 0
        print(text, file=sys.stderr, flush=True)


def _server_status(pid: int, last: list[float]) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            rss = next(int(x.split()[1]) for x in f if x.startswith(b"VmRSS:"))
    except (OSError, StopIteration):
        return "server gone"
    fields = stat[stat.rindex(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    now = time.monotonic()
    util = (cpu - last[0]) / (now - last[1]) if last[1] else 0.0
    last[0], last[1] = cpu, now
    return f"server {util:4.0%} CPU, {rss / 1024:.0f} MB"


def drive(params: dict[str, Any], pid: int, label: str, ui: Progress, timeout: float) -> Any:
    """Run ``loadgen.py`` on the client CPU; show its progress; return its JSON result."""
    _, client_cpu = _cpus()
    params = {"host": HOST, "api_key": API_KEY, "server_pid": pid, **params}
    params.setdefault("server_core", _cpus()[0] if _cpus()[0] is not None else -1)
    with tempfile.TemporaryFile() as out:
        cmd = [sys.executable, str(HERE / "loadgen.py"), json.dumps(params)]
        proc = _spawn(cmd, client_cpu, stdout=out, stderr=subprocess.PIPE)
        status = ["starting"]
        tail: list[str] = []

        def read() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                status[0] = text
                tail.append(text)
                del tail[:-20]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        last = [0.0, 0.0]
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    ui.log(f"  {label}: load generator timed out after {timeout:.0f}s")
                    break
                ui.show(f"{label} | {status[0]} | {_server_status(pid, last)}")
                time.sleep(0.5)
        finally:
            _stop(proc)
            reader.join(2)
        out.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
    if not lines:
        return {"error": "load generator failed: " + " / ".join(tail[-3:])}
    return json.loads(lines[-1])


# --- scenarios --------------------------------------------------------------------------


def parse_cases(text: str) -> list[list[int]]:
    out = []
    for case in text.split(","):
        burst, _, conns = case.lower().partition("x")
        out.append([int(burst), int(conns or 1)])
    return out


def s1(args: argparse.Namespace, workdir: Path, ui: Progress) -> list[dict[str, Any]]:
    """Single-channel fan-out for every N and server."""
    rows = []
    for n in args.s1_n:
        for kind in [k for _ in range(args.repeat) for k in args.servers]:
            label = f"S1 N={n} {SERVER_LABELS[kind]}"
            with server(kind, workdir, args.write_delay) as (port, pid):
                params = {
                    "mode": "fanout",
                    "kind": "rtserver" if kind.startswith("rtserver") else kind,
                    "port": port,
                    "n": n,
                    "cases": args.cases,
                    "pubs": s1_pubs(args, n),
                    "warmup": max(10, args.warmup_deliveries // n),
                    "window": args.window,
                    "nofile": n + 2000,
                    "timeout": args.timeout,
                    "protobuf": PROTOBUF_SHARE.get(kind, 0.0),
                }
                res = drive(params, pid, label, ui, 4 * args.timeout + n / 100)
            for case in res.get("cases", []) or [{"case": "-", "error": res.get("error")}]:
                case.update(server=kind, n=n)
                rows.append(case)
                ui.log(f"  {label} {case['case']}: {_brief(case)}")
    return rows


def s1_pubs(args: argparse.Namespace, n: int) -> int:
    """Measured publications per S1 case: ``--pubs``, or ``--deliveries`` / N."""
    return args.pubs or max(20, args.deliveries // n)


def _brief(r: dict[str, Any]) -> str:
    if not r.get("delivered"):
        return f"FAILED {r.get('error', '')}"
    return (
        f"{r['rate']:,.0f} deliveries/s, {r['server_cpu_s'] * 1e6 / r['delivered']:.2f} µs "
        f"server CPU/delivery{'' if r.get('complete') else ' INCOMPLETE'}"
    )


def s2(args: argparse.Namespace, workdir: Path, ui: Progress) -> list[dict[str, Any]]:
    """Many channels: personal publications."""
    n = args.s2_n
    with server("rtserver", workdir, 0) as (port, pid):
        params = {
            "mode": "many",
            "kind": "rtserver",
            "port": port,
            "n": n,
            "cases": args.s2_cases,
            "pubs": args.s2_pubs,
            "warmup": min(args.s2_pubs, 2000),
            "window": 256,
            "nofile": n + 2000,
            "timeout": args.timeout,
        }
        res = drive(params, pid, f"S2 N={n}", ui, 4 * args.timeout + n / 100)
    rows = res.get("cases") or [{"case": "-", "error": res.get("error")}]
    for r in rows:
        r["n"] = n
        ui.log(f"  S2 N={n} {r['case']}: {_brief(r)}")
    return rows


def s3(
    args: argparse.Namespace, workdir: Path, ui: Progress, s1_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Latency at a share of the saturating rate of single publications.

    The reference is S1's rtserver ``1x1`` at the same N (each publication its own
    reactor turn, as open-loop publications at a moderate rate are), or a probe.
    """
    n = args.s3_n
    saturated = [
        r
        for r in s1_rows
        if r.get("server") == "rtserver" and r.get("n") == n and r.get("case") == "1x1"
    ]
    with server("rtserver", workdir, 0) as (port, pid):
        if saturated and saturated[0].get("delivered"):
            sat_rate = saturated[0]["rate"] / n
        else:
            probe = {
                "mode": "fanout",
                "kind": "rtserver",
                "port": port,
                "n": n,
                "cases": [[1, 1]],
                "pubs": s1_pubs(args, n),
                "warmup": max(10, args.warmup_deliveries // n),
                "window": args.window,
                "nofile": n + 2000,
                "timeout": args.timeout,
            }
            res = drive(probe, pid, f"S3 N={n} saturation probe", ui, 4 * args.timeout + n / 100)
            cases = res.get("cases") or []
            if not cases or not cases[0].get("delivered"):
                return {"n": n, "error": f"saturation probe failed: {res.get('error')}"}
            sat_rate = cases[0]["rate"] / n
    rate = sat_rate * args.s3_load
    with server("rtserver", workdir, 0) as (port, pid):
        params = {
            "mode": "latency",
            "kind": "rtserver",
            "port": port,
            "n": n,
            "rate": rate,
            "seconds": args.s3_seconds,
            "http_conns": 8,
            "channel": "bench",
            "nofile": n + 2000,
            "timeout": args.timeout,
        }
        res = drive(params, pid, f"S3 N={n}", ui, args.s3_seconds + 60 + n / 100)
    res["saturating_pubs_per_s"] = sat_rate
    ui.log(
        f"  S3 N={n} at {rate:.1f} pubs/s: p50 {res.get('p50_ms', 0):.2f} ms, "
        f"p99 {res.get('p99_ms', 0):.2f} ms, max {res.get('max_ms', 0):.2f} ms {res.get('error')}"
    )
    return res


def s4(args: argparse.Namespace, workdir: Path, ui: Progress) -> list[dict[str, Any]]:
    """Idle authenticated connections: RSS per connection."""
    rows = []
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = hard - 1000
    wanted = list(args.s4_n)
    for n in args.s4_n:
        if n + 1000 > hard:
            rows.append({"n": n, "error": f"needs {n + 1000} fds; the hard RLIMIT_NOFILE is "
                         f"{hard} and cannot be raised here (no CAP_SYS_RESOURCE)"})
            if most not in wanted:
                wanted.append(most)
    for n in wanted:
        if n + 1000 > hard:
            continue
        with server("rtserver", workdir, 0) as (port, pid):
            params = {
                "mode": "idle",
                "kind": "rtserver",
                "port": port,
                "n": n,
                "secret": SECRET,
                "sources": max(1, n // 20000 + 1) * 2,
                "idle_seconds": 3 if args.quick else 5,
                "nofile": n + 2000,
                "timeout": 60 + n / 200,
            }
            res = drive(params, pid, f"S4 N={n}", ui, 120 + n / 100)
        res["n"] = n
        rows.append(res)
        ui.log(f"  S4 N={n}: {res.get('kb_per_conn', 0):.2f} KB/conn {res.get('error')}")
    return rows


def s5(args: argparse.Namespace, workdir: Path, ui: Progress) -> list[dict[str, Any]]:
    """HTTP API: single publishes and batches, keep-alive."""
    with server("rtserver", workdir, 0) as (port, pid):
        params = {
            "mode": "http",
            "kind": "rtserver",
            "port": port,
            "bursts": [1, args.s5_batch],
            "http_conns": 16,
            "seconds": args.s5_seconds,
            "warmup_seconds": 1,
        }
        res = drive(params, pid, "S5 HTTP API", ui, 2 * args.s5_seconds + 60)
    rows = res.get("shapes") or [{"burst": 0, "error": res.get("error")}]
    for r in rows:
        ui.log(f"  S5 {r.get('burst')}/request: {r.get('requests_per_s', 0):,.0f} req/s")
    return rows


# --- report -----------------------------------------------------------------------------


def _encoding_rows(s1_rows: list[dict[str, Any]]) -> list[str]:
    """Protobuf and mixed audiences against JSON subscribers of the same N and case.

    Median server CPU per delivery over the runs of each server (``--repeat`` alternates
    them), ÷ the JSON audience's median (target ≤ 1.10 for Protobuf subscribers).
    """
    per: dict[tuple[int, str, str], list[float]] = {}
    for r in s1_rows:
        if r.get("delivered"):
            key = (r["n"], r["case"], r["server"])
            per.setdefault(key, []).append(r["server_cpu_s"] * 1e6 / r["delivered"])
    rows = []
    for (n, case, kind), values in sorted(per.items()):
        base = per.get((n, case, "rtserver"))
        if kind not in PROTOBUF_SHARE or not base:
            continue
        med, base_med = statistics.median(values), statistics.median(base)
        ratio = med / base_med
        target = _target(ratio, 1.10, higher=False) if kind == "rtserver-pb" else "-"
        runs = " / ".join(f"{v:.2f}" for v in values)
        base_runs = " / ".join(f"{v:.2f}" for v in base)
        rows.append(_row([f"{n:,}", case, SERVER_LABELS[kind], f"{runs} (JSON: {base_runs})",
                          f"{ratio:.3f} ({target})"]))
    if not rows:
        return []
    return ["", _row(["N", "case", "server", "server CPU µs/delivery per run",
                      "median ÷ JSON subscribers' median (target ≤ 1.10)"]),
            _row(["---"] * 5), *rows]


def _target(value: float, target: float, higher: bool = True) -> str:
    if value <= 0:
        return "no result"
    if (value >= target) if higher else (value <= target):
        return "met"
    if higher:
        return f"**missed by {(target - value) / target:.0%}**"
    return f"**missed: {value / target:.1f}x the limit**"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(args: argparse.Namespace, res: dict[str, Any], elapsed: float) -> str:
    """The markdown report."""
    out = [
        f"Command: `{args.command}` ({elapsed:.0f} s)",
        "",
        f"Machine: {machine()}. Load average at start: {args.loadavg}.",
        "",
    ]
    if "S1" in res:
        out += [
            "### S1 fan-out (one channel)",
            "",
            f"Per case: {args.pubs or f'{args.deliveries:,} / N'} measured publications after "
            f"{args.warmup_deliveries:,} / N warm-up; at most {args.window} publications (or "
            "2·B·C) not yet fully delivered at any time.",
            "",
            _row(["N", "case", "server", "deliveries/s", "server CPU µs/delivery",
                  "server util", "client util", "msgs/frame", "complete"]),
            _row(["---"] * 9),
        ]
        by: dict[tuple[int, str, str], dict[str, Any]] = {}
        for r in res["S1"]:
            by[(r["n"], r["case"], r["server"])] = r
            if not r.get("delivered"):
                out.append(_row([r["n"], r["case"], SERVER_LABELS[r["server"]],
                                 "failed: " + str(r.get("error", ""))[:60], "", "", "", "", "no"]))
                continue
            wall = r["wall_s"] or 1
            out.append(_row([
                f"{r['n']:,}", r["case"], SERVER_LABELS[r["server"]], f"{r['rate']:,.0f}",
                f"{r['server_cpu_s'] * 1e6 / r['delivered']:.2f}",
                f"{r['server_cpu_s'] / wall:.0%}", f"{r['client_cpu_s'] / wall:.0%}",
                f"{r['delivered'] / max(1, r['frames']):.1f}",
                ("yes" if r["complete"] and not r.get("error") else f"no {r.get('error', '')}")
                + (" (client-bound)" if r["client_cpu_s"] / wall > CLIENT_BOUND else ""),
            ]))
        ratio_rows = []
        order = {f"{b}x{c}": i for i, (b, c) in enumerate(args.cases)}
        for (n, case, kind), r in sorted(by.items(), key=lambda kv: (
            kv[0][0], order.get(kv[0][1], 99), kv[0][2])):
            if not kind.startswith("rtserver") or not r.get("delivered"):
                continue
            cells = [f"{n:,}", case, SERVER_LABELS[kind]]
            for base in ("autobahn", "nodews"):
                b = by.get((n, case, base))
                if b and b.get("delivered"):
                    want = TARGETS["vs_" + base]
                    x = r["rate"] / b["rate"]
                    cells.append(f"{x:.2f}x ({_target(x, want)})")
                else:
                    cells.append("-")
            ratio_rows.append(_row(cells))
        if ratio_rows:
            out += ["", _row(["N", "case", "server", "÷ naive Autobahn (target ≥ 3x)",
                              "÷ Node ws (target ≥ 1.5x)"]), _row(["---"] * 5)]
            out += ratio_rows
        out += _encoding_rows(res["S1"])
        out.append("")
    if "S2" in res:
        out += [
            "### S2 many channels (personal publications)",
            "",
            _row(["N", "case", "deliveries/s (= publications/s)", "server CPU µs/delivery",
                  "server util", "complete"]),
            _row(["---"] * 6),
        ]
        for r in res["S2"]:
            if not r.get("delivered"):
                out.append(_row([r["n"], r["case"], "failed: " + str(r.get("error"))[:60],
                                 "", "", "no"]))
                continue
            out.append(_row([
                f"{r['n']:,}", r["case"], f"{r['rate']:,.0f}",
                f"{r['server_cpu_s'] * 1e6 / r['delivered']:.2f}",
                f"{r['server_cpu_s'] / (r['wall_s'] or 1):.0%}",
                "yes" if r["complete"] else "no",
            ]))
        out.append("")
    if "S3" in res:
        r = res["S3"]
        out += [
            "### S3 latency (publish to receive)",
            "",
            f"Open-loop single publications at {args.s3_load:.0%} of the saturating rate (S1's "
            "rtserver `1x1` deliveries/s ÷ N: one publication per reactor turn), each stamped "
            "with its scheduled send time; latency over every delivery.",
            "",
        ]
        if r.get("error") and not r.get("delivered"):
            out += [f"failed: {r['error']}", ""]
        else:
            out += [
                _row(["N", "rate (pubs/s)", "saturating (pubs/s)", "deliveries", "p50 ms",
                      "p99 ms", "p99.9 ms", "max ms", "server util", "p99 target ≤ 20 ms"]),
                _row(["---"] * 10),
                _row([
                    f"{r['n']:,}", f"{r['rate']:.1f}", f"{r['saturating_pubs_per_s']:.1f}",
                    f"{r['delivered']:,}/{r['expected']:,}", f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}", f"{r['p999_ms']:.2f}", f"{r['max_ms']:.2f}",
                    f"{r['server_util']:.0%}",
                    _target(r["p99_ms"], TARGETS["s3_p99_ms"], higher=False),
                ]),
                "",
            ]
    if "S4" in res:
        out += [
            "### S4 idle connections (JWT-authenticated, one subscription each)",
            "",
            _row(["N", "connected", "server RSS before → after", "KB per connection",
                  "connects/s", "idle CPU µs per conn per s", "target ≤ 12 KB"]),
            _row(["---"] * 7),
        ]
        for r in res["S4"]:
            if "kb_per_conn" not in r:
                why = "not run: " + str(r.get("error"))[:160]
                out.append(_row([f"{r['n']:,}", why, "", "", "", "", ""]))
                continue
            out.append(_row([
                f"{r['n']:,}", f"{r['connected']:,}",
                f"{r['rss_before_kb'] / 1024:.0f} → {r['rss_after_kb'] / 1024:.0f} MB",
                f"{r['kb_per_conn']:.2f}", f"{r['connects_per_s']:,.0f}",
                f"{r['idle_cpu_us_per_conn_s']:.2f}",
                _target(r["kb_per_conn"], TARGETS["s4_kb"], higher=False),
            ]))
        out.append("")
    if "S5" in res:
        out += [
            "### S5 HTTP API (16 keep-alive connections, a channel with no subscribers)",
            "",
            _row(["publications per request", "requests/s", "publications/s",
                  "server CPU µs/publication", "server util", "p50 ms", "p99 ms", "target"]),
            _row(["---"] * 8),
        ]
        for r in res["S5"]:
            if "requests_per_s" not in r:
                out.append(_row([r.get("burst"), "failed: " + str(r.get("error"))[:80],
                                 "", "", "", "", "", ""]))
                continue
            single = r["burst"] == 1
            target = (
                _target(r["requests_per_s"], TARGETS["s5_rps"]) + " (≥ 10k req/s)"
                if single
                else _target(r["pubs_per_s"], TARGETS["s5_batch"]) + " (≥ 100k pubs/s)"
            )
            out.append(_row([
                r["burst"], f"{r['requests_per_s']:,.0f}", f"{r['pubs_per_s']:,.0f}",
                f"{r['server_us_per_pub']:.2f}", f"{r['server_util']:.0%}",
                f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", target,
            ]))
        out.append("")
    return "\n".join(out)


# --- main -------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x.replace("k", "000")) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (N <= 2000)")
    p.add_argument("--scenarios", default="S1,S2,S3,S4,S5")
    p.add_argument("--servers", default="rtserver,rtserver-wd,autobahn,nodews",
                   help="S1 servers: rtserver, rtserver-wd, rtserver-pb (Protobuf "
                   "subscribers), rtserver-mixed (half Protobuf), autobahn, nodews")
    p.add_argument("--s1-n", type=_ints, default=None, help="S1 subscriber counts (1k,5k,10k)")
    p.add_argument("--cases", type=parse_cases, default=None, help="S1 cases BxC (1x1,1x4,16x2)")
    p.add_argument("--pubs", type=int, default=None,
                   help="measured publications per S1 case (default: --deliveries / N)")
    p.add_argument("--deliveries", type=int, default=None,
                   help="measured deliveries per S1 case (600k; --quick 200k)")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--repeat", type=int, default=1,
                   help="S1: run the server list this many times, alternating")
    p.add_argument("--write-delay", type=float, default=0.002,
                   help="client.write_delay in seconds for the rtserver-wd server")
    p.add_argument("--s2-n", type=int, default=None)
    p.add_argument("--s2-pubs", type=int, default=None)
    p.add_argument("--s3-n", type=int, default=None)
    p.add_argument("--s3-load", type=float, default=0.5, help="share of the saturating rate")
    p.add_argument("--s3-seconds", type=float, default=None)
    p.add_argument("--s4-n", type=_ints, default=None, help="S4 connection counts (10k,50k)")
    p.add_argument("--s5-seconds", type=float, default=None)
    p.add_argument("--s5-batch", type=int, default=100)
    p.add_argument("--timeout", type=float, default=60.0, help="per measured phase, seconds")
    p.add_argument("--markdown", type=Path, default=HERE / "results-latest.md")
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", type=Path, default=None,
                   help="only render the report of a run saved with --json")
    p.add_argument("--profile", type=Path, default=None,
                   help="record each server with py-spy into this directory (slows it)")
    args = p.parse_args(argv)
    q = args.quick
    args.s1_n = args.s1_n or ([1000] if q else [1000, 5000, 10000])
    args.cases = args.cases or parse_cases("1x1,1x4,16x2")
    args.deliveries = args.deliveries or (200_000 if q else 600_000)
    args.warmup_deliveries = 50_000 if q else 100_000
    args.s2_n = args.s2_n or (1000 if q else 10000)
    args.s2_pubs = args.s2_pubs or (10_000 if q else 50_000)
    args.s2_cases = parse_cases("1x4,50x2")
    args.s3_n = args.s3_n or (1000 if q else 5000)
    args.s3_seconds = args.s3_seconds or (4.0 if q else 15.0)
    args.s4_n = args.s4_n or ([2000] if q else [10000, 50000])
    args.s5_seconds = args.s5_seconds or (2.0 if q else 5.0)
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",")]
    args.servers = [s.strip() for s in args.servers.split(",")]
    for kind in args.servers:
        if kind not in SERVER_LABELS:
            p.error(f"unknown server {kind}")
    args.command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.command = args.command.strip()
    args.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global PROFILE_DIR
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE_DIR = args.profile
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)
    need = max([*args.s4_n, args.s2_n, *args.s1_n]) * 2 + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        except (ValueError, OSError):
            print(f"cannot raise RLIMIT_NOFILE to {need}: large N will fail", file=sys.stderr)
    ui = Progress(not args.no_progress)
    started = time.monotonic()
    res: dict[str, Any] = {}
    if args.from_json is not None:
        res = json.loads(args.from_json.read_text())
        meta = res.pop("meta", {})
        args.command = meta.get("command", args.command)
        args.loadavg = meta.get("loadavg", args.loadavg)
        print(report(args, res, meta.get("elapsed", 0.0)))
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="rtbench-") as tmp:
            workdir = Path(tmp)
            if "S1" in args.scenarios:
                res["S1"] = s1(args, workdir, ui)
            if "S2" in args.scenarios:
                res["S2"] = s2(args, workdir, ui)
            if "S3" in args.scenarios:
                res["S3"] = s3(args, workdir, ui, res.get("S1", []))
            if "S4" in args.scenarios:
                res["S4"] = s4(args, workdir, ui)
            if "S5" in args.scenarios:
                res["S5"] = s5(args, workdir, ui)
    finally:
        _stop_all()
    ui.log("")
    text = report(args, res, time.monotonic() - started)
    print(text)
    args.markdown.write_text(text + "\n")
    if args.json is not None:
        meta = {"command": args.command, "loadavg": args.loadavg,
                "elapsed": time.monotonic() - started}
        args.json.write_text(json.dumps({**res, "meta": meta}, indent=1))
    failed = any(
        not r.get("delivered") or not r.get("complete", True)
        for key in ("S1", "S2")
        for r in res.get(key, [])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
