"""What the HTTP/2 layer alone costs per unary GRPC call (the reactor server, in process).

::

    python bench/grpc_h2_floor.py [calls]            # default 5000
    python bench/grpc_h2_floor.py --deadline [calls] # each call with its grpc-timeout
    PROFILE=1 python bench/grpc_h2_floor.py          # cProfile of the server side

An ``h2`` client connection prepares ``calls`` unary ``Publish`` requests (HEADERS with
the metadata a grpcio client sends, one DATA frame); with ``--deadline`` each carries a
``grpc-timeout`` of its own, as a client that sets deadlines sends it (a literal with
incremental indexing: every header block changes the HPACK table). The server protocol
(:class:`rtserver.grpcapi.h2server.GRPCH2Protocol`) over an in-memory transport parses
each one and answers it (headers, one message, trailers). The dispatch answers at once
with a constant reply, so the CPU time per call is the gRPC-over-HTTP/2 work alone: the
floor of a unary call on this server, whatever the command costs.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtserver.grpcapi.api import SERVICE_NAME, Reply
from rtserver.grpcapi.h2server import GRPCH2Factory


class ConstantDispatch:
    """Answers every ``Publish`` at once with an empty ``PublishResponse`` result."""

    methods = ["Publish"]

    def authorized(self, metadata: Any) -> bool:
        return True

    def call(self, method: str, request: bytes, metadata: Any) -> Deferred[Reply]:
        return succeed(Reply(0, "", b"\x12\x00"))


def _ended_streams(wire: bytes) -> int:
    """HEADERS frames with END_STREAM (trailers: one per answered call) in ``wire``."""
    count, at = 0, 0
    while at + 9 <= len(wire):
        length = int.from_bytes(wire[at:at + 3], "big")
        kind, flags = wire[at + 3], wire[at + 4]
        if kind == 1 and flags & 1:
            count += 1
        at += 9 + length
    return count


def main(calls: int, deadline: bool = False) -> None:
    factory = GRPCH2Factory(ConstantDispatch(), Clock())  # type: ignore[arg-type]
    server = factory.buildProtocol(None)
    transport = StringTransport()
    server.makeConnection(transport)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server.dataReceived(client.data_to_send())
    client.receive_data(transport.value())
    transport.clear()
    server.dataReceived(client.data_to_send())
    headers = [(b":method", b"POST"), (b":scheme", b"http"),
               (b":path", f"/{SERVICE_NAME}/Publish".encode()), (b":authority", b"x"),
               (b"content-type", b"application/grpc"), (b"te", b"trailers"),
               (b"authorization", b"apikey k"), (b"user-agent", b"grpc-python/1.85")]
    message = b"\x0a\x01a\x12\x011"
    body = struct.pack(">BI", 0, len(message)) + message
    requests = []
    for _ in range(calls):
        sid = client.get_next_available_stream_id()
        timeout = [(b"grpc-timeout", b"%dm" % (10_000 - sid % 1000))] if deadline else []
        client.send_headers(sid, headers + timeout)
        client.send_data(sid, body, end_stream=True)
        requests.append(client.data_to_send())
        client.streams.pop(sid, None)  # the client never reads: keep its state small
    started = time.process_time()
    if os.environ.get("PROFILE"):
        import cProfile

        cProfile.runctx("for chunk in requests: server.dataReceived(chunk)", globals(),
                        {"requests": requests, "server": server}, sort="tottime")
    else:
        for chunk in requests:
            server.dataReceived(chunk)
    spent = time.process_time() - started
    answered = _ended_streams(transport.value())
    shape = "with a grpc-timeout each" if deadline else "without deadline"
    print(f"{calls} calls {shape} ({answered} answered): {spent / calls * 1e6:.1f} µs of CPU "
          f"per unary call in the HTTP/2 layer")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--deadline"]
    main(int(args[0]) if args else 5000, "--deadline" in sys.argv[1:])
