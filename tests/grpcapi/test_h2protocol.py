"""The HTTP/2 rules of the GRPC API's server on the reactor (RFC 9113), frame by frame.

The client side is written out here, frame by frame, to send what a well-behaved HTTP/2
library would not (bad padding, interleaved CONTINUATION, window overflows...); header
blocks are coded with ``hpack``. Calls run on the real dispatch over a memory-engine node
unless a test holds them.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from grpc_support import Held
from hpack import Decoder, Encoder
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtserver.api.executor import APIExecutor
from rtserver.config import GRPCAPIConfig
from rtserver.grpcapi import h2server
from rtserver.grpcapi.api import SERVICE_NAME, APIDispatch, Reply
from rtserver.grpcapi.h2server import GRPCH2Factory
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.testing import make_node

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0, 1, 3, 5
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 9, 11


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", sid) + payload


def settings(**values: int) -> bytes:
    codes = {"header_table_size": 1, "enable_push": 2, "initial_window_size": 4,
             "max_frame_size": 5, "max_header_list_size": 6}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", codes[k], v)
                                          for k, v in values.items()))


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def message(body: bytes) -> bytes:
    return struct.pack(">BI", 0, len(body)) + body


class Answer:
    """What came back on one stream."""

    def __init__(self) -> None:
        self.headers: list[dict[bytes, bytes]] = []
        self.data = b""
        self.data_frames: list[int] = []
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> int:
        return int(self.headers[-1][b"grpc-status"])


class Wire:
    """A server connection over an in-memory transport, driven with raw frames."""

    def __init__(self, dispatch: Any = None, preface: bytes = PREFACE + settings(),
                 **limits: Any) -> None:
        node, _ = make_node({"channel": {"namespaces": [
            {"name": "hist", "history_size": 10, "history_ttl": "60s"}]}})
        self.clock = Clock()
        self.dispatch = dispatch or APIDispatch(APIExecutor(node), GRPCAPIConfig())
        self.factory = GRPCH2Factory(self.dispatch, self.clock, idle_timeout=60,
                                     read_timeout=10, **limits)
        self.server = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.answers: dict[int, Answer] = {}
        self.control: list[tuple[int, int, int, bytes]] = []  # frames on stream 0
        self.goaway: tuple[int, int] | None = None
        self.read()
        if preface:
            self.send(preface)

    def send(self, *frames: bytes) -> list[tuple[int, int, int, bytes]]:
        """Frames to the server; the frames it wrote back."""
        self.server.dataReceived(b"".join(frames))
        return self.read()

    def read(self) -> list[tuple[int, int, int, bytes]]:
        """Parse what the server wrote since the last read."""
        wire = self.transport.value()
        self.transport.clear()
        frames, at = [], 0
        while at < len(wire):
            length = int.from_bytes(wire[at:at + 3], "big")
            kind, flags = wire[at + 3], wire[at + 4]
            sid = int.from_bytes(wire[at + 5:at + 9], "big")
            payload = wire[at + 9:at + 9 + length]
            assert len(payload) == length, "the server wrote an incomplete frame"
            at += 9 + length
            frames.append((kind, flags, sid, payload))
            answer = self.answers.setdefault(sid, Answer()) if sid else None
            if answer is None:
                self.control.append((kind, flags, sid, payload))
                if kind == GOAWAY:
                    self.goaway = struct.unpack(">II", payload[:8])
            elif kind == HEADERS:
                answer.headers.append(dict(self.decoder.decode(payload, raw=True)))
                answer.ended = bool(flags & END_STREAM)
            elif kind == DATA:
                answer.data += payload
                answer.data_frames.append(len(payload))
                answer.ended = bool(flags & END_STREAM)
            elif kind == RST_STREAM:
                answer.reset = struct.unpack(">I", payload)[0]
        return frames

    def block(self, method: str = "Info", extra: list[tuple[bytes, bytes]] | None = None,
              headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        return self.encoder.encode(headers or [
            (b":method", b"POST"), (b":scheme", b"http"),
            (b":path", f"/{SERVICE_NAME}/{method}".encode()), (b":authority", b"x"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"), *(extra or [])])

    def call(self, sid: int, method: str, request: bytes) -> Answer:
        self.send(frame(HEADERS, END_HEADERS, sid, self.block(method)),
                  frame(DATA, END_STREAM, sid, message(request)))
        return self.answers[sid]

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


def _info_ok(answer: Answer) -> bool:
    return answer.ended and answer.status == 0 and len(
        pb.InfoResponse.FromString(answer.data[5:]).result.nodes) == 1


# --- the connection's start ----------------------------------------------------------------


def test_the_server_sends_its_settings_and_acknowledges_the_clients() -> None:
    wire = Wire(preface=b"")
    (kind, flags, sid, payload), (wkind, _, wsid, increment) = wire.control
    assert (kind, flags, sid) == (SETTINGS, 0, 0)
    ours = dict(struct.iter_unpack(">HI", payload))
    assert ours == {3: 100, 4: 1 << 20, 6: 16384}  # streams, window, header list size
    assert (wkind, wsid) == (WINDOW_UPDATE, 0)  # the connection window, to 1 MiB
    assert struct.unpack(">I", increment)[0] == (1 << 20) - 65535
    wire.send(PREFACE + settings(enable_push=0))
    assert wire.control[-1][:2] == (SETTINGS, ACK)
    wire.send(frame(SETTINGS, ACK, 0))  # their acknowledgement of ours: nothing to say
    assert len(wire.control) == 3 and not wire.closing
    assert _info_ok(wire.call(1, "Info", b""))


@pytest.mark.parametrize("start", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    PREFACE + frame(PING, 0, 0, b"12345678"),  # the preface must end with SETTINGS
    PREFACE + frame(SETTINGS, ACK, 0),
])
def test_a_bad_preface_is_a_protocol_error(start: bytes) -> None:
    wire = Wire(preface=start)
    assert wire.goaway == (0, PROTOCOL_ERROR) and wire.closing


def test_the_preface_may_come_in_pieces() -> None:
    wire = Wire(preface=b"")
    start = PREFACE + settings() + frame(HEADERS, END_HEADERS, 1, wire.block()) + frame(
        DATA, END_STREAM, 1, message(b""))
    for byte in range(len(start)):
        wire.send(start[byte:byte + 1])
    assert _info_ok(wire.answers[1])


@pytest.mark.parametrize(("bad", "code"), [
    (frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00"), FRAME_SIZE_ERROR),  # not 6-byte entries
    (frame(SETTINGS, ACK, 0, b"\x00" * 6), FRAME_SIZE_ERROR),
    (frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    (settings(enable_push=2), PROTOCOL_ERROR),
    (settings(initial_window_size=2**31), FLOW_CONTROL_ERROR),
    (settings(max_frame_size=16383), PROTOCOL_ERROR),
    (settings(max_frame_size=2**24), PROTOCOL_ERROR),
])
def test_bad_settings_are_connection_errors(bad: bytes, code: int) -> None:
    wire = Wire()
    wire.send(bad)
    assert wire.goaway == (0, code) and wire.closing


# --- control frames -------------------------------------------------------------------------


def test_pings_are_acknowledged_with_their_payload() -> None:
    wire = Wire()
    wire.send(frame(PING, 0, 0, b"abcdefgh"), frame(PING, ACK, 0, b"ignored!"))
    assert wire.control[-1] == (PING, ACK, 0, b"abcdefgh")
    assert [f for f in wire.control if f[0] == PING] == [(PING, ACK, 0, b"abcdefgh")]


@pytest.mark.parametrize(("bad", "code"), [
    (frame(PING, 0, 0, b"short"), FRAME_SIZE_ERROR),
    (frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
    (frame(PRIORITY, 0, 1, b"\x00" * 4), FRAME_SIZE_ERROR),
    (frame(PRIORITY, 0, 0, b"\x00" * 5), PROTOCOL_ERROR),
    (frame(PRIORITY, 0, 3, b"\x00\x00\x00\x03\x10"), PROTOCOL_ERROR),  # depends on itself
    (frame(RST_STREAM, 0, 0, b"\x00" * 4), PROTOCOL_ERROR),
    (frame(RST_STREAM, 0, 9, b"\x00" * 4), PROTOCOL_ERROR),  # an idle stream
    (window_update(0, 0), PROTOCOL_ERROR),
    (frame(WINDOW_UPDATE, 0, 0, b"\x00" * 3), FRAME_SIZE_ERROR),
    (window_update(9, 1), PROTOCOL_ERROR),  # an idle stream
    (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    (frame(DATA, 0, 9, b"x"), PROTOCOL_ERROR),  # an idle stream
    (frame(HEADERS, END_HEADERS, 0, b"\x82"), PROTOCOL_ERROR),
    (frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02\x82"), PROTOCOL_ERROR),
    (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),  # nothing to continue
    (frame(GOAWAY, 0, 1, b"\x00" * 8), PROTOCOL_ERROR),
    (frame(GOAWAY, 0, 0, b"\x00" * 4), FRAME_SIZE_ERROR),
    (frame(DATA, 0, 1, b"x" * 16385), FRAME_SIZE_ERROR),  # beyond our SETTINGS_MAX_FRAME_SIZE
])
def test_frames_that_break_the_rules_are_connection_errors(bad: bytes, code: int) -> None:
    wire = Wire()
    wire.send(bad)
    assert wire.goaway == (0, code) and wire.closing
    wire.send(frame(PING, 0, 0, b"12345678"))  # nothing more is read
    assert wire.control[-1][0] == GOAWAY


def test_a_frame_too_large_is_refused_on_its_header_before_its_payload() -> None:
    wire = Wire()
    wire.send(b"\x00\x40\x01" + bytes([DATA, 0]) + struct.pack(">I", 1))  # 16385 bytes
    assert wire.goaway == (0, FRAME_SIZE_ERROR)
    assert not wire.server._buffer


def test_unknown_frames_and_priorities_are_ignored() -> None:
    wire = Wire()
    wire.send(frame(0x20, 0xFF, 0, b"whatever"), frame(0x0A, 0, 1, b"altsvc"),
              frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"))
    assert not wire.closing and wire.goaway is None
    assert _info_ok(wire.call(1, "Info", b""))


def test_a_frame_arriving_byte_by_byte_is_buffered_up_to_its_size() -> None:
    wire = Wire()
    request = frame(HEADERS, END_HEADERS, 1, wire.block()) + frame(
        DATA, END_STREAM, 1, message(b""))
    for byte in range(len(request)):
        wire.send(request[byte:byte + 1])
        assert len(wire.server._buffer) <= 16384 + 9
    assert _info_ok(wire.answers[1])


# --- header blocks --------------------------------------------------------------------------


def test_a_header_block_in_continuation_frames() -> None:
    wire = Wire()
    block = wire.block(extra=[(b"x-pad", b"p" * 100)])
    wire.send(frame(HEADERS, 0, 1, block[:10]), frame(CONTINUATION, 0, 1, block[10:50]),
              frame(CONTINUATION, END_HEADERS, 1, block[50:]),
              frame(DATA, END_STREAM, 1, message(b"")))
    assert _info_ok(wire.answers[1])


@pytest.mark.parametrize("between", [
    frame(PING, 0, 0, b"12345678"),
    frame(CONTINUATION, END_HEADERS, 3, b"\x82"),  # another stream
    frame(DATA, 0, 1, b""),
    frame(0x20, 0, 0, b"unknown"),
])
def test_another_frame_inside_a_header_block_is_a_protocol_error(between: bytes) -> None:
    wire = Wire()
    block = wire.block()
    wire.send(frame(HEADERS, 0, 1, block[:5]), between)
    assert wire.goaway == (0, PROTOCOL_ERROR) and wire.closing


def test_a_header_block_is_bounded_by_max_header_list_size() -> None:
    wire = Wire(max_header_list_size=1000)
    wire.send(frame(HEADERS, 0, 1, b"\x00" * 600))
    assert not wire.closing
    wire.send(frame(CONTINUATION, 0, 1, b"\x00" * 600))
    assert wire.goaway == (0, ENHANCE_YOUR_CALM) and wire.closing
    decoded = Wire(max_header_list_size=1000)  # small on the wire, large decoded
    decoded.send(frame(HEADERS, END_HEADERS, 1, decoded.block(
        extra=[(b"x-big", b"a" * 990)])))
    assert decoded.goaway == (0, ENHANCE_YOUR_CALM)


def test_an_undecodable_header_block_is_a_compression_error() -> None:
    wire = Wire()
    wire.send(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\x0f"))  # index far out
    assert wire.goaway == (0, COMPRESSION_ERROR) and wire.closing


def test_padding_and_priority_on_headers_and_data() -> None:
    wire = Wire()
    block = wire.block()
    headers = bytes([7]) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * 7
    body = message(b"")
    data = bytes([20]) + body + b"\x00" * 20
    wire.send(frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, headers),
              frame(DATA, END_STREAM | PADDED, 1, data))
    assert _info_ok(wire.answers[1])


@pytest.mark.parametrize("bad", [
    frame(HEADERS, END_HEADERS | PADDED, 1, b"\x05\x82\x00"),  # more padding than payload
    frame(HEADERS, END_HEADERS | PADDED, 1, b""),
    frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, b"\x01\x00\x00\x00\x00\x10"),
    frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00\x00"),
])
def test_bad_padding_is_a_connection_error(bad: bytes) -> None:
    wire = Wire()
    wire.send(bad)
    assert wire.goaway is not None and wire.goaway[1] in (PROTOCOL_ERROR, FRAME_SIZE_ERROR)


def test_bad_data_padding_is_a_protocol_error() -> None:
    wire = Wire()
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()), frame(DATA, PADDED, 1, b"\x05abc"))
    assert wire.goaway == (1, PROTOCOL_ERROR)


@pytest.mark.parametrize("headers", [
    [(b":method", b"POST"), (b":path", b"/x")],  # no :scheme
    [(b":method", b"POST"), (b":scheme", b"http")],  # no :path
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":status", b"200")],
    [(b":method", b"POST"), (b"a", b"b"), (b":scheme", b"http"), (b":path", b"/x")],
    [(b":method", b"POST"), (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"Upper", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"connection", b"x")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"te", b"gzip")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"x", b" padded")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"x", b"a\nb")],
    [(b"content-type", b"application/grpc")],  # no pseudo-header at all
])
def test_malformed_requests_reset_their_stream_only(headers: list[tuple[bytes, bytes]]) -> None:
    wire = Wire()
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block(headers=headers)))
    assert wire.answers[1].reset == PROTOCOL_ERROR and not wire.answers[1].headers
    wire.send(frame(DATA, END_STREAM, 1, message(b"")))  # sent before it knew: ignored
    assert not wire.closing
    assert _info_ok(wire.call(3, "Info", b""))


def test_content_length_must_match_the_body() -> None:
    wire = Wire()
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block(extra=[(b"content-length", b"9")])),
              frame(DATA, END_STREAM, 1, message(b"")))
    assert wire.answers[1].reset == PROTOCOL_ERROR
    wire.send(frame(HEADERS, END_HEADERS, 3, wire.block(extra=[(b"content-length", b"5")])),
              frame(DATA, END_STREAM, 3, message(b"")))
    assert _info_ok(wire.answers[3])


def test_request_trailers_end_the_request() -> None:
    wire = Wire()
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()), frame(DATA, 0, 1, message(b"")),
              frame(HEADERS, END_HEADERS | END_STREAM, 1, wire.encoder.encode([(b"x-t", b"1")])))
    assert _info_ok(wire.answers[1])
    wire.send(frame(HEADERS, END_HEADERS, 3, wire.block()), frame(DATA, 0, 3, message(b"")),
              frame(HEADERS, END_HEADERS, 3, wire.encoder.encode([(b"x-t", b"1")])))
    assert wire.answers[3].reset == PROTOCOL_ERROR  # trailers must end the stream


# --- streams --------------------------------------------------------------------------------


def test_stream_ids_are_odd_and_increasing() -> None:
    wire = Wire()
    assert _info_ok(wire.call(5, "Info", b""))
    wire.send(frame(HEADERS, END_HEADERS, 2, wire.block()))
    assert wire.goaway == (5, PROTOCOL_ERROR)
    lower = Wire()
    assert _info_ok(lower.call(5, "Info", b""))
    lower.send(frame(HEADERS, END_HEADERS, 3, lower.block()))  # 3 is closed: it was skipped
    assert lower.goaway == (5, STREAM_CLOSED)


def test_data_after_the_end_of_a_stream_is_a_stream_error() -> None:
    held = Held()
    wire = Wire(held)
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()),
              frame(DATA, END_STREAM, 1, message(b"")), frame(DATA, 0, 1, b"more"))
    assert wire.answers[1].reset == STREAM_CLOSED
    held.pending[0].callback(Reply(0, "", b""))
    wire.read()
    assert not wire.answers[1].headers  # the call was forgotten
    assert not wire.closing


def test_max_concurrent_streams_refuses_the_stream_beyond() -> None:
    held = Held()
    wire = Wire(held, max_concurrent_streams=2)
    for sid in (1, 3, 5):
        wire.send(frame(HEADERS, END_HEADERS, sid, wire.block()),
                  frame(DATA, END_STREAM, sid, message(b"")))
    assert len(held.pending) == 2
    assert wire.answers[5].reset == REFUSED_STREAM
    held.pending[0].callback(Reply(0, "", b"\x0a\x00"))
    wire.read()
    assert wire.answers[1].status == 0
    wire.send(frame(HEADERS, END_HEADERS, 7, wire.block()),
              frame(DATA, END_STREAM, 7, message(b"")))
    assert len(held.pending) == 3 and 7 not in wire.answers  # accepted, in flight


def test_a_client_reset_drops_the_call() -> None:
    held = Held()
    wire = Wire(held)
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()),
              frame(DATA, END_STREAM, 1, message(b"")),
              frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    held.pending[0].callback(Reply(0, "", b""))
    wire.read()
    assert 1 not in wire.answers
    wire.send(window_update(1, 10), frame(RST_STREAM, 0, 1, b"\x00" * 4))  # closed: ignored
    assert not wire.closing


def test_a_client_goaway_finishes_calls_in_flight_then_closes() -> None:
    held = Held()
    wire = Wire(held)
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()),
              frame(DATA, END_STREAM, 1, message(b"")),
              frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
    assert not wire.closing
    held.pending[0].callback(Reply(0, "", b"\x0a\x00"))
    wire.read()
    assert wire.answers[1].status == 0 and wire.closing
    failing = Wire()
    failing.send(frame(GOAWAY, 0, 0, struct.pack(">II", 0, PROTOCOL_ERROR) + b"debug"))
    assert failing.closing


# --- flow control ---------------------------------------------------------------------------


def _history_wire(initial_window: int, **values: int) -> tuple[Wire, int]:
    """A connection whose client grants ``initial_window`` per stream.

    A History answer of more than 100 KiB waits on stream 1.
    """
    held = Held()
    wire = Wire(held, preface=PREFACE + settings(initial_window_size=initial_window,
                                                 **values))
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block("History")),
              frame(DATA, END_STREAM, 1, message(b"")))
    size = 100_000
    held.pending[0].callback(Reply(0, "", b"y" * size))
    wire.read()
    return wire, size + 5


def test_a_large_answer_follows_the_stream_and_connection_windows() -> None:
    wire, size = _history_wire(100)
    answer = wire.answers[1]
    assert answer.data_frames == [100] and not answer.ended
    wire.send(window_update(1, 1000))
    assert answer.data_frames == [100, 1000]
    wire.send(window_update(1, 200_000))  # the stream allows all; the connection does not
    assert len(answer.data) == 65535 and not answer.ended
    assert max(answer.data_frames) <= 16384  # the client's SETTINGS_MAX_FRAME_SIZE
    wire.send(window_update(0, 100_000))
    assert len(answer.data) == size and answer.ended and answer.status == 0


def test_a_settings_change_applies_its_delta_to_open_streams() -> None:
    wire, size = _history_wire(100)
    answer = wire.answers[1]
    wire.send(window_update(0, 200_000), settings(initial_window_size=50))
    assert answer.data_frames == [100]  # the stream's window is now 50 - 100 = -50
    wire.send(window_update(1, 60))
    assert answer.data_frames == [100, 10]
    wire.send(settings(initial_window_size=200_000))
    assert len(answer.data) == size and answer.ended


def test_the_clients_max_frame_size_sizes_data_frames() -> None:
    wire, size = _history_wire(1 << 20, max_frame_size=1 << 16)
    wire.send(window_update(0, 1 << 20))
    answer = wire.answers[1]
    assert len(answer.data) == size
    assert 16384 < max(answer.data_frames) <= 1 << 16


@pytest.mark.parametrize(("bad", "stream_error"), [
    (window_update(0, 2**31 - 1), False),
    (window_update(1, 2**31 - 1), True),
    (settings(initial_window_size=2**31 - 1), False),  # the stream's window: 2^31 - 1 + 100
])
def test_window_overflow_is_a_flow_control_error(bad: bytes, stream_error: bool) -> None:
    held = Held()
    wire = Wire(held)
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block()), window_update(1, 100))
    wire.send(bad)
    if stream_error:
        assert wire.answers[1].reset == FLOW_CONTROL_ERROR and not wire.closing
    else:
        assert wire.goaway == (1, FLOW_CONTROL_ERROR) and wire.closing


def test_large_requests_get_window_updates_as_they_are_consumed() -> None:
    """A 3 MB request through 1 MiB windows: the server returns what it consumed."""
    wire = Wire()
    data = b'"' + b"z" * 3_000_000 + b'"'
    body = message(pb.PublishRequest(channel="hist:large", data=data).SerializeToString())
    wire.send(frame(HEADERS, END_HEADERS, 1, wire.block("Publish")))
    window, updates = {0: 1 << 20, 1: 1 << 20}, {0: 0, 1: 0}
    sent = 0
    while sent < len(body):
        size = min(16384, window[0], window[1], len(body) - sent)
        assert size > 0, "the server stopped granting window"
        chunk, sent = body[sent:sent + size], sent + size
        window[0] -= size
        window[1] -= size
        for kind, _, sid, payload in wire.send(
                frame(DATA, END_STREAM if sent == len(body) else 0, 1, chunk)):
            if kind == WINDOW_UPDATE:
                window[sid] += struct.unpack(">I", payload)[0]
                updates[sid] += 1
    assert updates[0] >= 4 and updates[1] >= 4
    answer = wire.answers[1]
    assert answer.status == 0
    assert pb.PublishResponse.FromString(answer.data[5:]).result.offset == 1


def test_a_peer_that_does_not_read_is_not_read_either() -> None:
    wire = Wire()
    wire.server.pauseProducing()
    ping = frame(PING, 0, 0, b"12345678")
    wire.send(ping)
    assert not [f for f in wire.control if f[0] == PING]  # held
    wire.server.resumeProducing()
    wire.read()
    assert [f for f in wire.control if f[0] == PING] == [(PING, ACK, 0, b"12345678")]
    wire.server.pauseProducing()
    for _ in range(h2server._MAX_HELD // len(ping) + 1):
        wire.server.dataReceived(ping)
    wire.read()
    assert wire.goaway == (0, ENHANCE_YOUR_CALM) and wire.closing


def test_closing_unregisters_the_connection_as_producer() -> None:
    """Every close unregisters the connection as producer first.

    A transport with a registered producer does not close until it is unregistered
    (ITransport.loseConnection).
    """
    wire = Wire()
    assert wire.transport.producer is wire.server
    wire.send(frame(PING, 0, 1, b"12345678"))  # a connection error
    assert wire.closing and wire.transport.producer is None
    idle = Wire()
    idle.clock.advance(60)
    assert idle.closing and idle.transport.producer is None


# --- HPACK (RFC 7541): every representation, the dynamic table, the errors -------------------
#
# Header blocks written out byte by byte (an encoder would not send most of these).

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
INDEXING, WITHOUT, NEVER = 0x40, 0x00, 0x10  # the literal representations' first bits


def hpack_string(data: bytes, huffman: bool = False) -> bytes:
    if huffman:
        data = _HUFFMAN.encode(data)
    return h2server._hpack_integer(len(data), 7, 0x80 if huffman else 0) + data


def literal(name: int | bytes, value: bytes, kind: int = WITHOUT, huffman: bool = False) -> bytes:
    """A literal field: ``name`` a table index or a new name; ``kind`` its representation."""
    bits = 6 if kind == INDEXING else 4
    if isinstance(name, int):
        head = h2server._hpack_integer(name, bits, kind)
    else:
        head = bytes([kind]) + hpack_string(name, huffman)
    return head + hpack_string(value, huffman)


#: A request's pseudo-header fields and content-type without the dynamic table: static
#: :method POST and :scheme http, then literals without indexing on static names.
REQUEST = b"\x83\x86" + literal(4, f"/{SERVICE_NAME}/Info".encode()) + literal(1, b"x") + literal(
    31, b"application/grpc")
#: Dynamic table size updates (6.3) to 0, 100, 4096 and 4097 (past the default
#: SETTINGS_HEADER_TABLE_SIZE, which the server does not change).
SIZE_0, SIZE_100, SIZE_4096, SIZE_4097 = b"\x20", b"\x3f\x45", b"\x3f\xe1\x1f", b"\x3f\xe2\x1f"


class Seen:
    """A dispatch that answers at once and keeps every call's metadata."""

    methods = ["Info"]

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def authorized(self, metadata: Any) -> bool:
        return True

    def call(self, method: str, request: bytes, metadata: Any) -> Deferred[Reply]:
        self.metadata.append(dict(metadata))
        return succeed(Reply(0, "", b""))


def hpack_call(wire: Wire, sid: int, block: bytes) -> dict[str, str]:
    """A call with this header block: the metadata it reached the dispatch with."""
    seen = wire.dispatch
    calls = len(seen.metadata)
    wire.send(frame(HEADERS, END_HEADERS, sid, block), frame(DATA, END_STREAM, sid, message(b"")))
    assert not wire.closing and wire.answers[sid].status == 0
    assert len(seen.metadata) == calls + 1
    metadata: dict[str, str] = seen.metadata[-1]
    return metadata


def test_every_hpack_field_representation() -> None:
    wire = Wire(Seen())
    first = hpack_call(wire, 1, REQUEST + b"".join([
        literal(b"x-inc", b"1", INDEXING),  # new name, indexed: dynamic 63 after the next
        literal(23, b"apikey k", NEVER, huffman=True),  # static name, Huffman value
        literal(b"x-never", b"n", NEVER, huffman=True),  # new name, Huffman name and value
        literal(b"x-without", b"w", WITHOUT),
        literal(58, b"ua", INDEXING),  # static name (user-agent), indexed: dynamic 62
    ]))
    assert first == {"content-type": "application/grpc", "x-inc": "1",
                     "authorization": "apikey k", "x-never": "n", "x-without": "w",
                     "user-agent": "ua"}
    # Indexed dynamic fields, and a literal on a dynamic name (4-bit prefix: 63 = 15 + 48).
    second = hpack_call(wire, 3, REQUEST + b"\xbe" + b"\x1f\x30" + hpack_string(b"2"))
    assert second == {"content-type": "application/grpc", "user-agent": "ua", "x-inc": "2"}
    third = hpack_call(wire, 5, REQUEST + b"\xbf")  # the last block inserted nothing
    assert third == {"content-type": "application/grpc", "x-inc": "1"}
    # Literal with incremental indexing on a dynamic name (6-bit prefix: 63 = 63 + 0).
    fourth = hpack_call(wire, 7, REQUEST + b"\x7f\x00" + hpack_string(b"3") + b"\xbe")
    assert fourth == {"content-type": "application/grpc", "x-inc": "3"}
    fifth = hpack_call(wire, 9, REQUEST + b"\xbf\xc0")  # one further each
    assert fifth == {"content-type": "application/grpc", "user-agent": "ua", "x-inc": "1"}


def test_a_repeated_block_follows_the_dynamic_table() -> None:
    """The same bytes mean another field once the table changed (no stale cache)."""
    wire = Wire(Seen())
    hpack_call(wire, 1, REQUEST + literal(b"x-a", b"1", INDEXING))
    again = REQUEST + b"\xbe"
    assert hpack_call(wire, 3, again)["x-a"] == "1"
    assert hpack_call(wire, 5, again)["x-a"] == "1"
    hpack_call(wire, 7, REQUEST + literal(b"x-b", b"2", INDEXING))
    assert hpack_call(wire, 9, again) == {"content-type": "application/grpc", "x-b": "2"}


def test_the_dynamic_table_evicts_its_oldest_entries() -> None:
    wire = Wire(Seen())
    # A table of 100 bytes holds two entries of 36 (32 + name + value), not three.
    first = hpack_call(wire, 1, SIZE_100 + REQUEST + b"".join(
        literal(name, value, INDEXING) for name, value in
        [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")]))
    assert {"x-a", "x-b", "x-c"} <= set(first)
    second = hpack_call(wire, 3, REQUEST + b"\xbe\xbf")
    assert second == {"content-type": "application/grpc", "x-c": "3", "x-b": "2"}
    wire.send(frame(HEADERS, END_HEADERS, 5, REQUEST + b"\xc0"))  # x-a was evicted
    assert wire.goaway == (3, COMPRESSION_ERROR) and wire.closing


def test_an_entry_larger_than_the_table_empties_it() -> None:
    wire = Wire(Seen())
    hpack_call(wire, 1, SIZE_100 + REQUEST + literal(b"x-a", b"1", INDEXING))
    big = hpack_call(wire, 3, REQUEST + literal(b"x-big", b"v" * 70, INDEXING))  # 107 > 100
    assert big["x-big"] == "v" * 70
    wire.send(frame(HEADERS, END_HEADERS, 5, REQUEST + b"\xbe"))
    assert wire.goaway == (3, COMPRESSION_ERROR)


def test_table_size_updates_at_the_start_of_a_block() -> None:
    wire = Wire(Seen())
    hpack_call(wire, 1, SIZE_0 + SIZE_4096 + REQUEST)  # two in a row are allowed
    hpack_call(wire, 3, b"\x3f\xe1\x9f\x80\x80\x00" + REQUEST)  # 4096 in 5 octets, as hpack
    hpack_call(wire, 5, SIZE_100 + REQUEST + literal(b"x-a", b"1", INDEXING))
    assert hpack_call(wire, 7, REQUEST + b"\xbe")["x-a"] == "1"


def test_an_integer_of_six_octets_is_a_compression_error() -> None:
    wire = Wire(Seen())
    wire.send(frame(HEADERS, END_HEADERS, 1, b"\x3f\xe1\x9f\x80\x80\x80\x00" + REQUEST))
    assert wire.goaway == (0, COMPRESSION_ERROR)


def test_a_table_emptied_by_a_size_update_has_no_entries() -> None:
    wire = Wire(Seen())
    hpack_call(wire, 1, REQUEST + literal(b"x-a", b"1", INDEXING))
    hpack_call(wire, 3, SIZE_0 + SIZE_4096 + REQUEST)
    wire.send(frame(HEADERS, END_HEADERS, 5, REQUEST + b"\xbe"))
    assert wire.goaway == (3, COMPRESSION_ERROR)


def test_a_smaller_table_evicts_at_once() -> None:
    wire = Wire(Seen())
    hpack_call(wire, 1, REQUEST + literal(b"x-a", b"1", INDEXING) + literal(
        b"x-b", b"v" * 40, INDEXING))  # 36 + 77 bytes
    hpack_call(wire, 3, SIZE_100 + REQUEST + b"\xbe")  # x-b stays, x-a goes
    wire.send(frame(HEADERS, END_HEADERS, 5, REQUEST + b"\xbf"))
    assert wire.goaway == (3, COMPRESSION_ERROR)


@pytest.mark.parametrize("before", [b"", settings(header_table_size=65536)])
@pytest.mark.parametrize("bad", [
    SIZE_4097,  # past SETTINGS_HEADER_TABLE_SIZE (the client's own setting is for us)
    REQUEST + SIZE_0,  # after a field
    b"\x83" + SIZE_0 + REQUEST,
])
def test_a_bad_table_size_update_is_a_compression_error(before: bytes, bad: bytes) -> None:
    wire = Wire(Seen())
    wire.send(before)
    wire.send(frame(HEADERS, END_HEADERS, 1, bad + REQUEST))
    assert wire.goaway == (0, COMPRESSION_ERROR) and wire.closing


@pytest.mark.parametrize("bad", [
    b"\x80",  # index 0
    b"\xbe",  # dynamic index 62, the table is empty
    b"\xff\x80\x80\x80\x80\x01",  # index past the tables (2**28 + 127)
    literal(62, b"v", INDEXING),  # a name index past the tables, each representation
    literal(62, b"v", WITHOUT),
    literal(62, b"v", NEVER),
    b"\xff\xff\xff\xff\xff\xff\x01",  # an integer of 6 octets after its prefix
    b"\xff\x80",  # an integer cut short
    b"\x00\x05ab",  # a string past the block
    b"\x00\x01a",  # a name without its value
    b"\x40\x01a\x7f",  # a value whose length is cut short
    b"\x00\x81\x18\x01v",  # Huffman "a" padded with zeros (the padding must be ones)
    b"\x00\x82\x1f\xff\x01v",  # Huffman "a" padded with 11 bits (at most 7)
    b"\x00\x84\xff\xff\xff\xff\x01v",  # Huffman EOS (30 ones) in a string
])
def test_an_undecodable_field_is_a_compression_error(bad: bytes) -> None:
    wire = Wire(Seen())
    wire.send(frame(HEADERS, END_HEADERS, 1, REQUEST + bad))
    assert wire.goaway == (0, COMPRESSION_ERROR) and wire.closing
    assert not wire.dispatch.metadata


def test_the_header_list_bound_counts_what_indexed_fields_expand_to() -> None:
    wire = Wire(Seen(), max_header_list_size=1000)
    hpack_call(wire, 1, REQUEST + literal(b"x-big", b"a" * 400, INDEXING))  # 437 decoded
    hpack_call(wire, 3, REQUEST + b"\xbe")
    wire.send(frame(HEADERS, END_HEADERS, 5, REQUEST + b"\xbe\xbe\xbe"))  # 3 bytes, 1311
    assert wire.goaway == (3, ENHANCE_YOUR_CALM) and wire.closing


def test_a_field_may_span_continuation_frames() -> None:
    wire = Wire(Seen())
    block = REQUEST + literal(b"x-a", b"1", INDEXING, huffman=True)
    wire.send(frame(HEADERS, 0, 1, block[:-2]), frame(CONTINUATION, END_HEADERS, 1, block[-2:]),
              frame(DATA, END_STREAM, 1, message(b"")))
    assert wire.dispatch.metadata[-1]["x-a"] == "1"
    assert hpack_call(wire, 3, REQUEST + b"\xbe")["x-a"] == "1"
