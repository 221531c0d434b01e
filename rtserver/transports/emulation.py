"""Bidirectional emulation: HTTP-streaming and SSE responses plus ``POST /emulation``.

centrifuge-js sends the connect command in the request that opens the stream; every later
command (subscribe, pongs, ...) arrives through ``/emulation`` carrying the ``session`` and
``node`` from the connect result. Replies and pushes go out on the stream.

As in Centrifugo, ``Content-Type: application/octet-stream`` selects Protobuf: the
HTTP-streaming body holds varint-delimited commands and the stream carries
varint-delimited replies; an ``/emulation`` body is then a Protobuf ``EmulationRequest``
whose ``data`` is the session's command frame. SSE is JSON only: a Protobuf request to
it is refused with HTTP 400.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rtserver.connections import request_body
from rtserver.core.node import Node
from rtserver.logs import Logger
from rtserver.protocol import protobuf
from rtserver.protocol.encoding import PROTOBUF, http_encoding
from rtserver.protocol.frames import ProtocolError
from rtserver.transports.streaming import CONNECT_PARAM, StreamingResource, sse_frame

__all__ = ["EmulationResource", "HTTPStreamResource", "SSEResource"]

_log = Logger()


class HTTPStreamResource(StreamingResource):
    """``POST /connection/http_stream``: commands in the body, replies streamed back."""

    transport_name = "http_stream"

    def render_POST(self, request: Request) -> Any:
        return self.open(request, request_body(request), _encoding(request))


class SSEResource(StreamingResource):
    """``GET /connection/sse?cf_connect=<commands>`` (or POST with them as the body)."""

    transport_name = "sse"
    content_type = b"text/event-stream; charset=utf-8"
    preamble = b"\r\n"
    frame = staticmethod(sse_frame)

    def render_GET(self, request: Request) -> Any:
        values = request.args.get(CONNECT_PARAM)
        if not values or not values[0]:
            return _status(request, 400, b"missing cf_connect\n")
        return self.open(request, values[0])

    def render_POST(self, request: Request) -> Any:
        if _encoding(request) == PROTOBUF:
            return _status(request, 400, b"protobuf is not available over SSE\n")
        return self.open(request, request_body(request))


class EmulationResource(Resource):
    """``POST /emulation``: ``{"session","node","data"}`` feeds commands to a session.

    With ``Content-Type: application/octet-stream`` the body is a Protobuf
    ``EmulationRequest`` (``node``, ``session``, ``data`` bytes).
    """

    isLeaf = True

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def render_POST(self, request: Request) -> Any:
        parsed = _parse_emulation(request)
        if parsed is None:
            return _status(request, 400, b"malformed emulation request\n")
        session, node_id, data = parsed
        answer: list[bytes] = []
        d = self._node.emulate(session, node_id, data)
        done = d.addCallback(_answer, request).addErrback(_unavailable, request)
        done.addCallback(answer.append)
        if answer:  # this node's session: answered within this call
            return answer[0]
        done.addCallback(lambda _: _finish(answer[0], request))
        done.addErrback(lambda f: _log.failure("writing an emulation response failed", f))
        return NOT_DONE_YET


def _encoding(request: Request) -> str:
    content_type = request.getHeader(b"content-type")
    return http_encoding(None if content_type is None else content_type.decode("latin-1"))


def _parse_emulation(request: Request) -> tuple[str, str, bytes] | None:
    """``(session, node, command frame)`` of an ``/emulation`` body, None if malformed."""
    raw = request_body(request)
    if _encoding(request) == PROTOBUF:
        try:
            node_id, session, frame = protobuf.decode_emulation_request(raw)
        except ProtocolError:
            return None
        return session, node_id, frame
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    sid, node, data = body.get("session"), body.get("node"), body.get("data")
    if not isinstance(sid, str) or not isinstance(data, str):
        return None
    if node is not None and not isinstance(node, str):
        return None
    return sid, node or "", data.encode("utf-8", "replace")


def _answer(found: bool, request: Request) -> bytes:
    """204 when the session took the commands, else 404."""
    if not found:
        return _status(request, 404, b"unknown session\n")
    request.setResponseCode(204)
    return b""


def _unavailable(failure: Failure, request: Request) -> bytes:
    _log.failure("forwarding an emulation request failed", failure)
    return _status(request, 503, b"emulation temporarily unavailable\n")


def _finish(body: bytes, request: Request) -> None:
    if request.channel is not None:  # None once the connection is lost
        request.write(body)
        request.finish()


def _status(request: Request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return body
