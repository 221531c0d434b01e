"""Server API single publish: CPU cost per request of two source trees, same run.

One keep-alive connection (a ``StringTransport``) of the real site (``RTSite`` with
``APIFastPath`` on, the request-head deadline on, the memory engine) is fed ``POST
/api/publish`` requests one ``dataReceived`` at a time, as ``bench/apifront.py`` does in
process. Each tree runs in its own interpreter (``PYTHONPATH=<tree>``), alternating.

Two measures:

* ``instructions``: the process runs under ``valgrind --tool=callgrind`` twice, with
  ``--small`` and ``--large`` measured requests; (Ir(large) - Ir(small)) / (large -
  small) is the instruction count per request with start-up, imports and warm-up
  cancelled out. Instruction counts do not depend on the machine's load.
* ``time``: CPU µs per request (``time.process_time``) over ``--requests`` requests,
  alternating between the trees (noisy on a shared machine: compare pairs).

Usage::

    python3 bench/apifast_callgrind.py --trees base=/tmp/apibase,new=. --repeat 2
    python3 bench/apifast_callgrind.py --trees base=/tmp/apibase,new=. --measure time --repeat 5
    python3 bench/apifast_callgrind.py --run 2000 --shape cent   # one run, this interpreter
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "bench-key"
BODY = b'{"channel":"bench","data":{"n":1}}'

#: Request shapes: ``bench`` is bench/apifront.py's; ``cent`` is what the ``cent`` Python
#: client (requests) sends.
SHAPES = {
    "bench": (
        b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ),
    "cent": (
        b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"User-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\n"
        b"Accept: */*\r\nConnection: keep-alive\r\nX-API-Key: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ),
}


def request_bytes(shape: str) -> bytes:
    return SHAPES[shape] % (KEY.encode(), len(BODY)) + BODY


def run(requests: int, warmup: int, shape: str) -> float:
    """Feed ``warmup`` then ``requests`` publish requests; CPU µs per measured request."""
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from rtserver.api.executor import APIExecutor
    from rtserver.config import from_mapping
    from rtserver.core.node import Node
    from rtserver.engines.memory import MemoryEngine
    from rtserver.web.api import APIResource
    from rtserver.web.apifast import APIFastPath
    from rtserver.web.site import RTSite

    config = from_mapping({"http_api": {"key": KEY}})
    node = Node(MemoryEngine(reactor), config, clock=reactor)
    node.start()
    root = Resource()
    api = APIResource(APIExecutor(node), config.http_api)
    root.putChild(b"api", api)
    limit = config.http_api.max_request_body_size
    site = RTSite(
        root,
        body_limits=[("/api", limit)],
        api_fast_path=APIFastPath(api, "/api", limit),
        read_header_timeout=10.0,
        max_unfinished_heads=1024,
        reactor=reactor,
    )
    proto: Any = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    request = request_bytes(shape)
    for _ in range(warmup):
        proto.dataReceived(request)
    answers = transport.io.getvalue().count(b"HTTP/1.1 200 OK\r\n")
    if answers != warmup:
        raise SystemExit(f"{answers} answers to {warmup} warm-up requests")
    transport.clear()
    started = time.process_time()
    for _ in range(requests):
        proto.dataReceived(request)
    elapsed = time.process_time() - started
    out = transport.io.getvalue()
    answers = out.count(b"HTTP/1.1 200 OK\r\n")
    if answers != requests or out.count(b'{"result":{}}') != requests:
        raise SystemExit(f"{answers} answers to {requests} requests: {out[:300]!r}")
    proto.connectionLost(None)
    site.stopFactory()
    return elapsed / max(requests, 1) * 1e6


def _child(tree: str, args: list[str], valgrind: list[str] | None = None) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(tree).resolve()),
        "PYTHONHASHSEED": "0",
        # Byte code cached outside the trees, so no measured run compiles a module.
        "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "apifast_callgrind_pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [*(valgrind or []), sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def instructions(tree: str, requests: int, warmup: int, shape: str) -> int:
    """Total instructions (Ir) of one child run under callgrind."""
    _child(tree, ["--run", "1", "--warmup", "1"])  # byte-code caches written: no compiling
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        _child(
            tree,
            ["--run", str(requests), "--warmup", str(warmup), "--shape", shape],
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        )
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if match is None:
            raise SystemExit(f"{tree}: no instruction total in the callgrind output")
        return int(match.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--trees",
        default=f"base=/tmp/apibase,new={Path(__file__).parent.parent}",
        help="name=path,... (each tree's rtserver is imported from its path)",
    )
    p.add_argument("--measure", choices=("instructions", "time"), default="instructions")
    p.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    p.add_argument("--small", type=int, default=200, help="callgrind: the short run")
    p.add_argument("--large", type=int, default=2200, help="callgrind: the long run")
    p.add_argument("--requests", type=int, default=20000, help="time: requests per run")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run is not None:
        print(f"{run(args.run, args.warmup, args.shape):.3f}")
        return
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    results: dict[str, list[float]] = {name: [] for name in trees}
    for round_ in range(args.repeat):
        for name, tree in trees.items():
            if args.measure == "instructions":
                small = instructions(tree, args.small, args.warmup, args.shape)
                large = instructions(tree, args.large, args.warmup, args.shape)
                value = (large - small) / (args.large - args.small)
                if value <= 0:
                    raise SystemExit(f"{name}: the long run counted fewer instructions")
                shown = f"{value:,.0f} instructions/request"
            else:
                value = float(
                    _child(
                        tree,
                        [
                            "--run",
                            str(args.requests),
                            "--warmup",
                            str(args.warmup),
                            "--shape",
                            args.shape,
                        ],
                    )
                )
                shown = f"{value:.2f} µs/request"
            results[name].append(value)
            print(f"round {round_ + 1} {name}: {shown}", file=sys.stderr, flush=True)
    names = list(trees)
    unit = "instructions/request" if args.measure == "instructions" else "CPU µs/request"
    print(f"\n{args.measure}, shape {args.shape}, {args.repeat} alternating rounds")
    print(f"| tree | {unit} (median) | each round | vs {names[0]} |\n| --- | --- | --- | --- |")
    first = statistics.median(results[names[0]])
    for name in names:
        med = statistics.median(results[name])
        each = " / ".join(f"{v:,.0f}" if v > 1000 else f"{v:.2f}" for v in results[name])
        print(
            f"| {name} | {med:,.0f} | {each} | {med / first:.3f} |"
            if med > 1000
            else f"| {name} | {med:.2f} | {each} | {med / first:.3f} |"
        )


if __name__ == "__main__":
    main()
