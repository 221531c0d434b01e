"""Fan-out under overload: who gets disconnected, and is anything lost silently.

One channel, N subscribers that read promptly (``loadgen.Conn``: asyncio, cheap frame
counting), one rtserver process (memory engine) pinned to CPU0, the load process pinned
to CPU1. Publishers offer more than the server can deliver for ``--seconds``:

``closed``  ``--conns`` keep-alive connections, each with ``--inflight`` pipelined
            requests of ``--burst`` publications (``/api/batch`` when > 1) outstanding:
            a new request goes out when one is answered (closed loop, large window).
``paced``   requests pipelined on ``--conns`` connections at ``--rate`` publications/s
            whatever the server answers (open loop); a connection whose socket buffer
            holds more than 1 MiB unsent is skipped, and the publications it could not
            take count as *held back*: the server's TCP back-pressure slowed the
            publisher.

Then publishing stops, the answers are awaited and every subscriber still open must
reach the count of publications the server accepted (``--drain`` s at most). Reported
per run: accepted publications/s, deliveries/s while publishing, server RSS (start,
peak, end), the largest lag of an open subscriber (publications accepted but not yet
received), answer latency, held-back publications, disconnects by close code, and
subscribers left short with no close (lost silently).

Variants (``--variants``) run the same tree with a module constant of
``rtserver/core/writer.py`` changed before twistd starts (no configuration knob):
``slices`` (as shipped), ``noslices`` (``FLUSH_SLICE`` = 10**9: one pass writes every
connection, the behaviour before the slices), ``CONSTANT=INT`` (e.g. ``FLUSH_HURRY=8``);
``NAME=DIR`` runs another source tree as it is (e.g. ``base=/tmp/base``). Variants
alternate within each repeat.

::

    python bench/overload.py --n 3000 --mode closed --conns 4 --burst 100 --repeat 2
    python bench/overload.py --n 3000 --mode paced --rate 20000 --burst 20 --conns 2

Run by itself as ``python bench/overload.py client '<json params>'`` for the load side.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
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
from typing import Any, cast

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fanout  # noqa: E402
from fanout import API_KEY, HOST  # noqa: E402
from loadclient import http_answers, proc_cpu, proc_rss_kb, self_cpu  # noqa: E402

#: Unsent bytes in a publisher's socket buffer above which it takes no more requests.
PUBLISHER_BUFFER = 1 << 20
#: Named variants: constants of rtserver/core/writer.py set before twistd starts.
VARIANTS: dict[str, dict[str, int]] = {"slices": {}, "noslices": {"FLUSH_SLICE": 10**9}}

_SERVER = (
    "import json, sys\n"
    "import rtserver.core.writer as w\n"
    "for k, v in json.loads(sys.argv.pop(1)).items(): setattr(w, k, v)\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)


# --- the server -----------------------------------------------------------------------


@contextlib.contextmanager
def server(
    tree: Path, constants: dict[str, int], workdir: Path, queue_max_size: int | None
) -> Iterator[tuple[int, int]]:
    """``twistd -n rtserver`` from ``tree``, writer ``constants`` set; yields (port, pid)."""
    server_cpu, _ = fanout._cpus()
    port = fanout._free_port()
    name = f"rtserver-{port}"
    cfg = workdir / f"{name}.json"
    cfg.write_text(json.dumps(fanout.rtserver_config(queue_max_size)))
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-c", _SERVER, json.dumps(constants)]
    cmd += ["--pidfile=", "-n", f"--logfile={log}", "rtserver", "--config", str(cfg)]
    cmd += ["-l", f"tcp:{port}:interface={HOST}:backlog=1024"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with log.with_suffix(".out").open("wb") as out:
        proc = fanout._spawn(
            cmd, server_cpu, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(workdir)
        )
    try:
        fanout._wait_listening(proc, port, log, timeout=30)
        yield port, proc.pid
    finally:
        fanout._stop(proc)


# --- the load side --------------------------------------------------------------------


class Publisher(asyncio.Protocol):
    """A keep-alive connection with pipelined requests; answers are matched in order."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent_at: list[int] = []  # send times of the requests not yet answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.sent_at.append(time.monotonic_ns())
        self.transport.write(request)

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def data_received(self, data: bytes) -> None:
        answers, self.buf = http_answers(self.buf + data)
        for ok, body in answers:
            sent = self.sent_at.pop(0) if self.sent_at else time.monotonic_ns()
            self.load.on_answer(self, ok, body, sent)

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.gen.error = self.load.gen.error or f"publisher connection lost: {exc}"


class Load:
    """Subscribers (``loadgen.Gen``'s connections) and pipelined publishers."""

    def __init__(self, p: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        from loadgen import Gen

        self.p = p
        self.loop = loop
        self.gen = Gen({**p, "mode": "fanout", "kind": "rtserver"}, loop)
        self.request = self.gen.publish_request([p.get("channel", "bench")] * p["burst"])
        self.pubs: list[Publisher] = []
        self.publishing = False
        self.sent = 0  # requests
        self.answered = 0
        self.accepted = 0  # publications answered with success
        self.failed = 0
        self.held_back = 0  # publications the paced publisher could not send
        self.latencies: list[int] = []

    def on_answer(self, pub: Publisher, ok: bool, body: bytes, sent: int) -> None:
        self.answered += 1
        self.latencies.append(time.monotonic_ns() - sent)
        if ok:
            self.accepted += self.p["burst"]
        else:
            self.failed += 1
            self.gen.error = self.gen.error or f"publish failed: {body[:200]!r}"
        if self.publishing and self.p["mode"] == "closed":
            pub.send(self.request)
            self.sent += 1

    async def pace(self) -> None:
        """Open loop: requests due at ``rate`` go out on connections with room."""
        p = self.p
        per_request = p["burst"]
        t0 = time.monotonic()
        offered = 0  # requests due so far
        k = 0
        while self.publishing:
            due = int((time.monotonic() - t0) * p["rate"] / per_request)
            while offered < due:
                offered += 1
                for _ in range(len(self.pubs)):
                    k = (k + 1) % len(self.pubs)
                    if self.pubs[k].unsent() <= PUBLISHER_BUFFER:
                        self.pubs[k].send(self.request)
                        self.sent += 1
                        break
                else:
                    self.held_back += per_request
            await asyncio.sleep(0.002)

    def lag(self) -> tuple[int, int]:
        """(largest lag of an open subscriber in publications, open subscribers)."""
        least = None
        open_ = 0
        for c in self.gen.conns:
            if not c.closed:
                open_ += 1
                if least is None or c.count < least:
                    least = c.count
        return (self.accepted - least if least is not None else 0), open_

    async def run(self) -> dict[str, Any]:
        p, gen = self.p, self.gen
        hello, ack = gen.hello()
        await gen.connect(p["n"], hello, ack)
        for _ in range(p["conns"]):
            _, pub = await self.loop.create_connection(
                lambda: Publisher(self), p["host"], p["port"]
            )
            self.pubs.append(pub)
        pid = p["server_pid"]
        samples: list[dict[str, Any]] = []
        rss0 = proc_rss_kb(pid)
        u0, s0 = proc_cpu(pid)
        c0 = self_cpu()
        t0 = time.monotonic()
        self.publishing = True
        pacer = None
        if p["mode"] == "closed":
            for pub in self.pubs:
                for _ in range(p["inflight"]):
                    pub.send(self.request)
                    self.sent += 1
        else:
            pacer = asyncio.ensure_future(self.pace())
        end = t0 + p["seconds"]
        peak_lag = 0
        while time.monotonic() < end:
            await asyncio.sleep(0.25)
            lag, open_ = self.lag()
            peak_lag = max(peak_lag, lag)
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "rss_kb": proc_rss_kb(pid),
                    "accepted": self.accepted,
                    "delivered": gen.delivered,
                    "lag": lag,
                    "open": open_,
                    "unsent": sum(x.unsent() for x in self.pubs),
                }
            )
            if not open_:
                break
        self.publishing = False
        if pacer is not None:
            await pacer
        t_pub = time.monotonic() - t0
        delivered_pub = gen.delivered
        accepted_pub = self.accepted
        u1, s1 = proc_cpu(pid)
        # answers to the requests still in flight, then every open subscriber catches up
        deadline = time.monotonic() + p["drain"]
        while self.answered < self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        while time.monotonic() < deadline:
            lag, open_ = self.lag()
            if lag <= 0:
                break
            await asyncio.sleep(0.05)
        drain_s = time.monotonic() - t0 - t_pub
        await asyncio.sleep(0.3)  # stragglers and duplicates
        lag, open_ = self.lag()
        short = sum(1 for c in gen.conns if not c.closed and c.count < self.accepted)
        extra = sum(1 for c in gen.conns if c.count > self.accepted)
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6 if lat else 0.0

        rss = [s["rss_kb"] for s in samples] or [rss0]
        return {
            "publish_s": t_pub,
            "drain_s": drain_s,
            "requests_sent": self.sent,
            "requests_answered": self.answered,
            "requests_failed": self.failed,
            "accepted": self.accepted,
            "accepted_per_s": accepted_pub / t_pub,
            "offered_per_s": p["rate"] if p["mode"] == "paced" else None,
            "held_back": self.held_back,
            "delivered": gen.delivered,
            "deliveries_per_s": delivered_pub / t_pub,
            # everything delivered, over the time until the last open subscriber caught up
            "overall_per_s": gen.delivered / (t_pub + drain_s),
            "server_util": ((u1 - u0) + (s1 - s0)) / t_pub,
            "client_util": (self_cpu() - c0) / (time.monotonic() - t0),
            "rss_start_kb": rss0,
            "rss_peak_kb": max(rss),
            "rss_end_kb": proc_rss_kb(pid),
            "peak_lag": peak_lag,
            "final_lag": lag,
            "open": open_,
            "closed": dict(gen.closed),
            "short_open": short,
            "extra": extra,
            "answer_ms_p50": pct(0.5),
            "answer_ms_p99": pct(0.99),
            "answer_ms_max": pct(1.0),
            "samples": samples,
            "error": gen.error,
        }

    def finish(self) -> None:
        self.gen.finish()
        for pub in self.pubs:
            if pub.transport is not None:
                pub.transport.abort()


async def _client_main(p: dict[str, Any]) -> dict[str, Any]:
    load = Load(p, asyncio.get_running_loop())
    try:
        return await load.run()
    except Exception as e:  # report, never hang the orchestrator
        return {"error": load.gen.error or f"{type(e).__name__}: {e}"}
    finally:
        load.finish()


def client_main(arg: str) -> None:
    """The load side: JSON parameters in, one JSON result line out."""
    p = json.loads(arg)
    print(json.dumps(asyncio.run(_client_main(p))), flush=True)


# --- orchestration --------------------------------------------------------------------


def run_once(
    variant: str, tree: Path, constants: dict[str, int], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    _, client_cpu = fanout._cpus()
    with server(tree, constants, workdir, args.queue_max_size) as (port, pid):
        params = {
            "host": HOST,
            "port": port,
            "server_pid": pid,
            "api_key": API_KEY,
            "n": args.n,
            "mode": args.mode,
            "conns": args.conns,
            "inflight": args.inflight,
            "burst": args.burst,
            "rate": args.rate,
            "seconds": args.seconds,
            "drain": args.drain,
            "timeout": 120,
        }
        cmd = [sys.executable, str(Path(__file__).resolve()), "client", json.dumps(params)]
        proc = fanout._spawn(cmd, client_cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=args.seconds + args.drain + 200)
        except subprocess.TimeoutExpired:
            fanout._stop(proc)
            return {"variant": variant, "error": "load process timed out"}
        finally:
            fanout._stop(proc)
        lines = out.decode(errors="replace").strip().splitlines()
        if not lines:
            return {"variant": variant, "error": err.decode(errors="replace")[-1500:]}
        r: dict[str, Any] = json.loads(lines[-1])
        r["variant"] = variant
        return r


def line(r: dict[str, Any]) -> str:
    if "accepted_per_s" not in r:
        return f"| {r['variant']} | ERROR {r.get('error')} |"
    closed = ", ".join(f"{k}: {v}" for k, v in sorted(r["closed"].items())) or "none"
    held = f"{r['held_back']:,}" if r.get("offered_per_s") else "-"
    return (
        f"| {r['variant']} | {r['accepted_per_s']:,.0f} | {r['deliveries_per_s']:,.0f} "
        f"| {r['overall_per_s']:,.0f} "
        f"| {r['server_util']:.0%} / {r['client_util']:.0%} "
        f"| {r['rss_start_kb'] / 1024:.0f} / {r['rss_peak_kb'] / 1024:.0f} / "
        f"{r['rss_end_kb'] / 1024:.0f} "
        f"| {r['peak_lag']:,} | {r['answer_ms_p50']:.0f} / {r['answer_ms_p99']:.0f} / "
        f"{r['answer_ms_max']:.0f} | {held} | {closed} | {r['short_open']} "
        f"| {r['drain_s']:.1f}{' ERROR ' + r['error'] if r.get('error') else ''} |"
    )


HEADER = (
    "| variant | accepted pubs/s | deliveries/s | with drain | server / client CPU | RSS MiB "
    "start / peak / end | peak lag (pubs) | answer ms p50 / p99 / max | held back | "
    "disconnects | open but short | drain s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="subscribers (default 3000)")
    p.add_argument("--mode", choices=("closed", "paced"), default="closed")
    p.add_argument("--conns", type=int, default=4, help="publisher connections (default 4)")
    p.add_argument(
        "--inflight",
        type=int,
        default=4,
        help="closed: pipelined requests per connection (default 4)",
    )
    p.add_argument("--burst", type=int, default=1, help="publications per request (default 1)")
    p.add_argument(
        "--rate",
        type=float,
        default=20000.0,
        help="paced: publications offered per second (default 20000)",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="publishing time (<= 20)")
    p.add_argument("--drain", type=float, default=30.0, help="catch-up time after it")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--variants",
        default="slices,noslices",
        help="slices (as shipped), noslices (FLUSH_SLICE 10**9), CONSTANT=INT (a constant "
        "of rtserver/core/writer.py, e.g. FLUSH_HURRY=8), or NAME=TREE (another source tree)",
    )
    p.add_argument("--queue-max-size", type=int, default=None)
    p.add_argument("--json", type=Path, help="every run's result, with its samples")
    args = p.parse_args(argv)
    args.seconds = min(args.seconds, 20.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants: list[tuple[str, Path, dict[str, int]]] = []
    for v in args.variants.split(","):
        name, _, value = v.partition("=")
        if name in VARIANTS:
            variants.append((name, HERE.parent, VARIANTS[name]))
        elif name.isupper() and value.isdigit():  # a writer constant, e.g. FLUSH_HURRY=8
            variants.append((v, HERE.parent, {name: int(value)}))
        elif value:
            variants.append((name, Path(value).resolve(), {}))
        else:
            raise SystemExit(f"unknown variant {v!r}")
    atexit.register(fanout._stop_all)
    signal.signal(signal.SIGTERM, fanout._on_signal)
    signal.signal(signal.SIGINT, fanout._on_signal)
    shape = (
        f"{args.conns} connections x {args.inflight} in flight x {args.burst} pubs/request"
        if args.mode == "closed"
        else f"paced {args.rate:,.0f} pubs/s, {args.burst} pubs/request on {args.conns} connections"
    )
    print(f"# {fanout.machine()}", file=sys.stderr)
    print(f"# N={args.n}, {shape}, {args.seconds:g} s", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="rtoverload-") as tmp:
        for rep in range(args.repeat):
            for name, tree, constants in variants if rep % 2 == 0 else variants[::-1]:
                r = run_once(name, tree, constants, args, Path(tmp))
                r["repeat"] = rep
                print(line(r), file=sys.stderr, flush=True)
                results.append(r)
    print(
        f"\nN={args.n} subscribers, one channel, memory engine; {shape}; "
        f"{args.seconds:g} s publishing\n"
    )
    print(HEADER)
    for r in results:
        print(line(r))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "client":
        client_main(sys.argv[2])
    else:
        sys.exit(main())
