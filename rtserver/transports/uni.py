"""Unidirectional transports: a connect request in, bare pushes out.

For clients without an SDK: ``curl -N``, a browser ``EventSource``, a plain WebSocket.
The first (and only) client message is a ``ConnectRequest`` (token, subs); the server
answers with a ``{"connect":...}`` push, then publications, joins/leaves, pings ``{}``
and finally a ``{"disconnect":...}`` push.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autobahn.websocket.types import ConnectionRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rtserver.core.node import Node
from rtserver.core.writer import Payload
from rtserver.protocol import codec
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.wsframe import text_frame
from rtserver.transports.flow import write_eagerly
from rtserver.transports.streaming import ResponseSink, line_frame, prepare_stream, sse_frame
from rtserver.transports.websocket import WebSocketFactory, WebSocketProtocol

__all__ = [
    "UniHTTPStreamResource",
    "UniSSEResource",
    "UniWebSocketFactory",
    "UniWebSocketProtocol",
]

_CONNECT_PARAM = b"cf_connect"


class UniHTTPStreamResource(Resource):
    """``POST /connection/uni_http_stream`` with a ConnectRequest body; pushes per line."""

    isLeaf = True

    def __init__(self, node: Node, *, write_timeout: float = 1.0) -> None:
        super().__init__()
        self._node = node
        self._write_timeout = write_timeout

    def render_POST(self, request: Request) -> Any:
        body = request.content.read()
        prepare_stream(request, b"application/json")
        sink = ResponseSink(
            request,
            transport_name="uni_http_stream",
            frame=line_frame,
            unidirectional=True,
            emulation=False,
        )
        client = sink.start(self._node, self._write_timeout)
        request.write(b"")
        client.start_unidirectional(body)
        return NOT_DONE_YET


class UniSSEResource(Resource):
    """``GET /connection/uni_sse?cf_connect=<json>`` (or POST): pushes as SSE events."""

    isLeaf = True

    def __init__(self, node: Node, *, write_timeout: float = 1.0) -> None:
        super().__init__()
        self._node = node
        self._write_timeout = write_timeout

    def render_GET(self, request: Request) -> Any:
        values = request.args.get(_CONNECT_PARAM)
        return self._stream(request, values[0] if values else b"")

    def render_POST(self, request: Request) -> Any:
        return self._stream(request, request.content.read())

    def _stream(self, request: Request, connect: bytes) -> Any:
        prepare_stream(request, b"text/event-stream; charset=utf-8")
        sink = ResponseSink(
            request,
            transport_name="uni_sse",
            frame=sse_frame,
            unidirectional=True,
            emulation=False,
        )
        client = sink.start(self._node, self._write_timeout)
        request.write(b"\r\n")
        client.start_unidirectional(connect)
        return NOT_DONE_YET


class UniWebSocketProtocol(WebSocketProtocol):
    """Unidirectional WebSocket: the first text message (or ``?cf_connect=``) connects."""

    transport_name = "uni_websocket"
    unidirectional = True
    pong = False
    factory: UniWebSocketFactory
    _connect: bytes | None = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        protocol = super().onConnect(request)
        values = request.params.get("cf_connect")
        if values:
            self._connect = values[0].encode("utf-8")
        return protocol

    def onOpen(self) -> None:
        super().onOpen()
        if self._connect is not None and self.client is not None:
            self.client.start_unidirectional(self._connect)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        client = self.client
        if client is None or client.connected or self._connect is not None:
            return  # nothing is expected after the connect request
        self._connect = payload
        client.start_unidirectional(payload)

    def write(self, payloads: Sequence[Payload]) -> None:
        """One push per WebSocket message, or newline-joined when configured."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if self.factory.join_push_messages:
            super().write(payloads)
            return
        data = b"".join(p.framed("ws", text_frame) for p in payloads)
        write_eagerly(self.transport, data)

    def close(self, disconnect: Disconnect | None) -> None:
        """A ``disconnect`` push, then the close frame."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if disconnect is not None:
            push = codec.encode_disconnect(disconnect, uni=True)
            write_eagerly(self.transport, text_frame(push))
        super().close(disconnect)


class UniWebSocketFactory(WebSocketFactory):
    """Builds :class:`UniWebSocketProtocol` connections."""

    protocol = UniWebSocketProtocol

    def __init__(self, node: Node, origins: Any, *, join_push_messages: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(node, origins, **kwargs)
        self.join_push_messages = join_push_messages
