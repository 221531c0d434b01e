"""Publishing to N delta subscribers against N plain ones: server CPU per publication.

One node (``rtserver.testing.make_node``, memory engine) with N subscribers whose sinks
are real :class:`~rtserver.transports.websocket.WebSocketProtocol` objects over fake TCP
transports (``send()`` returns at once: the kernel is out, as in ``fanout_path.py``), in
a namespace with history and positioning. Variant *plain*: the subscribers subscribe
without delta and each publication is published plainly. Variant *delta*: the
subscribers subscribe with ``delta: "fossil"`` and each publication is published with
``delta`` (the API flag), so each one is encoded as a fossil delta once and the
subscribers get the small delta frames. Same documents in both (the interop tests'
``edited_document``: ~3.6 KB, one small edit each time), same process, variants
alternated ``--repeat`` times; reported: CPU µs per publication (``node.publish`` and
the reactor turn that flushes it: engine, fan-out, encoding, WebSocket framing) and the
bytes handed to the sockets.

``python bench/delta_fanout.py [--n 1000] [--publications 50] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from deltachains import edited_document
from fanout_path import fake_protocol

from rtserver.testing import make_node

CHANNEL = "docs:bench"


class _CountingSocket:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, data: bytes) -> int:
        self.sent += len(data)
        return len(data)


def measure(n: int, docs: list[bytes], delta: bool) -> tuple[float, int]:
    """CPU µs per publication and bytes sent per publication (all subscribers)."""
    node, clock = make_node(
        {
            "client": {"allow_anonymous_connect_without_token": True, "ping_interval": "0s"},
            "channel": {
                "namespaces": [
                    {
                        "name": "docs",
                        "allow_subscribe_for_client": True,
                        "allow_subscribe_for_anonymous": True,
                        "allowed_delta_types": ["fossil"],
                        "history_size": 10,
                        "history_ttl": "300s",
                        "force_positioning": True,
                    }
                ]
            },
        }
    )
    sub = b',"delta":"fossil"' if delta else b""
    hello = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"%s"%s}}' % (
        CHANNEL.encode(),
        sub,
    )
    sockets = []
    for _ in range(n):
        proto: Any = fake_protocol()
        socket = _CountingSocket()
        proto.transport.socket = socket
        sockets.append(socket)
        node.make_client(proto).receive(hello)
    clock.advance(0)
    if node.hub.num_subscriptions != n:
        raise SystemExit(f"only {node.hub.num_subscriptions} of {n} subscribed")
    for s in sockets:
        s.sent = 0
    cpu = 0.0
    for data in docs:
        t0 = time.process_time()
        d = node.publish(CHANNEL, data, delta=delta)
        clock.advance(0)
        cpu += time.process_time() - t0
        if not d.called:
            raise SystemExit("publish did not complete")
    if any(s.sent == 0 for s in sockets):
        raise SystemExit("a subscriber got nothing")
    return cpu * 1e6 / len(docs), sum(s.sent for s in sockets) // len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--publications", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    docs = edited_document(args.publications)
    size = sum(len(d) for d in docs) // len(docs)
    measure(min(args.n, 100), docs[:5], False)  # warm-up
    results: dict[bool, list[float]] = {False: [], True: []}
    sent: dict[bool, int] = {}
    for _ in range(args.repeat):
        for delta in (False, True):
            us, nbytes = measure(args.n, docs, delta)
            results[delta].append(us)
            sent[delta] = nbytes
            print(
                f"N={args.n} {'delta' if delta else 'plain'}: {us:,.0f} µs/publication, "
                f"{nbytes:,} B sent/publication"
            )
    plain = statistics.median(results[False])
    with_delta = statistics.median(results[True])
    print(
        f"document ~{size:,} B, {args.publications} publications, medians of {args.repeat}: "
        f"plain {plain:,.0f} µs/publication, delta {with_delta:,.0f} µs/publication "
        f"({with_delta / plain:.2f}x); bytes sent {sent[True] / sent[False]:.3f}x"
    )


if __name__ == "__main__":
    main()
