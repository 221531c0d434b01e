"""One SockJS endpoint on two workers: requests relayed to the session's owner.

Two in-process "workers", each with its own TCP listener (the kernel's choice of worker
is the test's choice of port here) and its own private Unix socket, both serving the
echo service of the conformance suite with a :class:`Forwarder`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sockjs_http import Response
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher

from rtserver.sockjs.conformance import Echo
from rtserver.sockjs.forward import MAX_HEAD, Forwarder, Siblings, _Chunks
from rtserver.sockjs.options import SockJSOptions
from rtserver.sockjs.resource import OwnedSessions, SockJSResource
from rtserver.web.site import Branch, RTSite


class Worker:
    """One worker: the echo endpoint on a TCP port and on its private socket."""

    def __init__(self, index: int, paths: list[str]) -> None:
        self.forwarder = Forwarder(Siblings(index, paths), reactor, timeout=2.0)
        options = SockJSOptions(response_limit=4096)
        self.resource = SockJSResource(Echo(), options, clock=reactor, forwarder=self.forwarder)
        root = Branch()
        root.putChild(b"echo", self.resource)
        owned = Branch()
        owned.putChild(b"echo", OwnedSessions(self.resource))
        self.site = RTSite(root, reactor=reactor)
        self.owned_site = RTSite(owned, read_header_timeout=0, reactor=reactor)
        self.tcp = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.unix: Any = reactor.listenUNIX(paths[index], self.owned_site, mode=0o600)
        self.port = self.tcp.getHost().port

    async def stop(self) -> None:
        await self.resource.wait_closed(3)
        await self.site.wait_closed(3)
        await self.owned_site.wait_closed(3)
        await self.tcp.stopListening()
        if self.unix is not None:
            await self.unix.stopListening()
            self.unix = None


class Pair:
    def __init__(self, directory: Path) -> None:
        self.paths = [str(directory / f"w{i}.sock") for i in range(2)]
        self.workers = [Worker(i, self.paths) for i in range(2)]
        self.clients: list[Response] = []

    def session_owned_by(self, index: int) -> str:
        """A fresh session id whose owner is worker ``index``."""
        siblings = self.workers[0].forwarder.siblings
        while True:
            sid = uuid.uuid4().hex
            if siblings.owner_index(sid) == index:
                return sid

    async def open(
        self, worker: int, method: str, path: str, body: bytes = b"", head: bool = True,
        headers: tuple[str, ...] = (),
    ) -> Response:
        """Send a request to ``worker``'s TCP port; fires once its head arrived."""
        response = Response(method)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.workers[worker].port)
        await connectProtocol(endpoint, response)
        self.clients.append(response)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += headers
        response.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if head:
            await response.head
        return response

    async def fetch(
        self, worker: int, method: str, path: str, body: bytes = b"", *headers: str
    ) -> Response:
        response = await self.open(worker, method, path, body, headers=headers)
        await response.complete
        return response

    async def stop(self) -> None:
        for client in self.clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        await defer.DeferredList([c.closed for c in self.clients], consumeErrors=True)
        for worker in self.workers:
            await worker.stop()


@pytest_twisted.async_yield_fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    pair = Pair(tmp_path)
    yield pair
    await pair.stop()


async def turns(count: int = 50) -> None:
    for _ in range(count):
        await task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_requests_of_one_session_on_both_workers_reach_its_owner(pair: Pair) -> None:
    """Open and send on the worker not owning the session, poll on the owner: one session."""
    sid = pair.session_owned_by(1)
    opened = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr")
    assert (opened.status, opened.body) == (200, b"o\n")
    assert opened.header("content-type") == "application/javascript; charset=UTF-8"
    assert opened.header("access-control-allow-origin") == "*"
    assert opened.header("connection") == ""  # hop-by-hop headers of the relay stay there
    sent = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr_send", b'["a","b"]')
    assert sent.status == 204
    polled = await pair.fetch(1, "POST", f"/echo/000/{sid}/xhr")
    assert polled.body == b'a["a","b"]\n'
    assert pair.workers[1].resource.sessions.get(sid) is not None
    assert pair.workers[0].resource.sessions.get(sid) is None  # only the owner holds it
    assert (pair.workers[0].forwarder.forwarded, pair.workers[1].forwarder.forwarded) == (2, 0)


@pytest_twisted.ensureDeferred
async def test_a_relayed_stream_carries_frames_as_they_come_and_its_abort_ends_the_session(
    pair: Pair,
) -> None:
    """xhr_streaming through the other worker: frames arrive before the response ends."""
    sid = pair.session_owned_by(1)
    stream = await pair.open(0, "POST", f"/echo/000/{sid}/xhr_streaming")
    assert stream.status == 200
    received = b""
    while b"o\n" not in received:
        received += await stream.read()
    assert received == b"h" * 2048 + b"\n" + b"o\n"
    sent = await pair.fetch(1, "POST", f"/echo/000/{sid}/xhr_send", b'["x"]')
    assert sent.status == 204
    assert await stream.read() == b'a["x"]\n'
    assert not stream.complete.called
    session = pair.workers[1].resource.sessions.get(sid)
    assert session is not None
    stream.abort()
    for _ in range(200):
        if pair.workers[1].resource.sessions.get(sid) is None:
            break
        await turns(1)
    assert pair.workers[1].resource.sessions.get(sid) is None  # a client abort ends it


@pytest_twisted.ensureDeferred
async def test_unknown_session_is_404_through_the_relay(pair: Pair) -> None:
    sid = pair.session_owned_by(1)
    response = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr_send", b'["x"]')
    assert response.status == 404
    assert pair.workers[0].forwarder.forwarded == 1


@pytest_twisted.ensureDeferred
async def test_an_unreachable_owner_leaves_the_session_to_the_worker_reached(pair: Pair) -> None:
    """The owner restarting (its socket closed): a new session opens where it landed."""
    owner = pair.workers[1]
    await owner.unix.stopListening()
    owner.unix = None
    sid = pair.session_owned_by(1)
    opened = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr")
    assert (opened.status, opened.body) == (200, b"o\n")
    assert pair.workers[0].resource.sessions.get(sid) is not None
    assert pair.workers[0].forwarder.unreachable == 1
    sent = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr_send", b'["x"]')
    assert sent.status == 204  # the body read for the relay is read again here
    polled = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr")
    assert polled.body == b'a["x"]\n'
    missing = await pair.fetch(0, "POST", f"/echo/000/{pair.session_owned_by(1)}/xhr_send", b"[]")
    assert missing.status == 404  # a bytes answer served here
    assert missing.header("content-length") == str(len(missing.body))


class _Owner(Protocol):
    """A broken owner: answers ``reply`` to any request, then closes."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def dataReceived(self, data: bytes) -> None:
        if self.reply:
            self.transport.write(self.reply)
        self.transport.loseConnection()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"nonsense\r\n\r\n", "malformed"),
        (b"HTTP/1.0 200 OK\r\nno colon here\r\n\r\n", "malformed"),
        (b"HTTP/1.0 200 OK\r\nX-Pad: " + b"p" * (MAX_HEAD + 10), "too large"),
        (b"", "closed before answering"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_broken_owner_answer_is_a_502(tmp_path: Path, reply: bytes, expected: str) -> None:
    """What is not an HTTP answer from the owner becomes 502 Bad gateway, said in the log."""
    logged: list[str] = []

    def observe(event: Any) -> None:
        if event.get("log_namespace") == "rtserver.sockjs.forward":
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    path = str(tmp_path / "owner.sock")
    factory = Factory.forProtocol(lambda: _Owner(reply))
    listening = reactor.listenUNIX(path, factory)
    forwarder = Forwarder(Siblings(0, ["unused", path]), reactor)
    resource = SockJSResource(Echo(), SockJSOptions(), clock=reactor, forwarder=forwarder)
    root = Branch()
    root.putChild(b"echo", resource)
    site = RTSite(root, reactor=reactor)
    tcp = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        sid = next(s for s in (uuid.uuid4().hex for _ in range(100))
                   if forwarder.siblings.owner_index(s) == 1)
        response = Response("POST")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", tcp.getHost().port)
        await connectProtocol(endpoint, response)
        response.transport.write(
            f"POST /echo/000/{sid}/xhr HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await response.complete
        assert response.status == 502
        assert response.body == b"Bad gateway\n"
        assert resource.sessions.get(sid) is None
    finally:
        await site.wait_closed(3)
        await tcp.stopListening()
        await listening.stopListening()
        globalLogPublisher.removeObserver(observe)
    assert any("relaying failed" in line and expected in line for line in logged), logged


def test_siblings_owner() -> None:
    siblings = Siblings(1, ["a", "b", "c"])
    assert siblings.own_path == "b"
    owners = {siblings.owner_index(uuid.uuid4().hex) for _ in range(200)}
    assert owners == {0, 1, 2}
    for _ in range(50):
        sid = uuid.uuid4().hex
        assert (siblings.owner(sid) is None) == (siblings.owner_index(sid) == 1)
    with pytest.raises(ValueError, match="outside"):
        Siblings(3, ["a", "b", "c"])


@pytest.mark.parametrize(
    ("method", "transport", "opening"),
    [
        ("GET", "eventsource", b"\r\ndata: o\r\n\r\n"),
        ("GET", "htmlfile?c=%63b", b'<script>\np("o");\n</script>\r\n'),
        ("GET", "jsonp?c=cb", b'/**/cb("o");\r\n'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_receiving_transport_is_relayed_with_its_query(
    pair: Pair, method: str, transport: str, opening: bytes
) -> None:
    """eventsource, htmlfile and jsonp (callback in the query) open through the relay."""
    sid = pair.session_owned_by(1)
    response = await pair.open(0, method, f"/echo/000/{sid}/{transport}")
    assert response.status == 200
    received = b""
    while opening not in received and not response.complete.called:
        received += await response.read()
    assert received.endswith(opening), received
    assert pair.workers[1].resource.sessions.get(sid) is not None
    assert pair.workers[0].forwarder.forwarded == 1
    if transport.startswith("jsonp"):
        form = "Content-Type: application/x-www-form-urlencoded"
        sent = await pair.fetch(0, "POST", f"/echo/000/{sid}/jsonp_send", b"d=%5B%22x%22%5D", form)
        assert (sent.status, sent.body) == (200, b"ok")
        polled = await pair.fetch(1, "GET", f"/echo/000/{sid}/jsonp?c=cb")
        assert polled.body == b'/**/cb("a[\\"x\\"]");\r\n'


@pytest_twisted.ensureDeferred
async def test_relayed_requests_reuse_kept_alive_connections(pair: Pair) -> None:
    """Sequential requests to one owner share one connection; one closed idle is replaced."""
    sid = pair.session_owned_by(1)
    forwarder = pair.workers[0].forwarder
    assert (await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr")).body == b"o\n"
    for i in range(3):
        sent = await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr_send", f'["{i}"]'.encode())
        assert sent.status == 204
        assert (await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr")).body == b'a["%d"]\n' % i
    assert (forwarder.forwarded, forwarder.connections) == (7, 1)
    # The owner closes its idle connections (as at a reload): the next request opens one.
    for channel in list(pair.workers[1].owned_site._channels):
        channel.transport.loseConnection()
    await turns()
    assert (await pair.fetch(0, "POST", f"/echo/000/{sid}/xhr_send", b'["z"]')).status == 204
    assert (forwarder.forwarded, forwarder.connections) == (8, 2)


class _Scripted(Protocol):
    """A fake owner answering the Nth request of a connection with ``replies[N]``.

    ``None`` closes the connection without an answer.
    """

    def __init__(self, replies: list[bytes | None]) -> None:
        self.replies = list(replies)
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)  # bodies are empty here
            reply = self.replies.pop(0) if self.replies else None
            if reply is None:
                self.transport.loseConnection()
                return
            self.transport.write(reply)


class _Alone:
    """A worker 0 whose sessions are all owned by a fake worker 1 (``replies`` per connection)."""

    def __init__(self, directory: Path, replies: list[bytes | None]) -> None:
        path = str(directory / "owner.sock")
        self.owner: Any = reactor.listenUNIX(
            path, Factory.forProtocol(lambda: _Scripted(replies))
        )
        self.forwarder = Forwarder(Siblings(0, ["unused", path]), reactor)
        self.resource = SockJSResource(
            Echo(), SockJSOptions(), clock=reactor, forwarder=self.forwarder
        )
        root = Branch()
        root.putChild(b"echo", self.resource)
        self.site = RTSite(root, reactor=reactor)
        self.tcp = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.sid = next(s for s in (uuid.uuid4().hex for _ in range(100))
                        if self.forwarder.siblings.owner_index(s) == 1)

    async def send(self, transport: str = "xhr_send") -> Response:
        response = Response("POST")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.getHost().port)
        await connectProtocol(endpoint, response)
        response.transport.write(
            f"POST /echo/000/{self.sid}/{transport} HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 2\r\n\r\n[]".encode()
        )
        await response.complete
        return response

    async def stop(self) -> None:
        await self.resource.wait_closed(3)
        await self.site.wait_closed(3)
        await self.tcp.stopListening()
        if self.owner is not None:
            await self.owner.stopListening()


_NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_a_kept_alive_connection_closed_before_answering_is_replaced_once(
    tmp_path: Path,
) -> None:
    """The owner closed the idle connection as the request went out: a new one carries it."""
    alone = _Alone(tmp_path, [_NO_CONTENT, None])
    try:
        assert (await alone.send()).status == 204
        assert (await alone.send()).status == 204  # the first connection closed: retried
        assert alone.forwarder.connections == 2
    finally:
        await alone.stop()


@pytest_twisted.ensureDeferred
async def test_an_owner_answer_with_connection_close_is_not_reused(tmp_path: Path) -> None:
    closing = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    alone = _Alone(tmp_path, [closing, _NO_CONTENT])
    try:
        assert (await alone.send()).status == 204
        assert (await alone.send()).status == 204
        assert alone.forwarder.connections == 2
    finally:
        await alone.stop()


@pytest_twisted.ensureDeferred
async def test_a_malformed_chunked_answer_ends_the_response(tmp_path: Path) -> None:
    """A chunked body that is not: the client's response ends there, the error is logged."""
    logged: list[str] = []

    def observe(event: Any) -> None:
        if event.get("log_namespace") == "rtserver.sockjs.forward":
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"
    alone = _Alone(tmp_path, [bad])
    try:
        response = await alone.send()
        assert (response.status, response.body) == (200, b"ok")
    finally:
        await alone.stop()
        globalLogPublisher.removeObserver(observe)
    assert any("chunked body is malformed" in line for line in logged), logged


def test_chunked_bodies_are_decoded_whatever_the_splits() -> None:
    body = b"3;ext=1\r\nabc\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer: t\r\n\r\n"
    for step in (1, 2, 5, len(body)):
        chunks = _Chunks()
        out = b"".join(chunks.feed(body[i : i + step]) for i in range(0, len(body), step))
        assert out == b"abc" + b"x" * 16
        assert chunks.done and not chunks.leftover
    for broken, before in ((b"g\r\n", b""), (b"3\r\nabcX\r\n", b"abc"), (b"1" * 2000, b"")):
        chunks = _Chunks()
        assert chunks.feed(broken) == before
        assert chunks.error


@pytest_twisted.ensureDeferred
async def test_an_owner_gone_under_a_kept_alive_connection_leaves_the_poll_here(
    tmp_path: Path,
) -> None:
    """The owner closes a kept-alive connection and no longer listens: served here."""
    alone = _Alone(tmp_path, [_NO_CONTENT, None])
    try:
        assert (await alone.send()).status == 204
        await alone.owner.stopListening()  # the connection kept alive stays open
        alone.owner = None
        polled = await alone.send("xhr")
        assert (polled.status, polled.body) == (200, b"o\n")  # a new session, served here
        assert alone.forwarder.unreachable == 1
        assert alone.resource.sessions.get(alone.sid) is not None
    finally:
        await alone.stop()
