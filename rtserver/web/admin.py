"""The admin web UI: static pages, login, the server API and a live channel view.

Everything an operator's browser talks to (docs/admin.rst):

* ``<prefix>/`` the single page (``admin_static/``: plain HTML, CSS and JavaScript);
* ``GET <prefix>/admin/init``: ``{"insecure", "edition", "authenticated"}``;
* ``POST <prefix>/admin/auth``: the ``password`` (form field or JSON) for a session
  token ``{"token": ...}``; 401 for a wrong one, 429 after too many wrong ones;
* ``POST <prefix>/admin/api`` and ``<prefix>/admin/api/<method>``: the server API
  (:class:`~rtserver.web.api.APIResource`, legacy and per-method shapes);
* ``GET <prefix>/admin/status``: the ``info`` nodes, engine health, connection and API
  counters of this node;
* ``GET <prefix>/admin/channel?channel=<name>``: a newline-delimited JSON stream of the
  channel's publications, joins, leaves and presence, fed by a node-level observer
  (:class:`ChannelWatch`) that is no connection and no user.

Every endpoint but the page, ``init`` and ``auth`` requires ``Authorization: token
<session token>``. The token lives in the page's ``sessionStorage`` and travels only in
that header, never in a cookie, so another site cannot make the browser use it (no
CSRF); no CORS headers are ever sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import uuid
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from rtserver.config import AdminConfig, HTTPAPIConfig
from rtserver.core.subscription import Subscription, SubState
from rtserver.core.writer import JSON_SHAPE, SharedPush
from rtserver.logs import Logger
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import Publication
from rtserver.web.api import APIResource, Handler
from rtserver.web.site import Branch

if TYPE_CHECKING:
    from rtserver.api.executor import APIExecutor
    from rtserver.core.node import Node

__all__ = [
    "LOGIN_WINDOW",
    "MAX_FAILED_LOGINS",
    "SESSION_TTL",
    "AdminAuth",
    "AdminRoot",
    "ChannelWatch",
    "admin_root",
]

_log = Logger()

#: How long a session token is valid, in seconds.
SESSION_TTL = 24 * 3600
#: Wrong passwords accepted per :data:`LOGIN_WINDOW` before logins get 429 for a while.
MAX_FAILED_LOGINS = 10
#: The window of :data:`MAX_FAILED_LOGINS`, in seconds.
LOGIN_WINDOW = 60.0
#: How often the channel view re-reads presence while it is open, in seconds.
PRESENCE_INTERVAL = 2.0

_JSON = b"application/json"
_STATIC = "admin_static"
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
# The page loads nothing from elsewhere and may not be framed (clickjacking).
_SECURITY_HEADERS = (
    (b"Content-Security-Policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"X-Frame-Options", b"DENY"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AdminAuth:
    """Password check and session tokens signed with ``admin.secret`` (HMAC-SHA256).

    A token is ``<payload>.<signature>``, both base64url: the payload is
    ``{"exp": <unix seconds>}``; a token with a bad signature, another shape or an
    ``exp`` in the past is refused.

    Args:
        config: the ``admin`` section.
        clock: the time source of ``exp``.
        ttl: session lifetime in seconds.
    """

    def __init__(self, config: AdminConfig, clock: IReactorTime, ttl: int = SESSION_TTL) -> None:
        self._password = config.password.encode("utf-8")
        self._secret = config.secret.encode("utf-8")
        self.insecure = config.insecure
        self._clock = clock
        self._ttl = ttl
        self._failures: deque[float] = deque()

    def reconfigure(self, config: AdminConfig) -> None:
        """Use the password and secret of ``config`` from now on (SIGHUP reload).

        A new secret ends every session signed with the old one.
        """
        self._password = config.password.encode("utf-8")
        self._secret = config.secret.encode("utf-8")
        self.insecure = config.insecure

    def retry_after(self) -> int:
        """Seconds until a login may be tried again; 0 unless too many have failed.

        At most :data:`MAX_FAILED_LOGINS` wrong passwords per :data:`LOGIN_WINDOW`
        seconds are checked; beyond that every login (right or wrong) waits.
        """
        now = self._clock.seconds()
        while self._failures and self._failures[0] <= now - LOGIN_WINDOW:
            self._failures.popleft()
        if len(self._failures) < MAX_FAILED_LOGINS:
            return 0
        return max(1, math.ceil(self._failures[0] + LOGIN_WINDOW - now))

    def failed(self) -> None:
        """Count a wrong password."""
        self._failures.append(self._clock.seconds())

    def login(self, password: str) -> str | None:
        """A fresh session token for the right password, else None."""
        if not self._password or not self._secret:
            return None
        if not hmac.compare_digest(password.encode("utf-8"), self._password):
            return None
        payload = orjson.dumps({"exp": int(self._clock.seconds()) + self._ttl})
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, b"rtserver-admin:" + payload, hashlib.sha256).digest()

    def valid(self, token: str) -> bool:
        """Whether ``token`` is a session token of this secret that has not expired."""
        if not self._secret:
            return False
        head, dot, tail = token.partition(".")
        if not dot:
            return False
        try:
            payload, signature = _unb64(head), _unb64(tail)
        except ValueError:
            return False
        if not hmac.compare_digest(signature, self._sign(payload)):
            return False
        try:
            claims = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return isinstance(exp, int) and exp > self._clock.seconds()

    def authorized(self, request: Request) -> bool:
        """Whether ``request`` carries ``Authorization: token <valid token>`` (or insecure)."""
        if self.insecure:
            return True
        header = request.getHeader(b"authorization")
        if header is None:
            return False
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != b"token" or not parts[1].isascii():
            return False
        return self.valid(parts[1].decode("ascii"))


def _json(request: Request, code: int, value: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", _JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    return orjson.dumps(value)


def _unauthorized(request: Request) -> bytes:
    return _json(request, 401, {"error": "unauthorized"})


def _method_not_allowed(request: Request, allow: bytes) -> bytes:
    request.setHeader(b"Allow", allow)
    return _json(request, 405, {"error": "method not allowed"})


class _StaticFile(Resource):
    """One file of the page, read once from the package."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, b"GET, HEAD")
        request.setHeader(b"Content-Type", self._type)
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        return self._body


def _static_files() -> dict[str, _StaticFile]:
    out = {}
    folder = resources.files("rtserver.web").joinpath(_STATIC)
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if suffix in _TYPES:
            out[item.name] = _StaticFile(item.read_bytes(), _TYPES[suffix])
    return out


class _Init(Resource):
    isLeaf = True

    def __init__(self, auth: AdminAuth) -> None:
        super().__init__()
        self._auth = auth

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, b"GET, HEAD")
        return _json(
            request,
            200,
            {
                "insecure": self._auth.insecure,
                "edition": "oss",
                "authenticated": self._auth.authorized(request),
            },
        )


class _Login(Resource):
    isLeaf = True

    def __init__(self, auth: AdminAuth) -> None:
        super().__init__()
        self._auth = auth

    def render(self, request: Request) -> bytes:
        if request.method != b"POST":
            return _method_not_allowed(request, b"POST")
        assert request.content is not None
        password = _password(request.content.read(4096), request.getHeader(b"content-type"))
        if self._auth.insecure:
            return _json(request, 200, {"token": "insecure"})
        wait = self._auth.retry_after()
        if wait:
            request.setHeader(b"Retry-After", b"%d" % wait)
            return _json(request, 429, {"error": "too many failed logins, retry later"})
        token = None if password is None else self._auth.login(password)
        if token is None:
            self._auth.failed()
            _log.warn("admin: login refused (wrong password)")
            return _json(request, 401, {"error": "wrong password"})
        return _json(request, 200, {"token": token})


def _password(body: bytes, content_type: bytes | None) -> str | None:
    """``password`` from a JSON object or a urlencoded form body."""
    if content_type is not None and content_type.split(b";")[0].strip() == _JSON:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        password = value.get("password") if isinstance(value, dict) else None
        return password if isinstance(password, str) else None
    values = parse_qs(body.decode("utf-8", "replace")).get("password")
    return values[0] if values else None


class _AdminAPI(APIResource):
    """The server API behind the admin session token instead of ``http_api.key``."""

    def __init__(self, executor: APIExecutor, auth: AdminAuth) -> None:
        super().__init__(executor, HTTPAPIConfig(insecure=True))
        self._auth = auth

    def serve(self, request: Request, handler: Handler) -> bytes | int:
        """Every route below ``/admin/api`` (legacy and per method) passes through here."""
        if not self._auth.authorized(request):
            return _unauthorized(request)
        return super().serve(request, handler)


class _Status(Resource):
    isLeaf = True

    def __init__(self, node: Node, executor: APIExecutor, auth: AdminAuth) -> None:
        super().__init__()
        self._node = node
        self._executor = executor
        self._auth = auth

    def render(self, request: Request) -> bytes:
        if not self._auth.authorized(request):
            return _unauthorized(request)
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, b"GET, HEAD")
        node = self._node
        stats = self._executor.stats
        return _json(
            request,
            200,
            {
                "node": node.uid,
                "nodes": node.info(),
                "engine": {"type": node.config.engine.type, "healthy": bool(node.engine.healthy)},
                "connections": {
                    "open": node.open_clients,
                    "accepted": dict(node.hub.accepted),
                },
                "api": {
                    method: {"count": int(count), "seconds": seconds}
                    for method, (count, seconds) in sorted(stats.calls.items())
                },
                "api_errors": [
                    {"method": method, "code": code, "count": n}
                    for (method, code), n in sorted(stats.errors.items())
                ],
            },
        )


class _Channel(Resource):
    isLeaf = True

    def __init__(self, node: Node, auth: AdminAuth) -> None:
        super().__init__()
        self._node = node
        self._auth = auth

    def render(self, request: Request) -> bytes | int:
        if not self._auth.authorized(request):
            return _unauthorized(request)
        if request.method != b"GET":
            return _method_not_allowed(request, b"GET")
        channel = (request.args or {}).get(b"channel", [b""])[0].decode("utf-8", "replace")
        node = self._node
        try:
            if not channel:
                raise Error.BAD_REQUEST.with_message("channel required")
            node.resolver.check_name(channel)
            opts = node.resolver.options(channel)
        except Error as e:
            return _json(request, 400, {"error": e.to_wire()})
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        watch = ChannelWatch(node, channel, request)
        sub = Subscription(channel, opts, server_side=True)
        sub.push_join_leave = True
        sub.state = SubState.LIVE
        watch.start(sub)
        return NOT_DONE_YET


@implementer(IResource)
class AdminRoot(Branch):
    """``<prefix>/``: the page at the empty path, ``admin/...`` below it.

    At the server root (``admin.handler_prefix`` empty) this is the site's root, so
    every other mount is a child of it and unknown paths stay 404.
    """

    def __init__(self, index: Resource | None = None, auth: AdminAuth | None = None) -> None:
        super().__init__()
        self._index = index
        #: The login checks of this tree (reconfigured on SIGHUP reload).
        self.auth = auth

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path and self._index is not None:
            return self._index
        return super().getChild(path, request)

    def render(self, request: Request) -> bytes:
        if self._index is not None and request.postpath == []:
            # ``/prefix`` without the slash: the page's relative links need it.
            request.redirect(request.path + b"/")
            return b""
        return super().render(request)


def admin_root(
    node: Node, executor: APIExecutor, config: AdminConfig, clock: IReactorTime
) -> AdminRoot:
    """The admin UI's resource tree, to mount at ``admin.handler_prefix``."""
    auth = AdminAuth(config, clock)
    files = _static_files()
    root = AdminRoot(files.pop("index.html"), auth)
    admin = Branch()
    root.putChild(b"admin", admin)
    admin.putChild(b"init", _Init(auth))
    admin.putChild(b"auth", _Login(auth))
    admin.putChild(b"api", _AdminAPI(executor, auth))
    admin.putChild(b"status", _Status(node, executor, auth))
    admin.putChild(b"channel", _Channel(node, auth))
    static = Branch()
    admin.putChild(b"static", static)
    for name, resource in files.items():
        static.putChild(name.encode("utf-8"), resource)
    return root


@implementer(IPushProducer)
class ChannelWatch:
    """A node-level subscriber writing one channel's traffic to an admin HTTP response.

    It is in the hub as a subscriber of the channel (so it counts in the node's
    subscription and channel numbers) but is no connection: it has no user, holds no
    presence and sends no join or leave. Lines written, one JSON object each:
    ``{"subscribed": {...}}`` once; then every push as the client protocol writes it
    (``{"push": {"channel", "pub" | "join" | "leave"}}``); ``{"presence": {...}}``
    every :data:`PRESENCE_INTERVAL` seconds on channels with presence; ``{"dropped": N}``
    when N lines were dropped while the browser read too slowly; ``{"error": {...}}``
    when the channel cannot be followed. A slow reader never makes the server buffer:
    lines are dropped while the response's transport asks to pause.
    """

    def __init__(self, node: Node, channel: str, request: Request) -> None:
        self.id = "admin-" + str(uuid.uuid4())
        self.user = ""
        self.session = ""
        self.transport_name = "admin"
        self.closed = False
        self._node = node
        self._channel = channel
        self._request = request
        self._paused = False
        self._dropped = 0
        self._timer: IDelayedCall | None = None
        self._sub: Subscription | None = None

    def start(self, sub: Subscription) -> None:
        """Join the hub as a subscriber of the channel and begin streaming."""
        self._sub = sub
        producer: IPushProducer = self
        self._request.registerProducer(producer, True)
        self._request.notifyFinish().addBoth(self._finished)
        d = self._node.add_subscription(self._channel, self, sub)
        d.addCallbacks(self._subscribed, self._subscribe_failed)

    def _subscribed(self, _: object) -> None:
        if self.closed or self._sub is None:
            return
        opts = self._sub.opts
        self._write(
            orjson.dumps(
                {
                    "subscribed": {
                        "channel": self._channel,
                        "presence": opts.presence,
                        "join_leave": opts.join_leave,
                        "history": opts.history_enabled,
                    }
                }
            )
        )
        self._tick()

    def _subscribe_failed(self, failure: Failure) -> None:
        _log.warn(
            "admin: cannot follow channel {channel}: {error}",
            channel=self._channel,
            error=failure.getErrorMessage(),
        )
        if not self.closed:
            self._write(orjson.dumps({"error": Error.INTERNAL.to_wire()}))
            self._request.finish()

    def _tick(self) -> None:
        self._timer = None
        if self.closed or self._sub is None:
            return
        if self._sub.opts.presence:
            d = self._node.presence(self._channel)
            d.addCallbacks(self._got_presence, self._presence_failed)
        self._timer = self._node.clock.callLater(PRESENCE_INTERVAL, self._tick)

    def _got_presence(self, presence: dict[str, Any]) -> None:
        body = {client: info.to_wire() for client, info in presence.items()}
        self._write(orjson.dumps({"presence": body}))

    def _presence_failed(self, failure: Failure) -> None:
        self._write(orjson.dumps({"error": Error.INTERNAL.with_message("presence").to_wire()}))

    # --- Subscriber ------------------------------------------------------------------

    def deliver_publication(self, sub: Subscription, pub: Publication, push: SharedPush) -> None:
        """A publication: the client protocol's push line (bytes that are not JSON: skipped)."""
        self._write_shared(push)

    def deliver_push(self, sub: Subscription, push: SharedPush) -> None:
        """A join or leave: the client protocol's push line."""
        self._write_shared(push)

    def _write_shared(self, push: SharedPush) -> None:
        payload = push.payload(JSON_SHAPE)
        if payload is not None:  # None: Protobuf bytes that JSON cannot show
            self._write(payload.data)

    def insufficient_state(self, sub: Subscription) -> None:
        """Never positioned: nothing to lose."""

    # --- output ----------------------------------------------------------------------

    def _write(self, line: bytes) -> None:
        if self.closed:
            return
        if self._paused:
            self._dropped += 1
            return
        self._request.write(line + b"\n")

    def pauseProducing(self) -> None:
        """The browser reads slower than the channel talks: drop lines meanwhile."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Say how many lines were dropped, then stream again."""
        self._paused = False
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self._write(orjson.dumps({"dropped": dropped}))

    def stopProducing(self) -> None:
        """The response is gone (``_finished`` cleans up)."""
        self.closed = True

    def _finished(self, _: object) -> None:
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._node.remove_subscription(self._channel, self)
