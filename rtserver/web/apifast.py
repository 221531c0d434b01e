"""A lean HTTP/1.1 path for the server API's common request.

Backends publish with many small keep-alive ``POST <prefix>/<method>`` requests, and
twisted.web's general request machinery costs ~100 µs of CPU for each (header objects,
resource traversal, producers). :class:`APIFastPath` answers exactly that request shape
straight from the connection's bytes:

* ``POST <prefix>/<method> HTTP/1.1`` (no query string), headers within 16 KiB,
* a ``Content-Length`` body within the API body limit, no ``Transfer-Encoding`` or
  ``Expect``,

with the same authentication, executor and response bodies as
:class:`~rtserver.web.api.APIResource`. Anything else (HTTP/1.0, chunked bodies, the
legacy ``POST <prefix>``, ``?api_key=``, other paths, oversized bodies, malformed
heads) hands the connection's bytes to twisted.web for good, so every other behaviour
(413, 404, 405, CORS, WebSocket upgrades) is twisted.web's. Pipelined requests are
answered in order: while one command is pending, later bytes wait.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

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

_HEAD_LIMIT = 16384  # twisted.web's totalHeadersSize
_METHOD_RE = re.compile(rb"[a-z_]{1,64}")
_UNAUTHORIZED = APIResponse(401, b"")


class FastConnection:
    """Per-connection state of the fast path (owned by the HTTP channel).

    Args:
        write: sends bytes on the connection.
        close: closes the connection once written.
        fallback: gives bytes to twisted.web (from then on the channel passes all later
            bytes there too: ``slow`` is set).
    """

    __slots__ = ("buffer", "close", "closing", "fallback", "gone", "pending", "slow", "write")

    def __init__(
        self,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        fallback: Callable[[bytes], None],
    ) -> None:
        self.write = write
        self.close = close
        self.fallback = fallback
        self.buffer = b""
        self.gone = False  # the connection was lost: late answers are dropped
        self.pending = False  # a command is running; later requests wait in ``buffer``
        self.slow = False  # handed over to twisted.web for good
        self.closing = False  # the client asked ``Connection: close``


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
        state.buffer += data
        while not state.pending and not state.slow and not state.closing and state.buffer:
            parsed = self._parse(state.buffer)
            if parsed is None:  # incomplete: wait for more bytes
                return
            if parsed is False:
                state.slow = True
                buffered, state.buffer = state.buffer, b""
                state.fallback(buffered)
                return
            size, method, headers, body = parsed
            state.buffer = state.buffer[size:]
            if headers.get(b"connection", b"").lower() == b"close":
                state.closing = True
            self._answer(state, method, headers, body)

    def _parse(self, buf: bytes) -> Any:
        """``(size, method, headers, body)``, None (need more bytes) or False (not ours)."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if b"\n\n" in buf or b"\n\r\n" in buf:  # bare-LF line ends: twisted.web's call
                return False
            return None if len(buf) < _HEAD_LIMIT else False
        if end > _HEAD_LIMIT:
            return False
        lines = buf[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return False
        path = parts[1]
        if not path.startswith(self._prefix):
            return False
        method = path[len(self._prefix):]
        if _METHOD_RE.fullmatch(method) is None:
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                return False
            key = name.lower()
            if key in headers or key in (b"transfer-encoding", b"expect", b"upgrade"):
                return False
            headers[key] = value.strip()
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            return False
        size = int(length)
        if size > self._body_limit:
            return False  # twisted.web answers 413
        start = end + 4
        if len(buf) - start < size:
            return None
        return start + size, method.decode("ascii"), headers, buf[start : start + size]

    def _answer(
        self, state: FastConnection, method: str, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        api = self._api
        keys = header_credentials(headers.get(b"x-api-key"), headers.get(b"authorization"))
        if not api.authorized(keys):
            _send(state, _UNAUTHORIZED)
            return
        mode = transport_mode(headers.get(b"x-centrifugo-error-mode"))
        d = Deferred.fromCoroutine(api.run_method(method, body, mode))
        d.addErrback(_internal_error)
        if d.called:  # the usual case: the command finished in this reactor turn
            response: APIResponse = d.result
            _send(state, response)
            return
        state.pending = True

        def done(response: APIResponse) -> None:
            state.pending = False
            _send(state, response)
            self.feed(state, b"")

        d.addCallback(done).addErrback(_log_failure)


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
    if state.closing:
        state.close()


def _internal_error(failure: Failure) -> APIResponse:
    _log.failure("server API request failed", failure)
    return INTERNAL_ERROR


def _log_failure(failure: Failure) -> None:
    _log.failure("server API response could not be written", failure)
