"""Unidirectional transports: a connect request in, bare pushes out.

For clients without an SDK: ``curl -N``, a browser ``EventSource``, a plain WebSocket.
The first (and only) client message is a ``ConnectRequest`` (token, subs); the server
answers with a ``{"connect":...}`` push, then publications, joins/leaves, pings ``{}``
and finally a ``{"disconnect":...}`` push.

They speak JSON only, as in Centrifugo: a Protobuf handshake on the unidirectional
WebSocket is refused with HTTP 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.web.server import Request

from rtserver.connections import request_body
from rtserver.core.node import Node
from rtserver.core.writer import Payload
from rtserver.protocol import codec
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.encoding import JSON
from rtserver.protocol.wsframe import text_frame
from rtserver.transports.flow import write_eagerly
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.streaming import CONNECT_PARAM, StreamingResource, sse_frame
from rtserver.transports.websocket import WebSocketFactory, WebSocketProtocol

__all__ = [
    "UniHTTPStreamResource",
    "UniSSEResource",
    "UniWebSocketFactory",
    "UniWebSocketProtocol",
]


class UniHTTPStreamResource(StreamingResource):
    """``POST /connection/uni_http_stream`` with a ConnectRequest body; pushes per line."""

    transport_name = "uni_http_stream"
    unidirectional = True

    def render_POST(self, request: Request) -> Any:
        return self.open(request, request_body(request))


class UniSSEResource(StreamingResource):
    """``GET /connection/uni_sse?cf_connect=<json>`` (or POST): pushes as SSE events."""

    transport_name = "uni_sse"
    unidirectional = True
    content_type = b"text/event-stream; charset=utf-8"
    preamble = b"\r\n"
    frame = staticmethod(sse_frame)

    def render_GET(self, request: Request) -> Any:
        values = request.args.get(CONNECT_PARAM)
        return self.open(request, values[0] if values else b"")

    def render_POST(self, request: Request) -> Any:
        return self.open(request, request_body(request))


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

    def negotiate(self, request: ConnectionRequest) -> tuple[str, str | None]:
        """JSON only: a Protobuf request is refused."""
        encoding, subprotocol = super().negotiate(request)
        if encoding != JSON:
            raise ConnectionDeny(400, "protobuf is not available over the unidirectional WebSocket")
        return encoding, subprotocol

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

    protocol_class = UniWebSocketProtocol

    def __init__(
        self,
        node: Node,
        origins: OriginPolicy,
        *,
        join_push_messages: bool = False,
        **kwargs: Any,  # WebSocketFactory's keywords
    ) -> None:
        super().__init__(node, origins, **kwargs)
        self.join_push_messages = join_push_messages
