"""The SockJS endpoint: one twisted.web resource routing every SockJS URL under a prefix.

::

    P, P/                        greeting
    P/info                       capabilities (GET, OPTIONS)
    P/iframe[...].html           cross-domain iframe page (ETag, cached a year)
    P/sockjs.min.js              the bundled sockjs-client (when client_url is empty)
    P/websocket                  raw WebSocket
    P/<server>/<session>/<transport>

``server`` and ``session`` are non-empty and contain no ``.``; only ``session`` identifies
the session (``server`` exists for load-balancer affinity). Anything else is a 404.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.web import http as twhttp
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rtserver.connections import request_body
from rtserver.protocol import sockjs as frames
from rtserver.sockjs import http
from rtserver.sockjs.forward import Forwarder
from rtserver.sockjs.options import SockJSOptions
from rtserver.sockjs.receivers import HTTPReceiver
from rtserver.sockjs.session import SessionRegistry
from rtserver.sockjs.wstransport import RawWebSocketFactory, SockJSWebSocketFactory

__all__ = ["CLIENT_SCRIPT", "OwnedSessions", "SockJSResource"]

#: Route of the bundled sockjs-client, relative to the prefix.
CLIENT_SCRIPT = b"sockjs.min.js"

_IFRAME = re.compile(rb"iframe[0-9a-z\-._]*\.html")
_ID = re.compile(rb"[^/.]+")
_XHR = b"OPTIONS, POST"
_GREETING = b"Welcome to SockJS!\n"
_JS = b"application/javascript; charset=UTF-8"


def _allow_all(origin: str | None) -> bool:
    return True


def _client_script() -> bytes:
    return resources.files("rtserver.sockjs").joinpath("static/sockjs.min.js").read_bytes()


class SockJSResource(Resource):
    """A SockJS server for ``handler`` (an :class:`~rtserver.sockjs.session.ISockJSHandler`).

    Args:
        handler: Receives ``on_open``/``on_message``/``on_close`` for every session.
        options: Endpoint settings.
        clock: Runs heartbeats and disconnect delays (the reactor, or a ``Clock``).
        allow_origin: Origin policy; a refused ``Origin`` gets 403.
        forwarder: Relays the requests of sessions another process owns (several
            processes sharing the endpoint, rtserver/sockjs/forward.py); None: every
            session is served here.
    """

    isLeaf = True

    def __init__(
        self,
        handler: Any,
        options: SockJSOptions | None = None,
        *,
        clock: IReactorTime,
        allow_origin: Callable[[str | None], bool] = _allow_all,
        forwarder: Forwarder | None = None,
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.options = options = options or SockJSOptions()
        self.sessions = SessionRegistry(handler, clock, options)
        self._clock = clock
        self._allow_origin = allow_origin
        ws_args: dict[str, Any] = {
            "max_message_size": options.max_message_size,
            "reactor": clock,
        }
        self._ws_factory = SockJSWebSocketFactory(self.sessions, allow_origin, **ws_args)
        self._raw_factory = RawWebSocketFactory(handler, allow_origin, **ws_args)
        self._ws = WebSocketResource(self._ws_factory)
        self._raw = WebSocketResource(self._raw_factory)
        self._iframes: dict[bytes, tuple[bytes, bytes]] = {}
        self._script: bytes | None = None

    # --- routing ---------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        return self._render(request, relay=self.forwarder is not None)

    def render_owned(self, request: Request) -> Any:
        """Serve a request relayed by another process: the session is this one's."""
        return self._render(request, relay=False)

    def _render(self, request: Request, *, relay: bool) -> Any:
        origin = request.getHeader(b"origin")
        if origin is not None and not self._origin_allowed(request, origin):
            return http.error(request, 403, "origin not allowed\n")
        path = list(request.postpath or ())
        if len(path) == 4 and path[-1] == b"":
            path.pop()  # a trailing slash after the transport name
        if not path or path == [b""]:
            return self._greeting(request)
        if len(path) == 1:
            name = path[0]
            if name == b"info":
                return self._info(request)
            if _IFRAME.fullmatch(name):
                return self._iframe(request)
            if name == CLIENT_SCRIPT and not self.options.client_url:
                return self._script_file(request)
            if name == b"websocket" and self.options.raw_websocket:
                return self._websocket(request, self._raw)
        if len(path) == 3 and _ID.fullmatch(path[0]) and _ID.fullmatch(path[1]):
            route = self._ROUTES.get(path[2])
            if route is not None:
                method, handler = route
                if request.method == b"OPTIONS" and method == _XHR:
                    return http.preflight(request, _XHR, self._clock.seconds())
                if request.method not in method.split(b", "):
                    return http.method_not_allowed(request, method)
                session_id = path[1].decode("latin-1")
                if relay and self.forwarder is not None:
                    return self.forwarder.forward(
                        request, session_id, lambda: handler(self, request, session_id)
                    )
                return handler(self, request, session_id)
            if path[2] == b"websocket" and self.options.websocket:
                return self._websocket(request, self._ws)
        return http.error(request, 404, "Not found\n")

    def _origin_allowed(self, request: Request, origin: bytes) -> bool:
        """The policy's answer; the server's own origin (its iframe page) always passes."""
        host = request.getHeader(b"host")
        text = origin.decode("latin-1")
        if http.same_origin(text, host.decode("latin-1") if host is not None else None):
            return True
        return self._allow_origin(text)

    # --- static ----------------------------------------------------------------------

    def _greeting(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return http.method_not_allowed(request, b"GET")
        request.setHeader(b"Content-Type", b"text/plain; charset=UTF-8")
        return _GREETING

    def _info(self, request: Request) -> bytes:
        if request.method == b"OPTIONS":
            return http.preflight(request, b"OPTIONS, GET", self._clock.seconds())
        if request.method != b"GET":
            return http.method_not_allowed(request, b"OPTIONS, GET")
        http.no_cache(request)
        http.cors(request)
        request.setHeader(b"Content-Type", b"application/json; charset=UTF-8")
        return orjson.dumps(
            {
                "websocket": self.options.websocket,
                "cookie_needed": self.options.cookie_needed,
                "origins": ["*:*"],
                "entropy": secrets.randbits(32),
            }
        )

    def _iframe(self, request: Request) -> bytes:
        if request.method != b"GET":
            return http.method_not_allowed(request, b"GET")
        prefix = b"/" + b"/".join(request.prepath or ())
        cached = self._iframes.get(prefix)
        if cached is None:
            url = self.options.client_url or (prefix + b"/" + CLIENT_SCRIPT).decode("utf-8")
            body = frames.iframe_page(url)
            etag = b'"' + hashlib.md5(body).hexdigest().encode("ascii") + b'"'
            cached = self._iframes[prefix] = (body, etag)
        body, etag = cached
        http.cacheable(request, self._clock.seconds())
        if request.setETag(etag) == twhttp.CACHED:
            request.defaultContentType = None
            return b""
        request.setHeader(b"Content-Type", b"text/html; charset=UTF-8")
        return body

    def _script_file(self, request: Request) -> bytes:
        if request.method != b"GET":
            return http.method_not_allowed(request, b"GET")
        if self._script is None:
            self._script = _client_script()
        http.cacheable(request, self._clock.seconds())
        http.cors(request)
        request.setHeader(b"Content-Type", _JS)
        return self._script

    def _websocket(self, request: Request, resource: WebSocketResource) -> Any:
        if request.method != b"GET":
            return http.method_not_allowed(request, b"GET")
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        connection = (request.getHeader(b"connection") or b"").lower()
        if upgrade != b"websocket":
            return http.error(request, 400, 'Can "Upgrade" only to "WebSocket".')
        if b"upgrade" not in [p.strip() for p in connection.split(b",")]:
            return http.error(request, 400, '"Connection" must be "Upgrade".')
        return resource.render(request)

    # --- session transports ----------------------------------------------------------

    def _session_headers(self, request: Request, *, cors: bool = True) -> None:
        http.no_cache(request)
        if cors:
            http.cors(request)
        if self.options.cookie_needed:
            http.session_cookie(request)

    def _receive(
        self,
        request: Request,
        session_id: str,
        transport: str,
        receiver: HTTPReceiver,
        prelude: bytes = b"",
    ) -> Any:
        session = self.sessions.get_or_create(session_id, transport, http.request_headers(request))
        receiver.session = session
        receiver.start(prelude)
        session.attach(receiver)
        return NOT_DONE_YET

    def _xhr(self, request: Request, session_id: str) -> Any:
        self._session_headers(request)
        request.setHeader(b"Content-Type", _JS)
        receiver = HTTPReceiver(request, frames.line_frame, streaming=False)
        return self._receive(request, session_id, "xhr", receiver)

    def _xhr_streaming(self, request: Request, session_id: str) -> Any:
        self._session_headers(request)
        request.setHeader(b"Content-Type", _JS)
        receiver = self._streaming(request, frames.line_frame)
        return self._receive(request, session_id, "xhr_streaming", receiver, b"h" * 2048 + b"\n")

    def _eventsource(self, request: Request, session_id: str) -> Any:
        self._session_headers(request)
        request.setHeader(b"Content-Type", b"text/event-stream")
        receiver = self._streaming(request, frames.eventsource_frame)
        return self._receive(request, session_id, "eventsource", receiver, b"\r\n")

    def _htmlfile(self, request: Request, session_id: str) -> Any:
        callback = self._callback(request)
        if isinstance(callback, str):
            return http.error(request, 500, callback)
        self._session_headers(request, cors=False)
        request.setHeader(b"Content-Type", b"text/html; charset=UTF-8")
        receiver = self._streaming(request, frames.htmlfile_frame)
        prelude = frames.htmlfile_prelude(callback)
        return self._receive(request, session_id, "htmlfile", receiver, prelude)

    def _jsonp(self, request: Request, session_id: str) -> Any:
        callback = self._callback(request)
        if isinstance(callback, str):
            return http.error(request, 500, callback)
        self._session_headers(request, cors=False)
        request.setHeader(b"Content-Type", _JS)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")

        def envelope(frame: bytes) -> bytes:
            return frames.jsonp_frame(callback, frame)

        receiver = HTTPReceiver(request, envelope, streaming=False)
        return self._receive(request, session_id, "jsonp", receiver)

    def _xhr_send(self, request: Request, session_id: str) -> bytes:
        self._session_headers(request)
        session = self.sessions.get(session_id)
        if session is None:
            return http.error(request, 404, "Not found\n")
        try:
            messages = frames.decode_messages(request_body(request))
        except frames.FramingError as e:
            return http.error(request, 500, str(e))
        request.setResponseCode(204)
        request.setHeader(b"Content-Type", b"text/plain; charset=UTF-8")
        session.deliver(messages)
        return b""

    def _jsonp_send(self, request: Request, session_id: str) -> bytes:
        self._session_headers(request, cors=False)
        session = self.sessions.get(session_id)
        if session is None:
            return http.error(request, 404, "Not found\n")
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        try:
            messages = frames.decode_form_messages(request_body(request), content_type)
        except frames.FramingError as e:
            return http.error(request, 500, str(e))
        session.deliver(messages)
        request.setHeader(b"Content-Type", b"text/plain; charset=UTF-8")
        return b"ok"

    def _streaming(self, request: Request, envelope: Callable[[bytes], bytes]) -> HTTPReceiver:
        return HTTPReceiver(request, envelope, streaming=True, limit=self.options.response_limit)

    @staticmethod
    def _callback(request: Request) -> bytes | str:
        values = request.args.get(b"c") or request.args.get(b"callback")
        if not values or not values[0]:
            return '"callback" parameter required'
        if not frames.valid_callback(values[0]):
            return 'invalid "callback" parameter'
        return values[0]

    _ROUTES: dict[bytes, tuple[bytes, Callable[..., Any]]] = {
        b"xhr": (_XHR, _xhr),
        b"xhr_send": (_XHR, _xhr_send),
        b"xhr_streaming": (_XHR, _xhr_streaming),
        b"eventsource": (b"GET", _eventsource),
        b"htmlfile": (b"GET", _htmlfile),
        b"jsonp": (b"GET", _jsonp),
        b"jsonp_send": (b"POST", _jsonp_send),
    }

    # --- shutdown --------------------------------------------------------------------

    @property
    def websocket_connections(self) -> int:
        """WebSocket connections (framed and raw) open now."""
        return self._ws_factory.open_connections + self._raw_factory.open_connections

    def wait_closed(self, timeout: float) -> Deferred[Any]:
        """End every session and close every WebSocket; fires when they are gone."""
        self.sessions.close_all()
        waits = [f.wait_closed(timeout) for f in (self._ws_factory, self._raw_factory)]
        return DeferredList(waits, consumeErrors=True)


class OwnedSessions(Resource):
    """Where the other processes sharing ``resource``'s endpoint relay its sessions' requests.

    Mount it at the endpoint's prefix on the site of this process's private socket.
    """

    isLeaf = True

    def __init__(self, resource: SockJSResource) -> None:
        super().__init__()
        self._resource = resource

    def render(self, request: Request) -> Any:
        return self._resource.render_owned(request)
