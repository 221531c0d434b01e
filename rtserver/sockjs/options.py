"""Settings of one SockJS endpoint."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SockJSOptions"]


@dataclass(frozen=True)
class SockJSOptions:
    """What a :class:`~rtserver.sockjs.resource.SockJSResource` serves and how.

    Attributes:
        heartbeat_delay: Seconds between ``h`` frames while a receiver is attached
            (0 disables them).
        disconnect_delay: Seconds a session survives without a receiver.
        response_limit: Bytes of frames after which a streaming response is ended so the
            client opens a fresh one (the prelude does not count).
        client_url: The sockjs-client script the iframe page loads; empty serves the
            bundled copy at ``<prefix>/sockjs.min.js``.
        cookie_needed: JSESSIONID mode, for load balancers that pin on that cookie.
        websocket: Offer the WebSocket transport (``/info`` reports it).
        raw_websocket: Serve ``<prefix>/websocket`` (plain WebSocket, no framing).
        max_message_size: Largest WebSocket message accepted, in bytes.
    """

    heartbeat_delay: float = 25.0
    disconnect_delay: float = 5.0
    response_limit: int = 128 * 1024
    client_url: str = ""
    cookie_needed: bool = False
    websocket: bool = True
    raw_websocket: bool = True
    max_message_size: int = 65536
