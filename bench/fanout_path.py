"""Pure-Python cost of rtserver's fan-out path, with the kernel taken out.

Builds a node (``rtserver.testing.make_node``) with N real clients whose sinks are real
:class:`~rtserver.transports.websocket.WebSocketProtocol` objects over fake ``tcp.Server``
transports whose ``socket.send`` only returns ``len(data)``. It then times
``Hub.broadcast_publication`` (the enqueue pass) and the next reactor turn (the flush
pass: ``ClientWriter.flush`` -> ``WebSocketProtocol.write`` -> ``write_eagerly``). The
difference between this and ``fanout.py``'s µs/delivery is what the kernel's ``send()``
and memory effects cost.

With ``--protobuf SHARE`` that share of the subscribers speaks Protobuf (binary frames);
the run also counts how many times each publication was encoded (once per wire shape
present: 1 for a single-encoding audience, 2 for a mixed one) and times one encoding of
each shape.

``python bench/fanout_path.py [--n 1000] [--burst 1] [--rounds 200] [--protobuf 0,1,0.5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import tcp
from twisted.internet.task import Clock

from rtserver.core import writer
from rtserver.core.writer import SharedPush
from rtserver.protocol import protobuf
from rtserver.protocol.frames import Publication
from rtserver.testing import make_node
from rtserver.transports.websocket import WebSocketFactory, WebSocketProtocol

DATA = b'{"input":"hello world, this is a benchmark publication payload"}'


class _NullSocket:
    def send(self, data: bytes) -> int:
        return len(data)


def fake_factory(max_messages_in_frame: int = 16, clock: Any = None) -> WebSocketFactory:
    """A factory with only what ``WebSocketProtocol.write`` reads (bounds, join cache).

    ``clock`` runs its per-turn forgetting of joined frames (a fresh ``Clock`` that nobody
    advances when not given). Connections of one node share one factory, as in a server.
    """
    factory: Any = WebSocketFactory.__new__(WebSocketFactory)
    factory.max_messages_in_frame = max_messages_in_frame
    factory.max_frame_bytes = 65536
    factory.joined_text = {}
    factory.joined_binary = {}
    factory._forget_joined = None
    factory.reactor = clock if clock is not None else Clock()
    return factory  # type: ignore[no-any-return]


def fake_protocol(
    max_messages_in_frame: int = 16, encoding: str = "json", factory: Any = None
) -> WebSocketProtocol:
    """An open WebSocketProtocol whose transport takes every eager send whole.

    ``factory``: see :func:`fake_factory` (a new one when not given).
    """
    transport: Any = tcp.Server.__new__(tcp.Server)
    transport.dataBuffer = b""
    transport._tempDataBuffer = []
    transport.connected = 1
    transport.disconnecting = 0
    transport.socket = _NullSocket()
    proto: Any = WebSocketProtocol.__new__(WebSocketProtocol)
    proto.state = WebSocketServerProtocol.STATE_OPEN
    proto.factory = factory if factory is not None else fake_factory(max_messages_in_frame)
    proto.transport = transport
    proto.encoding = encoding
    proto.binary_frames = encoding == "protobuf"
    proto.frame_kind = "ws-binary" if proto.binary_frames else "ws"
    return proto  # type: ignore[no-any-return]


def _pb_frame(*commands: dict[str, Any]) -> bytes:
    out = b""
    for command in commands:
        body = protobuf.encode_message("Command", command)
        out += bytes((len(body),)) + body
    return out


_PB_HELLO = _pb_frame({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "bench"}})
_JSON_HELLO = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench"}}'


def encoding_cost(rounds: int = 20000) -> dict[str, float]:
    """CPU µs of one encoding of a publication push, per wire shape."""
    out = {}
    for shape in (writer.JSON_SHAPE, writer.PB_SHAPE):
        t0 = time.process_time()
        for _ in range(rounds):
            SharedPush.publication("bench", Publication(data=DATA, offset=7)).payload(shape)
        out[shape] = (time.process_time() - t0) * 1e6 / rounds
    return out


def measure(n: int, burst: int, rounds: int, share: float = 0.0) -> tuple[float, float, float]:
    """``(enqueue, flush)`` CPU µs per delivery and encodings per publication."""
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
    factory = fake_factory(clock=clock)
    for i in range(n):
        pb = bool(share) and int((i + 1) * share) > int(i * share)
        encoding = "protobuf" if pb else "json"
        proto = fake_protocol(encoding=encoding, factory=factory)
        client = node.make_client(proto, encoding=encoding)
        client.receive(_PB_HELLO if pb else _JSON_HELLO)
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
    encodings = [0]
    originals = dict(writer.ENCODERS)

    def counted(encode: Any) -> Any:
        def wrapper(push: SharedPush) -> bytes | None:
            encodings[0] += 1
            return encode(push)  # type: ignore[no-any-return]

        return wrapper

    writer.ENCODERS.update({shape: counted(f) for shape, f in originals.items()})
    try:
        run(1)
    finally:
        writer.ENCODERS.update(originals)
    enqueue, flush = run(rounds)
    deliveries = rounds * burst * n
    return enqueue * 1e6 / deliveries, flush * 1e6 / deliveries, encodings[0] / burst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=1, help="publications per reactor turn")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate the shares this many times; medians"
    )
    parser.add_argument(
        "--protobuf",
        type=lambda text: [float(x) for x in text.split(",")],
        default=None,
        help="shares of Protobuf subscribers to run, e.g. 0,1,0.5 (same invocation)",
    )
    args = parser.parse_args()
    shares = args.protobuf if args.protobuf is not None else [0.0]
    totals: dict[float, list[float]] = {share: [] for share in shares}
    for _ in range(args.repeat):
        for share in shares:
            enqueue, flush, encodings = measure(args.n, args.burst, args.rounds, share)
            totals[share].append(enqueue + flush)
            print(
                f"N={args.n} burst={args.burst} protobuf={share:g}: {enqueue + flush:.2f} "
                f"µs/delivery of Python (enqueue pass {enqueue:.2f}, flush pass {flush:.2f}); "
                f"{encodings:g} encodings per publication; send() is a no-op"
            )
    if args.repeat > 1:
        first = statistics.median(totals[shares[0]])
        for share in shares:
            median = statistics.median(totals[share])
            print(
                f"median protobuf={share:g}: {median:.2f} µs/delivery, "
                f"{median / first:.3f}x protobuf={shares[0]:g}"
            )
    if args.protobuf is not None:
        cost = encoding_cost()
        print(
            "one encoding of a publication push: "
            + ", ".join(f"{shape} {us:.2f} µs" for shape, us in cost.items())
        )


if __name__ == "__main__":
    main()
