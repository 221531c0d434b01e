"""Bidirectional WebSocket transport (``/connection/websocket``) on Autobahn.

Autobahn parses the handshake and inbound frames; outbound frames are built by
:func:`rtserver.protocol.wsframe.text_frame` (JSON) or
:func:`~rtserver.protocol.wsframe.binary_frame` (Protobuf) and written straight to the
TCP transport, so a publication's frame is built once per encoding and shared by every
subscriber.

The encoding is chosen at the handshake (:func:`rtserver.protocol.encoding.websocket_encoding`):
the ``centrifuge-protobuf`` subprotocol or ``?format=protobuf`` / ``?cf_protocol=protobuf``
select Protobuf (binary frames of varint-delimited messages, several per frame); anything
else is JSON (text frames, newline-delimited). A binary frame on a JSON connection closes
it with 3506, a text frame on a Protobuf connection with 3501. On plain TCP,
when nothing is buffered, the frame is sent with one eager ``send()`` instead of
waiting for the reactor's next write pass (docs/performance.rst, "Eager send").
"""

from __future__ import annotations

from collections.abc import Sequence

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from rtserver._compat import preset_protocol_options
from rtserver.connections import OpenConnections, take_over_producer, websocket_server_options
from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.ports import ISink
from rtserver.core.writer import Payload
from rtserver.logs import Logger
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.encoding import JSON, PROTOBUF, websocket_encoding
from rtserver.protocol.wsframe import binary_frame, text_frame
from rtserver.transports.flow import Backpressure, write_eagerly
from rtserver.transports.origin import OriginPolicy

__all__ = ["WebSocketFactory", "WebSocketProtocol"]

_log = Logger()
_OPEN = WebSocketServerProtocol.STATE_OPEN


@implementer(ISink)
class WebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection feeding one :class:`Client`."""

    transport_name = "websocket"
    unidirectional = False
    emulation = False
    pong = True
    factory: WebSocketFactory

    client: Client | None = None
    #: ``json`` or ``protobuf``, from the handshake.
    encoding: str = JSON
    #: Whether frames are binary (Protobuf); set with ``encoding``.
    binary_frames: bool = False
    #: The framing kind cached on shared payloads (:meth:`Payload.framed`).
    frame_kind: str = "ws"
    _backpressure: Backpressure | None = None
    _headers: dict[str, str]

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """Apply the origin policy and connection limits; choose the encoding."""
        factory = self.factory
        origin = request.headers.get("origin")
        if not factory.origins.allows(origin):
            _log.info("websocket from origin {origin} refused", origin=origin)
            raise ConnectionDeny(403, "origin not allowed")
        if not factory.node.admit():
            raise ConnectionDeny(503, "connection limit reached")
        encoding, subprotocol = self.negotiate(request)
        if encoding != JSON:
            self.encoding = encoding
        # instance attributes even when they equal the class defaults: Python 3.11 looks
        # a class attribute up through an instance without its attribute cache
        self.binary_frames = binary = encoding == PROTOBUF
        self.frame_kind = "ws-binary" if binary else "ws"
        self._headers = {k: v for k, v in request.headers.items() if isinstance(v, str)}
        return subprotocol

    def negotiate(self, request: ConnectionRequest) -> tuple[str, str | None]:
        """``(encoding, subprotocol to accept)`` for the upgrade request."""
        return websocket_encoding(request.protocols, request.params)

    def onOpen(self) -> None:
        """Create the client and take over backpressure signalling."""
        client = self.factory.node.make_client(self, headers=self._headers, encoding=self.encoding)
        self.client = client
        # handshake leftovers are not needed once open (memory of idle connections)
        del self._headers
        self.http_headers = {}
        self.http_request_data = b""
        self.http_response_data = ""
        self.factory.opened(self)
        self._backpressure = Backpressure(client, self.factory.reactor, self.factory.write_timeout)
        if not take_over_producer(self.transport, self._backpressure):
            _log.debug("transport does not accept a producer; output is bounded by queue only")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Hand the frame to the client."""
        client = self.client
        if client is None:
            return
        if self.encoding == PROTOBUF:
            if not isBinary:
                client.close(Disconnect.BAD_REQUEST)
                return
        elif isBinary:
            client.close(Disconnect.INAPPROPRIATE_PROTOCOL)
            return
        client.receive(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """The connection is gone: release the client."""
        client = self.client
        if client is not None:
            client.transport_lost()
            self.client = None
            self.factory.closed(self)
        if self._backpressure is not None:
            self._backpressure.stopProducing()

    # --- ISink ---------------------------------------------------------------------------

    def write(self, payloads: Sequence[Payload]) -> None:
        """Frame a batch and write it once (eagerly on an idle plain-TCP socket).

        A frame joins at most ``max_messages_in_frame`` messages and, unless a single
        message is larger, at most ``max_frame_bytes`` bytes.
        """
        if self.state != _OPEN:
            return
        if len(payloads) == 1:
            # Payload.framed without the call when the frame is cached (every subscriber
            # of a publication but the first)
            payload = payloads[0]
            data = payload.frames.get(self.frame_kind)
            if data is None:
                data = payload.framed(
                    self.frame_kind, binary_frame if self.binary_frames else text_frame
                )
        else:
            # every subscriber of a channel usually gets the same batch in a turn: its
            # frames are joined once per turn (the factory's cache, keyed by the payloads)
            factory = self.factory
            batch = tuple(payloads)
            binary = self.binary_frames
            data = (factory.joined_binary if binary else factory.joined_text).get(batch)
            if data is None:
                data = factory.join(batch, binary)
        write_eagerly(self.transport, data)

    def close(self, disconnect: Disconnect | None) -> None:
        """Close with the disconnect's code and reason (a close frame)."""
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if disconnect is None:
            self.sendClose(1000)
        else:
            self.sendClose(disconnect.code, disconnect.reason)


def join_frames(
    payloads: Sequence[Payload], max_messages: int, max_bytes: int, binary: bool = False
) -> bytes:
    """Frames of ``payloads``, bounded in messages and bytes each.

    JSON messages are newline-joined in text frames; Protobuf messages (already
    length-prefixed) are concatenated in binary frames.
    """
    count = len(payloads)
    if count <= max_messages:
        # the common case, one frame: the loop below would not split where the joined
        # messages (counting a separator after each but the last) fit in max_bytes
        if binary:
            body = b"".join([p.data for p in payloads])
            if len(body) + count - 1 <= max_bytes:
                return binary_frame(body)
        else:
            body = b"\n".join([p.data for p in payloads])
            if len(body) <= max_bytes:
                return text_frame(body)
    frame, sep = (binary_frame, b"") if binary else (text_frame, b"\n")
    frames: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for p in payloads:
        if group and (len(group) >= max_messages or size + p.size > max_bytes):
            frames.append(frame(sep.join(group)))
            group = []
            size = 0
        group.append(p.data)
        size += p.size + 1
    frames.append(frame(sep.join(group)))
    return frames[0] if len(frames) == 1 else b"".join(frames)


class WebSocketFactory(WebSocketServerFactory):
    """Builds :class:`WebSocketProtocol` connections for one node."""

    #: The connection class; its per-factory subclass becomes ``protocol``.
    protocol_class: type[WebSocketProtocol] = WebSocketProtocol

    def __init__(
        self,
        node: Node,
        origins: OriginPolicy,
        *,
        message_size_limit: int,
        max_messages_in_frame: int = 16,
        max_frame_bytes: int = 65536,
        write_timeout: float = 1.0,
        close_timeout: float = 5.0,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(reactor=reactor)
        self.node = node
        self.connections: OpenConnections[WebSocketProtocol] = OpenConnections(self.reactor)
        self.origins = origins
        self.max_messages_in_frame = max_messages_in_frame
        self.max_frame_bytes = max_frame_bytes
        #: This turn's joined batches (:meth:`join`), for text and for binary frames.
        self.joined_text: dict[tuple[Payload, ...], bytes] = {}
        self.joined_binary: dict[tuple[Payload, ...], bytes] = {}
        self._forget_joined: IDelayedCall | None = None
        self.write_timeout = write_timeout
        self.setProtocolOptions(**websocket_server_options(message_size_limit, close_timeout))
        # Autobahn would copy ~40 options onto every connection and pretty-print them:
        # a per-factory protocol class holds them instead (memory and CPU per connection)
        options = preset_protocol_options(self, self.protocol_class)
        _log.debug("websocket options: {options}", options=options)

    def join(self, batch: tuple[Payload, ...], binary: bool) -> bytes:
        """The frames of ``batch`` (:func:`join_frames`), kept until the next turn.

        Only batches of shared payloads (pushes several connections get) are kept. The
        key holds the payloads themselves, so an entry cannot be mistaken for the batch
        of payloads created later at the same addresses; the bytes depend on the
        payloads and the factory's bounds only.
        """
        data = join_frames(batch, self.max_messages_in_frame, self.max_frame_bytes, binary)
        if all(p.shared for p in batch):  # a batch with a reply goes to one connection only
            (self.joined_binary if binary else self.joined_text)[batch] = data
            if self._forget_joined is None:
                self._forget_joined = self.reactor.callLater(0, self._forget)
        return data

    def _forget(self) -> None:
        self._forget_joined = None
        self.joined_text = {}
        self.joined_binary = {}

    def opened(self, protocol: WebSocketProtocol) -> None:
        """Track an open connection (for draining at shutdown)."""
        self.connections.add(protocol)

    def closed(self, protocol: WebSocketProtocol) -> None:
        """Forget a closed connection."""
        self.connections.discard(protocol)

    def wait_closed(self, timeout: float) -> Deferred[None]:
        """Fires when every connection has closed, or after ``timeout`` seconds."""
        return self.connections.wait_empty(timeout)
