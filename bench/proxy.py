"""Backend proxies: connects/s through the HTTP connect proxy vs token auth, and the latency
a subscribe/publish proxy call adds, in one run against one ``twistd -n rtserver``.

The server is pinned to CPU0; the backend (``proxy_backend.py``, keep-alive HTTP on asyncio)
and this load client to CPU1. Connect phase: ``--connects`` WebSocket connections, ``--inflight``
at a time, each doing the handshake, one ``connect`` command (a JWT, or no token and a
session Cookie for the connect proxy), waiting for the reply and closing. Server and backend
CPU (user+sys from ``/proc``) are read around each phase: "server µs/connect" is the main
metric (1e6 / it = connects/s one server core sustains). Latency phase: one connection
sends ``--ops`` subscribe+unsubscribe pairs and ``--ops`` publishes one at a time, in a
namespace with the subscribe and publish proxies and in one without; the difference of the
percentiles is what the proxy call adds.

Run: ``python bench/proxy.py [--connects 4000 --inflight 32 --ops 2000]``; prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-proxy-secret-0123456789abcdef0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """User+system seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def pinned(cmd: list[str], cpu: int) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset is None or (os.cpu_count() or 1) < 2:
        return cmd
    return [taskset, "-c", str(cpu), *cmd]


def config(backend: str) -> dict[str, Any]:
    def proxy(path: str) -> dict[str, Any]:
        return {"endpoint": f"{backend}{path}", "timeout": "2s"}

    return {
        "log": {"level": "warn"},
        "client": {
            "token": {"hmac_secret_key": SECRET},
            "proxy": {
                "connect": {**proxy("/connect"), "enabled": True, "http_headers": ["Cookie"]}
            },
            "ping_interval": "0s",
        },
        "channel": {
            "proxy": {"subscribe": proxy("/subscribe"), "publish": proxy("/publish")},
            "namespaces": [
                {"name": "plain", "allow_subscribe_for_client": True,
                 "allow_publish_for_client": True},
                {"name": "px", "subscribe_proxy_enabled": True, "publish_proxy_enabled": True},
            ],
        },
        "http_api": {"key": "bench"},
    }


# --- a minimal WebSocket client ----------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """A masked text frame (all-zero mask: the masked bytes are the payload)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    payload = await reader.readexactly(n)
    if b0 & 0x0F == 0x8:
        raise ConnectionError(f"closed: {payload[:2].hex()} {payload[2:]!r}")
    return payload


async def open_ws(
    port: int, cookie: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    writer.write(
        (
            f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return reader, writer


async def one_connect(port: int, token: str, cookie: str) -> None:
    reader, writer = await open_ws(port, cookie)
    try:
        params = {"token": token} if token else {}
        writer.write(frame(json.dumps({"id": 1, "connect": params}).encode()))
        reply = await read_frame(reader)
        if b'"connect"' not in reply:
            raise RuntimeError(reply[:200])
    finally:
        writer.transport.abort()


async def connect_phase(port: int, total: int, inflight: int, mode: str) -> float:
    tokens = [jwt.encode({"sub": f"u{i}"}, SECRET, algorithm="HS256") for i in range(total)]
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            if mode == "token":
                await one_connect(port, tokens[i], "")
            else:
                await one_connect(port, "", f"session=u{i}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - started


async def latency_phase(port: int, ops: int) -> dict[str, list[float]]:
    token = jwt.encode({"sub": "lat"}, SECRET, algorithm="HS256")
    reader, writer = await open_ws(port)
    writer.write(frame(json.dumps({"id": 1, "connect": {"token": token}}).encode()))
    await read_frame(reader)
    out: dict[str, list[float]] = {}
    cmd_id = 1

    async def timed(cmd: dict[str, Any]) -> float:
        nonlocal cmd_id
        cmd_id += 1
        cmd["id"] = cmd_id
        t = time.perf_counter()
        writer.write(frame(json.dumps(cmd).encode()))
        reply = await read_frame(reader)
        elapsed = time.perf_counter() - t
        if b'"error"' in reply:
            raise RuntimeError(reply)
        return elapsed

    for ns in ("plain", "px"):
        subs, pubs = [], []
        for i in range(ops):
            channel = f"{ns}:c{i % 50}"
            subs.append(await timed({"subscribe": {"channel": channel}}))
            await timed({"unsubscribe": {"channel": channel}})
        for i in range(ops):
            pubs.append(await timed({"publish": {"channel": f"{ns}:p", "data": {"n": i}}}))
        out[f"subscribe {ns}"] = subs
        out[f"publish {ns}"] = pubs
    writer.transport.abort()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


# --- the run -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connects", type=int, default=4000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    backend_port, port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend = subprocess.Popen(
            pinned([sys.executable, str(HERE / "proxy_backend.py"), str(backend_port)], 1),
            stdout=subprocess.PIPE,
        )
        procs.append(backend)
        assert backend.stdout is not None and b"ready" in backend.stdout.readline()
        cfg = work / "config.json"
        cfg.write_text(json.dumps(config(f"http://127.0.0.1:{backend_port}")))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        twistd = str(Path(sys.executable).with_name("twistd"))
        server = subprocess.Popen(
            pinned([twistd, "-n", "--pidfile=", "rtserver", "--config", str(cfg),
                    "-l", f"tcp:{port}:interface=127.0.0.1"], 0),
            cwd=work, env=env, stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT,
        )
        procs.append(server)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError((work / "server.log").read_text()) from None
                time.sleep(0.1)

        rows = []
        for mode in ("token", "proxy", "token", "proxy"):  # interleaved: warm-up, then measured
            s0, b0 = proc_cpu(server.pid), proc_cpu(backend.pid)
            wall = asyncio.run(connect_phase(port, args.connects, args.inflight, mode))
            s1, b1 = proc_cpu(server.pid), proc_cpu(backend.pid)
            rows.append((mode, wall, s1 - s0, b1 - b0))
        lat = asyncio.run(latency_phase(port, args.ops))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    measured = rows[2:]
    n = args.connects
    print(f"### Connects ({n} per mode, {args.inflight} in flight; second of two rounds)\n")
    print("| auth | connects/s | server CPU µs/connect | 1 server core → connects/s "
          "| backend CPU µs/connect | backend share of CPU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, wall, server_cpu, backend_cpu in measured:
        per = server_cpu / n * 1e6
        back = backend_cpu / n * 1e6
        share = backend_cpu / (server_cpu + backend_cpu) if server_cpu + backend_cpu else 0.0
        print(f"| {'JWT (HS256)' if mode == 'token' else 'connect proxy (HTTP)'} | "
              f"{n / wall:,.0f} | {per:.0f} | {1e6 / per:,.0f} | {back:.0f} | {share:.0%} |")
    print(f"\n### Command latency, one connection, {args.ops} each (µs)\n")
    print("| command | without proxy p50 / p99 | with proxy p50 / p99 | added p50 / p99 |")
    print("| --- | --- | --- | --- |")
    for cmd in ("subscribe", "publish"):
        plain, px = lat[f"{cmd} plain"], lat[f"{cmd} px"]
        p50a, p99a = pct(plain, 0.5), pct(plain, 0.99)
        p50b, p99b = pct(px, 0.5), pct(px, 0.99)
        print(f"| {cmd} | {p50a:.0f} / {p99a:.0f} | {p50b:.0f} / {p99b:.0f} | "
              f"{p50b - p50a:.0f} / {p99b - p99a:.0f} |")
    added = {
        cmd: 1e6 * (statistics.mean(lat[f"{cmd} px"]) - statistics.mean(lat[f"{cmd} plain"]))
        for cmd in ("subscribe", "publish")
    }
    print(f"\n(mean added: subscribe {added['subscribe']:.0f} µs, "
          f"publish {added['publish']:.0f} µs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
