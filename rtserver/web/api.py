"""The server HTTP API: ``POST <prefix>/<method>`` and the legacy ``POST <prefix>``.

A thin adapter over :class:`~rtserver.api.executor.APIExecutor`: it authenticates,
decodes the JSON body, runs the command and encodes the response with orjson. API-level
errors keep HTTP 200 (``cent`` treats any other status as a transport failure) unless
the caller asks for ``X-Centrifugo-Error-Mode: transport`` (docs/server-api.rst, "Responses").
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from rtserver.config import HTTPAPIConfig
from rtserver.logs import Logger
from rtserver.protocol.codes import Error

if TYPE_CHECKING:
    from rtserver.api.executor import APIExecutor

__all__ = [
    "INTERNAL_ERROR",
    "LEGACY_METHODS",
    "APIResource",
    "APIResponse",
    "header_credentials",
    "http_status",
    "transport_mode",
]

_log = Logger()

#: Legacy ``method`` enum: a command's number is its index here.
LEGACY_METHODS = (
    "publish",
    "broadcast",
    "unsubscribe",
    "disconnect",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "rpc",
    "subscribe",
    "refresh",
)

#: HTTP status per API error code in transport error mode; anything else is 500.
_TRANSPORT_STATUS = {100: 500, 102: 404, 104: 404, 107: 400, 108: 400, 112: 416, 113: 409}

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


def http_status(code: int) -> int:
    """The HTTP status of an API error code in transport error mode."""
    return _TRANSPORT_STATUS.get(code, 500)


@dataclass(frozen=True, slots=True)
class APIResponse:
    """Status, body and content type of one API answer."""

    code: int
    body: bytes
    content_type: bytes = _JSON


_BAD_REQUEST = APIResponse(400, b"bad request", _TEXT)
INTERNAL_ERROR = APIResponse(500, b"internal server error", _TEXT)

Handler = Callable[[Request, bytes], Coroutine[Any, Any, APIResponse]]


class _Watch:
    """Remembers whether a request has ended (client gone or already finished)."""

    __slots__ = ("ended",)

    def __init__(self, request: Request) -> None:
        self.ended = False
        request.notifyFinish().addBoth(self._end)

    def _end(self, _: object) -> None:
        self.ended = True


class APIResource(Resource):
    """The server API resource, mounted at ``http_api.handler_prefix``.

    Args:
        executor: runs the commands.
        config: the ``http_api`` section (key, insecure, error mode).
    """

    def __init__(self, executor: APIExecutor, config: HTTPAPIConfig) -> None:
        super().__init__()
        self._executor = executor
        self._config = config
        self._key = config.key.encode("utf-8")
        self._warned_no_key = False

    def reconfigure(self, config: HTTPAPIConfig) -> None:
        """Use the key and ``insecure`` flag of ``config`` from now on (SIGHUP reload)."""
        self._config = config
        self._key = config.key.encode("utf-8")
        self._warned_no_key = False

    @property
    def transport_errors(self) -> bool:
        """``http_api.error_mode: transport``: every request in transport error mode."""
        return self._config.error_mode == "transport"

    def getChild(self, path: bytes, request: Request) -> Resource:
        """``<prefix>/<method>``; an empty segment (``<prefix>/``) is the legacy route."""
        if not path:
            return self
        return _MethodResource(self, path.decode("utf-8", "replace"))

    def render(self, request: Request) -> bytes | int:
        """``POST <prefix>``: newline-separated ``{"id","method","params"}`` commands."""
        return self.serve(request, self._legacy)

    # --- request pipeline ----------------------------------------------------------------

    def serve(self, request: Request, handler: Handler) -> bytes | int:
        """Authenticate, check the HTTP method, then answer with ``handler`` later."""
        if not self.authorized(_credentials(request)):
            request.setResponseCode(401)
            return b""
        if request.method != b"POST":
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"POST")
            return b""
        assert request.content is not None
        body = request.content.read()
        watch = _Watch(request)
        d = Deferred.fromCoroutine(handler(request, body))
        d.addCallback(self._respond, request, watch)
        d.addErrback(self._failed, request, watch)
        return NOT_DONE_YET

    def _respond(self, response: APIResponse, request: Request, watch: _Watch) -> None:
        if watch.ended:
            return
        request.setResponseCode(response.code)
        request.setHeader(b"Content-Type", response.content_type)
        request.setHeader(b"Content-Length", b"%d" % len(response.body))
        request.write(response.body)
        request.finish()

    def _failed(self, failure: Failure, request: Request, watch: _Watch) -> None:
        _log.failure("server API request failed", failure)
        if watch.ended:
            return
        if request.startedWriting:
            request.loseConnection()
            return
        self._respond(INTERNAL_ERROR, request, watch)

    # --- authentication ------------------------------------------------------------------

    def authorized(self, credentials: Iterable[bytes]) -> bool:
        """Whether one of the presented keys is ``http_api.key`` (or the API is insecure)."""
        if self._config.insecure:
            return True
        if not self._key:
            if not self._warned_no_key:
                self._warned_no_key = True
                _log.warn("server API refuses every request: http_api.key is empty")
            return False
        return any(hmac.compare_digest(given, self._key) for given in credentials)

    # --- handlers ------------------------------------------------------------------------

    async def run_method(self, method: str, body: bytes, transport_mode: bool) -> APIResponse:
        """``POST <prefix>/<method>``: one command, the body is its request object.

        ``transport_mode``: API errors become HTTP statuses (``http_api.error_mode``, or
        ``X-Centrifugo-Error-Mode`` per request).
        """
        try:
            params = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return _BAD_REQUEST
        response = await self._executor.call(method, params)
        error = response.get("error")
        if error is not None and transport_mode:
            body = orjson.dumps({"code": error["code"], "message": error["message"]})
            return APIResponse(http_status(error["code"]), body)
        return APIResponse(200, orjson.dumps(response))

    async def _legacy(self, request: Request, body: bytes) -> APIResponse:
        try:
            commands = _legacy_commands(body)
        except ValueError:
            return _BAD_REQUEST
        replies = []
        for command_id, method, params in commands:
            if method is None:
                reply: dict[str, Any] = {"error": Error.METHOD_NOT_FOUND.to_wire()}
            else:
                reply = await self._executor.call(method, params)
            if command_id:
                reply = {"id": command_id, **reply}
            replies.append(orjson.dumps(reply))
        return APIResponse(200, b"\n".join(replies))


class _MethodResource(Resource):
    """``POST <prefix>/<method>``."""

    def __init__(self, api: APIResource, method: str) -> None:
        super().__init__()
        self._api = api
        self._method = method

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Nothing lives below a method: 404."""
        return notFound()

    def render(self, request: Request) -> bytes | int:
        return self._api.serve(request, self._run)

    def _run(self, request: Request, body: bytes) -> Coroutine[Any, Any, APIResponse]:
        mode = self._api.transport_errors or _transport_mode(request)
        return self._api.run_method(self._method, body, mode)


def header_credentials(x_api_key: bytes | None, authorization: bytes | None) -> Iterator[bytes]:
    """Keys presented in ``X-API-Key`` or ``Authorization: apikey <key>``."""
    if x_api_key:
        yield x_api_key
    if authorization:
        parts = authorization.split()
        if len(parts) == 2 and parts[0].lower() == b"apikey":
            yield parts[1]


def transport_mode(value: bytes | None) -> bool:
    """Whether an ``X-Centrifugo-Error-Mode`` header value asks for transport error mode."""
    return value is not None and value.strip().lower() == b"transport"


def _credentials(request: Request) -> Iterator[bytes]:
    """Keys the caller presented: ``X-API-Key``, ``Authorization: apikey``, ``?api_key``."""
    yield from header_credentials(
        request.getHeader(b"x-api-key"), request.getHeader(b"authorization")
    )
    query = request.uri.partition(b"?")[2]
    for value in parse_qs(query).get(b"api_key", []):
        if value:
            yield value


def _transport_mode(request: Request) -> bool:
    return transport_mode(request.getHeader(b"x-centrifugo-error-mode"))


def _legacy_commands(body: bytes) -> list[tuple[int, str | None, Any]]:
    """``(id, method, params)`` per line; ``method`` is ``None`` when unknown.

    Raises:
        ValueError: empty body, malformed JSON, or a line that is not a command object.
    """
    commands = []
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        obj = orjson.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("command must be an object")
        command_id = obj.get("id") or 0
        if isinstance(command_id, bool) or not isinstance(command_id, int) or command_id < 0:
            raise ValueError("id must be a non-negative integer")
        commands.append((command_id, _legacy_method(obj.get("method")), obj.get("params")))
    if not commands:
        raise ValueError("empty body")
    return commands


def _legacy_method(value: Any) -> str | None:
    """A legacy ``method``: a case-insensitive name or its enum number."""
    if isinstance(value, str):
        name = value.lower()
        return name if name in LEGACY_METHODS else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LEGACY_METHODS):
        return LEGACY_METHODS[value]
    return None
