"""Bidirectional emulation: HTTP-streaming and SSE responses plus ``POST /emulation``.

centrifuge-js sends the connect command in the request that opens the stream; every later
command (subscribe, pongs, ...) arrives through ``/emulation`` carrying the ``session`` and
``node`` from the connect result. Replies and pushes go out on the stream.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rtserver.core.node import Node
from rtserver.transports.streaming import ResponseSink, line_frame, prepare_stream, sse_frame

__all__ = ["EmulationResource", "HTTPStreamResource", "SSEResource"]

_CONNECT_PARAM = b"cf_connect"


class HTTPStreamResource(Resource):
    """``POST /connection/http_stream``: commands in the body, replies streamed back."""

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
            transport_name="http_stream",
            frame=line_frame,
            unidirectional=False,
            emulation=True,
        )
        client = sink.start(self._node, self._write_timeout)
        request.write(b"")  # send the headers now: the client waits for them
        client.receive(body)
        return NOT_DONE_YET


class SSEResource(Resource):
    """``GET /connection/sse?cf_connect=<commands>`` (or POST with them as the body)."""

    isLeaf = True

    def __init__(self, node: Node, *, write_timeout: float = 1.0) -> None:
        super().__init__()
        self._node = node
        self._write_timeout = write_timeout

    def render_GET(self, request: Request) -> Any:
        values = request.args.get(_CONNECT_PARAM)
        if not values or not values[0]:
            request.setResponseCode(400)
            return b"missing cf_connect\n"
        return self._stream(request, values[0])

    def render_POST(self, request: Request) -> Any:
        return self._stream(request, request.content.read())

    def _stream(self, request: Request, commands: bytes) -> Any:
        prepare_stream(request, b"text/event-stream; charset=utf-8")
        sink = ResponseSink(
            request,
            transport_name="sse",
            frame=sse_frame,
            unidirectional=False,
            emulation=True,
        )
        client = sink.start(self._node, self._write_timeout)
        request.write(b"\r\n")
        client.receive(commands)
        return NOT_DONE_YET


class EmulationResource(Resource):
    """``POST /emulation``: ``{"session","node","data"}`` feeds commands to a session."""

    isLeaf = True

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def render_POST(self, request: Request) -> bytes:
        try:
            body = orjson.loads(request.content.read())
        except orjson.JSONDecodeError:
            return _status(request, 400, b"malformed emulation request\n")
        if not isinstance(body, dict):
            return _status(request, 400, b"malformed emulation request\n")
        session, node_id, data = body.get("session"), body.get("node"), body.get("data")
        if not isinstance(session, str) or not isinstance(data, str):
            return _status(request, 400, b"malformed emulation request\n")
        if node_id and node_id != self._node.uid:
            return _status(request, 404, b"unknown node\n")
        client = self._node.hub.by_session(session)
        if client is None or not client.emulation:
            return _status(request, 404, b"unknown session\n")
        client.receive(data)
        request.setResponseCode(204)
        return b""


def _status(request: Request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return body
