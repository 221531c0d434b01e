"""Naive Autobahn/Twisted broadcast server: the baseline for ``bench/fanout.py``.

One port, like rtserver: a ``twisted.web`` Site with a ``WebSocketResource`` at
``/connection/websocket`` and ``POST /publish``. A WebSocket client that sends a text
message containing ``subscribe`` joins the (single) subscriber set and gets
``{"id":2,"subscribe":{}}`` back. ``POST /publish`` takes one publication per line
(``{"channel": ..., "data": ...}``); each is JSON-encoded once into the same push envelope
rtserver sends (``{"push":{"channel":...,"pub":{"data":...}}}``) and written with
``sendMessage(payload)`` to every subscriber: the naive way (a frame built per
subscriber, Twisted's deferred write, no bound on buffered output).

With ``--mode eager`` the same server is a *floor* reference instead: the push's frame is
built once and sent with one ``socket.send()`` per subscriber when nothing is buffered
(docs/performance.rst, "Where the time goes"), with no
queueing, coalescing or bookkeeping: what one syscall per delivery costs under this load.

Run: ``python bench/baseline_autobahn.py --port 8001 [--interface 127.0.0.1] [--mode eager]``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from typing import Any, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, tcp
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

SUBSCRIBED = b'{"id":2,"subscribe":{}}'


class BroadcastProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """A subscriber connection."""

    factory: BroadcastFactory

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary and b"subscribe" in payload:
            self.factory.subscribers.add(self)
            self.sendMessage(SUBSCRIBED)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.subscribers.discard(self)


class BroadcastFactory(WebSocketServerFactory):  # type: ignore[misc]
    """Holds the subscriber set."""

    protocol = BroadcastProtocol  # type: ignore[assignment]

    def __init__(self, eager: bool = False) -> None:
        super().__init__()
        self.subscribers: set[BroadcastProtocol] = set()
        self.eager = eager
        self.setProtocolOptions(autoPingInterval=0, tcpNoDelay=True, webStatus=False)

    def broadcast(self, channel: str, data: Any) -> None:
        """Encode the push once, then ``sendMessage`` it to every subscriber."""
        payload = json.dumps(
            {"push": {"channel": channel, "pub": {"data": data}}}, separators=(",", ":")
        ).encode("utf-8")
        if self.eager:
            self._send_eagerly(text_frame(payload))
            return
        for proto in tuple(self.subscribers):
            proto.sendMessage(payload)

    def _send_eagerly(self, frame: bytes) -> None:
        """One ``send()`` per subscriber of a frame built once (the floor reference)."""
        size = len(frame)
        for proto in tuple(self.subscribers):
            transport: Any = proto.transport
            if type(transport) is tcp.Server and not (
                transport.dataBuffer or transport._tempDataBuffer
            ):
                try:
                    sent = transport.socket.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == size:
                    continue
                transport.write(frame[sent:])
            else:
                transport.write(frame)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


class PublishResource(Resource):
    """``POST /publish``: one ``{"channel","data"}`` object per line."""

    isLeaf = True  # noqa: N815

    def __init__(self, factory: BroadcastFactory) -> None:
        super().__init__()
        self._factory = factory

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        count = 0
        for line in request.content.read().split(b"\n"):
            if not line.strip():
                continue
            msg = json.loads(line)
            self._factory.broadcast(msg["channel"], msg["data"])
            count += 1
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"result":{"published":%d}}' % count


def build_site(eager: bool = False) -> Site:
    """The resource tree: ``/connection/websocket`` and ``/publish``."""
    factory = BroadcastFactory(eager)
    # cast: without the zope plugin mypy cannot see that these provide IResource
    root = Resource()
    connection = Resource()
    connection.putChild(b"websocket", cast(Any, WebSocketResource(factory)))
    root.putChild(b"connection", cast(Any, connection))
    root.putChild(b"publish", cast(Any, PublishResource(factory)))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def main(argv: list[str] | None = None) -> None:
    """Listen and run the reactor until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--mode", choices=("naive", "eager"), default="naive")
    args = parser.parse_args(argv)
    site = build_site(eager=args.mode == "eager")
    the_reactor: Any = reactor
    the_reactor.listenTCP(args.port, site, interface=args.interface)
    print(f"{args.mode} server on {args.interface}:{args.port}", file=sys.stderr, flush=True)
    the_reactor.run()


if __name__ == "__main__":
    main()
