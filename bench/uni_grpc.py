"""uni_grpc fan-out: server CPU per delivery next to WebSocket, in the same run.

::

    python bench/uni_grpc.py                     # N=100 consumers, 2000 publications each
    python bench/uni_grpc.py --n 50 --pubs 1000  # smaller

One ``twistd rtserver`` (source tree first on PYTHONPATH, pinned to CPU0) serves both
transports; the consumers run in one asyncio process on CPU1: N ``uni_grpc`` streams
(``grpc.aio``, stubs generated from the schema) in one phase, N centrifuge-protocol JSON
WebSocket connections (``websockets``) in the other, all subscribed to one channel. The
bench then publishes ``--pubs`` publications through the HTTP API in batches of 50 and
waits until every consumer received all of them. The figure is the server's CPU
(user+sys of its process, from the first publish to the last delivery) divided by the
deliveries (N x pubs); the API's own cost is included in both phases alike.
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

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fanout import (  # noqa: E402
    API_KEY,
    HOST,
    _cpus,
    _free_port,
    _spawn,
    _stop,
    machine,
    rtserver_config,
    start_rtserver,
)
from grpc_api import _cpu_seconds  # noqa: E402

CHANNEL = "bench"
BATCH = 50


# --- consumers (their own process) --------------------------------------------------------


async def _grpc_consumers(target: str, n: int, pubs: int) -> None:
    import grpc

    from rtserver.grpcapi.proto import unistream_pb2 as pb
    from rtserver.grpcapi.proto import unistream_pb2_grpc

    ready = asyncio.Event()
    connected = 0
    channel = grpc.aio.insecure_channel(target)
    stub = unistream_pb2_grpc.CentrifugoUniStreamStub(channel)

    async def one() -> None:
        nonlocal connected
        got = 0
        call = stub.Consume(pb.ConnectRequest(subs={CHANNEL: pb.SubscribeRequest()}))
        async for push in call:
            if push.HasField("connect"):
                connected += 1
                if connected == n:
                    ready.set()
            elif push.HasField("pub"):
                got += 1
                if got == pubs:
                    call.cancel()
                    return

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    print("done", flush=True)
    await channel.close()


async def _ws_consumers(url: str, n: int, pubs: int) -> None:
    import websockets

    ready = asyncio.Event()
    connected = 0
    connect = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"' + CHANNEL.encode() \
        + b'"}}'

    async def one() -> None:
        nonlocal connected
        got = 0
        async with websockets.connect(url, compression=None, max_size=None) as ws:
            await ws.send(connect.decode())
            async for message in ws:
                for line in (message if isinstance(message, str) else message.decode()) \
                        .split("\n"):
                    if '"id":2' in line:
                        connected += 1
                        if connected == n:
                            ready.set()
                    elif '"pub"' in line:
                        got += 1
                    elif line == "{}":
                        await ws.send("{}")
                if got >= pubs:
                    return

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print("done", flush=True)


def consumer_main(params: dict[str, Any]) -> None:
    """``--consume``: N consumers of one kind; prints ``ready`` then ``done``."""
    if params["kind"] == "uni_grpc":
        asyncio.run(_grpc_consumers(params["target"], params["n"], params["pubs"]))
    else:
        asyncio.run(_ws_consumers(params["target"], params["n"], params["pubs"]))


# --- the run ------------------------------------------------------------------------------


def phase(kind: str, target: Any, api: str, pid: int, n: int, pubs: int, *,
          script: str = __file__, profile: str = "") -> dict[str, Any]:
    """One fan-out phase; returns the server CPU per delivery.

    The consumers are ``script --consume`` (its ``consumer_main``), on CPU1. With
    ``profile``, py-spy samples the server while it delivers (raw collapsed stacks
    appended to that file; summarise with ``bench/pyspy_top.py``).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    params = json.dumps({"kind": kind, "target": target, "n": n, "pubs": pubs})
    proc = _spawn([sys.executable, script, "--consume", params], _cpus()[1],
                  stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
        if line != b"ready":
            raise SystemExit(f"{kind} consumers failed to connect: {line!r}")
        session = requests.Session()
        session.trust_env = False
        data = {"text": "hello", "n": 1}
        spy = None
        if profile:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw",
                                    "--rate", "250", "--nonblocking", "-o", profile],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches before the measured work starts
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        for start in range(0, pubs, BATCH):
            commands = [{"publish": {"channel": CHANNEL, "data": data}}
                        for _ in range(min(BATCH, pubs - start))]
            session.post(f"{api}/batch", json={"commands": commands},
                         headers={"X-API-Key": API_KEY}, timeout=60).raise_for_status()
        line = proc.stdout.readline().strip()
        cpu1, t1 = _cpu_seconds(pid), time.monotonic()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if line != b"done":
            raise SystemExit(f"{kind} consumers did not finish: {line!r}")
    finally:
        _stop(proc)
    deliveries = n * pubs
    return {"kind": kind, "n": n, "pubs": pubs, "seconds": t1 - t0,
            "cpu_s": cpu1 - cpu0, "us_per_delivery": (cpu1 - cpu0) / deliveries * 1e6,
            "deliveries_per_s": deliveries / (t1 - t0)}


def print_table(command: str, rows: list[dict[str, Any]]) -> None:
    """The machine line, the command that ran and one Markdown row per phase."""
    print(machine())
    print(f"\n`{command}`\n")
    print("| transport | N | publications | server CPU µs / delivery | deliveries/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['n']} | {r['pubs']} | {r['us_per_delivery']:.2f} | "
              f"{r['deliveries_per_s']:,.0f} |")


def main(argv: list[str] | None = None) -> int:
    """Run both phases against one server and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--pubs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="phases alternate per round")
    parser.add_argument("--consume", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consume:
        consumer_main(json.loads(args.consume))
        return 0
    port, uni_port = _free_port(), _free_port()
    config = {
        **rtserver_config(None),
        "client": {"allow_anonymous_connect_without_token": True, "allowed_origins": ["*"]},
        "uni_grpc": {"enabled": True, "address": HOST, "port": uni_port,
                     "max_concurrent_streams": max(128, args.n)},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_rtserver(Path(tmp), config, port, _cpus()[0], also_wait=(uni_port,))
        try:
            api = f"http://{HOST}:{port}/api"
            for _ in range(args.rounds):
                rows.append(phase("websocket", f"ws://{HOST}:{port}/connection/websocket",
                                  api, proc.pid, args.n, args.pubs))
                rows.append(phase("uni_grpc", f"{HOST}:{uni_port}", api, proc.pid,
                                  args.n, args.pubs))
        finally:
            _stop(proc)
    print_table(f"python bench/uni_grpc.py --n {args.n} --pubs {args.pubs} "
                f"--rounds {args.rounds}", rows)
    return 0

if __name__ == "__main__":
    sys.exit(main())
