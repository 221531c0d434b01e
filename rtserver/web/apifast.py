"""A lean HTTP/1.1 path for the server API's common request.

Backends publish with many small keep-alive ``POST <prefix>/<method>`` requests, and
twisted.web's general request machinery costs ~100 µs of CPU for each (header objects,
resource traversal, producers). :class:`APIFastPath` answers exactly that request shape
straight from the connection's bytes:

* ``POST <prefix>/<method> HTTP/1.1`` (no query string), the head within 16 KiB and at
  most 500 header lines (twisted.web's limits),
* a ``Content-Length`` body within the API body limit, no ``Transfer-Encoding``,
  ``Expect`` or ``Upgrade``, no repeated header.

Each request head is checked by llhttp (``httptools``, the parser uvicorn uses) in its
strict mode, so a head the fast path answers is one twisted.web accepts too. Anything
else (HTTP/1.0, chunked bodies, the legacy ``POST <prefix>``, ``?api_key=``, other
paths, oversized bodies, any head llhttp refuses) hands the connection's bytes, from the
start of that request, to twisted.web for good, so every other behaviour (400, 413, 404,
405, CORS, WebSocket upgrades) is twisted.web's own.

The API key is checked on the head, before any body byte is stored: an unauthenticated
request gets ``401`` with ``Connection: close`` at once, the rest of its declared body is
read and dropped, and the connection closes. Authenticated bodies are collected as a
list of received chunks (no re-copying of a growing buffer). Pipelined requests are
answered in order: while one command is pending, later bytes wait.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from rtserver.logs import Logger
from rtserver.web.api import (
    INTERNAL_ERROR,
    APIResource,
    APIResponse,
    header_credentials,
    transport_mode,
)

__all__ = ["APIFastPath", "FastConnection"]

_log = Logger()

_HEAD_LIMIT = 16384  # twisted.web's HTTPChannel.totalHeadersSize
_MAX_HEADERS = 500  # twisted.web's HTTPChannel.maxHeaders
_METHOD_RE = re.compile(rb"[a-z_]{1,64}")
_UNAUTHORIZED = APIResponse(401, b"")
#: Headers whose presence makes a request twisted.web's (other framing or semantics).
_NOT_OURS = frozenset((b"transfer-encoding", b"expect", b"upgrade"))


class _Head:
    """One request head as llhttp parses it, fed as its bytes arrive."""

    __slots__ = ("complete", "count", "fed", "headers", "parser", "repeated", "url")

    def __init__(self) -> None:
        self.parser = HttpRequestParser(self)
        self.fed = 0  # bytes of the connection's buffer given to the parser
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.count = 0
        self.repeated = False
        self.complete = False

    def feed(self, data: memoryview) -> bool:
        """Parse more head bytes; False when llhttp refuses them."""
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            return False
        return True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in self.headers:
            self.repeated = True
        self.headers[key] = value
        self.count += 1

    def on_headers_complete(self) -> None:
        self.complete = True


class FastConnection:
    """Per-connection state of the fast path (owned by the HTTP channel).

    Args:
        write: sends bytes on the connection.
        close: closes the connection once written.
        fallback: gives bytes to twisted.web (from then on the channel passes all later
            bytes there too: ``slow`` is set).
        head_done: called when a request head is complete (the channel stops its
            request-head deadline).
        request_done: called when a request has been answered (its ``buffer`` may
            already hold the start of the next head).
    """

    __slots__ = (
        "body",
        "body_left",
        "buffer",
        "close",
        "closing",
        "discard",
        "fallback",
        "feeding",
        "gone",
        "head",
        "head_done",
        "method",
        "mode",
        "pending",
        "request_done",
        "slow",
        "write",
    )

    def __init__(
        self,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        fallback: Callable[[bytes], None],
        head_done: Callable[[], None] | None = None,
        request_done: Callable[[], None] | None = None,
    ) -> None:
        self.write = write
        self.close = close
        self.fallback = fallback
        self.head_done = head_done
        self.request_done = request_done
        self.buffer = b""  # bytes not yet consumed (a partial head, or waiting requests)
        self.head: _Head | None = None  # the head being parsed
        self.body: list[bytes] = []  # chunks of the body being received
        self.body_left = 0  # body bytes still expected for the current request
        self.discard = False  # the current body is read and dropped (unauthenticated)
        self.method = ""
        self.mode = False  # transport error mode of the current request
        self.gone = False  # the connection was lost: late answers are dropped
        self.pending = False  # a command is running; later requests wait in ``buffer``
        self.slow = False  # handed over to twisted.web for good
        self.closing = False  # the client asked ``Connection: close`` (or was refused)
        self.feeding = False  # inside :meth:`APIFastPath.feed` (no re-entry)


class APIFastPath:
    """Parses and answers simple API requests; see the module docstring.

    Args:
        api: the mounted API resource (authentication and command execution).
        prefix: ``http_api.handler_prefix``.
        body_limit: ``http_api.max_request_body_size``.
    """

    def __init__(self, api: APIResource, prefix: str, body_limit: int) -> None:
        self._api = api
        self._prefix = prefix.rstrip("/").encode("utf-8") + b"/"
        self._body_limit = body_limit

    def feed(self, state: FastConnection, data: bytes) -> None:
        """Take ``data``; answer every complete request it finishes, in order."""
        if state.slow or state.gone or state.feeding:
            if state.feeding and data:
                state.buffer += data
            return
        state.feeding = True
        try:
            if state.body_left and not state.pending:
                # Body bytes go straight to the body's chunk list, not through ``buffer``.
                data = self._take_body(state, data)
                if not state.body_left:
                    self._finish_body(state)
            if data:
                state.buffer += data
            self._loop(state)
        finally:
            state.feeding = False

    def _loop(self, state: FastConnection) -> None:
        while not state.pending and not state.slow and not state.gone and state.buffer:
            if state.closing and not state.body_left:
                state.buffer = b""  # bytes after a final request are ignored
                return
            if state.body_left:
                rest = self._take_body(state, state.buffer)
                state.buffer = rest
                if state.body_left:
                    return
                self._finish_body(state)
                continue
            buffered = state.buffer
            head = state.head
            if head is None:
                head = state.head = _Head()
            end = buffered.find(b"\r\n\r\n", max(0, head.fed - 3))
            stop = len(buffered) if end < 0 else end + 4
            if stop > _HEAD_LIMIT or not head.feed(memoryview(buffered)[head.fed : stop]):
                self._hand_over(state)  # too long, or a head llhttp refuses: twisted.web's call
                return
            head.fed = stop
            if end < 0:
                return  # incomplete head: wait for more bytes
            state.head = None
            if not self._start(state, head, buffered[:stop]):
                self._hand_over(state)
                return
            state.buffer = buffered[stop:]
            if not state.body_left:
                self._finish_body(state)

    def _start(self, state: FastConnection, head: _Head, raw: bytes) -> bool:
        """Check one complete head and begin its request; False: it is twisted.web's."""
        if not head.complete or head.repeated or head.count > _MAX_HEADERS:
            return False
        url = head.url
        # llhttp tolerates extra spaces and leading empty lines that twisted.web refuses:
        # the request line must be exactly ``POST <url> HTTP/1.1``.
        if not raw.startswith(b"POST %s HTTP/1.1\r\n" % url) or not url.startswith(self._prefix):
            return False
        method = url[len(self._prefix):]
        if _METHOD_RE.fullmatch(method) is None:
            return False
        headers = head.headers
        if not _NOT_OURS.isdisjoint(headers):
            return False
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            return False
        size = int(length)
        if size > self._body_limit:
            return False  # twisted.web answers 413
        if b"close" in _tokens(headers.get(b"connection")):
            state.closing = True
        if state.head_done is not None:
            state.head_done()
        api = self._api
        keys = header_credentials(headers.get(b"x-api-key"), headers.get(b"authorization"))
        if not api.authorized(keys):
            state.closing = True
            state.discard = True
            _send(state, _UNAUTHORIZED)
        state.method = method.decode("ascii")
        state.mode = transport_mode(headers.get(b"x-centrifugo-error-mode"))
        state.body_left = size
        state.body = []
        return True

    @staticmethod
    def _take_body(state: FastConnection, data: bytes) -> bytes:
        """Consume body bytes of the current request from ``data``; returns the rest."""
        take = state.body_left
        if len(data) <= take:
            chunk, rest = data, b""
        else:
            chunk, rest = data[:take], data[take:]
        state.body_left -= len(chunk)
        if not state.discard and chunk:
            state.body.append(chunk)
        return rest

    def _finish_body(self, state: FastConnection) -> None:
        """The current request's body is complete: run it (or close a refused one)."""
        body = b"".join(state.body)
        state.body = []
        if state.discard:
            state.discard = False
            state.buffer = b""
            state.close()
            return
        state.pending = True
        d = Deferred.fromCoroutine(self._api.run_method(state.method, body, state.mode))
        # One callback pair (each added callback costs a pass of Deferred machinery);
        # both ends catch and log everything, so the Deferred never ends in a failure.
        d.addCallbacks(self._done, self._failed, callbackArgs=(state,), errbackArgs=(state,))

    def _failed(self, failure: Failure, state: FastConnection) -> None:
        _log.failure("server API request failed", failure)
        self._done(INTERNAL_ERROR, state)

    def _done(self, response: APIResponse, state: FastConnection) -> None:
        """A command finished: answer it, then continue with waiting requests."""
        try:
            state.pending = False
            _send(state, response)
            if state.request_done is not None and not state.gone:
                state.request_done()
            if not state.feeding:  # answered later than the turn that received it
                self.feed(state, b"")
        except Exception:
            _log.failure("server API response could not be written", Failure())

    @staticmethod
    def _hand_over(state: FastConnection) -> None:
        state.slow = True
        buffered, state.buffer = state.buffer, b""
        state.fallback(buffered)


def _tokens(value: bytes | None) -> list[bytes]:
    """The lowercased comma-separated tokens of a header value (``Connection``)."""
    if not value:
        return []
    return [t.strip().lower() for t in value.split(b",")]


def _send(state: FastConnection, response: APIResponse) -> None:
    """Write one response (dropped when the connection is gone)."""
    if state.gone:
        return
    code, body = response.code, response.body
    head = b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b"Unknown"))
    if body or code != 401:
        head += b"Content-Type: %s\r\n" % response.content_type
    head += b"Content-Length: %d\r\n" % len(body)
    if state.closing:
        head += b"Connection: close\r\n"
    state.write(head + b"\r\n" + body)
    if state.closing and not state.discard:
        state.close()
