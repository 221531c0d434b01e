"""The standard SockJS test services, for running SockJS protocol suites against us.

``/echo`` (response limit 4096), ``/close`` (closes at once with 3000 "Go away!"),
``/disabled_websocket_echo`` and ``/cookie_needed_echo``, as the sockjs-protocol suite
expects them at ``SOCKJS_URL``. ``tac/sockjs-conformance.tac`` serves them.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from rtserver.sockjs.options import SockJSOptions
from rtserver.sockjs.resource import SockJSResource
from rtserver.sockjs.session import ISockJSHandler, Session

__all__ = ["Close", "Echo", "services"]


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
