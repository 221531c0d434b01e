"""The GRPC server API on the reactor: gRPC unary calls over a hand-written HTTP/2 server.

grpcio's server runs calls on threads of its own: every unary call wakes its poller
thread, a worker thread and the reactor (through the
:class:`~rtserver.grpcapi.bridge.ReactorBridge`), ~124 µs of CPU per call before any
work. This server speaks the gRPC wire protocol itself, in the reactor thread: a call is
decoded, run through :class:`~rtserver.grpcapi.api.APIDispatch` and answered without a
thread hand-off.

HTTP/2 (RFC 9113) is implemented here for what a gRPC client sends, strictly: the
general-purpose ``h2`` state machine cost ~105 µs per unary call, four times the rest of
the call, and a gRPC unary call uses a small part of HTTP/2 (a server never pushes,
never opens streams, never needs an HPACK encoder table). HPACK decoding is
:class:`~rtserver.grpcapi.hpack_decoder.HPACKDecoder`'s (as strict as the ``hpack``
library's, a few times cheaper per block), behind a cache of the header blocks that
leave the table unchanged (a gRPC client repeats the same block on every call), which
also keeps the parsed, validated request of each such block. Answers are encoded with
static-table indices and literals without indexing (constant bytes), so the client's
``SETTINGS_HEADER_TABLE_SIZE`` never matters beyond the table size update it asks for.

The wire format (unary calls only): ``POST /centrifugal.centrifugo.api.CentrifugoApi/<Method>``
with ``content-type: application/grpc[+proto]``; the body is one message behind a
5-byte prefix (compressed flag, 4-byte big-endian length). The answer: ``:status 200``
headers, one prefixed message, trailers with ``grpc-status`` (and ``grpc-message``),
written at once when the flow-control windows allow. A failure before any message is a
trailers-only answer.

Compressed requests (gRPC's compression.md): a message whose compressed flag is set is
inflated as its ``grpc-encoding`` says, ``gzip`` or ``deflate`` (``identity`` or none:
the flag must be clear), to at most ``max_receive_message_size`` bytes
(RESOURCE_EXHAUSTED beyond, before more is allocated). Another encoding is refused with
UNIMPLEMENTED and ``grpc-accept-encoding``, on the request headers. Answers are not
compressed.

Deadlines: a call's ``grpc-timeout`` sets its deadline on the injected clock. A call
whose deadline has passed once its request is complete is not made (grpc-go sends such
a call, as ``0n``, and leaves it to the server), and one whose answer comes after it
fails DEADLINE_EXCEEDED instead, as on grpcio's server: the client has failed it by
then. No timer is armed for it: a client stops waiting by itself.

Connection errors (a frame or a state the RFC forbids, a header block HPACK cannot
decode, a window overflow) answer a GOAWAY with the RFC's error code, then the connection
closes; malformed requests and stream-level violations reset their stream.

Bounds: an incomplete frame is buffered up to the maximum frame size (16 KiB) plus its
9-byte header; a header block (HEADERS and CONTINUATION) up to ``max_header_list_size``
bytes, decoded to at most that size; ``max_concurrent_streams`` streams per connection
(REFUSED_STREAM beyond), each buffering at most ``max_receive_message_size`` bytes
(RESOURCE_EXHAUSTED beyond, checked on the prefix, before the message is buffered, and
once more after decompression); the key is checked on the request headers, so an
unauthenticated call buffers nothing. While the peer does not read what the connection
writes, what it sends is held, not parsed (1.25 MiB at most, then the connection is
closed). A connection
that sends no request within ``idle_timeout`` (at the start, or between calls) is closed
with a GOAWAY; a request whose body is not complete ``read_timeout`` seconds after its
headers is refused. Stopping sends a GOAWAY, lets calls in flight finish for ``grace``
seconds, then closes what is left.
"""

from __future__ import annotations

import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import quote

from hpack import HPACKError, OversizedHeaderListError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.config import ConfigError, TLSConfig
from rtserver.connections import OpenConnections, reuse_port_socket
from rtserver.grpcapi.api import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    SERVICE_NAME,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    APIDispatch,
    Reply,
)
from rtserver.grpcapi.hpack_decoder import HPACKDecoder
from rtserver.grpcapi.server import bind_address, tls_scheme
from rtserver.logs import Logger
from rtserver.tlsserver import server_options

__all__ = [
    "GRPCH2Factory",
    "GRPCH2Protocol",
    "H2GRPCService",
    "MessageError",
    "decompress",
    "grpc_message",
]

_log = Logger()

_PREFIX = struct.Struct(">BI")
_PATH_PREFIX = f"/{SERVICE_NAME}/".encode()
_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024  # grpcio's default

# --- HTTP/2 constants (RFC 9113) ---------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: A frame header: length (24 bits, as 8 + 16), type, flags, stream id (31 bits).
_FRAME = struct.Struct(">BHBBL")
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x5, 0x6, 0x7
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
_INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE, _MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
_ENABLE_CONNECT_PROTOCOL = 0x8

_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
#: The largest frame accepted (SETTINGS_MAX_FRAME_SIZE is not raised from its default).
_MAX_FRAME = 16384
#: The receive window granted to the connection and to every stream; a window update
#: returns what was consumed once half of it is.
_WINDOW = 1 << 20
#: Input held while the peer does not read what is written: the connection window (the
#: most DATA it may send without window updates, which held input does not produce) and
#: room for the frames around it. Beyond, the connection is closed.
_MAX_HELD = _WINDOW + 256 * 1024
#: Stream ids reset by this side that are remembered (frames on them are ignored).
_RECENT_RESETS = 256
#: Seconds a closing connection gets to deliver its GOAWAY before it is aborted.
_CLOSE_GRACE = 5.0

# --- answers: HPACK without a dynamic table (RFC 7541) --------------------------------------


def _hpack_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name, no Huffman coding."""
    return b"\x00" + _hpack_integer(len(name), 7) + name + _hpack_integer(len(value), 7) + value


#: ``:status 200`` (static index 8), then ``content-type: application/grpc`` as a literal
#: without indexing on static name 31.
_RESPONSE_BLOCK = b"\x88" + _hpack_integer(31, 4) + _hpack_integer(16, 7) + b"application/grpc"
_OK_TRAILERS_BLOCK = _literal(b"grpc-status", b"0")
#: A dynamic table size update to 0: the first block after the client's
#: SETTINGS_HEADER_TABLE_SIZE starts with it (the encoder's table is never used).
_TABLE_SIZE_ZERO = b"\x20"
#: Characters of a status message sent at most (percent-encoded, it fits a frame).
_MAX_MESSAGE = 512


#: What grpc-message leaves as is: printable ASCII but ``%`` (the gRPC spec).
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def grpc_message(message: str) -> bytes:
    """A status message as the ``grpc-message`` trailer carries it (percent-encoded)."""
    return quote(message, safe=_MESSAGE_SAFE).encode("ascii")


def _status_block(status: int, message: str, extra: bytes = b"") -> bytes:
    """A trailers-only answer's header block: status 200, content-type, grpc-status.

    ``extra``: further encoded fields.
    """
    return (
        _RESPONSE_BLOCK
        + _literal(b"grpc-status", str(status).encode())
        + _literal(b"grpc-message", grpc_message(message[:_MAX_MESSAGE]))
        + extra
    )


# --- compressed requests (gRPC compression.md) -----------------------------------------------

#: zlib's ``wbits`` per ``grpc-encoding`` accepted: gzip (RFC 1952) and deflate, which
#: gRPC writes in the zlib format (RFC 1950), as its C core does.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
#: Sent with the refusal of a request in an encoding not accepted (answers are never
#: compressed, which the spec allows).
_ACCEPT_ENCODING = _literal(b"grpc-accept-encoding", b"identity,deflate,gzip")


class MessageError(Exception):
    """A request message that cannot be served: the call fails with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def decompress(encoding: str, data: bytes, limit: int) -> bytes:
    """A compressed request message, inflated to at most ``limit`` bytes.

    Inflation stops one byte past the limit, so a small message that inflates to much
    more (a zip bomb) costs ``limit`` bytes at most. Raises :class:`MessageError`:
    RESOURCE_EXHAUSTED beyond the limit, INTERNAL when ``data`` is not one complete
    stream in ``encoding``.
    """
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as e:
        raise MessageError(
            INTERNAL, f"cannot decompress the request message ({encoding}): {e}"
        ) from None
    if len(out) > limit:
        raise MessageError(
            RESOURCE_EXHAUSTED, f"request message larger than max after decompression (> {limit})"
        )
    if not inflater.eof or inflater.unused_data:
        raise MessageError(
            INTERNAL,
            f"cannot decompress the request message ({encoding}): "
            + ("truncated" if not inflater.eof else "data after its end"),
        )
    return out


# --- request header blocks ------------------------------------------------------------------

#: Header blocks a connection remembers (beyond, it starts over), and the largest it
#: remembers (a GRPC client's steady block is ~40 bytes): 16 KiB at most.
_CACHED_BLOCKS = 16
_CACHED_BLOCK_SIZE = 1024


#: Field names and values RFC 9113 (8.2.1) allows: names are lower-case visible ASCII
#: without a colon; values have no NUL, CR or LF, nor whitespace at either end.
_NAME = re.compile(rb"[!-9;-@\[-~]+")
_VALUE = re.compile(rb"(?:[^\x00\n\r\t ](?:[^\x00\n\r]*[^\x00\n\r\t ])?)?")
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
_PSEUDO = frozenset([b":method", b":scheme", b":path", b":authority"])


class _Request(NamedTuple):
    """What a request header block says, checked once per distinct block."""

    malformed: bool  # not a valid HTTP/2 request: the stream is reset (PROTOCOL_ERROR)
    pseudo: bool  # has pseudo-header fields (trailers must not)
    method: str  # the GRPC method once the request is a call of the service
    failure: tuple[int, str] | None  # a valid HTTP/2 request, not a call to serve
    metadata: dict[str, str]
    content_length: int  # -1: absent
    encoding: str  # grpc-encoding: "" (identity), "gzip", "deflate", or one not accepted


_MALFORMED = _Request(True, True, "", None, {}, -1, "")


def _parse_request(headers: Iterable[Any], methods: frozenset[str]) -> _Request:
    pseudo: dict[bytes, bytes] = {}
    regular = False
    content_type = b""
    content_length = -1
    metadata: dict[str, str] = {}
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in pseudo:
                return _MALFORMED
            pseudo[name] = value
            continue
        regular = True
        if (
            not _NAME.fullmatch(name)
            or not _VALUE.fullmatch(value)
            or name in _CONNECTION_SPECIFIC
            or (name == b"te" and value != b"trailers")
        ):
            return _MALFORMED
        if name == b"content-type" and not content_type:
            content_type = value
        elif name == b"content-length":
            if not value.isdigit() or content_length not in (-1, int(value)):
                return _MALFORMED
            content_length = int(value)
        key = name.decode("latin-1")
        if key not in metadata:
            metadata[key] = value.decode("latin-1")
    if not pseudo:
        return _Request(False, False, "", None, metadata, content_length, "")
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if not method or not path or not pseudo.get(b":scheme"):
        return _MALFORMED
    failure: tuple[int, str] | None = None
    call = ""
    if method != b"POST" or not content_type.startswith(b"application/grpc"):
        failure = (INTERNAL, "not a gRPC request")
    elif not path.startswith(_PATH_PREFIX):
        failure = (UNIMPLEMENTED, f"unknown service {path.decode('latin-1')}")
    else:
        call = path[len(_PATH_PREFIX) :].decode("latin-1")
        if call not in methods:
            failure = (UNIMPLEMENTED, f"unknown method {call}")
    encoding = metadata.get("grpc-encoding", "")
    if encoding == "identity":
        encoding = ""
    return _Request(False, True, call, failure, metadata, content_length, encoding)


#: A ``grpc-timeout`` value: at most 8 digits and a unit (gRPC's PROTOCOL-HTTP2.md).
_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes) -> float:
    """The seconds a ``grpc-timeout`` value says; -1.0 when it is malformed."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        return -1.0
    return int(match[1]) * _TIMEOUT_UNITS[match[2]]


class _CachingDecoder:
    """An HPACK decoder that remembers header blocks which leave its table as it is.

    A GRPC client sends the same header block on every call once its headers are in the
    dynamic table (indexed fields and literals without indexing, such as
    ``authorization``). Such a block decodes to the same headers while the table is
    unchanged, and only blocks that change the table (literals with incremental
    indexing, size updates) change it: those empty the cache. What is remembered is the
    checked request, so a known block costs one dict lookup.

    A client that sets deadlines may send ``grpc-timeout`` with a new value on every
    call as a literal with incremental indexing (grpc-go does): its blocks change the
    table, and the indices of the fields after them shift, so they are decoded every
    time (by :class:`~rtserver.grpcapi.hpack_decoder.HPACKDecoder`, mostly table
    lookups). The checked request is then remembered by the decoded headers but
    ``grpc-timeout`` (which is not metadata: the call's deadline, returned next to it).
    """

    def __init__(self, methods: frozenset[str], max_header_list_size: int) -> None:
        self._decoder = HPACKDecoder(max_header_list_size)
        self._methods = methods
        self._cache: dict[bytes, tuple[_Request, float | None]] = {}
        self._checked: dict[tuple[Any, ...], _Request] = {}

    def decode(self, block: bytes) -> tuple[_Request, float | None]:
        """The request the block says and its ``grpc-timeout`` in seconds.

        The timeout is None without one, negative when malformed. Raises HPACKError when
        the block cannot be decoded.
        """
        known = self._cache.get(block)
        if known is not None:
            return known
        decoder = self._decoder
        decoded = self._check(decoder.decode(block))
        if decoder.changed:
            self._cache.clear()  # the table changed: known blocks may mean otherwise
        elif len(block) <= _CACHED_BLOCK_SIZE:
            if len(self._cache) >= _CACHED_BLOCKS:
                self._cache.clear()
            self._cache[block] = decoded
        return decoded

    def _check(self, headers: Iterable[Any]) -> tuple[_Request, float | None]:
        kept, size = [], 0
        timeout: float | None = None
        for header in headers:
            if header[0] == b"grpc-timeout":
                if not _VALUE.fullmatch(header[1]):
                    return _MALFORMED, None
                if timeout is None:
                    timeout = grpc_timeout(header[1])
                continue
            kept.append(header)
            size += len(header[0]) + len(header[1])
        key = tuple(kept)
        request = self._checked.get(key)
        if request is None:
            request = _parse_request(key, self._methods)
            if size <= _CACHED_BLOCK_SIZE:
                if len(self._checked) >= _CACHED_BLOCKS:
                    self._checked.clear()
                self._checked[key] = request
        return request, timeout


# --- connections ----------------------------------------------------------------------------


class _ConnectionError(Exception):
    """A connection error (RFC 9113, 5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Stream:
    """One call: its request so far, then its answer still to send."""

    __slots__ = (
        "body",
        "compressed",
        "content_length",
        "deadline",
        "encoding",
        "ended",
        "expected",
        "expires",
        "in_window",
        "metadata",
        "method",
        "out",
        "out_window",
        "replying",
    )

    def __init__(
        self,
        method: str,
        metadata: dict[str, str],
        out_window: int,
        content_length: int,
        encoding: str,
    ) -> None:
        self.method = method
        self.metadata = metadata
        self.content_length = content_length
        self.encoding = encoding  # grpc-encoding: "" (identity), "gzip" or "deflate"
        self.body = bytearray()
        self.expected = -1  # the message's length once the prefix is in
        self.compressed = False  # the prefix's compressed flag
        self.expires: float | None = None  # the call's deadline (grpc-timeout), clock time
        self.replying = False  # dispatched: the body is complete
        self.ended = False  # the client ended its side (END_STREAM)
        self.out = b""  # answer bytes waiting for flow-control window
        self.out_window = out_window  # what the client lets us send on it
        self.in_window = _WINDOW  # what we let the client send on it
        self.deadline: IDelayedCall | None = None


@implementer(IPushProducer)
class GRPCH2Protocol(Protocol):
    """One HTTP/2 connection serving ``CentrifugoApi`` unary calls."""

    def __init__(self, factory: GRPCH2Factory) -> None:
        self._factory = factory
        self._decoder = _CachingDecoder(factory.methods, factory.max_header_list_size)
        self._streams: dict[int, _Stream] = {}
        self._buffer = bytearray()  # an incomplete frame (or preface)
        self._need = len(_PREFACE)  # bytes the buffer needs before it is parsed
        self._stage = 0  # 0: before the preface, 1: before its SETTINGS, 2: framing
        self._highest = 0  # the highest stream id the client opened
        self._reset_ids: dict[int, None] = {}  # streams recently reset by this side
        self._continued = 0  # a header block continues on this stream (CONTINUATION)
        self._continued_flags = 0
        self._block = bytearray()
        self._out: list[bytes] = []  # written once per batch of input
        self._receiving = False
        self._paused = False
        self._producing = False  # registered with the transport as its producer
        self._held = bytearray()  # input that arrived while paused
        self._out_window = _DEFAULT_WINDOW  # what the client lets us send, connection
        self._in_window = _WINDOW  # what we let it send, connection
        self._in_consumed = 0  # received since the last connection window update
        self._peer_window = _DEFAULT_WINDOW  # its SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_frame = _MAX_FRAME  # its SETTINGS_MAX_FRAME_SIZE
        self._table_update = False  # the next header block starts with a size update
        self._fresh: list[tuple[int, _Stream]] = []  # streams opened by this input
        self._timer: IDelayedCall | None = None
        self._closer: IDelayedCall | None = None
        self._idle_since = 0.0
        self._draining = False
        self._closed = False

    # --- connection ----------------------------------------------------------------------

    @property
    def _transport(self) -> Any:
        # A TCP connection (ITCPTransport) or the TLS protocol over one: both write, take
        # a producer, loseConnection and abortConnection.
        return self.transport

    def connectionMade(self) -> None:
        """Send the server's SETTINGS and window; the idle timer runs until a call starts."""
        f = self._factory
        f.connections.add(self)
        transport = self._transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)  # small frames answer calls: no Nagle delay
        transport.registerProducer(self, True)
        self._producing = True
        settings = b"".join(
            _SETTING.pack(key, value)
            for key, value in (
                (_MAX_CONCURRENT_STREAMS, f.max_concurrent_streams),
                (_INITIAL_WINDOW_SIZE, _WINDOW),
                (_MAX_HEADER_LIST_SIZE, f.max_header_list_size),
            )
        )
        self._frame(SETTINGS, 0, 0, settings)
        self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(_WINDOW - _DEFAULT_WINDOW))
        self._flush()
        self._idle_since = f.clock.seconds()
        self._timer = f.clock.callLater(f.idle_timeout, self._idle_check)
        if f.draining:
            self.drain()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Forget every call and timer."""
        self._closed = True
        self._producing = False  # the transport forgets its producer itself
        self._cancel_timer()
        if self._closer is not None and self._closer.active():
            self._closer.cancel()
        self._closer = None
        for stream in self._streams.values():
            if stream.deadline is not None and stream.deadline.active():
                stream.deadline.cancel()
        self._streams.clear()
        self._factory.connections.discard(self)

    # IPushProducer: the transport pauses the connection while its peer does not read
    # (and while a TLS handshake is under way).
    def pauseProducing(self) -> None:
        """The peer does not read what is written: hold what it sends for now."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The peer reads again: go on with what it sent meanwhile."""
        self._paused = False
        held, self._held = self._held, bytearray()
        if held:
            self.dataReceived(bytes(held))

    def stopProducing(self) -> None:
        """The transport is going away (connectionLost follows)."""

    def dataReceived(self, data: bytes) -> None:
        """Parse the frames in ``data``; answer what they ask; write it all at once."""
        if self._closed:
            return
        if self._paused:
            held = self._held
            held += data
            if len(held) > _MAX_HELD:
                self._connection_error(ENHANCE_YOUR_CALM)  # sends on, reads nothing
            return
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return
            data = bytes(buffer)
            buffer.clear()
        elif len(data) < self._need:
            buffer += data
            return
        self._receiving = True
        try:
            self._receive(data)
            self._started()
        except _ConnectionError as e:
            self._connection_error(e.code)
        except Exception:
            _log.failure("GRPC API: HTTP/2 connection failed")
            self._connection_error(INTERNAL_ERROR)
        finally:
            self._receiving = False
        self._flush()

    def _receive(self, data: bytes) -> None:
        at, end = 0, len(data)
        if self._stage < 2:
            if not self._stage:
                if data[: len(_PREFACE)] != _PREFACE:
                    raise _ConnectionError(PROTOCOL_ERROR)
                self._stage, at = 1, len(_PREFACE)
            if end - at < 9:
                self._keep(data, at, 9)
                return
            if data[at + 3] != SETTINGS or data[at + 4] & ACK:
                raise _ConnectionError(PROTOCOL_ERROR)  # the preface ends with SETTINGS
            self._stage = 2
        unpack = _FRAME.unpack_from
        while end - at >= 9:
            high, low, kind, flags, sid = unpack(data, at)
            length = (high << 16) | low
            if length > _MAX_FRAME:
                raise _ConnectionError(FRAME_SIZE_ERROR)
            start = at + 9
            at = start + length
            if at > end:
                self._keep(data, start - 9, length + 9)
                return
            if self._closed:
                return
            sid &= 0x7FFFFFFF
            if self._continued and kind != CONTINUATION:
                raise _ConnectionError(PROTOCOL_ERROR)
            if kind == HEADERS:
                self._headers(sid, flags, data[start:at])
            elif kind == DATA:
                self._data(sid, flags, data[start:at])
            else:
                handler = self._HANDLERS.get(kind)
                if handler is not None:
                    handler(self, sid, flags, data[start:at])
        if at < end:
            self._keep(data, at, 9)
        else:
            self._need = 0

    def _keep(self, data: bytes, at: int, need: int) -> None:
        """Keep an incomplete frame (``need`` bytes in all) until the rest arrives."""
        self._buffer += data[at:]
        self._need = need

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes = b"") -> None:
        self._out.append(_FRAME.pack(len(payload) >> 16, len(payload) & 0xFFFF, kind, flags, sid))
        if payload:
            self._out.append(payload)

    def _header_frame(self, sid: int, flags: int, block: bytes) -> None:
        if self._table_update:
            self._table_update = False
            block = _TABLE_SIZE_ZERO + block
        self._frame(HEADERS, flags | END_HEADERS, sid, block)

    def _flush(self) -> None:
        if self._out:
            out = b"".join(self._out)
            self._out.clear()
            if not self._closed:
                self._transport.write(out)

    def _connection_error(self, code: int) -> None:
        if self._closed:
            return
        self._goaway(code)
        self._close()

    def _goaway(self, code: int) -> None:
        self._frame(GOAWAY, 0, 0, _U32.pack(self._highest) + _U32.pack(code))

    def _close(self) -> None:
        """Write what is pending, then close (abort if the peer does not take it)."""
        self._closer = self._factory.clock.callLater(_CLOSE_GRACE, self.abort)
        self._flush()
        self._closed = True
        self._cancel_timer()
        self._unregister()
        self._transport.loseConnection()  # (it waits for a registered producer)

    def _unregister(self) -> None:
        if self._producing:
            self._producing = False
            self._transport.unregisterProducer()

    def abort(self) -> None:
        """Close at once (the drain's grace ran out, or a close was not acknowledged)."""
        self._closed = True
        self._closer = None
        self._unregister()
        self._transport.abortConnection()

    def drain(self) -> None:
        """Stopping: a GOAWAY (calls in flight go on), close once none is left."""
        if self._draining or self._closed:
            return
        self._draining = True
        self._goaway(NO_ERROR)
        self._flush()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._draining and not self._streams and not self._closed:
            self._close()

    # --- timers --------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle_check(self) -> None:
        """The idle timer: close when no call was open for ``idle_timeout`` seconds."""
        f = self._factory
        self._timer = None
        if self._closed:
            return
        left = f.idle_timeout
        if not self._streams:
            left = self._idle_since + f.idle_timeout - f.clock.seconds()
            if left <= 0:
                self._goaway(NO_ERROR)
                self._close()
                return
        self._timer = f.clock.callLater(left, self._idle_check)

    def _started(self) -> None:
        """Streams this input opened and left incomplete get their read deadline."""
        fresh = self._fresh
        if fresh:
            f = self._factory
            for sid, stream in fresh:
                if not stream.replying and self._streams.get(sid) is stream:
                    stream.deadline = f.clock.callLater(f.read_timeout, self._late, sid)
            fresh.clear()

    # --- frames --------------------------------------------------------------------------

    def _headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(FRAME_SIZE_ERROR)
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR)
            if _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == sid:
                raise _ConnectionError(PROTOCOL_ERROR)  # depends on itself
            start += 5
        if end < start:
            raise _ConnectionError(PROTOCOL_ERROR)  # padding past the payload
        block = payload[start:end] if start or end < len(payload) else payload
        if not flags & END_HEADERS:
            if len(block) > self._factory.max_header_list_size:
                raise _ConnectionError(ENHANCE_YOUR_CALM)
            self._continued, self._continued_flags = sid, flags
            self._block = bytearray(block)
            return
        self._header_block(sid, flags, block)

    def _continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if not self._continued or sid != self._continued:
            raise _ConnectionError(PROTOCOL_ERROR)
        block = self._block
        block += payload
        if len(block) > self._factory.max_header_list_size:
            raise _ConnectionError(ENHANCE_YOUR_CALM)
        if flags & END_HEADERS:
            self._continued = 0
            self._block = bytearray()
            self._header_block(sid, self._continued_flags, bytes(block))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            request, timeout = self._decoder.decode(block)
        except OversizedHeaderListError:
            raise _ConnectionError(ENHANCE_YOUR_CALM) from None
        except HPACKError:
            raise _ConnectionError(COMPRESSION_ERROR) from None
        stream = self._streams.get(sid)
        if stream is not None:  # trailers: they end the request
            if stream.ended:
                self._reset(sid, STREAM_CLOSED)
            elif not flags & END_STREAM or request.pseudo or request.malformed:
                self._reset(sid, PROTOCOL_ERROR)
            else:
                stream.ended = True
                self._end(sid, stream)
            return
        if not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR)  # clients open odd-numbered streams
        if sid <= self._highest:
            self._closed_stream(sid)
            return
        self._highest = sid
        f = self._factory
        if self._draining or len(self._streams) >= f.max_concurrent_streams:
            self._rst(sid, REFUSED_STREAM)
            return
        if request.malformed or not request.pseudo:
            self._rst(sid, PROTOCOL_ERROR)
            return
        stream = _Stream(
            request.method,
            request.metadata,
            self._peer_window,
            request.content_length,
            request.encoding,
        )
        stream.ended = bool(flags & END_STREAM)
        if timeout is not None:
            stream.expires = f.clock.seconds() + timeout
        self._streams[sid] = stream
        if request.failure is not None:
            self._fail(sid, *request.failure)
        elif not f.dispatch.authorized(request.metadata):
            self._fail(sid, UNAUTHENTICATED, "unauthenticated")
        elif request.encoding and request.encoding not in _WBITS:
            self._fail(
                sid,
                UNIMPLEMENTED,
                f"grpc-encoding {request.encoding!r} is not supported",
                _ACCEPT_ENCODING,
            )
        elif timeout is not None and timeout < 0:
            self._fail(sid, INTERNAL, "malformed grpc-timeout")
        elif stream.ended:
            self._end(sid, stream)
        else:
            self._fresh.append((sid, stream))  # the body follows

    def _data(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        length = len(payload)
        if length > self._in_window:
            raise _ConnectionError(FLOW_CONTROL_ERROR)
        self._in_window -= length
        self._in_consumed += length
        if self._in_consumed >= _WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._in_consumed))
            self._in_window += self._in_consumed
            self._in_consumed = 0
        if flags & PADDED:
            if not length or payload[0] >= length:
                raise _ConnectionError(PROTOCOL_ERROR)
            payload = payload[1 : length - payload[0]]
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._highest:
                raise _ConnectionError(PROTOCOL_ERROR)  # an idle stream
            self._closed_stream(sid)
            return
        if stream.ended:
            self._reset(sid, STREAM_CLOSED)
            return
        if length > stream.in_window:
            self._reset(sid, FLOW_CONTROL_ERROR)
            return
        stream.in_window -= length
        if not stream.replying:
            body = stream.body
            body += payload
            if stream.expected < 0 and len(body) >= _PREFIX.size:
                compressed, size = _PREFIX.unpack_from(body)
                if compressed > 1:
                    self._fail(sid, INTERNAL, f"unexpected message flags {compressed}")
                    return
                if compressed and not stream.encoding:
                    self._fail(sid, INTERNAL, "compressed message without a grpc-encoding")
                    return
                limit = self._factory.max_receive
                if size > limit:
                    self._fail(
                        sid,
                        RESOURCE_EXHAUSTED,
                        f"request message larger than max ({size} vs. {limit})",
                    )
                    return
                stream.expected = size
                stream.compressed = bool(compressed)
            if stream.expected >= 0 and len(body) > _PREFIX.size + stream.expected:
                self._fail(sid, UNIMPLEMENTED, "more than one request message in a unary call")
                return
        if flags & END_STREAM:
            stream.ended = True
            self._end(sid, stream)
        elif stream.in_window <= _WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, sid, _U32.pack(_WINDOW - stream.in_window))
            stream.in_window = _WINDOW

    def _priority(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        if len(payload) != 5:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
            raise _ConnectionError(PROTOCOL_ERROR)  # depends on itself

    def _rst_stream(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0 or sid > self._highest:
            raise _ConnectionError(PROTOCOL_ERROR)
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        self._forget(sid)

    def _settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        grown = False
        for at in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, at)
            if key == _HEADER_TABLE_SIZE:
                self._table_update = True
            elif key in (_ENABLE_PUSH, _ENABLE_CONNECT_PROTOCOL):
                if value > 1:
                    raise _ConnectionError(PROTOCOL_ERROR)
            elif key == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR)
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._streams.values():
                    stream.out_window += delta
                    if stream.out_window > _MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR)
                grown = grown or delta > 0
            elif key == _MAX_FRAME_SIZE:
                if not _MAX_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR)
                self._peer_frame = value
        self._frame(SETTINGS, ACK, 0)
        if grown:
            self._resume(list(self._streams.items()))

    def _push_promise(self, sid: int, flags: int, payload: bytes) -> None:
        raise _ConnectionError(PROTOCOL_ERROR)  # only servers push

    def _ping(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        if len(payload) != 8:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        if not flags & ACK:
            self._frame(PING, ACK, 0, payload)

    def _goaway_received(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(PROTOCOL_ERROR)
        if len(payload) < 8:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        if _U32.unpack_from(payload, 4)[0] == NO_ERROR:
            self.drain()  # the client opens no more streams: finish these, then close
        else:
            self._goaway(NO_ERROR)
            self._close()

    def _window_update(self, sid: int, flags: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR)
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR)
            self._out_window += increment
            if self._out_window > _MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR)
            self._resume(list(self._streams.items()))
            return
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._highest:
                raise _ConnectionError(PROTOCOL_ERROR)  # an idle stream
            return
        if not increment:
            self._reset(sid, PROTOCOL_ERROR)
            return
        stream.out_window += increment
        if stream.out_window > _MAX_WINDOW:
            self._reset(sid, FLOW_CONTROL_ERROR)
            return
        self._resume([(sid, stream)])

    _HANDLERS: dict[int, Callable[[GRPCH2Protocol, int, int, bytes], None]] = {
        PRIORITY: _priority,
        RST_STREAM: _rst_stream,
        SETTINGS: _settings,
        PUSH_PROMISE: _push_promise,
        PING: _ping,
        GOAWAY: _goaway_received,
        WINDOW_UPDATE: _window_update,
        CONTINUATION: _continuation,
    }

    # --- streams -------------------------------------------------------------------------

    def _end(self, sid: int, stream: _Stream) -> None:
        """The request is complete: dispatch it."""
        if stream.replying:
            return
        body = stream.body
        if stream.expected < 0 or len(body) != _PREFIX.size + stream.expected:
            self._fail(sid, INTERNAL, "incomplete request message")
            return
        if stream.content_length >= 0 and stream.content_length != len(body):
            self._reset(sid, PROTOCOL_ERROR)  # malformed (RFC 9113, 8.1.1)
            return
        stream.replying = True
        if stream.deadline is not None:
            if stream.deadline.active():
                stream.deadline.cancel()
            stream.deadline = None
        request = bytes(memoryview(body)[_PREFIX.size :])
        stream.body = bytearray()
        if stream.expires is not None and self._expired(sid, stream):
            return  # the client has given up: the call is not made
        if stream.compressed:
            try:
                request = decompress(stream.encoding, request, self._factory.max_receive)
            except MessageError as e:
                self._fail(sid, e.status, e.message)
                return
        d = self._factory.dispatch.call(stream.method, request, stream.metadata)
        d.addCallback(self._reply, sid, stream)
        d.addErrback(self._failed, sid, stream)

    def _late(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is not None and not stream.replying:
            stream.deadline = None
            self._fail(sid, UNAVAILABLE, "request not received in time")
            self._flush()

    def _reset(self, sid: int, code: int) -> None:
        """A stream error: RST_STREAM with ``code``; the call is forgotten."""
        self._rst(sid, code)
        self._forget(sid)

    def _rst(self, sid: int, code: int) -> None:
        """RST_STREAM; what the client sent before it saw it will be ignored."""
        self._frame(RST_STREAM, 0, sid, _U32.pack(code))
        reset = self._reset_ids
        if len(reset) >= _RECENT_RESETS:
            del reset[next(iter(reset))]
        reset[sid] = None

    def _closed_stream(self, sid: int) -> None:
        """HEADERS or DATA on a closed stream: ignored or a connection error.

        Ignored if this side reset the stream (the client may have sent it before it
        knew); STREAM_CLOSED otherwise (RFC 9113, 5.1).
        """
        if sid not in self._reset_ids:
            raise _ConnectionError(STREAM_CLOSED)

    def _forget(self, sid: int) -> None:
        stream = self._streams.pop(sid, None)
        if stream is None:
            return
        if stream.deadline is not None and stream.deadline.active():
            stream.deadline.cancel()
        if not self._streams and not self._closed:
            if self._draining:
                self._close_if_done()
            else:
                self._idle_since = self._factory.clock.seconds()

    # --- answers -------------------------------------------------------------------------

    def _fail(self, sid: int, status: int, message: str, extra: bytes = b"") -> None:
        """A trailers-only answer; the rest of the request is dropped."""
        self._header_frame(sid, END_STREAM, _status_block(status, message, extra))
        stream = self._streams.get(sid)
        if stream is not None:
            stream.replying = True
            if not stream.ended:
                # The client is still sending: it has its answer, it may stop.
                self._rst(sid, NO_ERROR)
        self._forget(sid)

    def _expired(self, sid: int, stream: _Stream) -> bool:
        """Whether the call's deadline has passed; if so, it fails DEADLINE_EXCEEDED."""
        expires = stream.expires
        if expires is None or self._factory.clock.seconds() < expires:
            return False
        self._fail(sid, DEADLINE_EXCEEDED, "Deadline Exceeded")
        return True

    def _reply(self, reply: Reply, sid: int, stream: _Stream) -> None:
        if self._closed or self._streams.get(sid) is not stream:
            return  # reset by the client, or the connection is gone
        if stream.expires is not None and self._expired(sid, stream):
            pass  # made, but too late: the client has failed the call by now
        elif reply.status != OK:
            self._fail(sid, reply.status, reply.message)
        else:
            body = reply.body
            self._header_frame(sid, 0, _RESPONSE_BLOCK)
            stream.out = _PREFIX.pack(0, len(body)) + body
            self._send(sid, stream)
        if not self._receiving:
            self._flush()

    def _failed(self, failure: Failure, sid: int, stream: _Stream) -> None:
        _log.failure("GRPC API stream failed", failure=failure)
        if not self._closed and self._streams.get(sid) is stream:
            self._fail(sid, INTERNAL, "internal server error")
            if not self._receiving:
                self._flush()

    def _send(self, sid: int, stream: _Stream) -> None:
        """Send what the flow-control windows allow; trailers once all is out."""
        out = stream.out
        while out:
            size = min(len(out), self._out_window, stream.out_window, self._peer_frame)
            if size <= 0:
                stream.out = out
                return  # the rest goes on a window update
            self._out.append(_FRAME.pack(size >> 16, size & 0xFFFF, DATA, 0, sid))
            self._out.append(out[:size] if size < len(out) else out)
            out = out[size:]
            self._out_window -= size
            stream.out_window -= size
        stream.out = b""
        self._header_frame(sid, END_STREAM, _OK_TRAILERS_BLOCK)
        self._forget(sid)

    def _resume(self, streams: list[tuple[int, _Stream]]) -> None:
        for sid, stream in streams:
            if stream.out:
                self._send(sid, stream)


class GRPCH2Factory(Factory):
    """Makes :class:`GRPCH2Protocol` connections; holds their limits and open set."""

    noisy = False

    def __init__(
        self,
        dispatch: APIDispatch,
        clock: IReactorTime,
        *,
        max_receive_message_size: int = 0,
        max_concurrent_streams: int = 100,
        max_header_list_size: int = 16384,
        idle_timeout: float = 300.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.dispatch = dispatch
        self.methods = frozenset(dispatch.methods)
        self.clock = clock
        self.max_receive = max_receive_message_size or _DEFAULT_MAX_RECEIVE
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.connections: OpenConnections[GRPCH2Protocol] = OpenConnections(clock)
        self.draining = False

    def buildProtocol(self, addr: Any) -> GRPCH2Protocol:
        """A connection's protocol."""
        return GRPCH2Protocol(self)


class H2GRPCService(Service):
    """The GRPC API's listening port on the reactor (plaintext, or TLS with ALPN ``h2``).

    Args:
        label: how the log names this server (``GRPC API``).
        factory: the connections' factory.
        reactor: listens (IReactorTCP, IReactorSocket) and keeps time.
        address: interface to bind; empty for all (IPv6 and IPv4).
        port: port to bind; 0 picks a free one (:attr:`port` tells which).
        tls: serve over TLS with these PEM files when enabled; with ``client_ca_pem``,
            only to clients presenting a certificate those CAs signed.
        grace: seconds calls in flight get to finish when the service stops.
        reuse_port: share the port with the other workers of ``--workers N``.
    """

    def __init__(
        self,
        label: str,
        factory: GRPCH2Factory,
        reactor: Any,
        *,
        address: str = "",
        port: int = 0,
        tls: TLSConfig | None = None,
        grace: float = 5.0,
        reuse_port: bool = False,
    ) -> None:
        self.label = label
        self.factory = factory
        self._reactor = reactor
        self._address = address
        self._requested_port = port
        self._tls = tls or TLSConfig()
        self._grace = grace
        self._reuse_port = reuse_port
        self._listening: IListeningPort | None = None
        #: The bound port once started.
        self.port = 0

    def _protocol_factory(self) -> Any:
        if not self._tls.enabled:
            return self.factory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        options = server_options(self._tls, self.label, alpn=(b"h2",))
        return TLSMemoryBIOFactory(options, False, self.factory)

    def startService(self) -> None:
        """Bind, then serve. Raises when the port cannot be bound."""
        interface = self._address or "::"
        target = bind_address(self._address, self._requested_port)
        try:
            factory = self._protocol_factory()
            self._listening = self._listen(interface, factory)
        except (OSError, ConfigError, Exception) as e:
            raise RuntimeError(f"{self.label}: cannot listen on {target}: {e}") from None
        self.port = int(getattr(self._listening.getHost(), "port", 0))
        super().startService()
        scheme = tls_scheme(self._tls)
        _log.info(
            "{label} listening on {address} ({scheme}, HTTP/2 on the reactor)",
            label=self.label,
            address=bind_address(self._address, self.port),
            scheme=scheme,
        )

    def _listen(self, interface: str, factory: Any) -> IListeningPort:
        if not self._reuse_port:
            port: IListeningPort = self._reactor.listenTCP(
                self._requested_port, factory, backlog=128, interface=interface
            )
            return port
        sock = reuse_port_socket(socket.SOCK_STREAM, interface, self._requested_port)
        try:
            sock.listen(128)
            sock.setblocking(False)
            adopted: IListeningPort = self._reactor.adoptStreamPort(
                sock.fileno(), sock.family, factory
            )
            return adopted
        finally:
            sock.close()  # the reactor holds its own duplicate

    def stopService(self) -> Deferred[None]:
        """Stop listening, GOAWAY every connection, drain; fires once all are closed."""
        super().stopService()
        listening, self._listening = self._listening, None
        stopped: Deferred[Any] = succeed(None)
        if listening is not None:
            stopped = listening.stopListening() or succeed(None)
        connections = self.factory.connections
        self.factory.draining = True
        for connection in connections:
            connection.drain()

        def abort_rest(failure: Failure) -> None:
            for connection in connections:
                connection.abort()

        drained = connections.wait_empty(self._grace).addErrback(abort_rest)
        done: Deferred[None] = Deferred()

        def finished(_: object) -> None:
            _log.info("{label} stopped", label=self.label)
            done.callback(None)

        DeferredList([stopped, drained], consumeErrors=True).addCallback(finished)
        return done
