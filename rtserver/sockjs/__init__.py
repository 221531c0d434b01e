"""A SockJS server on twisted.web for any message-oriented application.

The application implements :class:`ISockJSHandler` (``on_open``, ``on_message``,
``on_close``) and drives each :class:`Session` with ``send(text)`` and
``close(code, reason)``. :class:`SockJSResource` serves every SockJS URL under the prefix
it is mounted at. Framing lives in :mod:`rtserver.protocol.sockjs`.
"""

from rtserver.sockjs.options import SockJSOptions
from rtserver.sockjs.resource import SockJSResource
from rtserver.sockjs.session import ISockJSHandler, Session, State

__all__ = ["ISockJSHandler", "Session", "SockJSOptions", "SockJSResource", "State"]
