"""GRPC server API throughput next to the HTTP API fast path, in the same run.

::

    python bench/grpc_api.py                      # 5 s per phase, 16 calls in flight (~1 min)
    python bench/grpc_api.py --seconds 3 --batch 100 --inflight 16
    python bench/grpc_api.py --quick              # smoke run (~20 s)
    python bench/grpc_api.py --servers h2,grpcio --rounds 2   # A/B the GRPC servers

``--servers``: the ``grpc_api.server`` values to run (default ``h2``, the HTTP/2 server
on the reactor; ``grpcio``: grpcio's threaded server). With several, each round runs a
fresh server per value in turn (alternating pairs), each with its own HTTP rows.

One ``twistd rtserver`` (source tree first on PYTHONPATH) serves both APIs, pinned to
CPU0; the load runs on CPU1, loopback only, every phase bounded in time:

* HTTP: bench/loadgen.py's S5 mode (16 keep-alive connections, one request in flight
  each, raw HTTP/1.1): single ``/api/publish``, then ``/api/batch`` of ``--batch``.
* GRPC: a ``grpc.aio`` client process (stubs generated from rtserver's schema) with
  ``--inflight`` concurrent calls on one channel: unary ``Publish``, then ``Batch`` of
  ``--batch`` publish commands.

Every publication goes to a channel nobody reads (no fan-out: the API path alone). The
report gives requests/s, publications/s, server CPU µs per request and per publication
(user+sys of the server process over the measured window) and the client's CPU share
(a phase whose client used > 90% of its core measured the client as much as the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from fanout import (  # noqa: E402
    _cpus,
    _free_port,
    _spawn,
    _stop,
    _stop_all,
    machine,
    start_rtserver,
)

HOST = "127.0.0.1"
API_KEY = "bench-key"
CLIENT_BOUND = 0.9
TARGET_UNARY_RATIO = 0.5
TARGET_BATCH_PUBS = 100_000.0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the GRPC load client (runs in its own process) -------------------------------------


async def _grpc_phase(target: str, batch: int, inflight: int, seconds: float,
                      warmup: float, server_pid: int) -> dict[str, Any]:
    import grpc

    from rtserver.grpcapi.proto import api_pb2 as pb
    from rtserver.grpcapi.proto import api_pb2_grpc

    metadata = (("authorization", f"apikey {API_KEY}"),)
    data = b'{"text":"hello","n":1}'
    if batch > 1:
        request: Any = pb.BatchRequest(commands=[
            pb.Command(publish=pb.PublishRequest(channel=f"bench{i % 8}", data=data))
            for i in range(batch)
        ])
    else:
        request = pb.PublishRequest(channel="bench", data=data)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.CentrifugoApiStub(channel)
        call = stub.Batch if batch > 1 else stub.Publish
        state = {"count": 0, "errors": 0, "measuring": False, "stop": False}

        async def worker() -> None:
            while not state["stop"]:
                reply = await call(request, metadata=metadata, timeout=10)
                failed = (any(r.HasField("error") for r in reply.replies) if batch > 1
                          else reply.HasField("error"))
                if state["measuring"]:
                    state["count"] += 1
                    state["errors"] += failed

        tasks = [asyncio.create_task(worker()) for _ in range(inflight)]
        await asyncio.sleep(warmup)
        cpu0, srv0, t0 = time.process_time(), _cpu_seconds(server_pid), time.monotonic()
        state["measuring"] = True
        await asyncio.sleep(seconds)
        state["measuring"] = False
        cpu1, srv1, t1 = time.process_time(), _cpu_seconds(server_pid), time.monotonic()
        state["stop"] = True
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    elapsed = t1 - t0
    requests = state["count"]
    return {
        "burst": batch,
        "requests_per_s": requests / elapsed,
        "publications_per_s": requests * batch / elapsed,
        "server_cpu_us_per_request": (srv1 - srv0) / max(requests, 1) * 1e6,
        "server_util": (srv1 - srv0) / elapsed,
        "client_util": (cpu1 - cpu0) / elapsed,
        "errors": state["errors"],
    }


def client_main(params: dict[str, Any]) -> None:
    """``--client``: run the GRPC phases and print one JSON line."""
    rows = []
    for batch in params["bursts"]:
        rows.append(asyncio.run(_grpc_phase(
            params["target"], batch, params["inflight"], params["seconds"],
            params["warmup"], params["server_pid"])))
    print(json.dumps(rows))


# --- the run ----------------------------------------------------------------------------


def server_config(grpc_port: int, server: str = "h2") -> dict[str, Any]:
    return {
        "http_api": {"key": API_KEY},
        "grpc_api": {"enabled": True, "address": HOST, "port": grpc_port, "key": API_KEY,
                     "server": server},
        "log": {"level": "warn"},
    }


def run_http(port: int, pid: int, bursts: list[int], seconds: float) -> list[dict[str, Any]]:
    params = {"mode": "http", "kind": "rtserver", "host": HOST, "port": port,
              "api_key": API_KEY, "server_pid": pid, "server_core": _cpus()[0] or -1,
              "bursts": bursts, "http_conns": 16, "seconds": seconds, "warmup_seconds": 1}
    out = _run_child([sys.executable, str(HERE / "loadgen.py"), json.dumps(params)],
                     timeout=2 * len(bursts) * (seconds + 5) + 30)
    result = json.loads(out.strip().splitlines()[-1])
    rows: list[dict[str, Any]] = result.get("shapes") or []
    if not rows:
        raise SystemExit(f"HTTP load generator failed: {result}")
    return rows


def run_grpc(target: str, pid: int, bursts: list[int], seconds: float,
             inflight: int) -> list[dict[str, Any]]:
    params = {"target": target, "server_pid": pid, "bursts": bursts, "seconds": seconds,
              "warmup": 1.0, "inflight": inflight}
    out = _run_child([sys.executable, __file__, "--client", json.dumps(params)],
                     timeout=len(bursts) * (seconds + 20) + 30)
    rows: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
    return rows


def _run_child(cmd: list[str], timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryFile() as out:
        proc = _spawn(cmd, _cpus()[1], stdout=out, stderr=subprocess.PIPE, env=env)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise SystemExit(f"load client timed out after {timeout:.0f}s: {cmd[1]}") from None
        _stop(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0 or not text.strip():
        raise SystemExit(f"load client failed ({proc.returncode}): {err.decode()[-2000:]}")
    return text


def report(args: argparse.Namespace, http: list[dict[str, Any]],
           grpc_rows: list[dict[str, Any]], server: str) -> str:
    lines = [
        f"grpc_api.server: {server}",
        "",
        "| API | publications per request | requests/s | publications/s "
        "| server CPU µs/request | server CPU µs/publication | server util | client util |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(api: str, r: dict[str, Any]) -> str:
        burst = r["burst"]
        rps = r["requests_per_s"]
        us = r.get("server_cpu_us_per_request") or r.get("server_us_per_pub", 0) * burst
        client = r.get("client_util")
        bound = " (client-bound)" if client is not None and client > CLIENT_BOUND else ""
        client_cell = "—" if client is None else f"{client:.0%}{bound}"
        return (f"| {api} | {burst} | {rps:,.0f} | {rps * burst:,.0f} | {us:.1f} "
                f"| {us / burst:.2f} | {r.get('server_util', 0):.0%} | {client_cell} |")

    for r in http:
        lines.append(row("HTTP fast path", r))
    for r in grpc_rows:
        lines.append(row("GRPC", r))
    http_unary = next((r["requests_per_s"] for r in http if r["burst"] == 1), 0.0)
    grpc_unary = next((r["requests_per_s"] for r in grpc_rows if r["burst"] == 1), 0.0)
    grpc_batch = next((r["publications_per_s"] for r in grpc_rows if r["burst"] > 1), 0.0)
    ratio = grpc_unary / http_unary if http_unary else 0.0
    http_us = next((r["server_us_per_pub"] for r in http if r["burst"] == 1), 0.0)
    grpc_us = next((r["server_cpu_us_per_request"] for r in grpc_rows if r["burst"] == 1), 0.0)
    cpu_ratio = http_us / grpc_us if grpc_us else 0.0
    grpc_batch_us = next((r["server_cpu_us_per_request"] / r["burst"] for r in grpc_rows
                          if r["burst"] > 1), 0.0)
    saturated_batch = 1e6 / grpc_batch_us if grpc_batch_us else 0.0
    lines += [
        "",
        f"Server CPU per unary request, HTTP / GRPC: {http_us:.0f} / {grpc_us:.0f} µs = "
        f"{cpu_ratio:.0%}: the requests/s ratio of two saturated servers (target ≥ "
        f"{TARGET_UNARY_RATIO:.0%}: {'met' if cpu_ratio >= TARGET_UNARY_RATIO else 'NOT met'}). "
        f"Measured requests/s ratio: {ratio:.0%} (depends on how hard each client pushed).",
        f"GRPC batch: {grpc_batch:,.0f} publications/s measured, {saturated_batch:,.0f} at "
        f"100% of one core ({grpc_batch_us:.1f} µs each; target ≥ {TARGET_BATCH_PUBS:,.0f}: "
        f"{'met' if saturated_batch >= TARGET_BATCH_PUBS else 'NOT met'}).",
    ]
    errors = sum(r.get("errors", 0) for r in grpc_rows)
    if errors:
        lines.append(f"GRPC replies with an error: {errors}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        client_main(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--batch", type=int, default=100, help="publications per batch request")
    p.add_argument("--inflight", type=int, default=16, help="GRPC calls in flight")
    p.add_argument("--quick", action="store_true", help="1 s phases")
    p.add_argument("--servers", default="h2", help="grpc_api.server values, comma-separated")
    p.add_argument("--rounds", type=int, default=1, help="rounds over --servers")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = 1.0
    started = time.monotonic()
    parts = []
    for _ in range(args.rounds):
        for server in args.servers.split(","):
            http, grpc_rows = run_server(args, server)
            parts.append(report(args, http, grpc_rows, server))
    command = "python bench/grpc_api.py " + " ".join(sys.argv[1:])
    print(f"`{command.strip()}` — {time.monotonic() - started:.0f} s; {machine()}\n")
    print("\n\n".join(parts))
    return 0


def run_server(args: argparse.Namespace,
               server: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One server process with ``grpc_api.server: server``: its HTTP and GRPC rows."""
    bursts = [1, args.batch]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port, grpc_port = _free_port(), _free_port()
        proc = start_rtserver(workdir, server_config(grpc_port, server), port, _cpus()[0],
                              also_wait=(grpc_port,), listen_options=":backlog=1024")
        try:
            http = run_http(port, proc.pid, bursts, args.seconds)
            grpc_rows = run_grpc(f"{HOST}:{grpc_port}", proc.pid, bursts, args.seconds,
                                 args.inflight)
        finally:
            _stop(proc)
            _stop_all()
    return http, grpc_rows


if __name__ == "__main__":
    sys.exit(main())
