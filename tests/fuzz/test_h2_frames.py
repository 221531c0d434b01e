"""Property-based fuzz of the GRPC API's HTTP/2 server on the reactor.

An ``h2`` client connection (a second, independent HTTP/2 implementation, used here only
to produce valid frame sequences) writes a connection: unary calls with bodies of any
size split any way (plain, or compressed with gzip or deflate, or in an encoding the
server does not accept), pings, settings changes, window updates, resets, priorities, a
GOAWAY. The bytes are then mutated (bytes flipped, cut, inserted, repeated) and fed to
the server's protocol in chunks of any size, on a ``Clock``, with the real dispatch over
a memory-engine node. Whatever arrives, the properties hold:

* no exception escapes ``dataReceived`` and nothing is logged at error level or above;
* everything the server writes is well-formed HTTP/2 frames; the connection either
  goes on or has sent a GOAWAY and is closing;
* memory is bounded: the incomplete frame, the header block, the streams and their
  bodies stay within their limits;
* without mutation, the ``h2`` client accepts every byte the server wrote and every
  call it made is answered.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from typing import Any

import pytest
from fuzzkit import FUZZ, watch_log
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import StreamEnded
from h2.settings import SettingCodes
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rtserver.api.executor import APIExecutor
from rtserver.config import GRPCAPIConfig
from rtserver.grpcapi import h2server
from rtserver.grpcapi.api import SERVICE_NAME, APIDispatch
from rtserver.grpcapi.h2server import GRPCH2Factory
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.testing import make_node

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions:DeprecationWarning")

MAX_RECEIVE = 64 * 1024
MAX_STREAMS = 4
MAX_HEADER_LIST = 4096

_METHODS = ["Publish", "Info", "History", "Nope"]
#: grpc-encoding of a call ("": none) and how its message is compressed.
_ENCODINGS = {"": None, "gzip": gzip.compress, "deflate": zlib.compress, "br": None}


def _request(method: str, size: int, encoding: str) -> bytes:
    if method == "Publish":
        body = pb.PublishRequest(channel="hh:c", data=b'"' + b"x" * size + b'"')
    elif method == "History":
        body = pb.HistoryRequest(channel="hh:c", limit=5)
    else:
        body = pb.InfoRequest()
    raw = body.SerializeToString()
    compress = _ENCODINGS[encoding]
    if compress is not None:
        raw = compress(raw)
    return struct.pack(">BI", compress is not None, len(raw)) + raw


_call = st.tuples(st.just("call"), st.sampled_from(_METHODS), st.integers(0, 40_000),
                  st.integers(1, 20_000), st.booleans() | st.just(True),
                  st.sampled_from(list(_ENCODINGS)))
_actions = st.tuples(_call, st.lists(st.one_of(
    _call,
    st.tuples(st.just("ping")),
    st.tuples(st.just("settings"), st.integers(0, 200_000), st.integers(16384, 40_000),
              st.integers(0, 8192)),
    st.tuples(st.just("window"), st.integers(1, 100_000)),
    st.tuples(st.just("reset")),
    st.tuples(st.just("priority")),
    st.tuples(st.just("goaway")),
), max_size=7)).map(lambda first_rest: [first_rest[0], *first_rest[1]])

_mutations = st.lists(st.tuples(
    st.sampled_from(["flip", "cut", "insert", "repeat", "drop"]),
    st.integers(0, 1000).map(lambda n: 1 - n / 1000), st.binary(min_size=1, max_size=12)),
    max_size=4)


def _client_bytes(actions: list[Any]) -> tuple[H2Connection, bytes, list[int], bool]:
    """The h2 client, what it writes for ``actions``, its calls, whether it said GOAWAY."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    out = [client.data_to_send()]
    calls, open_ids = [], []
    for action in actions:
        kind = action[0]
        if kind == "call":
            _, method, size, split, end, encoding = action
            sid = client.get_next_available_stream_id()
            encoded = [(b"grpc-encoding", encoding.encode())] if encoding else []
            client.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"http"),
                (b":path", f"/{SERVICE_NAME}/{method}".encode()), (b":authority", b"x"),
                (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                (b"grpc-timeout", b"%dm" % (1000 + size)), *encoded])
            body = _request(method, size, encoding)
            window = client.local_flow_control_window(sid)
            if len(body) > window:  # the rest would wait for the server's window update
                body, end = body[:window], False
            split = min(max(split, len(body) // 64), client.max_outbound_frame_size)
            for at in range(0, len(body), split):
                client.send_data(sid, body[at:at + split])
            calls.append(sid)
            if end:
                client.end_stream(sid)
            else:
                open_ids.append(sid)
        elif kind == "ping":
            client.ping(b"12345678")
        elif kind == "settings":
            _, window, frame_size, table = action
            client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window,
                                    SettingCodes.MAX_FRAME_SIZE: frame_size,
                                    SettingCodes.HEADER_TABLE_SIZE: table})
        elif kind == "window":
            client.increment_flow_control_window(action[1])
        elif kind == "reset" and open_ids:
            sid = open_ids.pop()
            client.reset_stream(sid)
            calls.remove(sid)
        elif kind == "priority" and (open_ids or calls):
            client.prioritize((open_ids or calls)[-1], weight=32)
        elif kind == "goaway":
            client.close_connection()
            out.append(client.data_to_send())
            return client, b"".join(out), calls, True
        out.append(client.data_to_send())
    return client, b"".join(out), calls, False


def _mutate(data: bytes, mutations: list[Any]) -> bytes:
    buf = bytearray(data)
    for kind, where, blob in mutations:
        at = int(where * len(buf))
        if kind == "flip" and buf:
            at = min(at, len(buf) - 1)
            buf[at] ^= blob[0] or 1
        elif kind == "cut":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = blob
        elif kind == "repeat":
            buf[at:at] = buf[at:at + len(blob) * 8]
        elif kind == "drop":
            del buf[at:at + len(blob) * 4]
    return bytes(buf)


def _frames(wire: bytes) -> list[tuple[int, int, int]]:
    """The server's output as frames (type, flags, stream); asserts it is well-formed."""
    frames, at = [], 0
    while at < len(wire):
        assert len(wire) - at >= 9, "a truncated frame header"
        length = int.from_bytes(wire[at:at + 3], "big")
        frames.append((wire[at + 3], wire[at + 4], int.from_bytes(wire[at + 5:at + 9], "big")))
        at += 9 + length
        assert at <= len(wire), "a truncated frame"
    return frames


def _check_bounds(server: Any) -> None:
    assert len(server._buffer) <= 16384 + 9
    assert len(server._block) <= MAX_HEADER_LIST
    assert len(server._held) <= h2server._MAX_HELD
    assert len(server._streams) <= MAX_STREAMS
    for stream in server._streams.values():
        assert len(stream.body) <= MAX_RECEIVE + 5
    assert len(server._reset_ids) <= h2server._RECENT_RESETS


@settings(FUZZ)
@given(actions=_actions, mutations=_mutations, chunks=st.lists(st.integers(1, 5000),
                                                              min_size=1, max_size=6))
def test_any_frame_sequence_is_served_or_refused_cleanly(
    actions: list[Any], mutations: list[Any], chunks: list[int]
) -> None:
    node, _ = make_node({"channel": {"namespaces": [
        {"name": "hh", "history_size": 5, "history_ttl": "60s"}]}})
    clock = Clock()
    dispatch = APIDispatch(APIExecutor(node), GRPCAPIConfig())
    factory = GRPCH2Factory(dispatch, clock, max_receive_message_size=MAX_RECEIVE,
                            max_concurrent_streams=MAX_STREAMS,
                            max_header_list_size=MAX_HEADER_LIST, idle_timeout=30,
                            read_timeout=5)
    server = factory.buildProtocol(None)
    transport = StringTransport()
    client, data, calls, goaway = _client_bytes(actions)
    wire = _mutate(data, mutations)
    with watch_log() as log:
        server.makeConnection(transport)
        at, turn = 0, 0
        while at < len(wire):
            size = chunks[turn % len(chunks)]
            server.dataReceived(wire[at:at + size])
            at, turn = at + size, turn + 1
            _check_bounds(server)
        clock.advance(5)  # read deadlines
        _check_bounds(server)
        written = transport.value()
        frames = _frames(written)
        if transport.disconnecting:
            assert h2server.GOAWAY in [kind for kind, _, sid in frames if sid == 0]
        elif wire == data and goaway:  # a client GOAWAY ends it once no answer waits
            assert server._streams and all(stream.out for stream in server._streams.values())
        assert wire != data or goaway or not transport.disconnecting  # valid: goes on
        if wire == data:
            event(f"calls: {len(calls)}")
        event(f"mutated: {wire != data}, closed: {bool(transport.disconnecting)}, "
              f"answers: {min(3, sum(1 for k, f, _ in frames if k == 1 and f & 1))}")
        clock.advance(60)  # idle: the connection ends unless answers wait for window
        assert transport.disconnecting or all(
            stream.out for stream in server._streams.values())
    assert not log.bad, "\n".join(log.lines())
    shrunk = any(a[0] == "settings" and a[1] < 65535 for a in actions)
    if wire == data and not goaway and not shrunk:  # (h2 refuses windows below 0)
        # The h2 client that wrote the calls reads every answer (it checks the framing,
        # HPACK and flow control); each call ended or was refused, or waits for window.
        ended = {e.stream_id for e in client.receive_data(written)
                 if isinstance(e, StreamEnded)}
        reset = {sid for kind, _, sid in frames if kind == h2server.RST_STREAM}
        waiting = set(server._streams)
        assert set(calls) <= ended | reset | waiting


# --- HPACK: the server's decoder against hpack's ------------------------------------------

_NAMES = [b":path", b":authority", b"content-type", b"grpc-timeout", b"authorization",
          b"user-agent", b"x-a", b"x-bb", b"te"]
_field = st.tuples(st.sampled_from(_NAMES) | st.binary(min_size=1, max_size=12),
                   st.binary(max_size=40) | st.integers(0, 10**8).map(lambda n: b"%du" % n),
                   st.booleans())  # never indexed
def _hpack_int(value: int, bits: int, first: int, overlong: int) -> bytes:
    """An HPACK integer; ``overlong``: in that many octets after the prefix if it fills it."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out += bytes([value | 0x80] + [0x80] * (overlong - 1) + [0]) if overlong else bytes([value])
    return bytes(out)


def _hpack_str(data: bytes, huffman: int) -> bytes:
    """A string literal; ``huffman``: 0 plain, 1 Huffman, 2 Huffman with bad padding."""
    if huffman:
        from hpack.huffman import HuffmanEncoder
        from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

        data = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)
        if huffman == 2:
            data += b"\xff"  # 8 bits or more of padding
    return _hpack_int(len(data), 7, 0x80 if huffman else 0, 0) + data


_overlong = st.sampled_from([0, 0, 0, 1, 4, 5])  # 5 octets after the prefix: too long
_representation = st.one_of(
    st.builds(lambda i, o: _hpack_int(i, 7, 0x80, o), st.integers(0, 70), _overlong),
    st.builds(lambda kind, index, o, name, value, huffman: (
        _hpack_int(index, 6 if kind == 0x40 else 4, kind, o) if index else bytes([kind])
        + _hpack_str(name, huffman)) + _hpack_str(value, huffman),
        st.sampled_from([0x40, 0x00, 0x10]), st.integers(0, 70), _overlong,
        st.sampled_from([b"x-a", b"x-bb", b"grpc-timeout"]),
        st.binary(max_size=3) | st.binary(min_size=60, max_size=120),
        st.sampled_from([0, 0, 1, 1, 2])),
    st.builds(lambda size, o: _hpack_int(size, 5, 0x20, o),
              st.sampled_from([0, 31, 100, 4096, 4097]), _overlong),
)
#: Blocks no encoder writes: indices at and past the tables' ends, overlong integers,
#: size updates anywhere (past the bound too), literals on dynamic names, Huffman
#: strings with bad padding.
_raw = st.lists(_representation, min_size=1, max_size=6).map(b"".join)
_blocks = st.lists(st.tuples(
    st.lists(_field, max_size=8),
    st.sampled_from([None, None, None, 0, 64, 200, 4096]),  # a table size change first
    st.booleans(),  # Huffman
    st.just([]) | st.just([]) | st.just([]) | _mutations,
    st.none() | _raw,  # instead of the encoder's block
), min_size=1, max_size=8)


def _outcome(decode: Any, block: bytes) -> Any:
    from hpack import HPACKDecodingError, OversizedHeaderListError
    try:
        return [tuple(header) for header in decode(block)]
    except OversizedHeaderListError:
        return "oversized"
    except HPACKDecodingError:
        return "error"


@settings(FUZZ)
@given(blocks=_blocks, limit=st.sampled_from([200, 4096]))
def test_the_hpack_decoder_agrees_with_hpack(blocks: list[Any], limit: int) -> None:
    """The server's HPACK decoder and hpack's give the same headers or the same error.

    Blocks an encoder writes (every field indexed, table size changes, Huffman or not),
    mutated or not, or put together from representations no encoder writes; the two
    dynamic tables stay the same, and the server's stays within its bounds.
    """
    from hpack import Decoder, Encoder

    from rtserver.grpcapi.hpack_decoder import HUFFMAN_CACHED, HPACKDecoder

    encoder = Encoder()
    theirs = Decoder(max_header_list_size=limit)
    ours = HPACKDecoder(limit)
    for fields, table_size, huffman, mutations, raw in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = _mutate(encoder.encode(fields, huffman=huffman), mutations)
        if raw is not None:
            block = raw
        event(f"mutated: {bool(mutations)}, raw: {raw is not None}")
        expected = _outcome(lambda b: theirs.decode(b, raw=True), block)
        assert _outcome(ours.decode, block) == expected
        if isinstance(expected, str):
            event(f"refused: {expected}")
            return  # a connection error: the connection and its table are gone
        assert ours.table == list(theirs.header_table.dynamic_entries)
        assert ours.table_size == theirs.header_table_size
        assert ours._size <= ours.table_size <= 4096
        assert len(ours._huffman) <= HUFFMAN_CACHED
