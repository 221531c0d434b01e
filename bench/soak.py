"""Soak test: steady churn against a real ``twistd -n rtserver``; fails if it leaks.

Starts ``twistd -n rtserver`` (memory engine, source tree first on PYTHONPATH) on a
free loopback port and runs, for ``--minutes`` (default 30), a steady bounded mix:

* churn: WebSocket clients connect with a valid token, subscribe to two channels, try
  a third (over ``client.channel_limit`` = 2: error 106), read publications for 1-4 s
  and leave (``--churn`` per second);
* refused logins (``--refused`` per second, rotating): bad signature (3500), expired
  token (error 109), no token (3501), broken JSON (3501), binary frame (3506);
* publications through ``/api/publish`` on keep-alive connections (``--publish``/s);
* API errors (``--api-errors``/s, rotating): unknown namespace (102), missing field
  (107), unknown method (404/104), broken JSON body, wrong key (401), history where none
  is kept (108).

Every ``--sample`` seconds (default 60) it reads the server's RSS (``VmRSS`` of
``/proc/<pid>/status``), open fds (``/proc/<pid>/fd``) and the node's live clients,
channels and subscriptions (API ``info``), and prints a row. After ``--warmup`` minutes
(default 5, or a third of a shorter run) the first sample is the baseline; the run
fails (exit 1) if the last sample's RSS exceeds it by more than ``--rss-tolerance-mb``
(default 16 MiB) or ``--rss-tolerance-pct`` (default 10 %) of it, whichever is larger,
or its fds by more than ``--fd-tolerance`` (default 50). After the load stops it waits
for the connections to close and checks the idle server is back to zero clients and to
its pre-load fd count (+ ``--fd-tolerance``). Exit 2 when the server died or logged a
traceback.

Usage::

    python3 bench/soak.py                        # 30 minutes, the defaults
    python3 bench/soak.py --minutes 4 --sample 30 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt
import websockets

REPO = Path(__file__).resolve().parent.parent


def config(secret: str, api_key: str) -> dict[str, Any]:
    """The soak server's configuration (memory engine)."""
    return {
        "log": {"level": "warn"},
        "client": {
            "token": {"hmac_secret_key": secret},
            "allowed_origins": [],
            "channel_limit": 2,
        },
        "http_api": {"key": api_key},
        "channel": {
            "namespaces": [
                {
                    "name": "soak",
                    "allow_subscribe_for_client": True,
                    "presence": True,
                    "join_leave": True,
                    "force_push_join_leave": True,
                    "history_size": 10,
                    "history_ttl": "60s",
                    "force_recovery": True,
                },
                {"name": "bare"},
            ]
        },
    }


# --- the server ------------------------------------------------------------------------


def free_port() -> int:
    """A currently unused loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd() -> str:
    """The twistd next to this interpreter, else the one on PATH."""
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if found is None:
        raise SystemExit(f"no twistd next to {sys.executable} nor on PATH")
    return found


def start_server(workdir: Path, cfg: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    """``twistd -n rtserver`` on 127.0.0.1:``port``; returns once it listens."""
    path = workdir / "soak.json"
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTSERVER_", "CENTRIFUGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [twistd(), "-n", "--pidfile=", "rtserver", "--config", str(path),
           "-l", f"tcp:{port}:interface=127.0.0.1"]  # fmt: skip
    with (workdir / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rtserver exited with {proc.returncode}: see {workdir}/server.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("rtserver did not listen within 30 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_status(pid: int) -> dict[str, int]:
    """RSS (KiB), open fds and threads of ``pid`` from /proc."""
    out = {"rss_kib": 0, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_kib"] = int(line.split()[1])
        elif line.startswith("Threads:"):
            out["threads"] = int(line.split()[1])
    return out


# --- a minimal keep-alive HTTP/1.1 client ----------------------------------------------


class HTTPConnection:
    """One keep-alive connection to the API; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        """Status and body of ``POST path``; reconnects when the server closed."""
        async with self.lock:
            for attempt in (0, 1):
                if self.writer is None or self.reader is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                try:
                    self.writer.write(head.encode() + body)
                    status_line = await self.reader.readline()
                    if not status_line:
                        raise ConnectionError("closed")
                    headers: dict[str, str] = {}
                    while (line := await self.reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        headers[name.strip().lower()] = value.strip()
                    data = await self.reader.readexactly(int(headers.get("content-length", 0)))
                    if headers.get("connection", "").lower() == "close":
                        self.close()
                    return int(status_line.split()[1]), data
                except (ConnectionError, asyncio.IncompleteReadError):
                    self.close()
                    if attempt:
                        raise
                except BaseException:
                    # Cancelled (the caller's deadline) or failed mid-exchange: the answer
                    # may still arrive and would be read as the next request's, so this
                    # connection cannot be reused.
                    self.close()
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop the connection."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- the load --------------------------------------------------------------------------


@dataclass
class Sample:
    """One row of the table."""

    minute: float
    rss_mib: float
    fds: int
    threads: int
    clients: int
    channels: int
    subs: int
    ops: int


class Soak:
    """The load generators and the counters they keep."""

    def __init__(self, port: int, secret: str, api_key: str, args: argparse.Namespace) -> None:
        self.port = port
        self.secret = secret
        self.key = api_key
        self.args = args
        self.ws_url = f"ws://127.0.0.1:{port}/connection/websocket"
        self.outcomes: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.running = True
        self.live: set[asyncio.Task[None]] = set()
        self.api = [HTTPConnection(port) for _ in range(8)]
        self.api_cycle = itertools.cycle(self.api)
        self.rng = random.Random(7)

    def token(self, user: str, ttl: float = 3600, secret: str | None = None) -> str:
        claims = {"sub": user, "exp": int(time.time() + ttl)}
        return jwt.encode(claims, secret or self.secret, algorithm="HS256")

    def note(self, kind: str, ok: bool, detail: str = "") -> None:
        self.outcomes[kind] += 1
        if not ok:
            self.unexpected[f"{kind}: {detail}"[:120]] += 1

    async def steady(self, rate: float, make: Callable[[int], Awaitable[None]]) -> None:
        """Start ``make(i)`` ``rate`` times a second (open loop, bounded in flight)."""
        if rate <= 0:
            return
        interval = 1.0 / rate
        limit = asyncio.Semaphore(max(8, int(rate * 8)))
        start = time.monotonic()
        for i in itertools.count():
            if not self.running:
                return
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if limit.locked():
                self.outcomes[f"{make.__name__} skipped (too many in flight)"] += 1
                continue

            async def run(i: int = i) -> None:
                async with limit:
                    try:
                        await asyncio.wait_for(make(i), 30)
                    except Exception as e:  # counted; the soak goes on
                        self.note(make.__name__, False, f"{type(e).__name__} {e}")

            task = asyncio.ensure_future(run())
            self.live.add(task)
            task.add_done_callback(self.live.discard)

    # -- WebSocket ------------------------------------------------------------------------

    async def churn(self, i: int) -> None:
        """Connect, subscribe twice (third over the limit), read for 1-4 s, leave."""
        async with websockets.connect(self.ws_url, open_timeout=10, close_timeout=5) as ws:
            await ws.send(json.dumps({"id": 1, "connect": {"token": self.token(f"u{i % 50}")}}))
            subs = [f"soak:c{i % 20}", f"soak:d{i % 7}", f"soak:e{i % 3}"]
            await ws.send(
                "\n".join(
                    json.dumps({"id": n + 2, "subscribe": {"channel": ch}})
                    for n, ch in enumerate(subs)
                )
            )
            replies: dict[int, Any] = {}
            answered = time.monotonic() + 10  # all four replies, however busy the box
            hold = 1 + 3 * self.rng.random()  # then read publications for 1-4 s
            deadline = answered
            while time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
                except TimeoutError:
                    break
                for line in str(raw).split("\n"):
                    msg = json.loads(line)
                    if msg.get("id"):
                        replies[msg["id"]] = msg
                        if len(replies) == 4 and deadline == answered:
                            deadline = time.monotonic() + hold
                    elif msg == {}:
                        await ws.send("{}")
            ok = (
                "connect" in replies.get(1, {})
                and "subscribe" in replies.get(2, {})
                and "subscribe" in replies.get(3, {})
                and replies.get(4, {}).get("error", {}).get("code") == 106
            )
            self.note("churn", ok, json.dumps(replies)[:100])

    async def refused(self, i: int) -> None:
        """A login the server must refuse, five kinds in turn."""
        kind = i % 5
        async with websockets.connect(self.ws_url, open_timeout=10, close_timeout=5) as ws:
            if kind == 0:
                frame: str | bytes = json.dumps(
                    {"id": 1, "connect": {"token": self.token("x", secret="wrong" * 8)}}
                )
                expect = ("close", 3500)
            elif kind == 1:
                frame = json.dumps({"id": 1, "connect": {"token": self.token("x", ttl=-60)}})
                expect = ("error", 109)
            elif kind == 2:
                frame = json.dumps({"id": 1, "connect": {}})
                expect = ("close", 3501)
            elif kind == 3:
                frame = '{"id":1,"connect":{"token":'
                expect = ("close", 3501)
            else:
                frame = b"\x00\x01binary"
                expect = ("close", 3506)
            await ws.send(frame)
            try:
                raw = await asyncio.wait_for(ws.recv(), 10)
                got: tuple[str, Any] = ("error", json.loads(raw).get("error", {}).get("code"))
            except websockets.ConnectionClosed as closed:
                got = ("close", closed.rcvd.code if closed.rcvd else None)
            self.note(f"refused/{expect[0]} {expect[1]}", got == expect, f"got {got}")

    # -- API ------------------------------------------------------------------------------

    async def publish(self, i: int) -> None:
        """One publication into a channel the churning clients use."""
        body = json.dumps({"channel": f"soak:c{i % 20}", "data": {"n": i, "pad": "x" * 64}})
        status, data = await next(self.api_cycle).post("/api/publish", body.encode(), self.key)
        self.note("publish", status == 200 and b'"result"' in data, f"{status} {data[:60]!r}")

    async def api_error(self, i: int) -> None:
        """One API request the server must refuse, six kinds in turn."""
        conn = next(self.api_cycle)
        kind = i % 6
        cases: list[tuple[str, bytes, str, Callable[[int, bytes], bool]]] = [
            ("/api/publish", b'{"channel":"nope:x","data":1}', self.key,
             lambda s, d: s == 200 and b'"code":102' in d),
            ("/api/publish", b'{"data":1}', self.key,
             lambda s, d: s == 200 and b'"code":107' in d),
            ("/api/nope", b"{}", self.key, lambda s, d: s in (200, 404)),
            ("/api/publish", b'{"channel":', self.key,
             lambda s, d: s == 400 or (s == 200 and b'"code":107' in d)),
            ("/api/publish", b'{"channel":"soak:a","data":1}', "wrong-key",
             lambda s, d: s == 401),
            ("/api/history", b'{"channel":"bare:x"}', self.key,
             lambda s, d: s == 200 and b'"code":108' in d),
        ]  # fmt: skip
        path, body, key, check = cases[kind]
        status, data = await conn.post(path, body, key)
        self.note(f"api error {path} #{kind}", check(status, data), f"{status} {data[:60]!r}")

    async def info(self) -> dict[str, int]:
        """The node's counts from the API ``info`` method."""
        conn = HTTPConnection(self.port)
        try:
            _, data = await conn.post("/api/info", b"{}", self.key)
        finally:
            conn.close()
        node = json.loads(data)["result"]["nodes"][0]
        return {"clients": node["num_clients"], "channels": node["num_channels"],
                "subs": node["num_subs"]}  # fmt: skip

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        for conn in self.api:
            conn.close()


def rss_limit(base_mib: float, args: argparse.Namespace) -> float:
    """The largest RSS (MiB) accepted after warm-up."""
    return base_mib + max(args.rss_tolerance_mb, base_mib * args.rss_tolerance_pct / 100)


def slope(samples: Sequence[Sample], attr: str) -> float:
    """Least-squares growth of ``attr`` per minute over ``samples``."""
    if len(samples) < 2:
        return 0.0
    xs = [s.minute for s in samples]
    ys = [float(getattr(s, attr)) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def soak(proc: subprocess.Popen[bytes], port: int, args: argparse.Namespace,
               secret: str, key: str) -> tuple[list[Sample], dict[str, Any]]:  # fmt: skip
    """Run the load and the sampler; returns the samples and the final checks."""
    load = Soak(port, secret, key, args)
    idle_before = proc_status(proc.pid)
    started = time.monotonic()
    generators = [
        asyncio.ensure_future(load.steady(args.churn, load.churn)),
        asyncio.ensure_future(load.steady(args.refused, load.refused)),
        asyncio.ensure_future(load.steady(args.publish, load.publish)),
        asyncio.ensure_future(load.steady(args.api_errors, load.api_error)),
    ]
    samples: list[Sample] = []
    header = (f"{'min':>6} {'RSS MiB':>8} {'fds':>5} {'thr':>4} {'clients':>8} "
              f"{'channels':>8} {'subs':>6} {'ops':>8}  unexpected")  # fmt: skip
    print(header, flush=True)
    end = started + args.minutes * 60
    next_sample = started + args.sample
    while time.monotonic() < end:
        await asyncio.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
        if proc.poll() is not None:
            break
        if time.monotonic() >= next_sample:
            next_sample += args.sample
            st = proc_status(proc.pid)
            counts = await load.info()
            sample = Sample(
                minute=round((time.monotonic() - started) / 60, 2),
                rss_mib=round(st["rss_kib"] / 1024, 1),
                fds=st["fds"],
                threads=st["threads"],
                ops=sum(load.outcomes.values()),
                **counts,
            )
            samples.append(sample)
            print(f"{sample.minute:>6} {sample.rss_mib:>8} {sample.fds:>5} {sample.threads:>4} "
                  f"{sample.clients:>8} {sample.channels:>8} {sample.subs:>6} {sample.ops:>8}  "
                  f"{sum(load.unexpected.values())}", flush=True)  # fmt: skip
    load.stop()
    for g in generators:
        g.cancel()
    if load.live:
        await asyncio.wait(load.live, timeout=40)
    load.close()
    # the load has stopped: every connection must go away and the fds come back
    idle_after = proc_status(proc.pid)
    counts = {"clients": -1}
    for _ in range(30):
        if proc.poll() is not None:
            break
        counts = await load.info()
        idle_after = proc_status(proc.pid)
        if counts["clients"] == 0 and idle_after["fds"] <= idle_before["fds"] + args.fd_tolerance:
            break
        await asyncio.sleep(1)
    final = {
        "idle_before": idle_before,
        "idle_after": {**idle_after, **counts},
        "outcomes": dict(load.outcomes),
        "unexpected": dict(load.unexpected),
    }
    return samples, final


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 flat, 1 growth, 2 server died or logged a traceback."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, help="minutes (default: min(5, minutes/3))")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--churn", type=float, default=20.0, help="client sessions per second")
    parser.add_argument("--refused", type=float, default=20.0, help="refused logins per second")
    parser.add_argument("--publish", type=float, default=50.0, help="API publications per second")
    parser.add_argument("--api-errors", type=float, default=20.0, help="API errors per second")
    parser.add_argument("--rss-tolerance-mb", type=float, default=16.0)
    parser.add_argument("--rss-tolerance-pct", type=float, default=10.0)
    parser.add_argument("--fd-tolerance", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write samples and checks here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(5.0, args.minutes / 3)

    secret = "soak-" + uuid.uuid4().hex
    key = "api-" + uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="rtserver-soak-"))
    port = free_port()
    proc = start_server(workdir, config(secret, key), port)
    print(f"rtserver pid {proc.pid} on 127.0.0.1:{port}; {args.minutes:g} min, warm-up "
          f"{warmup:g} min; per second: {args.churn:g} sessions, {args.refused:g} refused "
          f"logins, {args.publish:g} publications, {args.api_errors:g} API errors; "
          f"log {workdir}/server.log", flush=True)  # fmt: skip
    try:
        samples, final = asyncio.run(soak(proc, port, args, secret, key))
    finally:
        died = proc.poll() is not None
        stop_server(proc)
    log = (workdir / "server.log").read_text(errors="replace")
    tracebacks = log.count("Traceback (most recent call last)")

    verdict = 0
    after = [s for s in samples if s.minute >= warmup]
    lines = []
    if died:
        lines.append("FAIL: the server died during the run")
        verdict = 2
    if tracebacks:
        lines.append(f"FAIL: {tracebacks} traceback(s) in the server log")
        verdict = 2
    if len(after) >= 2:
        base, last = after[0], after[-1]
        limit = rss_limit(base.rss_mib, args)
        growth = {
            "rss_mib": round(last.rss_mib - base.rss_mib, 1),
            "fds": last.fds - base.fds,
            "rss_mib_per_min": round(slope(after, "rss_mib"), 2),
            "fds_per_min": round(slope(after, "fds"), 2),
        }
        final["growth_after_warmup"] = growth
        lines.append(
            f"after warm-up (minute {base.minute} -> {last.minute}): RSS {base.rss_mib} -> "
            f"{last.rss_mib} MiB (limit {limit:.1f}, slope {growth['rss_mib_per_min']} MiB/min),"
            f" fds {base.fds} -> {last.fds} (limit {base.fds + args.fd_tolerance}, "
            f"slope {growth['fds_per_min']}/min)"
        )
        if last.rss_mib > limit:
            lines.append("FAIL: RSS grew after warm-up beyond the tolerance")
            verdict = verdict or 1
        if last.fds > base.fds + args.fd_tolerance:
            lines.append("FAIL: open fds grew after warm-up beyond the tolerance")
            verdict = verdict or 1
    else:
        lines.append("too few samples after warm-up to judge growth (lengthen --minutes)")
    before, idle = final["idle_before"], final["idle_after"]
    lines.append(
        f"idle before load: {before['fds']} fds, {before['rss_kib'] // 1024} MiB; after load: "
        f"{idle['fds']} fds, {idle['rss_kib'] // 1024} MiB, {idle['clients']} clients"
    )
    if idle["clients"] != 0 or idle["fds"] > before["fds"] + args.fd_tolerance:
        lines.append("FAIL: connections or fds left after the load stopped")
        verdict = verdict or 1
    total = sum(final["outcomes"].values())
    bad = sum(final["unexpected"].values())
    lines.append(f"operations: {total}, unexpected outcomes: {bad}")
    for name, n in sorted(final["outcomes"].items()):
        lines.append(f"  {name:<40} {n}")
    for name, n in sorted(final["unexpected"].items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"  unexpected x{n}: {name}")
    print("\n".join(lines))
    if args.json:
        payload = {"args": vars(args), "warmup": warmup, "samples": [asdict(s) for s in samples],
                   **final, "tracebacks": tracebacks, "verdict": verdict}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    if args.keep or verdict:
        print(f"server log kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return verdict


if __name__ == "__main__":
    sys.exit(main())
