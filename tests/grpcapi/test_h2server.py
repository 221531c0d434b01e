"""The GRPC API's HTTP/2 server on the reactor, in process, against a real ``h2`` client.

The server's protocol runs over an in-memory transport with a ``Clock``; the client is an
``h2`` client connection, so every byte on the wire is real HTTP/2. The calls run on the
real dispatch over a memory-engine node.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from grpc_support import Held
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtserver.api.executor import APIExecutor
from rtserver.config import GRPCAPIConfig
from rtserver.grpcapi import convert
from rtserver.grpcapi.api import SERVICE_NAME, APIDispatch, Reply
from rtserver.grpcapi.h2server import (
    GRPCH2Factory,
    GRPCH2Protocol,
    MessageError,
    decompress,
    grpc_timeout,
)
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.testing import make_node

KEY = "secret"


def _frame(message: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(message)) + message


class Call:
    """What the client saw on one stream."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.data = b""
        self.trailers: dict[bytes, bytes] = {}
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> int:
        """grpc-status, from the trailers (or a trailers-only answer's headers)."""
        return int((self.trailers or self.headers)[b"grpc-status"])

    @property
    def message(self) -> bytes:
        return (self.trailers or self.headers).get(b"grpc-message", b"")

    def body(self) -> bytes:
        flag, length = struct.unpack_from(">BI", self.data)
        assert flag == 0 and len(self.data) == 5 + length
        return self.data[5:]


class Peer:
    """One server connection and an h2 client on the other end of it."""

    def __init__(self, max_receive: int = 0, key: str = KEY,
                 dispatch: Any = None) -> None:
        self.node, _ = make_node({"channel": {"namespaces": [
            {"name": "hist", "history_size": 10, "history_ttl": "60s"}]}})
        self.clock = Clock()
        self.dispatch = dispatch or APIDispatch(APIExecutor(self.node), GRPCAPIConfig(key=key))
        self.factory = GRPCH2Factory(self.dispatch, self.clock,
                                     max_receive_message_size=max_receive,
                                     idle_timeout=60, read_timeout=10)
        self.server: GRPCH2Protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.calls: dict[int, Call] = {}
        self.terminated: ConnectionTerminated | None = None
        self.pump()

    def pump(self) -> None:
        """Client bytes to the server, server bytes to the client, until quiet."""
        for _ in range(20):
            out = self.client.data_to_send()
            if out:
                self.server.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.receive(back)
            if not out and not back:
                return

    def receive(self, data: bytes) -> None:
        for event in self.client.receive_data(data):
            call = self.calls.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived) and call is not None:
                call.headers = dict(event.headers or [])
            elif isinstance(event, TrailersReceived) and call is not None:
                call.trailers = dict(event.headers or [])
            elif isinstance(event, DataReceived) and call is not None:
                call.data += event.data or b""
                self.client.acknowledge_received_data(event.flow_controlled_length or 0,
                                                      event.stream_id or 0)
            elif isinstance(event, StreamEnded) and call is not None:
                call.ended = True
            elif isinstance(event, StreamReset) and call is not None:
                call.reset = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event

    def start(self, method: str, key: str | None = KEY, *, path: str | None = None,
              http_method: bytes = b"POST", content_type: bytes = b"application/grpc",
              extra: list[tuple[bytes, bytes]] | None = None) -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [(b":method", http_method), (b":scheme", b"http"),
                   (b":path", (path or f"/{SERVICE_NAME}/{method}").encode()),
                   (b":authority", b"localhost"), (b"content-type", content_type),
                   (b"te", b"trailers"), *(extra or [])]
        if key is not None:
            headers.append((b"authorization", f"apikey {key}".encode()))
        self.client.send_headers(sid, headers)
        self.calls[sid] = Call()
        return sid

    def send(self, sid: int, data: bytes, end: bool = True) -> None:
        size = self.client.max_outbound_frame_size
        chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        for i, chunk in enumerate(chunks):
            self.client.send_data(sid, chunk, end_stream=end and i == len(chunks) - 1)
            self.pump()

    def unary(self, method: str, message: Any, key: str | None = KEY) -> Call:
        sid = self.start(method, key)
        self.send(sid, _frame(message.SerializeToString()))
        return self.calls[sid]


def test_publish_answers_headers_message_and_ok_trailers() -> None:
    peer = Peer()
    call = peer.unary("Publish", pb.PublishRequest(channel="hist:a", data=b'{"n":1}'))
    assert call.ended and call.headers[b":status"] == b"200"
    assert call.headers[b"content-type"] == b"application/grpc"
    assert call.status == 0
    reply = pb.PublishResponse.FromString(call.body())
    assert reply.result.offset == 1 and reply.result.epoch
    assert not reply.HasField("error")


def test_api_errors_come_back_in_the_response_with_status_ok() -> None:
    peer = Peer()
    call = peer.unary("Publish", pb.PublishRequest(channel="a"))
    assert call.status == 0
    assert pb.PublishResponse.FromString(call.body()).error.code == 107


@pytest.mark.parametrize(("path", "status", "message"), [
    (f"/{SERVICE_NAME}/Nope", 12, b"unknown method Nope"),
    ("/other.Service/Publish", 12, b"unknown service /other.Service/Publish"),
])
def test_unknown_methods_are_unimplemented(path: str, status: int, message: bytes) -> None:
    peer = Peer()
    sid = peer.start("", path=path)
    peer.send(sid, _frame(b""))
    call = peer.calls[sid]
    assert (call.status, call.message) == (status, message)
    assert not call.data


def test_a_bad_key_is_refused_before_the_body_is_read() -> None:
    peer = Peer()
    sid = peer.start("Publish", key="wrong")
    peer.pump()
    call = peer.calls[sid]
    assert (call.status, call.message) == (16, b"unauthenticated")
    assert call.ended and call.reset == 0  # NO_ERROR: the client may stop sending
    assert not peer.server._streams
    missing = peer.start("Info", key=None)
    peer.send(missing, _frame(b""))
    assert peer.calls[missing].status == 16


def test_oversized_messages_are_refused_on_their_prefix() -> None:
    peer = Peer(max_receive=1024)
    sid = peer.start("Publish")
    peer.send(sid, struct.pack(">BI", 0, 10_000_000), end=False)
    call = peer.calls[sid]
    assert call.status == 8
    assert call.message == b"request message larger than max (10000000 vs. 1024)"
    assert not peer.server._streams  # nothing kept


@pytest.mark.parametrize(("body", "status", "message"), [
    (_frame(b"\x0a\x01a", compressed=1), 13, b"compressed message without a grpc-encoding"),
    (_frame(b"\x0a\x01a", compressed=2), 13, b"unexpected message flags 2"),
    (_frame(b"") + _frame(b""), 12, b"more than one request message in a unary call"),
    (b"\x00\x00", 13, b"incomplete request message"),
    (_frame(b"\xff\xff"), 13, b"Exception deserializing request!"),
])
def test_malformed_bodies(body: bytes, status: int, message: bytes) -> None:
    peer = Peer()
    sid = peer.start("Publish")
    peer.send(sid, body)
    assert (peer.calls[sid].status, peer.calls[sid].message) == (status, message)


def _bomb(size: int, wbits: int = 31) -> bytes:
    """``size`` zero bytes compressed (~1000:1), made without holding them."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(1 << 20)
    parts = [deflater.compress(chunk) for _ in range(size >> 20)]
    return b"".join(parts) + deflater.flush()


@pytest.mark.parametrize(("encoding", "compress"), [
    (b"gzip", gzip.compress), (b"deflate", zlib.compress)])
def test_compressed_requests_are_inflated(encoding: bytes, compress: Callable[[bytes], bytes]
                                          ) -> None:
    peer = Peer()
    request = pb.PublishRequest(channel="hist:z", data=b'"' + b"z" * 5000 + b'"')
    sid = peer.start("Publish", extra=[(b"grpc-encoding", encoding)])
    peer.send(sid, _frame(compress(request.SerializeToString()), compressed=1))
    call = peer.calls[sid]
    assert call.status == 0
    assert pb.PublishResponse.FromString(call.body()).result.offset == 1
    history = peer.unary("History", pb.HistoryRequest(channel="hist:z", limit=1))
    assert pb.HistoryResponse.FromString(history.body()).result.publications[0].data == \
        request.data


@pytest.mark.parametrize("encoding", [b"gzip", b"identity"])
def test_an_uncompressed_message_needs_no_decompression(encoding: bytes) -> None:
    """The compressed flag is per message: a clear flag is read as is in any encoding."""
    peer = Peer()
    sid = peer.start("Info", extra=[(b"grpc-encoding", encoding)])
    peer.send(sid, _frame(b""))
    assert peer.calls[sid].status == 0


def test_an_unknown_encoding_is_unimplemented_with_the_accepted_ones() -> None:
    """Refused on the headers (nothing of the body is kept), naming what is accepted."""
    peer = Peer()
    sid = peer.start("Publish", extra=[(b"grpc-encoding", b"br")])
    peer.pump()
    call = peer.calls[sid]
    assert (call.status, call.message) == (12, b"grpc-encoding 'br' is not supported")
    assert call.headers[b"grpc-accept-encoding"] == b"identity,deflate,gzip"
    assert call.ended and not peer.server._streams


def test_a_zip_bomb_is_resource_exhausted() -> None:
    """64 KiB may arrive; 48 KiB of gzip inflating to 48 MiB stops at the limit."""
    peer = Peer(max_receive=64 * 1024)
    bomb = _bomb(48 << 20)
    assert len(bomb) < 64 * 1024
    sid = peer.start("Publish", extra=[(b"grpc-encoding", b"gzip")])
    peer.send(sid, _frame(bomb, compressed=1))
    call = peer.calls[sid]
    assert call.status == 8
    assert call.message == b"request message larger than max after decompression (> 65536)"
    assert not peer.server._streams
    assert peer.unary("Info", pb.InfoRequest()).status == 0  # the connection goes on


def test_decompression_allocates_no_more_than_the_limit() -> None:
    bomb = _bomb(64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(MessageError) as raised:
            decompress("gzip", bomb, 256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.status == 8
    assert peak < 1024 * 1024  # 64 MiB inflated stops after the 256 KiB limit


@pytest.mark.parametrize(("encoding", "data", "message"), [
    ("gzip", b"not gzip at all", "cannot decompress the request message (gzip): "
                                 "Error -3 while decompressing data: incorrect header check"),
    ("gzip", gzip.compress(b"x" * 100)[:-4], "cannot decompress the request message (gzip): "
                                             "truncated"),
    ("gzip", gzip.compress(b"x") * 2, "cannot decompress the request message (gzip): "
                                      "data after its end"),
    ("deflate", gzip.compress(b"x"), "cannot decompress the request message (deflate): "
                                     "Error -3 while decompressing data: incorrect header check"),
])
def test_messages_that_do_not_decompress_are_internal(encoding: str, data: bytes,
                                                      message: str) -> None:
    with pytest.raises(MessageError) as raised:
        decompress(encoding, data, 1024)
    assert (raised.value.status, raised.value.message) == (13, message)
    peer = Peer()
    sid = peer.start("Publish", extra=[(b"grpc-encoding", encoding.encode())])
    peer.send(sid, _frame(data, compressed=1))
    assert (peer.calls[sid].status, peer.calls[sid].message.decode()) == (13, message)


def test_a_call_without_a_body_is_incomplete() -> None:
    peer = Peer()
    sid = peer.client.get_next_available_stream_id()
    peer.calls[sid] = Call()
    peer.client.send_headers(sid, [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", f"/{SERVICE_NAME}/Info".encode()),
        (b":authority", b"x"), (b"content-type", b"application/grpc"),
        (b"authorization", b"apikey " + KEY.encode())], end_stream=True)
    peer.pump()
    assert peer.calls[sid].status == 13


@pytest.mark.parametrize(("http_method", "content_type"), [
    (b"GET", b"application/grpc"), (b"POST", b"application/json")])
def test_requests_that_are_not_grpc(http_method: bytes, content_type: bytes) -> None:
    peer = Peer()
    sid = peer.start("Info", http_method=http_method, content_type=content_type)
    peer.send(sid, _frame(b""))
    assert (peer.calls[sid].status, peer.calls[sid].message) == (13, b"not a gRPC request")


def test_metadata_selects_transport_errors() -> None:
    peer = Peer()
    sid = peer.start("Publish", extra=[(b"x-centrifugo-error-mode", b"transport")])
    peer.send(sid, _frame(pb.PublishRequest(channel="a").SerializeToString()))
    call = peer.calls[sid]
    assert (call.status, call.message) == (3, b"bad request: data is required")


def test_a_large_answer_waits_for_the_clients_window() -> None:
    """A History answer larger than the flow-control window goes out as the client reads."""
    peer = Peer()
    data = b'"' + b"x" * 30_000 + b'"'
    for _ in range(4):
        assert peer.unary("Publish", pb.PublishRequest(channel="hist:big", data=data)).status == 0
    sid = peer.start("History")
    peer.client.send_data(sid, _frame(pb.HistoryRequest(channel="hist:big", limit=10)
                                      .SerializeToString()), end_stream=True)
    peer.server.dataReceived(peer.client.data_to_send())
    first = peer.transport.value()
    peer.transport.clear()
    assert 60_000 < len(first) < 70_000  # the initial 65535-byte window, then it waits
    assert peer.server._streams[sid].out
    peer.receive(first)  # the client reads (and acknowledges) what it got
    peer.pump()
    call = peer.calls[sid]
    assert call.status == 0 and call.ended
    history = pb.HistoryResponse.FromString(call.body())
    assert [p.data for p in history.result.publications] == [data] * 4


def test_an_idle_connection_is_closed_with_goaway() -> None:
    peer = Peer()
    assert peer.unary("Info", pb.InfoRequest()).status == 0
    peer.clock.advance(59)
    assert not peer.transport.disconnecting
    peer.clock.advance(1)
    assert peer.transport.disconnecting
    peer.receive(peer.transport.value())
    assert peer.terminated is not None and peer.terminated.error_code == 0


def test_a_request_that_never_completes_is_refused_in_time() -> None:
    peer = Peer()
    sid = peer.start("Publish")
    peer.send(sid, b"\x00", end=False)
    peer.clock.advance(10)
    peer.pump()
    call = peer.calls[sid]
    assert (call.status, call.message) == (14, b"request not received in time")
    assert not peer.server._streams
    peer.clock.advance(60)  # then idle
    assert peer.transport.disconnecting


def test_a_silent_connection_is_closed() -> None:
    peer = Peer()
    peer.clock.advance(60)
    assert peer.transport.disconnecting


def test_garbage_aborts_the_connection() -> None:
    peer = Peer()
    peer.server.dataReceived(b"\x00\x00\x04\x09\x00\x00\x00\x00\x07garbage")
    assert peer.transport.disconnecting
    assert peer.factory.connections._open == {peer.server}
    peer.server.connectionLost()
    assert len(peer.factory.connections) == 0


def test_drain_finishes_calls_in_flight_and_refuses_new_ones() -> None:
    held = Held()
    peer = Peer(dispatch=held)
    first = peer.start("Info")
    peer.send(first, _frame(b""))
    assert len(held.pending) == 1
    peer.server.drain()
    # The GOAWAY, read apart: h2's own client would stop at it, a GRPC client goes on.
    (goaway,) = Frame.parse_frame_header(memoryview(peer.transport.value()[:9]))[:1]
    assert isinstance(goaway, GoAwayFrame)
    goaway.parse_body(memoryview(peer.transport.value()[9:]))
    assert (goaway.last_stream_id, goaway.error_code) == (first, 0)
    peer.transport.clear()
    assert not peer.transport.disconnecting  # the call in flight goes on
    late = peer.start("Info")
    peer.pump()
    assert peer.calls[late].reset == 7  # REFUSED_STREAM: safe to retry elsewhere
    held.pending[0].callback(Reply(0, "", b"\x0a\x00"))
    peer.pump()
    assert peer.calls[first].status == 0 and peer.calls[first].body() == b"\x0a\x00"
    assert peer.transport.disconnecting


@pytest.mark.parametrize(("value", "seconds"), [
    (b"0n", 0.0), (b"5S", 5.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0),
    (b"99999999u", 99.999999), (b"123456789n", -1.0), (b"5", -1.0), (b"5s", -1.0),
    (b"-1S", -1.0), (b" 5S", -1.0),
])
def test_grpc_timeout_values(value: bytes, seconds: float) -> None:
    assert grpc_timeout(value) == pytest.approx(seconds)


def _history_of(peer: Peer, channel: str) -> list[bytes]:
    call = peer.unary("History", pb.HistoryRequest(channel=channel, limit=-1))
    return [p.data for p in pb.HistoryResponse.FromString(call.body()).result.publications]


def test_a_call_past_its_deadline_is_not_made() -> None:
    """grpc-go sends a call whose deadline has passed as ``grpc-timeout: 0n``."""
    peer = Peer()
    sid = peer.start("Publish", extra=[(b"grpc-timeout", b"0n")])
    peer.send(sid, _frame(pb.PublishRequest(channel="hist:d", data=b"1").SerializeToString()))
    assert (peer.calls[sid].status, peer.calls[sid].message) == (4, b"Deadline Exceeded")
    assert _history_of(peer, "hist:d") == []


def test_a_body_that_arrives_after_the_deadline_is_not_made() -> None:
    peer = Peer()
    sid = peer.start("Publish", extra=[(b"grpc-timeout", b"500m")])
    peer.pump()
    peer.clock.advance(0.5)
    peer.send(sid, _frame(pb.PublishRequest(channel="hist:d", data=b"1").SerializeToString()))
    assert peer.calls[sid].status == 4
    ok = peer.start("Publish", extra=[(b"grpc-timeout", b"500m")])
    peer.pump()
    peer.clock.advance(0.4)
    peer.send(ok, _frame(pb.PublishRequest(channel="hist:d", data=b"2").SerializeToString()))
    assert peer.calls[ok].status == 0
    assert _history_of(peer, "hist:d") == [b"2"]


def test_an_answer_after_the_deadline_is_deadline_exceeded() -> None:
    held = Held()
    peer = Peer(dispatch=held)
    late, early = (peer.start("Info", extra=[(b"grpc-timeout", b"1S")]) for _ in range(2))
    for sid in (late, early):
        peer.send(sid, _frame(b""))
    peer.clock.advance(0.5)
    held.pending[1].callback(Reply(0, "", b""))
    peer.clock.advance(0.5)
    held.pending[0].callback(Reply(0, "", b""))
    peer.pump()
    assert (peer.calls[late].status, peer.calls[late].message) == (4, b"Deadline Exceeded")
    assert not peer.calls[late].data
    assert peer.calls[early].status == 0
    assert not peer.server._streams


def test_a_malformed_grpc_timeout_is_internal() -> None:
    peer = Peer()
    sid = peer.start("Info", extra=[(b"grpc-timeout", b"soon")])
    peer.pump()
    assert (peer.calls[sid].status, peer.calls[sid].message) == (13, b"malformed grpc-timeout")


def test_a_stream_reset_by_the_client_drops_its_answer() -> None:
    held = Held()
    peer = Peer(dispatch=held)
    sid = peer.start("Info")
    peer.send(sid, _frame(b""))
    peer.client.reset_stream(sid)
    peer.pump()
    held.pending[0].callback(Reply(0, "", b""))
    peer.pump()
    assert not peer.calls[sid].headers  # nothing was sent for it


def test_a_failing_answer_is_logged_and_internal(
    monkeypatch: pytest.MonkeyPatch, expect_logged_failure: Callable[..., None]
) -> None:
    def explode(*args: Any) -> bytes:
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(convert, "encode_publish_response", explode)
    expect_logged_failure(RuntimeError)
    peer = Peer()
    call = peer.unary("Publish", pb.PublishRequest(channel="a", data=b"1"))
    assert (call.status, call.message) == (13, b"internal server error")


def test_status_messages_are_percent_encoded() -> None:
    from rtserver.grpcapi.h2server import grpc_message

    assert grpc_message("a/b c:d") == b"a/b c:d"
    assert grpc_message("100% é\n") == b"100%25 %C3%A9%0A"


def test_a_client_goaway_closes_the_connection() -> None:
    peer = Peer()
    peer.client.close_connection()
    peer.pump()
    assert peer.transport.disconnecting


def test_a_connection_made_while_draining_is_drained() -> None:
    peer = Peer()
    peer.factory.draining = True
    late = peer.factory.buildProtocol(None)
    transport = StringTransport()
    late.makeConnection(transport)
    assert transport.disconnecting  # no call in flight: closed at once after its GOAWAY
    late.connectionLost()
    peer.server.connectionLost()
    assert len(peer.factory.connections) == 0


def test_repeated_calls_reuse_decoded_header_blocks() -> None:
    """The second and later calls of a connection decode their headers from the cache."""
    peer = Peer()
    cache = peer.server._decoder._cache
    for _ in range(3):
        assert peer.unary("Info", pb.InfoRequest()).status == 0
    assert len(cache) == 1
    sid = peer.start("Nope")
    peer.send(sid, _frame(b""))
    assert peer.calls[sid].message == b"unknown method Nope"
    assert peer.unary("Info", pb.InfoRequest()).status == 0
    # New request headers (incremental indexing) empty the cache.
    sid = peer.start("Info", extra=[(b"x-new", b"1")])
    peer.send(sid, _frame(b""))
    assert peer.calls[sid].status == 0
    assert len(cache) == 0
    assert peer.unary("Info", pb.InfoRequest()).status == 0


def test_answers_use_no_hpack_table_and_follow_a_table_size_change() -> None:
    """Answers use static indices and literals without indexing, no table.

    After the client's SETTINGS_HEADER_TABLE_SIZE the next block starts with a table size
    update (to 0).
    """
    peer = Peer()
    sid = peer.start("Info")
    peer.client.send_data(sid, _frame(b""), end_stream=True)
    peer.server.dataReceived(peer.client.data_to_send())
    wire = peer.transport.value()
    assert b"\x88\x0f\x10\x10application/grpc" in wire
    assert b"\x00\x0bgrpc-status\x010" in wire
    peer.pump()
    assert peer.calls[sid].status == 0
    peer.client.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
    peer.pump()
    sid = peer.start("Info")
    peer.client.send_data(sid, _frame(b""), end_stream=True)
    peer.server.dataReceived(peer.client.data_to_send())
    wire = peer.transport.value()
    assert b"\x20\x88\x0f\x10" in wire  # size update 0, then the same block
    peer.pump()
    assert peer.calls[sid].status == 0
    assert peer.unary("Info", pb.InfoRequest()).status == 0
