"""Single-channel fan-out benchmark: rtserver against a naive Autobahn broadcast server.

One command runs both servers under identical load (S1 of bench/README.md; the design
is docs/performance.rst) and prints a markdown table::

    python bench/fanout.py                  # N=1000, 500 measured pubs, cases 1x1,1x4,8x2, R=3
    python bench/fanout.py --quick          # a smoke run (N=200, 1 repeat)
    python bench/fanout.py --n 5000 --cases 1x4 --repeat 5

Per run: start the server (``twistd -n rtserver`` with a generated config, or
``bench/baseline_autobahn.py``) pinned to CPU0, then ``bench/loadclient.py`` pinned to
CPU1, which connects N subscribers to one channel, warms up, publishes through the
server's HTTP API (B publications per request, a window of W undelivered publications)
and measures deliveries, wall time and the server's user+sys CPU from procfs. Servers
alternate within each repeat; each run gets a fresh server process. Everything listens
on 127.0.0.1 only, every run is bounded by ``--timeout``, and every subprocess is killed
on exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
API_KEY = "bench-key"
SERVERS = ("rtserver", "baseline", "floor")
DEFAULT_SERVERS = ("rtserver", "baseline")
#: 1x1: one publication per request and one request in flight, so one publication per
#: server reactor turn (no coalescing, the server idles while the client drains);
#: 1x4: four requests in flight, the server stays busy and coalesces what arrives in one
#: turn; 8x2: eight publications per request (a burst per reactor turn).
DEFAULT_CASES = ("1x1", "1x4", "8x2")
#: Share of the server core's time used by other processes above which a run is flagged.
INTERFERENCE = 0.05
#: Client CPU utilisation above which a run measures the client as much as the server.
CLIENT_BOUND = 0.9

_children: list[subprocess.Popen[bytes]] = []
_SIGNALS = {signal.SIGTERM, signal.SIGINT}


# --- processes ------------------------------------------------------------------------


def _cpus() -> tuple[int | None, int | None]:
    """CPUs for the server and the client (``None`` when pinning is impossible)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _spawn(cmd: list[str], cpu: int | None, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child (pinned to ``cpu`` when given) and remember it for cleanup.

    SIGTERM/SIGINT are blocked from the fork until the child is recorded, so a signal
    cannot leave an unrecorded child behind; the child unblocks them before ``exec``.
    """

    def prepare() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        proc = subprocess.Popen(cmd, preexec_fn=prepare, **kwargs)
        _children.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return proc


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped when it can be."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def _stop_all() -> None:
    for proc in list(_children):
        _stop(proc, grace=2.0)


def _on_signal(signum: int, frame: Any) -> None:
    """Stop every child first, then unwind."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _stop_all()
    raise SystemExit(128 + signum)


def _machine_busy(interval: float = 1.0) -> float:
    """Share of all CPUs busy over ``interval`` seconds (from ``/proc/stat``)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(max_wait: float, threshold: float = 0.1) -> bool:
    """Wait until the machine is idle (other work would skew the run); False on timeout."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = _machine_busy()
        if busy <= threshold:
            return True
        if time.monotonic() >= deadline:
            print(f"  machine still {busy:.0%} busy, running anyway", file=sys.stderr)
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    tail = ""
    for path in (log, log.with_suffix(".out")):
        if path.exists():
            tail += path.read_text(errors="replace")[-2000:]
    raise SystemExit(f"server did not start listening on {port}:\n{tail}")


def _twistd() -> list[str]:
    """``twistd`` of this interpreter (its script when installed, else the module)."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def start_rtserver(
    workdir: Path, config: dict[str, Any], port: int, cpu: int | None, *,
    also_wait: tuple[int, ...] = (), listen_options: str = "", name: str = "rtserver",
) -> subprocess.Popen[bytes]:
    """``twistd -n rtserver`` (source tree first on PYTHONPATH, pinned to ``cpu``).

    ``config`` goes to ``workdir/<name>.json``; the server listens on TCP ``port``
    (``listen_options`` appended to its endpoint, e.g. ``":backlog=1024"``), logs to
    ``<name>.log`` and its output goes to ``<name>.out``. Returns once ``port`` and every
    port in ``also_wait`` accept connections.
    """
    cfg = workdir / f"{name}.json"
    cfg.write_text(json.dumps(config))
    log = workdir / f"{name}.log"
    cmd = [*_twistd(), "--pidfile=", "-n", f"--logfile={log}", "rtserver", "--config",
           str(cfg), "-l", f"tcp:{port}:interface={HOST}{listen_options}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with log.with_suffix(".out").open("wb") as out:
        proc = _spawn(cmd, cpu, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        for waited in (port, *also_wait):
            _wait_listening(proc, waited, log, timeout=30)
    except BaseException:
        _stop(proc)
        raise
    return proc


def rtserver_config(queue_max_size: int | None) -> dict[str, Any]:
    """The generated rtserver config: anonymous connect and subscribe, an API key."""
    client: dict[str, Any] = {"allow_anonymous_connect_without_token": True}
    if queue_max_size:
        client["queue_max_size"] = queue_max_size
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
def server(
    kind: str, workdir: Path, cpu: int | None, queue_max_size: int | None
) -> Iterator[tuple[int, int, Path]]:
    """Run one server process; yields ``(port, pid, log path)``."""
    port = _free_port()
    log = workdir / f"{kind}-{port}.log"
    if kind == "rtserver":
        proc = start_rtserver(workdir, rtserver_config(queue_max_size), port, cpu,
                              name=log.stem)
    else:
        mode = "eager" if kind == "floor" else "naive"
        cmd = [sys.executable, str(HERE / "baseline_autobahn.py"), "--port", str(port)]
        cmd += ["--mode", mode]
        with log.open("wb") as out:
            proc = _spawn(cmd, cpu, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_listening(proc, port, log, timeout=30)
        except BaseException:
            _stop(proc)
            raise
    try:
        yield port, proc.pid, log
    finally:
        _stop(proc)


# --- one run --------------------------------------------------------------------------


@dataclass
class Settings:
    """Load shape shared by every run."""

    n: int
    pubs: int
    warmup: int
    window: int
    timeout: float
    queue_max_size: int | None
    profile: Path | None


@dataclass(frozen=True)
class Case:
    """A load shape: ``burst`` publications per request, ``conns`` requests in flight."""

    burst: int
    conns: int

    @classmethod
    def parse(cls, text: str) -> Case:
        burst, _, conns = text.lower().partition("x")
        return cls(int(burst), int(conns or 1))

    @property
    def label(self) -> str:
        return f"{self.burst}x{self.conns}"


def run_once(kind: str, case: Case, rep: int, s: Settings, workdir: Path) -> dict[str, Any]:
    """Start ``kind``, drive it with the load client, return the client's result."""
    burst = case.burst
    server_cpu, client_cpu = _cpus()
    with server(kind, workdir, server_cpu, s.queue_max_size) as (port, pid, log):
        profiler = None
        if s.profile is not None:
            out = s.profile / f"{kind}-{case.label}-r{rep}.txt"
            cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "-r", "250"]
            profiler = _spawn(
                [*cmd, "-o", str(out)],
                client_cpu,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        params = {
            "kind": kind,
            "host": HOST,
            "port": port,
            "server_pid": pid,
            "server_core": -1 if server_cpu is None else server_cpu,
            "n": s.n,
            "pubs": s.pubs,
            "warmup": s.warmup,
            "burst": burst,
            "window": max(s.window, 2 * burst * case.conns),
            "http_conns": case.conns,
            "api_key": API_KEY,
            "timeout": s.timeout,
        }
        cmd = [sys.executable, str(HERE / "loadclient.py"), json.dumps(params)]
        client = _spawn(cmd, client_cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stdout, stderr = client.communicate(timeout=2 * s.timeout + 90)
        except subprocess.TimeoutExpired:
            _stop(client)
            return {"kind": kind, "case": case.label, "error": "load client timed out"}
        finally:
            _stop(client)
        if profiler is not None:
            # py-spy writes its profile when the target exits: stop the server first.
            for child in list(_children):
                if child.pid == pid:
                    _stop(child)
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                pass
            _stop(profiler)
        lines = stdout.decode(errors="replace").strip().splitlines()
        if client.returncode != 0 or not lines:
            err = stderr.decode(errors="replace")[-1500:]
            return {"kind": kind, "case": case.label, "error": f"load client failed: {err}"}
        result: dict[str, Any] = json.loads(lines[-1])
        result["case"] = case.label
        result["log"] = str(log)
        return result


# --- reporting ------------------------------------------------------------------------


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """Add rates and per-delivery costs to a raw result."""
    if r.get("error") and not r.get("delivered"):
        return r
    wall = r["wall_s"] or 1e-9
    delivered = r["delivered"] or 1
    r["deliveries_per_s"] = r["delivered"] / wall
    r["pubs_per_s"] = r["delivered"] / r["n"] / wall
    r["server_us_per_delivery"] = r["server_cpu_s"] * 1e6 / delivered
    r["server_util"] = r["server_cpu_s"] / wall
    r["core_us_per_delivery"] = r["core_busy_s"] * 1e6 / delivered
    r["core_util"] = r["core_busy_s"] / wall
    # CPU time on the server's core that is neither the server nor softirq: another
    # process ran there, and the run is suspect.
    other = r["core_busy_s"] - r["server_cpu_s"] - r["core_softirq_s"]
    r["interference"] = max(other, 0.0) / wall if r["core_busy_s"] else 0.0
    r["client_util"] = r["client_cpu_s"] / wall
    r["client_us_per_delivery"] = r["client_cpu_s"] * 1e6 / delivered
    r["deliveries_per_frame"] = r["delivered"] / max(r["frames"], 1)
    r["lost"] = r["expected"] - r["delivered"]
    return r


def _ok(r: dict[str, Any]) -> bool:
    return "deliveries_per_s" in r


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def summarize(results: list[dict[str, Any]], cases: list[Case], kinds: list[str]) -> str:
    """The markdown tables: one row per case and server, then the ratios."""
    head = (
        "| case | server | runs ok | deliveries/s median (best) | server process CPU "
        "µs/delivery median (best) | server core µs/delivery | pubs/s | server util "
        "(core) | client util | msgs/frame | lost / closed |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    ratios = []
    for case in cases:
        med: dict[str, dict[str, float]] = {}
        for kind in kinds:
            runs = [r for r in results if r.get("kind") == kind and r.get("case") == case.label]
            good = [r for r in runs if _ok(r)]
            if not good:
                rows.append(f"| {case.label} | {kind} | 0/{len(runs)} |" + " - |" * 8)
                continue
            dps = [r["deliveries_per_s"] for r in good]
            us = [r["server_us_per_delivery"] for r in good]
            lost = sum(r["lost"] for r in good)
            closed = sum(sum(r["closed"].values()) for r in good)
            noisy = sum(1 for r in good if r["interference"] > INTERFERENCE)
            bound = sum(1 for r in good if r["client_util"] > CLIENT_BOUND)
            med[kind] = {"dps": statistics.median(dps), "us": statistics.median(us)}
            rows.append(
                f"| {case.label} | {kind} | {len(good)}/{len(runs)} "
                f"| {_fmt_int(statistics.median(dps))} ({_fmt_int(max(dps))}) "
                f"| {statistics.median(us):.2f} ({min(us):.2f}) "
                f"| {_median(good, 'core_us_per_delivery'):.2f} "
                f"| {_fmt_int(_median(good, 'pubs_per_s'))} "
                f"| {_median(good, 'server_util'):.0%} ({_median(good, 'core_util'):.0%}) "
                f"| {_median(good, 'client_util'):.0%} "
                f"| {_median(good, 'deliveries_per_frame'):.2f} "
                f"| {lost} / {closed}"
                + (f", {noisy} run(s) disturbed" if noisy else "")
                + (f", {bound} run(s) client-bound" if bound else "")
                + " |"
            )
        if "rtserver" in med and "baseline" in med:
            a, b = med["rtserver"], med["baseline"]
            row = (
                f"| {case.label} | {a['dps'] / b['dps']:.2f}x | {b['us'] / a['us']:.2f}x "
                f"| {a['us']:.2f} vs {b['us']:.2f} |"
            )
            if "floor" in kinds:
                f = med.get("floor")
                row += f" {a['us'] - f['us']:+.2f} |" if f else " - |"
            ratios.append(row)
    out = head + "\n".join(rows) + "\n"
    if ratios:
        out += (
            "\n| case | deliveries/s, rtserver ÷ baseline (medians) | server CPU per delivery, "
            "baseline ÷ rtserver | µs/delivery, rtserver vs baseline |"
        )
        if "floor" in kinds:
            out += " rtserver minus floor, µs/delivery |\n|---|---|---|---|---|\n"
        else:
            out += "\n|---|---|---|---|\n"
        out += "\n".join(ratios) + "\n"
    return out


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def machine() -> str:
    """One line about the machine and the library versions."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for mod in ("twisted", "autobahn", "orjson", "uvloop"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} absent")
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, " + ", ".join(versions)
    )


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Fan-out benchmark: rtserver vs a naive Autobahn broadcast server."
    )
    p.add_argument("--n", type=int, default=1000, help="subscribers (default 1000)")
    p.add_argument("--pubs", type=int, default=500, help="measured publications (default 500)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up publications (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="runs per server and case (default 3)")
    p.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help="load shapes BxC: B publications per HTTP request, C requests in flight "
        f"(default {','.join(DEFAULT_CASES)})",
    )
    p.add_argument(
        "--window",
        type=int,
        default=16,
        help="max publications not yet fully delivered (default 16, at least 2*B*C)",
    )
    p.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help="comma-separated: rtserver, baseline (naive Autobahn sendMessage), floor "
        "(Autobahn + one eager send() per delivery, no queueing); default rtserver,baseline",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per phase, seconds (default 60)")
    p.add_argument(
        "--queue-max-size", type=int, default=None, help="rtserver client.queue_max_size (bytes)"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=10.0,
        help="before each run wait up to this many seconds (3x that in all) for "
        "the machine to be idle (default 10; 0 disables)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=4,
        help="run a disturbed run again, at most this many times in all (default 4)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N=200, 100 pubs, 1 repeat")
    p.add_argument("--profile", type=Path, help="py-spy raw profiles of each server into DIR")
    p.add_argument("--json", type=Path, help="write every run's raw result to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.pubs, args.warmup, args.repeat = 200, 100, 20, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k]
    cases = [Case.parse(c) for c in args.cases.split(",") if c]
    if unknown := set(kinds) - set(SERVERS):
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    if args.profile is not None:
        if shutil.which("py-spy") is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        n=args.n,
        pubs=args.pubs,
        warmup=args.warmup,
        window=args.window,
        timeout=args.timeout,
        queue_max_size=args.queue_max_size,
        profile=args.profile,
    )
    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)
    server_cpu, client_cpu = _cpus()
    print(f"# machine: {machine()}", file=sys.stderr)
    print(
        f"# pinning: server CPU {server_cpu}, client CPU {client_cpu}; N={args.n}, "
        f"pubs={args.pubs} (+{args.warmup} warm-up), cases={args.cases}, "
        f"repeat={args.repeat}",
        file=sys.stderr,
    )
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    wait_budget = 3 * args.wait_quiet  # in total, so a busy machine cannot stretch the run
    retries = args.retries
    try:
        with tempfile.TemporaryDirectory(prefix="rtbench-") as tmp:
            for case in cases:
                for rep in range(args.repeat):
                    order = kinds if rep % 2 == 0 else kinds[::-1]
                    for kind in order:
                        while True:
                            if wait_budget > 0:
                                t = time.monotonic()
                                wait_quiet(min(args.wait_quiet, wait_budget))
                                wait_budget -= time.monotonic() - t
                            r = derive(run_once(kind, case, rep, settings, Path(tmp)))
                            r["repeat"] = rep
                            _progress(r)
                            if not (_ok(r) and r["interference"] > INTERFERENCE and retries):
                                break
                            retries -= 1
                            print("  disturbed: running it again", file=sys.stderr)
                        results.append(r)
    finally:
        _stop_all()
    print(
        f"\nN={args.n} subscribers on one channel, {args.pubs} measured publications per run "
        f"(+{args.warmup} warm-up), {args.repeat} runs per cell, "
        f"{time.monotonic() - started:.0f} s in total\n"
    )
    print(summarize(results, cases, kinds))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0 if all(_ok(r) and not r.get("lost") for r in results) else 1


def _progress(r: dict[str, Any]) -> None:
    if not _ok(r):
        closed = f" (closed: {r['closed']})" if r.get("closed") else ""
        print(f"  {r.get('kind')} {r.get('case')}: ERROR {r.get('error')}{closed}", file=sys.stderr)
        return
    note = f" ERROR {r['error']}" if r.get("error") else ""
    print(
        f"  {r['kind']:8} {r['case']} rep={r['repeat']}: "
        f"{r['deliveries_per_s']:>9,.0f} deliveries/s, "
        f"{r['server_us_per_delivery']:5.2f} µs server CPU/delivery "
        f"(user {r['server_user_s']:.2f} s, sys {r['server_sys_s']:.2f} s; "
        f"core {r['core_us_per_delivery']:.2f} µs incl. softirq {r['core_softirq_s']:.2f} s), "
        f"server {r['server_util']:.0%}, client {r['client_util']:.0%}, "
        f"{r['deliveries_per_frame']:.1f} msg/frame, lost {r['lost']}, "
        f"closed {r['closed'] or 0}{note}"
        + (
            f" WARNING: {r['interference']:.0%} of the server's core went to other processes"
            if r["interference"] > INTERFERENCE
            else ""
        )
        + (" WARNING: client-bound" if r["client_util"] > CLIENT_BOUND else ""),
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
