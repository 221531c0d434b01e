"""Long-lived HTTP responses as client sinks (HTTP-streaming and SSE).

A :class:`ResponseSink` writes each flushed batch with one ``request.write`` (chunked on
HTTP/1.1, raw until close on HTTP/1.0), registers backpressure with the channel, and
turns a disconnect into a ``disconnect`` push followed by the end of the response. When
the peer goes away the client is released at once: no timers or sessions outlive the
request.

A Protobuf stream (HTTP-streaming opened with ``Content-Type: application/octet-stream``)
writes the varint-delimited messages back to back; JSON streams write one message per
line (HTTP-streaming) or per event (SSE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.ports import ISink
from rtserver.core.writer import Payload
from rtserver.logs import Logger
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.encoding import JSON, OCTET_STREAM, PROTOBUF, codec_for
from rtserver.transports.flow import Backpressure

__all__ = [
    "ResponseSink",
    "StreamingResource",
    "line_frame",
    "prepare_stream",
    "sse_frame",
]

_log = Logger()

#: Query parameter carrying the initial commands / connect request of GET streams.
CONNECT_PARAM = b"cf_connect"

_NO_CACHE = b"private, no-cache, no-store, must-revalidate, max-age=0"


def line_frame(data: bytes) -> bytes:
    """HTTP-streaming framing: one JSON message per line."""
    return data + b"\n"


def sse_frame(data: bytes) -> bytes:
    """Server-Sent Events framing: one ``data:`` event per message."""
    return b"data: " + data + b"\n\n"


def prepare_stream(request: Request, content_type: bytes) -> None:
    """Headers of a streaming response: no caching, no proxy buffering."""
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", _NO_CACHE)
    request.setHeader(b"Pragma", b"no-cache")
    request.setHeader(b"Expire", b"0")
    request.setHeader(b"X-Accel-Buffering", b"no")
    if request.clientproto == b"HTTP/1.1":
        request.setHeader(b"Connection", b"keep-alive")


def request_headers(request: Request) -> dict[str, str]:
    """The request's headers as a str mapping (last value wins)."""
    out = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = values[-1].decode("latin-1")
    return out


@implementer(ISink)
class ResponseSink:
    """One client's output on a streaming HTTP response."""

    def __init__(
        self,
        request: Request,
        *,
        transport_name: str,
        frame: Callable[[bytes], bytes],
        unidirectional: bool,
        emulation: bool,
        encoding: str = JSON,
    ) -> None:
        self.transport_name = transport_name
        self.encoding = encoding
        self._codec = codec_for(encoding)
        self.unidirectional = unidirectional
        self.emulation = emulation
        self.pong = emulation
        self._request = request
        # Protobuf messages carry their own length prefix: no framing
        self._frame = None if encoding == PROTOBUF else frame
        self._kind = transport_name
        self._finished = False
        self._backpressure: Backpressure | None = None
        self.client: Client | None = None
        request.notifyFinish().addBoth(self._ended)

    def start(self, node: Node, write_timeout: float) -> Client:
        """Create the client and take over backpressure of the response."""
        request = self._request
        client = node.make_client(self, headers=request_headers(request), encoding=self.encoding)
        self.client = client
        self._backpressure = Backpressure(client, node.clock, write_timeout)
        request.registerProducer(self._backpressure, True)
        return client

    def write(self, payloads: Sequence[Payload]) -> None:
        """Frame the batch and write it in one go."""
        if self._finished:
            return
        kind, frame = self._kind, self._frame
        if frame is None:
            self._request.write(b"".join(p.data for p in payloads))
        else:
            self._request.write(b"".join(p.framed(kind, frame) for p in payloads))

    def close(self, disconnect: Disconnect | None) -> None:
        """Send the disconnect push, then end the response."""
        if self._finished:
            return
        if disconnect is not None:
            push = self._codec.encode_disconnect(disconnect, uni=self.unidirectional)
            self._request.write(push if self._frame is None else self._frame(push))
        self._finished = True
        self._release()
        self._request.finish()

    def _release(self) -> None:
        if self._backpressure is not None:
            self._backpressure.stopProducing()
            self._backpressure = None
            if self._request.channel is not None:  # None once the connection is lost
                self._request.unregisterProducer()

    def _ended(self, result: Any) -> None:
        """The response is over: finished by us, or the peer went away."""
        if not self._finished:
            self._finished = True
            self._release()
        client = self.client
        self.client = None
        if client is not None:
            client.transport_lost()


class StreamingResource(Resource):
    """Base of the streaming endpoints: one long-lived response per connection.

    Subclasses set the class attributes and call :meth:`open` from their ``render_*``
    methods with the request's initial data (commands, or a unidirectional connect
    request).
    """

    isLeaf = True
    transport_name = ""
    content_type = b"application/json"
    preamble = b""
    unidirectional = False
    frame = staticmethod(line_frame)

    def __init__(self, node: Node, *, write_timeout: float = 1.0) -> None:
        super().__init__()
        self._node = node
        self._write_timeout = write_timeout

    def open(self, request: Request, data: bytes, encoding: str = JSON) -> Any:
        """Start the response, create the client and hand it ``data`` (in ``encoding``)."""
        if not self._node.admit():
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"connection limit reached\n"
        binary = encoding == PROTOBUF
        prepare_stream(request, OCTET_STREAM.encode() if binary else self.content_type)
        sink = ResponseSink(
            request,
            transport_name=self.transport_name,
            frame=self.frame,
            unidirectional=self.unidirectional,
            emulation=not self.unidirectional,
            encoding=encoding,
        )
        client = sink.start(self._node, self._write_timeout)
        request.write(self.preamble)  # headers go out now: clients wait for them
        if self.unidirectional:
            client.start_unidirectional(data)
        else:
            client.receive(data)
        return NOT_DONE_YET
