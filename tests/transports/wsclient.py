"""A small Autobahn WebSocket client for transport tests: records frames and the close."""

from __future__ import annotations

from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred, DeferredQueue


class RecordingClient(WebSocketClientProtocol):  # type: ignore[misc]
    """Collects received frames; exposes Deferreds for open and close."""

    factory: ClientFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.binary.append(isBinary)
        self.factory.frames.put(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"refused: {code} {reason}"))
        self.factory.closed.callback((code, reason))

    def send_json(self, *commands: dict[str, Any]) -> None:
        self.sendMessage(b"\n".join(orjson.dumps(c) for c in commands))


class ClientFactory(WebSocketClientFactory):  # type: ignore[misc]
    protocol = RecordingClient

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.opened: Deferred[RecordingClient] = Deferred()
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()
        self.frames: DeferredQueue[bytes] = DeferredQueue()
        #: Whether each frame received was binary, in order.
        self.binary: list[bool] = []

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(reason)

    async def next_messages(self) -> list[Any]:
        """The decoded messages of the next frame (a frame may hold several)."""
        frame = await self.frames.get()
        return [orjson.loads(line) for line in frame.split(b"\n") if line]


def connect(url: str, **kwargs: Any) -> ClientFactory:
    """Start connecting; await ``factory.opened`` for the protocol."""
    factory = ClientFactory(url, **kwargs)
    factory.setProtocolOptions(openHandshakeTimeout=5, closeHandshakeTimeout=2)
    connectWS(factory)
    return factory
