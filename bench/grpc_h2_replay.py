"""The HTTP/2 layer's CPU per unary call on the bytes a real grpcio client sends.

::

    python bench/grpc_h2_replay.py [calls]              # default 3000, no deadline
    python bench/grpc_h2_replay.py --deadline [calls]   # timeout=10 on every call
    python bench/grpc_h2_replay.py --client grpc-js [--deadline] [calls]

A grpcio client (a thread of this process), or with ``--client grpc-js`` Node's
@grpc/grpc-js (``bench/grpc_h2_replay.mjs``, packages from tests/interop/node_modules),
makes ``calls`` sequential unary ``Publish`` calls against the reactor server
(:class:`rtserver.grpcapi.h2server.H2GRPCService` on a loopback port) while every read
the server gets is recorded: the client's own HPACK encoding (its ``grpc-timeout``
values with a deadline), its pings and window updates.
The recorded reads are then fed again to a fresh server connection in process, over an
in-memory transport with a dispatch that answers at once: the CPU time of that replay
per call is the HTTP/2 layer alone, as ``bench/grpc_h2_floor.py`` measures it for an
``h2`` client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtserver.grpcapi.api import SERVICE_NAME, Reply
from rtserver.grpcapi.h2server import GRPCH2Factory, GRPCH2Protocol, H2GRPCService


class ConstantDispatch:
    """Answers every ``Publish`` at once with an empty ``PublishResponse`` result."""

    methods = ["Publish"]

    def authorized(self, metadata: Any) -> bool:
        return True

    def call(self, method: str, request: bytes, metadata: Any) -> Deferred[Reply]:
        return succeed(Reply(0, "", b"\x12\x00"))


def _grpcio(port: int, calls: int, deadline: bool) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        publish = channel.unary_unary(f"/{SERVICE_NAME}/Publish")
        for _ in range(calls):
            publish(b"\x0a\x01a\x12\x011", metadata=[("authorization", "apikey k")],
                    timeout=10 if deadline else None)


def _grpc_js(port: int, calls: int, deadline: bool) -> None:
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PROTO=str(here.parent / "rtserver/grpcapi/proto/api.proto"),
               TARGET=f"127.0.0.1:{port}", N=str(calls), DEADLINE="1" if deadline else "0")
    subprocess.run(["node", str(here / "grpc_h2_replay.mjs")], env=env, check=True,
                   timeout=300)


def record(calls: int, deadline: bool, js: bool = False) -> list[bytes]:
    """Run the grpcio client against the server; every read the server got."""
    reads: list[bytes] = []
    received = GRPCH2Protocol.dataReceived

    def recording(self: GRPCH2Protocol, data: bytes) -> None:
        reads.append(bytes(data))
        received(self, data)

    GRPCH2Protocol.dataReceived = recording  # type: ignore[method-assign]
    factory = GRPCH2Factory(ConstantDispatch(), reactor)  # type: ignore[arg-type]
    service = H2GRPCService("bench", factory, reactor, address="127.0.0.1")
    service.startService()
    failed: list[BaseException] = []

    def client() -> None:
        try:
            (_grpc_js if js else _grpcio)(service.port, calls, deadline)
        except BaseException as e:  # reported after the reactor stops
            failed.append(e)
        finally:
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    threading.Thread(target=client).start()
    reactor.run()  # type: ignore[attr-defined]
    GRPCH2Protocol.dataReceived = received  # type: ignore[method-assign]
    if failed:
        raise SystemExit(f"the client failed: {failed[0]!r}")
    return reads


def main(calls: int, deadline: bool, js: bool) -> None:
    reads = record(calls, deadline, js)
    factory = GRPCH2Factory(ConstantDispatch(), Clock())  # type: ignore[arg-type]
    server = factory.buildProtocol(None)
    server.makeConnection(StringTransport())
    started = time.process_time()
    for data in reads:
        server.dataReceived(data)
    spent = time.process_time() - started
    shape = "timeout=10 per call" if deadline else "no deadline"
    client = "grpc-js" if js else "grpcio"
    print(f"{calls} {client} calls, {shape} ({len(reads)} reads): {spent / calls * 1e6:.1f} µs "
          f"of CPU per unary call in the HTTP/2 layer (replayed)")


if __name__ == "__main__":
    argv = sys.argv[1:]
    js = "--client" in argv and argv[argv.index("--client") + 1] == "grpc-js"
    args = [a for a in argv if a not in ("--deadline", "--client", "grpc-js", "grpcio")]
    main(int(args[0]) if args else 3000, "--deadline" in argv, js)
