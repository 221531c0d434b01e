"""The API fast path on a connection's bytes: splitting, pipelining, hand-over, closing.

Every API test of test_api.py also runs through the fast path; these cover what only a
raw connection shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from test_api import KEY, PendingExecutor, Server, make_server, parse
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtserver.config import HTTPAPIConfig


def publish(channel: str, *, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    body = orjson.dumps({"channel": channel, "data": {"n": 1}})
    return (
        f"POST /api/publish {version}\r\nHost: x\r\nX-API-Key: {KEY}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def responses(data: bytes) -> list[Any]:
    """Split a stream of Content-Length responses."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(
            line.split(b":")[1] for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ))
        out.append(parse(head + b"\r\n\r\n" + rest[:length]))
        data = rest[length:]
    return out


def served_by_twisted_web(data: bytes) -> bool:
    """Whether a response came from twisted.web rather than the fast path.

    twisted.web sends ``Server`` and ``Date`` headers; the fast path answers with the
    status, type, length and body only.
    """
    head = data.partition(b"\r\n\r\n")[0].lower()
    return b"\r\nserver: twistedweb" in head and b"\r\ndate: " in head


def connection(server: Server) -> tuple[Any, StringTransport]:
    proto = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def close(proto: Any) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def test_request_split_into_single_bytes() -> None:
    """A request that trickles in byte by byte is answered once, when complete."""
    server = make_server(fast=True)
    proto, transport = connection(server)
    raw = publish("a")
    for i in range(len(raw)):
        assert transport.value() == b""
        proto.dataReceived(raw[i : i + 1])
    [response] = responses(transport.value())
    assert response.code == 200 and response.json() == {"result": {}}
    close(proto)


def test_pipelined_requests_are_answered_in_order() -> None:
    """Several requests in one packet get their responses in the same order."""
    server = make_server(fast=True)
    proto, transport = connection(server)
    proto.dataReceived(publish("a") + publish("hist:b") + publish("hist:b"))
    got = [r.json()["result"] for r in responses(transport.value())]
    assert got[0] == {}
    assert [g["offset"] for g in got[1:]] == [1, 2]
    close(proto)


def test_pending_command_holds_later_requests_back() -> None:
    """A request behind a slow one waits for it: responses never overtake each other."""
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast=True)
    proto, transport = connection(server)
    body = b"{}"
    request = b"POST /api/info HTTP/1.1\r\nContent-Length: 2\r\n\r\n" + body
    proto.dataReceived(request + request)
    assert transport.value() == b""
    first = executor.pending
    executor.pending = type(first)()
    first.callback({"result": {"first": True}})
    assert [r.json() for r in responses(transport.value())] == [{"result": {"first": True}}]
    executor.release()
    assert [r.json() for r in responses(transport.value())] == [
        {"result": {"first": True}},
        {"result": {}},
    ]
    close(proto)


def test_connection_close_is_honoured() -> None:
    """``Connection: close`` gets its answer, ``Connection: close`` back, and the close."""
    server = make_server(fast=True)
    proto, transport = connection(server)
    proto.dataReceived(publish("a", extra="Connection: close\r\n") + publish("a"))
    [response] = responses(transport.value())
    assert response.headers["connection"] == "close"
    assert transport.disconnecting
    close(proto)


def test_other_shapes_are_handed_to_twisted_web() -> None:
    """HTTP/1.0, chunked bodies, ?api_key and oversized bodies are twisted.web's job."""
    server = make_server(fast=True, max_request_body_size=100)
    for raw, code in [
        (publish("a", version="HTTP/1.0"), 200),
        (b"POST /api/info?api_key=" + KEY.encode() + b" HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
         200),
        (b"POST /api/info HTTP/1.1\r\nX-API-Key: " + KEY.encode()
         + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 200),
        (b"POST /api/info HTTP/1.1\r\nX-API-Key: " + KEY.encode()
         + b"\r\nContent-Length: 101\r\n\r\n", 413),
        (b"GET /api/info HTTP/1.1\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n", 405),
    ]:
        proto, transport = connection(server)
        proto.dataReceived(raw)
        assert parse(transport.value()).code == code, raw
        if code == 413:  # refused by the site's request before twisted.web reads the body
            assert transport.value().endswith(b"\r\n\r\nrequest body too large\r\n"), raw
        else:
            assert served_by_twisted_web(transport.value()), raw
        close(proto)


def test_connection_stays_usable_after_hand_over() -> None:
    """Once twisted.web took a connection, its later requests are still answered."""
    server = make_server(fast=True)
    proto, transport = connection(server)
    chunked = (b"POST /api/info HTTP/1.1\r\nX-API-Key: " + KEY.encode()
               + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    proto.dataReceived(chunked)
    first = transport.value()
    transport.clear()
    proto.dataReceived(publish("hist:c"))
    second = transport.value()
    assert parse(first).code == 200 and served_by_twisted_web(first)
    # A request the fast path would take is twisted.web's too: the hand-over is for good.
    assert parse(second).code == 200 and served_by_twisted_web(second)
    assert parse(second).json()["result"]["offset"] == 1
    close(proto)


def test_bare_lf_requests_get_twisted_web_behaviour() -> None:
    """A head with bare-LF line ends is not parsed by the fast path; twisted.web decides.

    twisted.web rejects it (400) once the connection sends more; the fast path would have
    answered the well-formed request that follows.
    """
    server = make_server(fast=True)
    proto, transport = connection(server)
    head = b"POST /api/info HTTP/1.1\nX-API-Key: " + KEY.encode() + b"\nContent-Length: 2\n\n{}"
    proto.dataReceived(head)
    proto.dataReceived(publish("a"))
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"HTTP/1.1 200" not in transport.value()
    close(proto)


def test_pipelined_bytes_behind_a_pending_command_pause_reading() -> None:
    """Over 64 KiB waiting behind a running command: the connection stops reading."""
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast=True)
    proto, transport = connection(server)
    request = b"POST /api/info HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    proto.dataReceived(request)
    assert transport.producerState == "producing"
    proto.dataReceived(request * 2000)  # ~90 KB of further requests
    assert transport.producerState == "paused"
    executor.release()
    assert transport.producerState == "producing"
    assert transport.value().count(b"HTTP/1.1 200") == 2001
    close(proto)


def test_body_in_pieces_then_more_requests_stay_on_the_fast_path() -> None:
    """After a body that came in pieces, the next heads on the connection are parsed right.

    One parser serves the connection's requests, so it must have counted the earlier
    body off: the following requests are answered by the fast path, not handed over.
    """
    server = make_server(fast=True)
    proto, transport = connection(server)
    raw = publish("hist:a")
    split = raw.index(b"\r\n\r\n") + 6  # the head and two body bytes, then the rest
    proto.dataReceived(raw[:split])
    proto.dataReceived(raw[split:-3])
    proto.dataReceived(raw[-3:] + publish("hist:a") + publish("hist:a")[:7])
    proto.dataReceived(publish("hist:a")[7:])
    out = transport.value()
    assert [r.json()["result"]["offset"] for r in responses(out)] == [1, 2, 3]
    assert b"twistedweb" not in out.lower()
    close(proto)


def test_failure_after_a_wait_is_500_and_logged(
    expect_logged_failure: Callable[..., None],
) -> None:
    """A command that fails once the engine answers gets 500; the next request goes on."""
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast=True)
    proto, transport = connection(server)
    request = b"POST /api/info HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    proto.dataReceived(request + request)
    expect_logged_failure(RuntimeError)
    failing = executor.pending
    executor.pending = type(failing)()
    failing.errback(RuntimeError("engine broke"))
    executor.release()
    got = responses(transport.value())
    assert [r.code for r in got] == [500, 200]
    assert got[0].body == b"internal server error"
    close(proto)


def test_head_behind_a_running_command_gets_its_deadline_when_answered() -> None:
    """Bytes of the next head that wait behind a command: its deadline starts at the answer.

    While the command runs the head is not the client's delay; once answered, the head
    has the usual ``read_header_timeout`` (10 s) to complete, or the client gets 408.
    """
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast=True)
    proto, transport = connection(server)
    request = b"POST /api/info HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    proto.dataReceived(request + request[:9])
    server.clock.advance(30)
    assert not transport.disconnecting
    executor.release()
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    server.clock.advance(9.9)
    assert not transport.disconnecting
    server.clock.advance(0.1)
    assert transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 408 Request Timeout\r\n") == 1
    close(proto)


def test_only_heads_left_unfinished_by_a_read_are_counted() -> None:
    """``unfinished_heads`` (metrics, the cap): a head split over reads, not a whole one."""
    server = make_server(fast=True)
    stats = server.site.stats  # type: ignore[attr-defined]
    proto, transport = connection(server)
    assert stats.unfinished_heads == 1  # a new connection owes its first head
    proto.dataReceived(publish("a"))
    assert stats.unfinished_heads == 0
    proto.dataReceived(publish("a") + publish("a"))
    assert stats.unfinished_heads == 0
    proto.dataReceived(publish("a")[:20])
    assert stats.unfinished_heads == 1
    proto.dataReceived(publish("a")[20:])
    assert stats.unfinished_heads == 0
    assert transport.value().count(b"HTTP/1.1 200 ") == 4
    close(proto)
    assert stats.unfinished_heads == 0


def test_request_lines_remembered_are_bounded_and_only_for_authenticated_callers() -> None:
    """Made-up method names retain no memory: none for a wrong key, at most 64 in all."""
    server = make_server(fast=True)
    path = server.site.api_fast_path  # type: ignore[attr-defined]
    for key in ("wrong", KEY):
        for i in range(100):
            proto, transport = connection(server)
            name = "m" + "".join(chr(ord("a") + int(d)) for d in str(i))
            proto.dataReceived(
                f"POST /api/{name} HTTP/1.1\r\nX-API-Key: {key}\r\n"
                "Content-Length: 2\r\n\r\n{}".encode()
            )
            assert transport.value().startswith(
                b"HTTP/1.1 401 " if key == "wrong" else b"HTTP/1.1 200 "
            )
            close(proto)
        assert len(path._lines) == (0 if key == "wrong" else 64)


def test_unauthenticated_request_without_body_is_refused_and_closed() -> None:
    """``Content-Length: 0`` and a wrong key: 401 with ``Connection: close``, then close."""
    server = make_server(fast=True)
    proto, transport = connection(server)
    proto.dataReceived(
        b"POST /api/info HTTP/1.1\r\nX-API-Key: wrong\r\nContent-Length: 0\r\n\r\n"
        + publish("a")
    )
    [response] = responses(transport.value())
    assert response.code == 401 and response.headers["connection"] == "close"
    assert transport.disconnecting
    close(proto)


def test_twisted_web_request_behind_a_pending_command_is_answered_after_it() -> None:
    """A chunked request waiting behind a running command goes to twisted.web, in order."""
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast=True)
    proto, transport = connection(server)
    plain = b"POST /api/info HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    chunked = (b"POST /api/info HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\n\r\n")
    proto.dataReceived(plain + chunked)
    assert transport.value() == b""
    executor.release()
    first, second = transport.value().split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert not served_by_twisted_web(b"HTTP/1.1 200 OK\r\n" + first)
    assert served_by_twisted_web(b"HTTP/1.1 200 OK\r\n" + second)
    assert server.site.stats.unfinished_heads == 0  # type: ignore[attr-defined]
    close(proto)
