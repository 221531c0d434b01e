"""The HTTP/2 layer's CPU per unary call on the bytes a real grpcio client sends.

::

    python bench/grpc_h2_replay.py [calls]              # default 3000, no deadline
    python bench/grpc_h2_replay.py --deadline [calls]   # timeout=10 on every call
    python bench/grpc_h2_replay.py --client grpc-js [--deadline] [calls]
    python bench/grpc_h2_replay.py --client grpc-go [--deadline] [calls]
    python bench/grpc_h2_replay.py ... --reads FILE [--repeat N]

``--reads FILE``: the recorded reads are kept in FILE (pickled), or taken from it when it
exists, so two trees can be measured on the same bytes; ``--repeat N`` replays them N
times, each into a fresh connection, and prints each.

A grpcio client (a thread of this process), or with ``--client grpc-js`` Node's
@grpc/grpc-js (``bench/grpc_h2_replay.mjs``, packages from tests/interop/node_modules),
or with ``--client grpc-go`` grpc-go 1.33 (tests/interop/go/grpc_api_client.go, built
from Debian's golang-go and golang-google-grpc-dev into a temporary directory, fed one
call at a time), makes ``calls`` sequential unary ``Publish`` calls against the reactor server
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
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

import grpc
from grpc_h2_floor import ConstantDispatch
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtserver.grpcapi.api import SERVICE_NAME
from rtserver.grpcapi.h2server import GRPCH2Factory, GRPCH2Protocol, H2GRPCService


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


def _grpc_go(port: int, calls: int, deadline: bool) -> None:
    import json

    from gogrpc import build_go_client

    with tempfile.TemporaryDirectory() as build:
        binary = build_go_client(Path(build))
        line = json.dumps({"id": 0, "method": "Publish", "request": "0a0161120131",
                           "metadata": {"authorization": "apikey k"},
                           "timeout_ms": 10_000 if deadline else 0}) + "\n"
        proc = subprocess.Popen([str(binary), f"127.0.0.1:{port}"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        for _ in range(calls):  # one call at a time, as the other clients make them
            proc.stdin.write(line)
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            if "response" not in answer:
                raise RuntimeError(f"grpc-go call failed: {answer}")
        proc.stdin.close()
        proc.wait(timeout=30)


CLIENTS = {"grpcio": _grpcio, "grpc-js": _grpc_js, "grpc-go": _grpc_go}


def record(calls: int, deadline: bool, client_name: str = "grpcio") -> list[bytes]:
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
            CLIENTS[client_name](service.port, calls, deadline)
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


def main(calls: int, deadline: bool, client: str, reads_file: str = "", repeat: int = 1) -> None:
    if reads_file and os.path.exists(reads_file):
        with open(reads_file, "rb") as f:
            reads = pickle.load(f)
    else:
        reads = record(calls, deadline, client)
        if reads_file:
            with open(reads_file, "wb") as f:
                pickle.dump(reads, f)
    shape = "timeout=10 per call" if deadline else "no deadline"
    for _ in range(repeat):
        factory = GRPCH2Factory(ConstantDispatch(), Clock())  # type: ignore[arg-type]
        server = factory.buildProtocol(None)
        server.makeConnection(StringTransport())
        started = time.process_time()
        for data in reads:
            server.dataReceived(data)
        spent = time.process_time() - started
        print(f"{calls} {client} calls, {shape} ({len(reads)} reads): {spent / calls * 1e6:.1f} µs "
              f"of CPU per unary call in the HTTP/2 layer (replayed)")


if __name__ == "__main__":
    argv = sys.argv[1:]

    def option(name: str, default: str) -> str:
        if name not in argv:
            return default
        at = argv.index(name)
        value = argv[at + 1]
        del argv[at : at + 2]
        return value

    client = option("--client", "grpcio")
    if client not in CLIENTS:
        raise SystemExit(f"--client: one of {', '.join(CLIENTS)}")
    reads_file = option("--reads", "")
    repeat = int(option("--repeat", "1"))
    deadline = "--deadline" in argv
    args = [a for a in argv if a != "--deadline"]
    main(int(args[0]) if args else 3000, deadline, client, reads_file, repeat)
