"""The WebSocket transports on Autobahn: SockJS-framed sessions and raw ``/websocket``.

``<prefix>/<server>/<session>/websocket`` carries frames as text messages (``o``,
``a[...]``, ``h``, ``c[...]``); its sessions are never registered, so two sockets with the
same session id are two sessions. ``<prefix>/websocket`` is a plain WebSocket for
non-browser clients: each text message is one application message and an application
close is a WebSocket close with that code and reason. Hixie-76 (pre-RFC 6455) handshakes
are refused by Autobahn with 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer

from rtserver._compat import preset_protocol_options
from rtserver.connections import (
    Consumer,
    OpenConnections,
    take_over_producer,
    websocket_server_options,
)
from rtserver.logs import Logger
from rtserver.protocol import sockjs as frames
from rtserver.sockjs.http import same_origin
from rtserver.sockjs.session import Session, SessionRegistry, State

__all__ = ["RawSession", "RawWebSocketFactory", "SockJSWebSocketFactory"]

_log = Logger()


class _Base(WebSocketServerProtocol):
    """Origin check, header capture and producer registration shared by both kinds."""

    factory: _Factory
    _headers: dict[str, str]
    _producing = False

    def onConnect(self, request: ConnectionRequest) -> None:
        origin = request.headers.get("origin")
        same = same_origin(origin, request.headers.get("host"))
        if not same and not self.factory.allow_origin(origin):
            _log.info("sockjs websocket from origin {origin} refused", origin=origin)
            raise ConnectionDeny(403, "origin not allowed")
        self._headers = {k: v for k, v in request.headers.items() if isinstance(v, str)}

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause ``producer`` while the socket's send buffer is full."""
        self._producing = take_over_producer(self.transport, producer)
        if not self._producing:
            _log.debug("transport does not accept a producer")

    def unregister_producer(self) -> None:
        """Stop reporting buffer state."""
        transport = self.transport
        if self._producing and isinstance(transport, Consumer):
            self._producing = False
            transport.unregisterProducer()


class FramedWebSocket(_Base):
    """One SockJS session over one WebSocket; the protocol is the session's receiver."""

    factory: SockJSWebSocketFactory
    session: Session | None = None

    def onOpen(self) -> None:
        self.factory.opened(self)
        session = self.factory.registry.new_websocket_session(self._headers)
        self.session = session
        session.attach(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        try:
            messages = frames.decode_ws_message(payload.decode("utf-8"))
        except (frames.FramingError, UnicodeDecodeError):
            # Terminate at once, as the sockjs-protocol suite expects: a WebSocket close
            # saying why, no SockJS close frame, nothing buffered delivered.
            self.unregister_producer()
            self.sendClose(3000, "Broken framing.")
            session.expire()
            return
        session.deliver(messages)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.receiver_lost(self)
        self.factory.closed(self)

    def send_frame(self, frame: bytes) -> bool:
        """Send the frame as one text message."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(frame, False)
        return True

    def finish(self) -> None:
        """Close the socket (after a close frame, or at shutdown)."""
        self.unregister_producer()
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(1000)


class RawSession:
    """The application's view of a raw WebSocket: same calls as :class:`Session`."""

    transport = "websocket-raw"

    def __init__(self, protocol: RawWebSocket, headers: dict[str, str]) -> None:
        self.id = ""
        self.headers = headers
        self.context: Any = None
        self.state = State.OPEN
        self.buffered_bytes = 0
        self._protocol = protocol

    def send(self, message: str) -> bool:
        """Send one text message."""
        if self.state is not State.OPEN:
            return False
        self._protocol.sendMessage(message.encode("utf-8"), False)
        return True

    def send_quoted(self, quoted: Sequence[bytes]) -> bool:
        """Send already-quoted messages, one text message each."""
        return all(self.send(json.loads(q)) for q in quoted)

    def close(self, code: int = 1000, reason: str = "Normal closure") -> None:
        """Close the WebSocket with this code and reason."""
        if self.state is not State.OPEN:
            return
        self.state = State.CLOSING
        self._protocol.sendClose(code, reason)

    def register_producer(self, producer: IPushProducer | None) -> None:
        """Pause ``producer`` while the socket's send buffer is full."""
        if producer is None:
            self._protocol.unregister_producer()
        else:
            self._protocol.register_producer(producer)

    def expire(self) -> None:
        """Close now (shutdown)."""
        self.close(1000, "Going away")


class RawWebSocket(_Base):
    """``<prefix>/websocket``: application messages are WebSocket messages."""

    factory: RawWebSocketFactory
    session: RawSession | None = None

    def onOpen(self) -> None:
        self.factory.opened(self)
        self.session = RawSession(self, self._headers)
        self.factory.call("on_open", self.session)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None or self.session.state is not State.OPEN:
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self.session.close(3000, "Broken framing.")
            return
        self.factory.call("on_message", self.session, text)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.state = State.CLOSED
            self.factory.call("on_close", session)
        self.factory.closed(self)


class _Factory(WebSocketServerFactory):
    """Common settings and open-connection tracking (drained at shutdown)."""

    #: The connection class; its per-factory subclass becomes ``protocol``.
    protocol_class: type[_Base]

    def __init__(
        self,
        allow_origin: Callable[[str | None], bool],
        *,
        max_message_size: int,
        reactor: Any = None,
    ) -> None:
        super().__init__(reactor=reactor)
        self.allow_origin = allow_origin
        self.connections: OpenConnections[_Base] = OpenConnections(self.reactor)
        self.setProtocolOptions(**websocket_server_options(max_message_size))
        # no per-connection copy and pretty-print of the options
        preset_protocol_options(self, self.protocol_class)

    @property
    def open_connections(self) -> int:
        """How many connections are open."""
        return len(self.connections)

    def opened(self, protocol: _Base) -> None:
        """Track an open connection."""
        self.connections.add(protocol)

    def closed(self, protocol: _Base) -> None:
        """Forget a closed connection."""
        self.connections.discard(protocol)

    def wait_closed(self, timeout: float) -> Deferred[None]:
        """Close every connection; fires when all are gone or after ``timeout``."""
        d = self.connections.wait_empty(timeout)
        for protocol in self.connections:
            if protocol.state == WebSocketServerProtocol.STATE_OPEN:
                protocol.sendClose(1000, "Going away")
        return d


class SockJSWebSocketFactory(_Factory):
    """Framed SockJS WebSocket sessions."""

    protocol_class = FramedWebSocket

    def __init__(self, registry: SessionRegistry, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = registry


class RawWebSocketFactory(_Factory):
    """Raw WebSocket connections for ``handler``."""

    protocol_class = RawWebSocket

    def __init__(self, handler: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handler = handler

    def call(self, name: str, *args: Any) -> None:
        """Call the handler, logging (not raising) its failures."""
        try:
            getattr(self.handler, name)(*args)
        except Exception:
            _log.failure("sockjs raw websocket: {name} failed", name=name)
