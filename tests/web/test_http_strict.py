"""The API fast path is as strict as twisted.web: a differential test on raw requests.

Each request is sent, as raw bytes on a fresh connection, once to rtserver's site with
the API fast path and once to the same site with the fast path off (plain twisted.web).
Both must reach the same outcome class (executed / 400 / 401 / 413 / other status /
no answer yet, and whether the connection closes), and no request may be executed
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtserver.api.executor import APIExecutor
from rtserver.config import from_mapping
from rtserver.core.node import Node
from rtserver.engines.memory import MemoryEngine
from rtserver.web.api import APIResource
from rtserver.web.apifast import APIFastPath
from rtserver.web.site import Branch, RTSite

KEY = b"s3cret"
LIMIT = 4096


class CountingExecutor(APIExecutor):
    """The real executor, counting the commands it runs."""

    executed = 0

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        self.executed += 1
        return await super().call(method, params)


@dataclass(frozen=True)
class Outcome:
    """What a client and the server's state show after one raw request."""

    statuses: tuple[int, ...]
    executed: int
    closed: bool

    @property
    def kind(self) -> tuple[Any, ...]:
        """The outcome class compared between the two paths.

        The first status (or none yet), how many commands ran, and whether the
        connection closed. After a 401 the fast path closes where twisted.web keeps the
        connection (and runs a request that follows), so only the 401 is compared.
        """
        first = self.statuses[0] if self.statuses else None
        if first == 401:
            return (401, None, None)
        return (first, self.executed, self.closed)


def send(raw: bytes, *, fast: bool, chunks: int = 1) -> Outcome:
    """Send ``raw`` (in ``chunks`` pieces) on a new connection; see what happened."""
    config = from_mapping(
        {"http_api": {"key": KEY.decode(), "max_request_body_size": LIMIT}}
    )
    clock = Clock()
    node = Node(MemoryEngine(clock), config, clock=clock)
    node.start()
    executor = CountingExecutor(node)
    root = Branch()
    api = APIResource(executor, config.http_api)
    root.putChild(b"api", api)
    site = RTSite(
        root,
        body_limits=[("/api", LIMIT)],
        api_fast_path=APIFastPath(api, "/api", LIMIT) if fast else None,
        reactor=clock,
    )
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    assert proto is not None
    proto.makeConnection(transport)
    step = max(1, -(-len(raw) // chunks))
    for i in range(0, len(raw), step):
        if transport.disconnecting:
            break
        proto.dataReceived(raw[i : i + step])
    out = transport.value()
    statuses = tuple(
        int(line.split(b" ")[1])
        for line in out.split(b"\r\n")
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit()
    )
    closed = transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    node.stop()
    return Outcome(statuses, executor.executed, closed)


def request(
    head: bytes = b"",
    *,
    body: bytes = b'{"channel":"a","data":{}}',
    line: bytes = b"POST /api/publish HTTP/1.1",
    length: bytes | None = None,
    key: bytes = KEY,
) -> bytes:
    """A publish request; ``head`` is extra header lines (each ending in CRLF)."""
    cl = b"%d" % len(body) if length is None else length
    return (
        line + b"\r\nHost: x\r\nX-API-Key: " + key + b"\r\n" + head
        + b"Content-Length: " + cl + b"\r\n\r\n" + body
    )


SECOND = request()  # a second, valid request: executing it means it was smuggled

#: The issue's cases, with twisted.web's outcome (the reference).
CASES: dict[str, tuple[bytes, tuple[Any, ...]]] = {
    "valid": (request(), (200, 1, False)),
    # A bare LF inside a header value: one request for an LF-tolerant proxy, where
    # ``X: a\nTransfer-Encoding: chunked`` frames the body and swallows ``SECOND``.
    "bare LF in a header value": (
        request(b"X: a\nTransfer-Encoding: chunked\r\n") + SECOND,
        (400, 0, True),
    ),
    "bare CR in a header value": (request(b"X: a\rb\r\n"), (400, 0, True)),
    "NUL in a header value": (request(b"X: a\x00b\r\n"), (400, 0, True)),
    "invalid header name character": (request(b"X(y): a\r\n"), (400, 0, True)),
    "space before the colon": (request(b"X : a\r\n"), (400, 0, True)),
    "form feed before Content-Length digits": (
        request(length=b"\x0c25"), (400, 0, True)
    ),
    "form feed after Content-Length digits": (
        request(length=b"25\x0c"), (400, 0, True)
    ),
    "signed Content-Length": (request(length=b"+25"), (400, 0, True)),
    "two Content-Length headers": (
        request(b"Content-Length: 25\r\n"), (400, 0, True)
    ),
    "2,000 headers": (
        request(b"".join(b"%x:1\r\n" % i for i in range(2000))), (400, 0, True)
    ),
    "Connection: keep-alive, close": (
        request(b"Connection: keep-alive, close\r\n") + SECOND,
        (200, 1, True),
    ),
    "Connection: close": (request(b"Connection: close\r\n") + SECOND, (200, 1, True)),
    "double space in the request line": (
        request(line=b"POST  /api/publish HTTP/1.1"), (400, 0, True)
    ),
    "body over the limit": (request(length=b"%d" % (LIMIT + 1)), (413, 0, True)),
    "no API key": (request(key=b"wrong") + SECOND, (401, None, None)),
    "unauthenticated body over the limit": (
        request(key=b"wrong", length=b"%d" % (LIMIT + 1)), (413, 0, True)
    ),
    "obs-fold continuation line": (request(b"X: a\r\n b\r\n"), (200, 1, False)),
    "DEL in a header value": (request(b"X: a\x7fb\r\n"), (200, 1, False)),
    "incomplete body": (request(length=b"26"), (None, 0, False)),
    # Repeats: of a header the fast path reads (twisted.web's call), of one it does not.
    "two X-API-Key headers, the second wrong": (
        request(b"X-API-Key: wrong\r\n"), (401, None, None)
    ),
    "two Authorization headers": (
        request(b"Authorization: apikey s3cret\r\nAuthorization: apikey s3cret\r\n"),
        (200, 1, False),
    ),
    "two Connection headers, the second close": (
        request(b"Connection: keep-alive\r\nConnection: close\r\n"),
        (200, 1, False),  # twisted.web reads the first
    ),
    "two Host headers": (request(b"Host: y\r\n"), (200, 1, False)),
    # Names that end like a header the fast path reads are other headers.
    "X-Content-Length": (request(b"X-Content-Length: 99\r\n"), (200, 1, False)),
    "Old-X-API-Key": (request(b"Old-X-API-Key: wrong\r\n", key=b"wrong"), (401, None, None)),
    "spaces around the Content-Length value": (request(length=b" 25 "), (200, 1, False)),
    "API key in an obs-fold continuation": (
        request(b"X: a\r\n X-API-Key: s3cret\r\n", key=b"wrong"), (401, None, None)
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_matches_twisted_web(name: str) -> None:
    """Each listed case gets twisted.web's outcome on the fast path, whole or trickled."""
    raw, expected = CASES[name]
    reference = send(raw, fast=False)
    assert reference.kind == expected, "twisted.web's own outcome changed"
    for chunks in (1, 7, len(raw)):
        got = send(raw, fast=True, chunks=chunks)
        assert got.kind == reference.kind, (chunks, got, reference)
        assert got.executed <= 1


def test_keep_alive_close_closes_after_the_answer() -> None:
    """``Connection: keep-alive, close``: one answer with ``Connection: close``, then close."""
    raw = request(b"Connection: keep-alive, close\r\n") + SECOND
    got = send(raw, fast=True)
    assert got.statuses == (200,) and got.closed


# --- generated corpus -------------------------------------------------------------------

_ALPHABET = b"\r\n\x00\x0c\t :,;()\x7f\x80aA0-"
_BASE = [
    request(),
    request(b"Connection: close\r\n"),
    request(body=b"{}", line=b"POST /api/info HTTP/1.1"),
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A valid request with a few bytes replaced, inserted or deleted; maybe a follow-up.

    Returns the bytes and whether the valid follow-up request ``SECOND`` was appended.
    """
    raw = bytearray(draw(st.sampled_from(_BASE)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from(list(_ALPHABET)))
        if action == "replace":
            raw[pos] = byte
        elif action == "insert":
            raw.insert(pos, byte)
        else:
            del raw[pos]
    follow = draw(st.booleans())
    if follow:
        raw += SECOND
    return bytes(raw), follow


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=mutated())
def test_generated_requests_match_twisted_web(case: tuple[bytes, bool]) -> None:
    """Mutated requests: the same outcome class as twisted.web, never more executions."""
    raw, follow = case
    reference = send(raw, fast=False)
    for chunks in (1, 5):  # whole, and split at arbitrary points
        got = send(raw, fast=True, chunks=chunks)
        assert got.executed <= reference.executed
        assert got.executed <= 1 + follow  # one request is never executed twice
        if got.statuses[:1] == (401,) and not reference.statuses:
            # The fast path refuses on the head; twisted.web first waits for the body.
            complete = send(raw + b" " * LIMIT, fast=False)
            assert complete.statuses[:1] == (401,), (raw, got, complete)
            continue
        assert got.kind == reference.kind, (raw, chunks, got, reference)


def test_unauthenticated_body_is_not_stored() -> None:
    """A 401 is answered on the head; the body that follows is read and dropped."""
    config = from_mapping({"http_api": {"key": KEY.decode()}})
    clock = Clock()
    node = Node(MemoryEngine(clock), config, clock=clock)
    api = APIResource(CountingExecutor(node), config.http_api)
    root = Branch()
    root.putChild(b"api", api)
    limit = 10 * 1024 * 1024
    site = RTSite(root, api_fast_path=APIFastPath(api, "/api", limit), reactor=clock)
    proto: Any = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(request(key=b"wrong", length=b"%d" % limit, body=b""))
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in transport.value()
    chunk = b"x" * 65536
    for _ in range(limit // len(chunk) - 1):
        proto.dataReceived(chunk)
        assert proto._fast.body == [] and proto._fast.buffer == b""
    assert not transport.disconnecting  # the client is still sending its body
    proto.dataReceived(chunk + request())  # the last body bytes and a next request
    assert transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 ") == 1
    proto.connectionLost(Failure(ConnectionDone()))


def test_large_body_is_collected_in_chunks() -> None:
    """An authenticated body arriving in pieces is executed once, whole."""
    data = {"channel": "a", "data": {"s": "y" * 3000}}
    body = orjson.dumps(data)
    got = send(request(body=body), fast=True, chunks=50)
    assert got.statuses == (200,) and got.executed == 1
