"""The GRPC server API on the reactor: gRPC over HTTP/2 with the ``h2`` library.

grpcio's server runs calls on threads of its own: every unary call wakes its poller
thread, a worker thread and the reactor (through the
:class:`~rtserver.grpcapi.bridge.ReactorBridge`), ~124 µs of CPU per call before any
work. This server speaks the gRPC wire protocol itself, in the reactor thread, with
``h2`` (the HTTP/2 state machine Twisted's own HTTP/2 support uses): a call is decoded,
run through :class:`~rtserver.grpcapi.api.APIDispatch` and answered without a thread
hand-off.

The wire format (unary calls only): ``POST /centrifugal.centrifugo.api.CentrifugoApi/<Method>``
with ``content-type: application/grpc[+proto]``; the body is one message behind a
5-byte prefix (compressed flag, 4-byte big-endian length). The answer: ``:status 200``
headers, one prefixed message, trailers with ``grpc-status`` (and ``grpc-message``).
A failure before any message is a trailers-only answer.

Bounds: ``max_concurrent_streams`` streams per connection, each buffering at most
``max_receive_message_size`` bytes (RESOURCE_EXHAUSTED beyond, checked on the prefix,
before the message is buffered); the key is checked on the request headers, so an
unauthenticated call buffers nothing. A connection that sends no request within
``idle_timeout`` (at the start, or between calls) is closed with a GOAWAY; a request
whose body is not complete ``read_timeout`` seconds after its headers is refused.
Stopping sends a GOAWAY, lets calls in flight finish for ``grace`` seconds, then
closes what is left.
"""

from __future__ import annotations

import socket
import struct
from typing import Any
from urllib.parse import quote

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Decoder, Encoder
from hyperframe.frame import GoAwayFrame
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from rtserver._compat import hpack_resize_due, replace_h2_hpack
from rtserver.config import ConfigError, TLSConfig, server_tls_pem
from rtserver.connections import OpenConnections
from rtserver.grpcapi.api import (
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
from rtserver.grpcapi.server import bind_address
from rtserver.logs import Logger

__all__ = ["GRPCH2Factory", "GRPCH2Protocol", "H2GRPCService", "grpc_message", "table_neutral"]

_log = Logger()

_PREFIX = struct.Struct(">BI")
_PATH_PREFIX = f"/{SERVICE_NAME}/".encode()
_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024  # grpcio's default
_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_OK_TRAILERS = [(b"grpc-status", b"0")]


#: Server side, bytes headers; h2's per-header validation and normalisation off (the
#: request's headers are checked here, the answers' are constants).
_H2_CONFIG = H2Configuration(
    client_side=False, header_encoding=None, validate_outbound_headers=False,
    normalize_outbound_headers=False, validate_inbound_headers=False,
    normalize_inbound_headers=False)


#: Header blocks a connection's decoder remembers (beyond, it starts over), and the
#: largest it remembers (a GRPC client's steady block is ~40 bytes): 16 KiB at most.
_CACHED_BLOCKS = 16
_CACHED_BLOCK_SIZE = 1024


class _CachingDecoder(Decoder):
    """An HPACK decoder that remembers header blocks which leave its table as it is.

    A GRPC client sends the same header block on every call once its headers are in the
    dynamic table (indexed fields and literals without indexing, such as
    ``authorization``). Such a block decodes to the same headers while the table is
    unchanged, and only blocks that change the table (literals with incremental
    indexing, size updates) change it: those empty the cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[bytes, list[Any]] = {}

    def decode(self, data: bytes, raw: bool = False) -> list[Any]:
        """The block's headers; from the cache when the block is known."""
        block = bytes(data)
        known = self._cache.get(block) if raw else None
        if known is not None:
            return list(known)
        headers = list(super().decode(block, raw))
        if raw and len(block) <= _CACHED_BLOCK_SIZE and table_neutral(block):
            if len(self._cache) >= _CACHED_BLOCKS:
                self._cache.clear()
            self._cache[block] = headers
            return list(headers)
        self._cache.clear()  # the table may have changed: known blocks may mean otherwise
        return headers


class _CachingEncoder(Encoder):
    """An HPACK encoder that remembers header lists it encoded without changing its table.

    The server answers every call with the same headers and trailers: once they are in
    the dynamic table they encode to the same indexed block, while the table is
    unchanged. A block that changes the table (new literals, a size update) empties the
    cache; a due size update bypasses it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[Any, ...], bytes] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """The block for ``headers``; from the cache when the list is known."""
        items = list(headers)
        key = (huffman, *[(type(h), *h) for h in items])  # never-indexed is another key
        if not hpack_resize_due(self):
            known = self._cache.get(key)
            if known is not None:
                return known
        block = super().encode(items, huffman)
        if not table_neutral(block):
            self._cache.clear()
        elif len(self._cache) < _CACHED_BLOCKS:
            self._cache[key] = block
        return block


def _integer(block: bytes, at: int, mask: int) -> tuple[int, int]:
    """An HPACK integer with a ``mask``-bit prefix at ``at``: its value and end."""
    value = block[at] & mask
    at += 1
    if value == mask:
        shift = 0
        while True:
            if at >= len(block) or shift > 28:
                return -1, len(block) + 1
            byte = block[at]
            at += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    return value, at


def table_neutral(block: bytes) -> bool:
    """Whether an HPACK header block leaves the dynamic table as it is (RFC 7541, 6)."""
    at, end = 0, len(block)
    while at < end:
        first = block[at]
        if first & 0x80:  # indexed field
            _, at = _integer(block, at, 0x7F)
            continue
        if first & 0x60:  # literal with incremental indexing, or a table size update
            return False
        name, at = _integer(block, at, 0x0F)  # literal without / never indexed
        for _ in range(2 if name == 0 else 1):  # the name string if new, then the value
            if at >= end:
                return False
            length, at = _integer(block, at, 0x7F)
            at += length
    return at == end


#: What grpc-message leaves as is: printable ASCII but ``%`` (the gRPC spec).
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def grpc_message(message: str) -> bytes:
    """A status message as the ``grpc-message`` trailer carries it (percent-encoded)."""
    return quote(message, safe=_MESSAGE_SAFE).encode("ascii")


class _Stream:
    """One call: its request so far, then its answer still to send."""

    __slots__ = ("body", "deadline", "expected", "metadata", "method", "out", "replying")

    def __init__(self, method: str, metadata: dict[str, str]) -> None:
        self.method = method
        self.metadata = metadata
        self.body = bytearray()
        self.expected = -1  # the message's length once the prefix is in
        self.replying = False  # dispatched: the body is complete
        self.out = b""  # answer bytes waiting for flow-control window
        self.deadline: IDelayedCall | None = None


class GRPCH2Protocol(Protocol):
    """One HTTP/2 connection serving ``CentrifugoApi`` unary calls."""

    def __init__(self, factory: GRPCH2Factory) -> None:
        self._factory = factory
        self._conn = H2Connection(_H2_CONFIG)
        replace_h2_hpack(self._conn, _CachingEncoder(), _CachingDecoder())
        self._streams: dict[int, _Stream] = {}
        self._timer: IDelayedCall | None = None
        self._draining = False
        self._closed = False

    # --- connection ----------------------------------------------------------------------

    @property
    def _transport(self) -> Any:
        # A TCP connection (ITCPTransport) or the TLS protocol over one: both write,
        # loseConnection and abortConnection.
        return self.transport

    def connectionMade(self) -> None:
        """Send the server's SETTINGS; the idle timer runs until a call starts."""
        f = self._factory
        f.connections.add(self)
        if ITCPTransport.providedBy(self.transport):
            self._transport.setTcpNoDelay(True)  # small frames answer calls: no Nagle delay
        self._conn.local_settings.update({
            SettingCodes.MAX_CONCURRENT_STREAMS: f.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: f.max_header_list_size,
        })
        self._conn.initiate_connection()
        self._flush()
        self._idle()
        if f.draining:
            self.drain()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Forget every call and timer."""
        self._closed = True
        self._cancel_timer()
        for stream in self._streams.values():
            if stream.deadline is not None and stream.deadline.active():
                stream.deadline.cancel()
        self._streams.clear()
        self._factory.connections.discard(self)

    def dataReceived(self, data: bytes) -> None:
        """Feed h2; handle its events; send what they produced."""
        try:
            events = self._conn.receive_data(data)
        except ProtocolError:
            self._flush()  # h2's GOAWAY
            self.abort()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._request(event.stream_id or 0, event.headers or [])
            elif isinstance(event, DataReceived):
                self._data(event.stream_id, event.data or b"", event.flow_controlled_length or 0)
            elif isinstance(event, StreamEnded):
                self._ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._forget(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._window(event.stream_id or 0)
            elif isinstance(event, ConnectionTerminated):
                self._flush()
                self._transport.loseConnection()
                return
        self._flush()

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and not self._closed:
            self._transport.write(out)

    def abort(self) -> None:
        """Close at once (a protocol error, or the drain's grace ran out)."""
        self._closed = True
        self._transport.abortConnection()

    def drain(self) -> None:
        """Stopping: a GOAWAY (calls in flight go on), close once none is left."""
        if self._draining or self._closed:
            return
        self._draining = True
        self._flush()
        # Written raw: h2's close_connection would refuse the frames (window updates,
        # pings) the calls in flight may still need.
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._conn.highest_inbound_stream_id
        frame.error_code = 0
        self._transport.write(frame.serialize())
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._draining and not self._streams and not self._closed:
            self._flush()  # the last answers
            self._closed = True
            self._cancel_timer()
            self._transport.loseConnection()

    # --- timers --------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        """No call open: close unless one starts within ``idle_timeout``."""
        self._cancel_timer()
        self._timer = self._factory.clock.callLater(self._factory.idle_timeout, self._timeout)

    def _timeout(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._conn.close_connection(ErrorCodes.NO_ERROR)
        self._flush()
        self._closed = True
        self._transport.loseConnection()

    # --- streams -------------------------------------------------------------------------

    def _request(self, stream_id: int, headers: list[Any]) -> None:
        self._cancel_timer()
        method, path, content_type = b"", b"", b""
        metadata: dict[str, str] = {}
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif not name.startswith(b":"):
                key = name.decode("latin-1")
                if key not in metadata:
                    metadata[key] = value.decode("latin-1")
        stream = _Stream("", metadata)
        self._streams[stream_id] = stream
        if self._draining:
            self._streams.pop(stream_id)
            self._conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            self._fail(stream_id, INTERNAL, "not a gRPC request")
            return
        if not path.startswith(_PATH_PREFIX):
            self._fail(stream_id, UNIMPLEMENTED, f"unknown service {path.decode('latin-1')}")
            return
        stream.method = path[len(_PATH_PREFIX):].decode("latin-1")
        dispatch = self._factory.dispatch
        if stream.method not in dispatch.methods:
            self._fail(stream_id, UNIMPLEMENTED, f"unknown method {stream.method}")
            return
        if not dispatch.authorized(metadata):
            self._fail(stream_id, UNAUTHENTICATED, "unauthenticated")
            return
        # The body follows (a request without one ends in _ended: incomplete).
        stream.deadline = self._factory.clock.callLater(
            self._factory.read_timeout, self._late, stream_id)

    def _data(self, stream_id: int, data: bytes, flow: int) -> None:
        if flow:
            self._conn.acknowledge_received_data(flow, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.replying:
            return  # answered already (an error): the rest is dropped
        body = stream.body
        body += data
        if stream.expected < 0 and len(body) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(body)
            if compressed:
                self._fail(stream_id, UNIMPLEMENTED, "compressed requests are not supported")
                return
            if length > self._factory.max_receive:
                self._fail(stream_id, RESOURCE_EXHAUSTED,
                           f"request message larger than max ({length} vs. "
                           f"{self._factory.max_receive})")
                return
            stream.expected = length
        if stream.expected >= 0 and len(body) > _PREFIX.size + stream.expected:
            self._fail(stream_id, UNIMPLEMENTED, "more than one request message in a unary call")

    def _ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.replying:
            return
        if stream.expected < 0 or len(stream.body) != _PREFIX.size + stream.expected:
            self._fail(stream_id, INTERNAL, "incomplete request message")
            return
        stream.replying = True
        if stream.deadline is not None and stream.deadline.active():
            stream.deadline.cancel()
        stream.deadline = None
        request = bytes(memoryview(stream.body)[_PREFIX.size:])
        stream.body = bytearray()
        d = self._factory.dispatch.call(stream.method, request, stream.metadata)
        d.addCallback(self._reply, stream_id, stream)
        d.addErrback(self._failed, stream_id, stream)

    def _late(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.replying:
            stream.deadline = None
            self._fail(stream_id, UNAVAILABLE, "request not received in time")
            self._flush()

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.deadline is not None and stream.deadline.active():
            stream.deadline.cancel()
        self._stream_done()

    def _stream_done(self) -> None:
        if not self._streams and not self._closed:
            if self._draining:
                self._close_if_done()
            else:
                self._idle()

    # --- answers -------------------------------------------------------------------------

    def _fail(self, stream_id: int, status: int, message: str) -> None:
        """A trailers-only answer; the rest of the request is dropped."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.replying = True
            stream.body = bytearray()
        headers = [*_RESPONSE_HEADERS, (b"grpc-status", str(status).encode()),
                   (b"grpc-message", grpc_message(message))]
        self._conn.send_headers(stream_id, headers, end_stream=True)
        if stream_id in self._conn.streams and not self._conn.streams[stream_id].closed:
            # The client is still sending: it has its answer, it may stop.
            self._conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        self._forget(stream_id)

    def _reply(self, reply: Reply, stream_id: int, stream: _Stream) -> None:
        if self._closed or self._streams.get(stream_id) is not stream:
            return  # reset by the client, or the connection is gone
        if reply.status != OK:
            self._fail(stream_id, reply.status, reply.message)
        else:
            self._conn.send_headers(stream_id, _RESPONSE_HEADERS)
            stream.out = _PREFIX.pack(0, len(reply.body)) + reply.body
            self._send(stream_id, stream)
        self._flush()

    def _failed(self, failure: Failure, stream_id: int, stream: _Stream) -> None:
        _log.failure("GRPC API stream failed", failure=failure)
        if not self._closed and self._streams.get(stream_id) is stream:
            self._fail(stream_id, INTERNAL, "internal server error")
            self._flush()

    def _send(self, stream_id: int, stream: _Stream) -> None:
        """Send what the flow-control windows allow; trailers once all is out."""
        conn = self._conn
        while stream.out:
            window = min(conn.local_flow_control_window(stream_id),
                         conn.max_outbound_frame_size)
            if window <= 0:
                return  # the rest goes on WindowUpdated
            chunk, stream.out = stream.out[:window], stream.out[window:]
            conn.send_data(stream_id, chunk)
        conn.send_headers(stream_id, _OK_TRAILERS, end_stream=True)
        self._forget(stream_id)

    def _window(self, stream_id: int) -> None:
        targets = (list(self._streams.items()) if stream_id == 0
                   else [(stream_id, self._streams[stream_id])] if stream_id in self._streams
                   else [])
        for sid, stream in targets:
            if stream.out:
                self._send(sid, stream)


class GRPCH2Factory(Factory):
    """Makes :class:`GRPCH2Protocol` connections; holds their limits and open set."""

    noisy = False

    def __init__(self, dispatch: APIDispatch, clock: IReactorTime, *,
                 max_receive_message_size: int = 0, max_concurrent_streams: int = 100,
                 max_header_list_size: int = 16384, idle_timeout: float = 300.0,
                 read_timeout: float = 30.0) -> None:
        self.dispatch = dispatch
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
        tls: serve over TLS with these PEM files when enabled.
        grace: seconds calls in flight get to finish when the service stops.
        reuse_port: share the port with the other workers of ``--workers N``.
    """

    def __init__(self, label: str, factory: GRPCH2Factory, reactor: Any, *,
                 address: str = "", port: int = 0, tls: TLSConfig | None = None,
                 grace: float = 5.0, reuse_port: bool = False) -> None:
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
        from OpenSSL import crypto
        from twisted.internet import ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory

        cert, key = server_tls_pem(self._tls, self.label)
        options = ssl.CertificateOptions(
            privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, key),
            certificate=crypto.load_certificate(crypto.FILETYPE_PEM, cert),
            acceptableProtocols=[b"h2"],
        )
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
        scheme = "TLS" if self._tls.enabled else "plaintext"
        _log.info("{label} listening on {address} ({scheme}, HTTP/2 on the reactor)",
                  label=self.label, address=bind_address(self._address, self.port),
                  scheme=scheme)

    def _listen(self, interface: str, factory: Any) -> IListeningPort:
        if not self._reuse_port:
            port: IListeningPort = self._reactor.listenTCP(
                self._requested_port, factory, backlog=128, interface=interface)
            return port
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, self._requested_port))
            sock.listen(128)
            sock.setblocking(False)
            adopted: IListeningPort = self._reactor.adoptStreamPort(
                sock.fileno(), family, factory)
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
