"""A lean HTTP/1.1 path for the server API's common request.

Backends publish with many small keep-alive ``POST <prefix>/<method>`` requests, and
twisted.web's general request machinery costs ~100 µs of CPU for each (header objects,
resource traversal, producers). :class:`APIFastPath` answers exactly that request shape
straight from the connection's bytes:

* ``POST <prefix>/<method> HTTP/1.1`` (no query string), the head within 16 KiB and at
  most 500 header lines (twisted.web's limits), no obs-fold continuation line,
* a ``Content-Length`` body within the API body limit, no ``Transfer-Encoding``,
  ``Expect`` or ``Upgrade``, none of the headers it reads (``Content-Length``,
  ``Connection``, ``X-API-Key``, ``Authorization``, ``X-Centrifugo-Error-Mode``)
  repeated.

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

Cost per request (see ``bench/apifast_callgrind.py``): one llhttp parser serves all the
requests of a connection (it is fed each body too, so it is ready for the next head) and
calls back into Python once per head, at its end; the few header lines the path looks
at are found by one regular-expression scan of the lowercased head (in a head llhttp
accepts, every CRLF starts a header line, so ``CRLF name:`` finds exactly that header);
a command that finishes at once is answered without a Deferred; response heads are
built once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Generator
from typing import Any

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
_VERSION = b" HTTP/1.1"
#: The header lines the fast path looks at, in a lowercased head that llhttp accepts
#: (where every CRLF starts a header line): the ones it reads (group 1), and those that
#: make a request twisted.web's: other framing or semantics (``Transfer-Encoding``,
#: ``Expect``, ``Upgrade``) or an obs-fold continuation line.
_HEADER_LINE = re.compile(
    rb"\r\n(?:(content-length|connection|x-api-key|authorization|x-centrifugo-error-mode):"
    rb"|transfer-encoding:|expect:|upgrade:|[ \t])"
)
#: Request lines already checked (``POST <prefix><method> HTTP/1.1`` -> method), of
#: authenticated requests; at most this many.
_LINES_CACHED = 64
_HEADS_CACHED = 64


class _Llhttp:
    """The connection's llhttp parser; Python hears only of each head's end."""

    __slots__ = ("complete", "parser")

    def __init__(self) -> None:
        self.complete = False
        self.parser = HttpRequestParser(self)

    def feed(self, data: bytes | memoryview) -> bool:
        """Parse more bytes of the connection; False when llhttp refuses them."""
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            return False
        return True

    def on_headers_complete(self) -> None:
        self.complete = True


class FastConnection:
    """Per-connection state of the fast path (owned by the HTTP channel).

    Args:
        write: sends bytes on the connection.
        close: closes the connection once written.
        fallback: gives bytes to twisted.web (from then on the channel passes all later
            bytes there too: ``slow`` is set).
        request_done: called when a command answered later than the bytes that asked
            for it, after the requests waiting behind it have been taken on.
    """

    __slots__ = (
        "body",
        "body_left",
        "buffer",
        "close",
        "closing",
        "discard",
        "fallback",
        "fed",
        "feeding",
        "gone",
        "method",
        "mode",
        "parser",
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
        request_done: Callable[[], None] | None = None,
    ) -> None:
        self.write = write
        self.close = close
        self.fallback = fallback
        self.request_done = request_done
        self.buffer = b""  # bytes not yet consumed (a partial head, or waiting requests)
        self.parser: _Llhttp | None = None  # created with the first head
        self.fed = 0  # bytes of the current head (at the start of ``buffer``) llhttp has
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

    @property
    def in_head(self) -> bool:
        """Whether the start of a request head is waiting for the rest of it."""
        return bool(self.buffer) and not (self.pending or self.body_left or self.slow)


class APIFastPath:
    """Parses and answers simple API requests; see the module docstring.

    Args:
        api: the mounted API resource (authentication and command execution).
        prefix: ``http_api.handler_prefix``.
        body_limit: ``http_api.max_request_body_size``.
    """

    def __init__(self, api: APIResource, prefix: str, body_limit: int) -> None:
        self._api = api
        self._line_start = b"POST " + prefix.rstrip("/").encode("utf-8") + b"/"
        self._body_limit = body_limit
        self._lines: dict[bytes, str] = {}

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
            parser = state.parser
            if parser is None:
                parser = state.parser = _Llhttp()
            fed = state.fed
            if not fed:
                parser.complete = False
            end = buffered.find(b"\r\n\r\n", fed - 3 if fed > 3 else 0)
            if end < 0:
                # An incomplete head: llhttp checks what came so far (a refusal is
                # twisted.web's to answer now), then wait for more bytes.
                if len(buffered) > _HEAD_LIMIT or not parser.feed(memoryview(buffered)[fed:]):
                    self._hand_over(state)
                    return
                state.fed = len(buffered)
                return
            stop = end + 4
            if stop > _HEAD_LIMIT or not self._check(state, buffered, stop):
                self._hand_over(state)  # too long, or not ours: twisted.web's call
                return
            total = stop + state.body_left
            whole = not state.discard and len(buffered) >= total
            # llhttp checks the head (and skips the body when it is all here already).
            if not parser.feed(memoryview(buffered)[fed : total if whole else stop]) or (
                not parser.complete
            ):
                self._hand_over(state)
                return
            state.fed = 0
            if whole:
                state.body_left = 0
                state.buffer = buffered[total:]
                self._run(state, buffered[stop:total])
                continue
            if state.discard:  # unauthenticated: refused now, the body is dropped as it comes
                state.closing = True
                _send(state, _UNAUTHORIZED)
            state.body = []
            state.buffer = buffered[stop:]
            if not state.body_left:
                self._finish_body(state)

    def _check(self, state: FastConnection, buffered: bytes, stop: int) -> bool:
        """Read one complete head (``buffered[:stop]``); False: it is twisted.web's.

        On True, ``method``, ``mode``, ``body_left``, ``closing`` and ``discard`` (no valid
        API key) describe the request; nothing is sent or consumed yet.
        """
        head = buffered[:stop].lower()
        # llhttp tolerates extra spaces and leading empty lines that twisted.web refuses:
        # the request line must be exactly ``POST <prefix><method> HTTP/1.1``.
        line = buffered[: head.find(b"\r\n")]
        method = self._lines.get(line)
        cached = method is not None
        if method is None:
            method = self._method(line)
            if method is None:
                return False
        if head.count(b"\r\n") > _MAX_HEADERS + 2:
            return False
        values: dict[bytes, bytes] = {}
        for found in _HEADER_LINE.finditer(head):
            name = found.group(1)
            if name is None or name in values:
                return False  # not ours (framing, semantics, obs-fold), or a repeat
            start = found.end()
            values[name] = buffered[start : head.find(b"\r\n", start)].strip(b" \t")
        length = values.get(b"content-length")
        if length is None or not length.isdigit():
            return False  # absent, or not a plain number
        size = int(length)
        if size > self._body_limit:
            return False  # twisted.web answers 413
        connection = values.get(b"connection")
        x_api_key = values.get(b"x-api-key")
        authorization = values.get(b"authorization")
        error_mode = values.get(b"x-centrifugo-error-mode")
        state.closing = connection is not None and _asks_close(connection)
        state.discard = not self._api.authorized(header_credentials(x_api_key, authorization))
        if not cached and not state.discard and len(self._lines) < _LINES_CACHED:
            self._lines[line] = method  # remembered for authenticated callers only
        state.method = method
        state.mode = self._api.transport_errors or (
            error_mode is not None and transport_mode(error_mode)
        )
        state.body_left = size
        return True

    def _method(self, line: bytes) -> str | None:
        """The method of a request line ``POST <prefix><method> HTTP/1.1``, or None."""
        start = self._line_start
        if not line.startswith(start) or not line.endswith(_VERSION):
            return None
        name = line[len(start) : -len(_VERSION)]
        if _METHOD_RE.fullmatch(name) is None:
            return None
        return name.decode("ascii")

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
            parser = state.parser
            if parser is not None:
                parser.feed(chunk)  # llhttp counts it off, ready for the next head
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
        self._run(state, body)

    def _run(self, state: FastConnection, body: bytes) -> None:
        """Run the current request's command; answer now if it finishes at once."""
        coro = self._api.run_method(state.method, body, state.mode)
        try:
            waiting = coro.send(None)
        except StopIteration as finished:
            self._done(finished.value, state)
            return
        except Exception:
            self._failed(Failure(), state)
            return
        # The command waits for something (an engine's reply): Twisted drives the rest.
        state.pending = True
        d = Deferred.fromCoroutine(_resume(coro, waiting))
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
            if not state.feeding:  # answered later than the turn that received it
                self.feed(state, b"")
                if state.request_done is not None and not state.gone:
                    state.request_done()
        except Exception:
            _log.failure("server API response could not be written", Failure())

    @staticmethod
    def _hand_over(state: FastConnection) -> None:
        state.slow = True
        state.parser = None
        state.body_left = 0
        state.discard = False
        buffered, state.buffer = state.buffer, b""
        state.fallback(buffered)


def _resume(
    coro: Coroutine[Any, Any, APIResponse], waiting: Any
) -> Generator[Any, Any, APIResponse]:
    """The rest of a started coroutine, as a generator Twisted can drive.

    ``waiting`` is what the coroutine's first step yielded (the Deferred it awaits);
    Twisted sends each result (or throws each failure) in, and it is passed on.
    """
    while True:
        try:
            value = yield waiting
        except BaseException as e:  # thrown in by Twisted: the awaited Deferred failed
            step: Callable[[Any], Any] = coro.throw
            value = e
        else:
            step = coro.send
        try:
            waiting = step(value)
        except StopIteration as finished:
            result: APIResponse = finished.value
            return result


def _asks_close(connection: bytes) -> bool:
    """Whether a ``Connection`` header value has the ``close`` token."""
    value = connection.lower()
    return b"close" in value and b"close" in [t.strip() for t in value.split(b",")]


_response_heads: dict[tuple[int, bytes, bool], bytes] = {}


def _response_head(code: int, content_type: bytes, closing: bool) -> bytes:
    """The response head up to ``Content-Length: `` (built once per shape)."""
    key = (code, content_type, closing)
    head = _response_heads.get(key)
    if head is None:
        head = b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b"Unknown"))
        if code != 401:
            head += b"Content-Type: %s\r\n" % content_type
        if closing:
            head += b"Connection: close\r\n"
        head += b"Content-Length: "
        if len(_response_heads) < _HEADS_CACHED:
            _response_heads[key] = head
    return head


def _send(state: FastConnection, response: APIResponse) -> None:
    """Write one response (dropped when the connection is gone)."""
    if state.gone:
        return
    body = response.body
    head = _response_head(response.code, response.content_type, state.closing)
    state.write(b"%s%d\r\n\r\n%s" % (head, len(body), body))
    if state.closing and not state.discard:
        state.close()
