"""Pure-Python cost of rtserver's fan-out path, with the kernel taken out.

Builds a node (``rtserver.testing.make_node``) with N real clients whose sinks are real
:class:`~rtserver.transports.websocket.WebSocketProtocol` objects over fake ``tcp.Server``
transports whose ``socket.send`` only returns ``len(data)``. It then times
``Hub.broadcast_publication`` (the enqueue pass) and the next reactor turn (the flush
pass: ``ClientWriter.flush`` -> ``WebSocketProtocol.write`` -> ``write_eagerly``). The
difference between this and ``fanout.py``'s µs/delivery is what the kernel's ``send()``
and memory effects cost.

``python bench/fanout_path.py [--n 1000] [--burst 1] [--rounds 200]``
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import tcp

from rtserver.protocol.frames import Publication
from rtserver.testing import make_node
from rtserver.transports.websocket import WebSocketProtocol

DATA = b'{"input":"hello world, this is a benchmark publication payload"}'


class _NullSocket:
    def send(self, data: bytes) -> int:
        return len(data)


def fake_protocol(max_messages_in_frame: int = 16) -> WebSocketProtocol:
    """An open WebSocketProtocol whose transport takes every eager send whole."""
    transport: Any = tcp.Server.__new__(tcp.Server)
    transport.dataBuffer = b""
    transport._tempDataBuffer = []
    transport.connected = 1
    transport.disconnecting = 0
    transport.socket = _NullSocket()
    proto: Any = WebSocketProtocol.__new__(WebSocketProtocol)
    proto.state = WebSocketServerProtocol.STATE_OPEN
    proto.factory = SimpleNamespace(
        max_messages_in_frame=max_messages_in_frame, max_frame_bytes=65536
    )
    proto.transport = transport
    return proto  # type: ignore[no-any-return]


def measure(n: int, burst: int, rounds: int) -> tuple[float, float]:
    """``(enqueue, flush)`` CPU µs per delivery."""
    node, clock = make_node(
        {
            "client": {"allow_anonymous_connect_without_token": True, "ping_interval": "0s"},
            "channel": {
                "without_namespace": {
                    "allow_subscribe_for_client": True,
                    "allow_subscribe_for_anonymous": True,
                }
            },
        }
    )
    for _ in range(n):
        client = node.make_client(fake_protocol())
        client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench"}}')
    clock.advance(0)
    if node.hub.num_subscriptions != n:
        raise SystemExit(f"only {node.hub.num_subscriptions} of {n} subscribed")
    hub = node.hub

    def run(count: int) -> tuple[float, float]:
        enqueue = flush = 0.0
        for _ in range(count):
            t0 = time.process_time()
            for _ in range(burst):
                hub.broadcast_publication("bench", Publication(data=DATA))
            t1 = time.process_time()
            clock.advance(0)
            t2 = time.process_time()
            enqueue += t1 - t0
            flush += t2 - t1
        return enqueue, flush

    run(max(rounds // 10, 1))  # warm-up
    enqueue, flush = run(rounds)
    deliveries = rounds * burst * n
    return enqueue * 1e6 / deliveries, flush * 1e6 / deliveries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=1, help="publications per reactor turn")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    enqueue, flush = measure(args.n, args.burst, args.rounds)
    print(
        f"N={args.n} burst={args.burst}: {enqueue + flush:.2f} µs/delivery of Python "
        f"(enqueue pass {enqueue:.2f}, flush pass {flush:.2f}); send() is a no-op"
    )


if __name__ == "__main__":
    main()
