"""Ways to run grpcio beside Twisted, measured under the same GRPC load.

::

    python bench/grpc_designs.py                 # 3 s per phase, 2 rounds (~2 min)
    python bench/grpc_designs.py --seconds 2 --rounds 1

Each design serves ``CentrifugoApi`` ``Publish`` and ``Batch`` in its own process pinned
to CPU0; bench/grpc_api.py's ``grpc.aio`` client drives it from CPU1 (16 calls in
flight, loopback, bounded). Reported: server CPU µs per request (user+sys of the whole
server process, every thread) for unary Publish and for a Batch of 100 publications.

* ``bare-sync`` / ``bare-aio``: grpcio's sync server (8 worker threads) / grpc.aio,
  handlers that answer at once without rtserver: the floor grpcio itself costs.
* ``shipped``: rtserver's design (rtserver/grpcapi): the sync server, each worker hands
  its call to the default (epoll) reactor with ``callFromThread`` and waits on a lock.
* ``aio-thread``: grpc.aio on an asyncio loop in a second thread, calls handed to the
  epoll reactor with ``callFromThread``, results back with ``call_soon_threadsafe``.
* ``aio-reactor``: grpc.aio on Twisted's asyncio reactor: one thread, no hand-off (what
  switching twistd's reactor would give).

The rtserver designs run the real executor on a memory-engine node, publishing to
channels nobody reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

DESIGNS = ["bare-sync", "bare-aio", "shipped", "aio-thread", "aio-reactor"]
SERVICE = "centrifugal.centrifugo.api.CentrifugoApi"


# --- the servers (each runs in its own process: ``--serve DESIGN PORT``) ----------------


def _handlers(publish: Any, batch: Any) -> Any:
    import grpc

    from rtserver.grpcapi.proto import api_pb2 as pb

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Publish": grpc.unary_unary_rpc_method_handler(
            publish, request_deserializer=pb.PublishRequest.FromString,
            response_serializer=pb.PublishResponse.SerializeToString),
        "Batch": grpc.unary_unary_rpc_method_handler(
            batch, request_deserializer=pb.BatchRequest.FromString,
            response_serializer=pb.BatchResponse.SerializeToString),
    })


def serve_bare(port: int, use_aio: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from rtserver.grpcapi.proto import api_pb2 as pb

    def publish(request: Any, context: Any) -> Any:
        return pb.PublishResponse(result=pb.PublishResult())

    def batch(request: Any, context: Any) -> Any:
        return pb.BatchResponse(replies=[pb.Reply(publish=pb.PublishResult())
                                         for _ in request.commands])

    if not use_aio:
        server = grpc.server(ThreadPoolExecutor(8), handlers=[_handlers(publish, batch)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def apublish(request: Any, context: Any) -> Any:
        return publish(request, context)

    async def abatch(request: Any, context: Any) -> Any:
        return batch(request, context)

    async def main() -> None:
        server = grpc.aio.server(handlers=[_handlers(apublish, abatch)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def _executor(reactor: Any) -> Any:
    from rtserver.api.executor import APIExecutor
    from rtserver.config import from_mapping
    from rtserver.service import build_node

    node = build_node(from_mapping({"http_api": {"key": "k"}}), reactor)
    node.start()
    return APIExecutor(node)


def serve_shipped(port: int) -> None:
    from twisted.internet import reactor

    from rtserver.config import GRPCAPIConfig, from_mapping
    from rtserver.service import build_grpc_api

    config = from_mapping({"grpc_api": {"enabled": True, "address": "127.0.0.1",
                                        "port": port, "server": "grpcio"}})
    assert isinstance(config.grpc_api, GRPCAPIConfig)
    service = build_grpc_api(_executor(reactor), config, reactor)
    reactor.callWhenRunning(service.startService)
    reactor.run()


def serve_aio(port: int, on_reactor: bool) -> None:
    import threading

    loop = asyncio.new_event_loop()
    if on_reactor:
        asyncio.set_event_loop(loop)
        from twisted.internet import asyncioreactor

        asyncioreactor.install(loop)
    import grpc
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from rtserver.grpcapi import convert

    executor = _executor(reactor)

    def in_reactor(name: str, params: dict[str, Any]) -> Any:
        if on_reactor:
            return Deferred.fromCoroutine(executor.call(name, params)).asFuture(loop)
        future = loop.create_future()

        def start() -> None:
            d = Deferred.fromCoroutine(executor.call(name, params))
            d.addCallback(lambda body: loop.call_soon_threadsafe(future.set_result, body))

        reactor.callFromThread(start)
        return future

    method = convert.METHODS["publish"]

    async def publish(request: Any, context: Any) -> Any:
        return method.respond(await in_reactor("publish", method.params(request)))

    async def batch(request: Any, context: Any) -> Any:
        commands, failed = convert.batch_commands(request)
        body = await in_reactor("batch", {"commands": commands})
        return convert.batch_response(body["replies"], failed, len(request.commands))

    servers: list[Any] = []

    async def start() -> None:
        server = grpc.aio.server(handlers=[_handlers(publish, batch)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)  # a grpc.aio server stops when collected

    if on_reactor:
        reactor.callWhenRunning(lambda: loop.create_task(start()))
    else:
        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(start())
            loop.run_forever()

        threading.Thread(target=run_loop, daemon=True).start()
    reactor.run()


def serve(design: str, port: int) -> None:
    if design in ("bare-sync", "bare-aio"):
        serve_bare(port, design == "bare-aio")
    elif design == "shipped":
        serve_shipped(port)
    else:
        serve_aio(port, design == "aio-reactor")


# --- the driver -------------------------------------------------------------------------


def measure(design: str, seconds: float) -> list[dict[str, Any]]:
    import grpc_api
    from fanout import _cpus, _free_port, _spawn, _stop, _wait_listening

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = _spawn([sys.executable, __file__, "--serve", design, str(port)], _cpus()[0],
                          stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_listening(proc, port, log, timeout=30)
            return grpc_api.run_grpc(f"127.0.0.1:{port}", proc.pid, [1, 100], seconds, 16)
        finally:
            _stop(proc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--designs", default=",".join(DESIGNS))
    args = p.parse_args(argv)
    designs = args.designs.split(",")
    started = time.monotonic()
    got: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so drifting background load hits all alike
        for design in designs:
            for r in measure(design, args.seconds):
                got.setdefault((design, r["burst"]), []).append(r["server_cpu_us_per_request"])
                print(f"{design} x{r['burst']}: {r['server_cpu_us_per_request']:.0f} µs/request",
                      file=sys.stderr)
    from fanout import machine

    print(f"`python bench/grpc_designs.py {' '.join(argv)}`".replace(" `", "`") +
          f" — {time.monotonic() - started:.0f} s, load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {machine()}")
    print()
    print("| design | unary Publish: server CPU µs/request | Batch of 100: µs/publication |")
    print("|---|---|---|")
    for design in designs:
        unary = statistics.median(got[(design, 1)])
        batch = statistics.median(got[(design, 100)]) / 100
        print(f"| {design} | {unary:.0f} | {batch:.1f} |")
    print()
    print(f"(medians of {args.rounds} rounds)")
    print(json.dumps({f"{d}x{b}": v for (d, b), v in got.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
