"""What grpcio itself costs per streamed message: the floor under uni_grpc's cost.

::

    python bench/grpc_stream_floor.py                    # 100 streams x 500 messages, 2 rounds
    python bench/grpc_stream_floor.py --n 10 --m 2000

No rtserver: a bare ``CentrifugoUniStream/Consume`` server whose streams each send ``--m``
pre-encoded 40-byte ``Push`` messages as fast as grpcio takes them, pinned to CPU0, read by
``--n`` ``grpc.aio`` consumers in one process on CPU1. Two servers, alternating per round:

* ``sync``: grpcio's synchronous server (what uni_grpc runs on): a worker thread per
  stream yields the messages; each one is a send batch and a wake-up of that thread.
* ``aio-thread``: ``grpc.aio`` on an asyncio loop in a second thread (what a uni_grpc on
  grpc.aio beside the reactor would run on), messages written in runs of 10 (one
  hand-off from the reactor per run).

Reported: server CPU (user+sys of the process, every thread) per message, and messages/s.
Compare with ``bench/uni_grpc.py``'s uni_grpc row: what is left above this floor is
rtserver's own per-delivery work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fanout import _cpus, _free_port, machine  # noqa: E402
from grpc_api import _cpu_seconds  # noqa: E402

SERVICE = "centrifugal.centrifugo.unistream.CentrifugoUniStream"
#: A publication push as uni_grpc sends it: channel "bench", 25 bytes of JSON data.
MESSAGE = b'\x12\x05bench\x22\x1b\x22\x19{"text":"hello","n":1234}'
RUN = 10


def _serve(mode: str, port: int, m: int) -> None:
    """``--serve``: run one server until stdin closes."""
    import grpc

    if mode == "sync":

        def consume(request: bytes, context: object) -> Iterator[bytes]:
            for _ in range(m):
                yield MESSAGE

        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Consume": grpc.unary_stream_rpc_method_handler(consume)})
        server = grpc.server(ThreadPoolExecutor(128), handlers=[handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
    else:

        async def consume_aio(request: bytes, context: grpc.aio.ServicerContext) -> None:
            for _ in range(m // RUN):
                for _ in range(RUN):
                    await context.write(MESSAGE)

        async def main() -> None:
            handler = grpc.method_handlers_generic_handler(
                SERVICE, {"Consume": grpc.unary_stream_rpc_method_handler(consume_aio)})
            server = grpc.aio.server(handlers=[handler])
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
        time.sleep(1.0)
    print("ready", flush=True)
    sys.stdin.read()


async def _consume(port: int, n: int) -> int:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = channel.unary_stream(f"/{SERVICE}/Consume")

        async def one() -> int:
            count = 0
            async for _ in call(b""):
                count += 1
            return count

        return sum(await asyncio.gather(*[one() for _ in range(n)]))


def _phase(mode: str, n: int, m: int) -> tuple[float, float]:
    port = _free_port()
    server_cpu, client_cpu = _cpus()
    cmd = [sys.executable, __file__, "--serve", mode, str(port), str(m)]
    if server_cpu is not None:
        cmd = ["taskset", "-c", str(server_cpu), *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        got = asyncio.run(asyncio.wait_for(_consume(port, n), 120))
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.kill()
        proc.wait()
    if got != n * m:
        raise SystemExit(f"{mode}: {got} of {n * m} messages arrived")
    return (cpu1 - cpu0) / got * 1e6, got / (t1 - t0)


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="streams")
    parser.add_argument("--m", type=int, default=500, help="messages per stream")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.m -= args.m % RUN
    print(f"`python bench/grpc_stream_floor.py {' '.join(sys.argv[1:])}`; {machine()}\n")
    print("| server | streams | messages | server CPU µs / message | messages/s |")
    print("|---|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in ("sync", "aio-thread"):
            us, rate = _phase(mode, args.n, args.m)
            print(f"| {mode} | {args.n} | {args.n * args.m} | {us:.1f} | {rate:,.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
