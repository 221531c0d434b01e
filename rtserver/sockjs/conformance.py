"""Test services for running protocol suites against rtserver.

``/echo`` (response limit 4096), ``/close`` (closes at once with 3000 "Go away!"),
``/disabled_websocket_echo`` and ``/cookie_needed_echo``, as the sockjs-protocol suite
expects them at ``SOCKJS_URL``; :func:`websocket_echo`, a plain WebSocket echo on the
WebSocket options rtserver's own listeners use, for the Autobahn fuzzing suite.
``tac/sockjs-conformance.tac`` serves them all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from rtserver.connections import websocket_server_options
from rtserver.protocol.wsframe import text_frame
from rtserver.sockjs.options import SockJSOptions
from rtserver.sockjs.resource import SockJSResource
from rtserver.sockjs.session import ISockJSHandler, Session

__all__ = ["ECHO_MESSAGE_LIMIT", "Close", "Echo", "WebSocketEcho", "services", "websocket_echo"]

#: The echo WebSocket's message and frame limit: above the Autobahn suite's largest
#: message (16 MiB, cases 9.1.6 and 9.2.6); rtserver's own default is 64 KiB.
ECHO_MESSAGE_LIMIT = 64 * 1024 * 1024


@implementer(ISockJSHandler)
class Echo:
    """Sends every message back."""

    def on_open(self, session: Session) -> None:
        """Nothing to do."""

    def on_message(self, session: Session, message: str) -> None:
        """Echo ``message``."""
        session.send(message)

    def on_close(self, session: Session) -> None:
        """Nothing to do."""


@implementer(ISockJSHandler)
class Close(Echo):
    """Closes every session as soon as it opens."""

    def on_open(self, session: Session) -> None:
        """Close with the conventional test code."""
        session.close(3000, "Go away!")


def services(clock: IReactorTime, **overrides: object) -> dict[str, SockJSResource]:
    """The four services by path segment; ``overrides`` apply to every SockJSOptions."""
    base = replace(SockJSOptions(response_limit=4096), **overrides)  # type: ignore[arg-type]
    return {
        "echo": SockJSResource(Echo(), base, clock=clock),
        "close": SockJSResource(Close(), base, clock=clock),
        "disabled_websocket_echo": SockJSResource(
            Echo(), replace(base, websocket=False), clock=clock
        ),
        "cookie_needed_echo": SockJSResource(
            Echo(), replace(base, cookie_needed=True), clock=clock
        ),
    }


class WebSocketEcho(WebSocketServerProtocol):
    """Echoes every message: text as rtserver frames it, binary through Autobahn."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Send ``payload`` back as a message of the same kind."""
        if isBinary:
            self.sendMessage(payload, True)
        elif self.transport is not None:
            # the frame rtserver's transports write for every reply and publication
            self.transport.write(text_frame(payload))


def websocket_echo(
    clock: Any, message_size_limit: int = ECHO_MESSAGE_LIMIT, close_timeout: float = 5.0
) -> WebSocketResource:
    """A plain WebSocket echo resource on rtserver's WebSocket options.

    The options are :func:`rtserver.connections.websocket_server_options` (no
    permessage-deflate, clean 1009 close past the limit...) with the message and frame
    limit raised to ``message_size_limit`` for the fuzzing suite.
    """
    factory = WebSocketServerFactory(reactor=clock)
    factory.protocol = WebSocketEcho
    factory.setProtocolOptions(**websocket_server_options(message_size_limit, close_timeout))
    return WebSocketResource(factory)
