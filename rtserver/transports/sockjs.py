"""Centrifugo's client protocol over SockJS (``/connection/sockjs``).

Each SockJS session feeds one :class:`~rtserver.core.client.Client`: a SockJS message is
one transport frame of newline-delimited JSON commands (``Client.receive``), and each
outbound Payload becomes one SockJS message; a flushed batch goes out as one ``a[...]``
frame. A disconnect is the SockJS close frame ``c[code,"reason"]``. A publication's quoted
form is built once and shared by every SockJS subscriber (``Payload.framed``).

Backpressure: the session registers a :class:`~rtserver.transports.flow.Backpressure`
producer on every receiver (3009 after ``write_timeout`` with a full buffer); messages
waiting for a polling client to come back are bounded by ``client.queue_max_size``
(3008 slow past it).

SockJS carries JSON only, as in Centrifugo. A request that asks for Protobuf (the
``centrifuge-protobuf`` WebSocket subprotocol, or ``format=protobuf`` /
``cf_protocol=protobuf`` in the query) is refused with HTTP 400 "protobuf is not
available over SockJS" instead of being misread as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from rtserver.config import SockJSConfig
from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.ports import ISink
from rtserver.core.writer import Payload
from rtserver.logs import Logger
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.encoding import JSON, websocket_encoding
from rtserver.protocol.sockjs import quote_utf8
from rtserver.sockjs import ISockJSHandler, Session, SockJSOptions, SockJSResource
from rtserver.sockjs.forward import Forwarder
from rtserver.transports.flow import Backpressure
from rtserver.transports.origin import OriginPolicy

__all__ = ["CentrifugeSockJS", "CentrifugeSockJSResource", "SockJSSink", "sockjs_resource"]

_log = Logger()
_SURROGATE = re.compile("[\ud800-\udfff]")


@implementer(ISink)
class SockJSSink:
    """One client's output on a SockJS session."""

    transport_name = "sockjs"
    unidirectional = False
    emulation = False
    pong = True

    def __init__(self, session: Session, max_buffered: int) -> None:
        self._session = session
        self._max_buffered = max_buffered
        self.client: Client | None = None

    def write(self, payloads: Sequence[Payload]) -> None:
        """Send the batch as SockJS messages in one frame."""
        session = self._session
        session.send_quoted([p.framed("sockjs", quote_utf8) for p in payloads])
        if session.buffered_bytes > self._max_buffered and self.client is not None:
            _log.info("sockjs client {client}: receiver gone, queue full", client=self.client.id)
            self.client.close(Disconnect.SLOW)

    def close(self, disconnect: Disconnect | None) -> None:
        """Close the session with the disconnect's code and reason."""
        if disconnect is None:
            self._session.close()
        else:
            self._session.close(disconnect.code, disconnect.reason)


@implementer(ISockJSHandler)
class CentrifugeSockJS:
    """Creates a client per SockJS session and feeds it the session's messages."""

    def __init__(self, node: Node, *, write_timeout: float) -> None:
        self._node = node
        self._write_timeout = write_timeout

    def on_open(self, session: Session) -> None:
        """A client for the new session, with backpressure on its receivers."""
        node = self._node
        if not node.admit():  # connection limits: a reconnect-later close, as HTTP 503 is
            refused = Disconnect.TOO_MANY_REQUESTS
            session.close(refused.code, refused.reason)
            return
        sink = SockJSSink(session, node.config.client.queue_max_size)
        client = node.make_client(sink, headers=session.headers)
        sink.client = client
        session.context = client
        session.register_producer(Backpressure(client, node.clock, self._write_timeout))

    def on_message(self, session: Session, message: str) -> None:
        """One SockJS message: newline-delimited commands."""
        client = session.context
        if client is None:
            return
        try:
            data = message.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (legal in JavaScript strings): U+FFFD, as Go's JSON decoder
            # gives Centrifugo.
            data = _SURROGATE.sub("\ufffd", message).encode("utf-8")
        client.receive(data)

    def on_close(self, session: Session) -> None:
        """The session ended (closed, timed out or aborted): release the client."""
        client, session.context = session.context, None
        session.register_producer(None)
        if client is not None:
            client.transport_lost()


class CentrifugeSockJSResource(SockJSResource):
    """The SockJS endpoint of the client protocol: JSON only, Protobuf refused."""

    def render(self, request: Request) -> Any:
        """Refuse a Protobuf request with 400; serve everything else as SockJS."""
        if wants_protobuf(request):
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"protobuf is not available over SockJS\n"
        return super().render(request)


def wants_protobuf(request: Request) -> bool:
    """Whether a request asks for the Protobuf protocol (subprotocol or query)."""
    header = request.getHeader(b"sec-websocket-protocol")
    offered = [p.strip() for p in header.decode("latin-1").split(",")] if header else []
    query = {
        k.decode("latin-1"): [v.decode("latin-1") for v in vs] for k, vs in request.args.items()
    }
    return websocket_encoding(offered, query)[0] != JSON


def sockjs_resource(
    node: Node,
    config: SockJSConfig,
    origins: OriginPolicy,
    *,
    message_size_limit: int,
    write_timeout: float,
    clock: IReactorTime,
    forwarder: Forwarder | None = None,
) -> SockJSResource:
    """The SockJS endpoint for ``config`` (mount it at ``config.handler_prefix``).

    With ``forwarder`` (``--workers N``), requests of sessions another worker owns are
    relayed to it.
    """
    options = SockJSOptions(
        heartbeat_delay=config.heartbeat_delay,
        disconnect_delay=config.disconnect_delay,
        response_limit=config.response_limit,
        client_url=config.client_url,
        cookie_needed=config.cookie_needed,
        websocket=config.websocket,
        max_message_size=message_size_limit,
    )
    handler = CentrifugeSockJS(node, write_timeout=write_timeout)
    return CentrifugeSockJSResource(
        handler, options, clock=clock, allow_origin=origins.allows, forwarder=forwarder
    )
