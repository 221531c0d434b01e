"""WebTransport over HTTP/3 (``/connection/webtransport``) on aioquic, driven by Twisted.

aioquic's QUIC and HTTP/3 connections are sans-I/O: datagrams go in, datagrams and a
timer deadline come out. :class:`QuicListener` is the Twisted ``DatagramProtocol`` on the
HTTP server's port number (UDP) that feeds them and arms each connection's timer on the
injected clock; no asyncio loop runs.

One :class:`WebTransportSession` per extended CONNECT to the endpoint. As Centrifugo does,
the client opens one bidirectional stream in the session and sends its commands on it;
replies and pushes come back on the same stream. JSON messages are newline-terminated,
Protobuf messages varint-delimited (``?cf_protocol=protobuf`` selects Protobuf). A
disconnect is a ``disconnect`` push and the end of the stream; the client then ends the
session, or after a few seconds a CLOSE_WEBTRANSPORT_SESSION capsule carrying the code
and reason does.

Bounds: ``webtransport.max_connections`` QUIC connections (new ones beyond are ignored),
``max_sessions_per_connection`` sessions per connection, ``max_streams_per_session``
streams per session (more are reset), commands up to ``message_size_limit`` bytes, output
paused while more than ``write_buffer_size`` bytes wait for acknowledgement (and closed
with 3009 after ``write_timeout``), QUIC's idle timeout and its 3x anti-amplification limit
before the client's address is validated. Address validation (QUIC Retry, RFC 9000 8.1.2)
starts by itself under pressure: while a quarter of ``max_connections`` connections are
still in their handshake, a new Initial without a token is answered by a stateless Retry
(no connection is created, nothing is remembered about the sender), and one carrying a
valid token (made for that address, at most ``_RETRY_TOKEN_LIFETIME`` seconds old) is
accepted. Anything else (another path, method or
protocol) gets an HTTP/3 error status and the stream ends.

A short-header packet for a connection this process does not hold (it ended, or a worker
of ``--workers N`` or the whole server restarted since) is answered with a Stateless Reset
(RFC 9000 10.3), which ends the client's connection at its next packet instead of after
its idle timeout, so centrifuge-js reconnects and recovers then. The reset token of each
connection id is an HMAC of the id under a secret derived from the TLS private key
(:func:`reset_secret`): every worker, and a server restarted with the same key, can
compute it. The reset is smaller than the packet it answers (no amplification, no loop
between two endpoints) and at most ``_RESETS_PER_SECOND`` are sent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.connection import ProtocolError as H3ProtocolError
from aioquic.h3.events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from rtserver._compat import (
    quic_connection_with_reset_tokens,
    quic_stream_backlog,
    retry_validation_time,
)
from rtserver.config import WebTransportConfig
from rtserver.connections import OpenConnections, reuse_port_socket
from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.ports import ISink
from rtserver.core.writer import Payload
from rtserver.logs import Logger
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.encoding import JSON, PROTOBUF, codec_for
from rtserver.protocol.frames import ProtocolError
from rtserver.protocol.protobuf import complete_end, longest_message
from rtserver.transports.origin import OriginPolicy

__all__ = [
    "HTTP3Service",
    "QuicListener",
    "WebTransportSession",
    "quic_configuration",
    "reset_secret",
]

_log = Logger()

#: Smallest UDP payload of a client's first packet (RFC 9000, 14.1).
_MIN_INITIAL = 1200
#: CLOSE_WEBTRANSPORT_SESSION capsule type (draft-ietf-webtrans-http3).
_CLOSE_SESSION = 0x2843
#: Application error code on streams refused by the server (WebTransport maps it into
#: the HTTP/3 space; H3_REQUEST_REJECTED for HTTP/3 streams).
_REFUSED = 0x10B
#: Seconds the server waits for the client to end a session the server closed.
_CLOSE_WAIT = 5.0
#: Seconds a QUIC connection stays open after its last session closed (lets the
#: disconnect push be read and the session end), unless the client closes first.
_LINGER = _CLOSE_WAIT + 1.0
#: What aioquic raises when a stream or request the peer already ended is written to.
_STREAM_GONE = (H3ProtocolError, AssertionError, ValueError, RuntimeError)
#: Refused request streams remembered per connection.
_MAX_ANSWERED = 64
#: Seconds a Retry token is accepted (a client returns it within a round trip).
_RETRY_TOKEN_LIFETIME = 10.0
#: Retry starts once ``max_connections // _RETRY_FRACTION`` connections are in their
#: handshake.
_RETRY_FRACTION = 4
#: Sizes of a Stateless Reset (RFC 9000 10.3: 5 unpredictable bytes and the 16-byte token
#: at least; one byte less than the packet answered, up to 43 bytes).
_MIN_RESET = 21
_MAX_RESET = 43
#: Stateless Resets sent per second at most (beyond, unknown packets are dropped).
_RESETS_PER_SECOND = 1000


def quic_configuration(cert_pem: bytes, key_pem: bytes, idle_timeout: float) -> QuicConfiguration:
    """The server's QUIC configuration: HTTP/3 ALPN, datagrams on, the certificate."""
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=65536,
        idle_timeout=idle_timeout,
        # receive windows: what one connection may make the server buffer
        max_data=262144,
        max_stream_data=131072,
    )
    chain = x509.load_pem_x509_certificates(cert_pem)
    config.certificate = chain[0]
    config.certificate_chain = chain[1:]
    config.private_key = load_pem_private_key(key_pem, password=None)
    return config


def reset_secret(key_pem: bytes) -> bytes:
    """The secret of the Stateless Reset tokens: a hash of the TLS private key.

    Every process serving this key derives the same tokens (the workers of ``--workers N``,
    a server restarted), and nobody without the key can.
    """
    key = load_pem_private_key(key_pem, password=None)
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    return hashlib.sha256(b"rtserver QUIC stateless reset\0" + der).digest()


def _capsule(kind: int, payload: bytes) -> bytes:
    return encode_uint_var(kind) + encode_uint_var(len(payload)) + payload


def close_session_capsule(code: int, reason: str) -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule (32-bit code, UTF-8 reason)."""
    buf = Buffer(capacity=4)
    buf.push_uint32(code & 0xFFFFFFFF)
    return _capsule(_CLOSE_SESSION, buf.data + reason.encode()[:1024])


def _line(data: bytes) -> bytes:
    return data + b"\n"


@implementer(ISink)
class WebTransportSession:
    """One WebTransport session: the client's stream in, its client's output out."""

    transport_name = "webtransport"
    unidirectional = False
    emulation = False
    pong = True

    def __init__(self, peer: QuicPeer, session_id: int, encoding: str) -> None:
        self._peer = peer
        self.session_id = session_id
        self.encoding = encoding
        self._codec = codec_for(encoding)
        self.stream_id: int | None = None
        self.client: Client | None = None
        self._buffer = b""
        self._closed = False
        self._paused = False
        self._write_timer: IDelayedCall | None = None
        self._capsule: bytes | None = None
        #: Streams the client opened in this session, and those refused (ids).
        self._opened = 0
        self._other_streams: set[int] = set()

    # --- input -----------------------------------------------------------------------

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        """Bytes of a stream of this session (the first bidirectional one carries commands)."""
        if stream_id != self.stream_id:
            if stream_id in self._other_streams:
                return  # more of a refused stream
            self._opened += 1
            if self.stream_id is None and stream_id % 4 == 0:  # client-initiated bidirectional
                self.stream_id = stream_id
            else:
                self._other_streams.add(stream_id)
                self._peer.refuse_stream(stream_id)
                if self._opened > self._peer.config.max_streams_per_session:
                    _log.debug("webtransport: too many streams in one session")
                    if self.client is not None:
                        self.client.close(Disconnect.BAD_REQUEST)
                return
        if data:
            self._receive(data)
        if ended:
            self.lost()

    def _receive(self, data: bytes) -> None:
        client = self.client
        if client is None or self._closed:
            return
        buf = self._buffer + data if self._buffer else data
        limit = self._peer.config.message_size_limit
        if self.encoding == PROTOBUF:
            try:
                end = complete_end(buf)
            except ProtocolError:
                _log.debug("webtransport: bad length prefix")
                client.close(Disconnect.BAD_REQUEST)
                return
            complete, rest = buf[:end], buf[end:]
        else:
            cut = buf.rfind(b"\n") + 1
            complete, rest = buf[:cut], buf[cut:]
        if len(rest) > limit or (len(complete) > limit and self._longest(complete) > limit):
            _log.debug("webtransport: command larger than {limit} bytes", limit=limit)
            client.close(Disconnect.BAD_REQUEST)
            return
        self._buffer = rest
        if complete if self.encoding == PROTOBUF else complete.strip():
            client.receive(complete)

    def _longest(self, complete: bytes) -> int:
        """The longest message in ``complete`` (whole messages only)."""
        if self.encoding == PROTOBUF:
            return longest_message(complete)
        return max(len(line) for line in complete.split(b"\n"))

    # --- ISink -----------------------------------------------------------------------

    def write(self, payloads: Sequence[Payload]) -> None:
        """Write a batch on the stream; the connection sends at the end of the turn."""
        stream_id = self.stream_id
        if self._closed or stream_id is None:
            return
        if self.encoding == PROTOBUF:
            data = b"".join(p.data for p in payloads)
        else:
            data = b"".join(p.framed("line", _line) for p in payloads)
        peer = self._peer
        try:
            peer.quic.send_stream_data(stream_id, data)
        except _STREAM_GONE:  # the client stopped the stream
            self.lost()
            return
        peer.schedule_transmit()
        backlog = quic_stream_backlog(peer.quic, stream_id)
        if not self._paused and backlog > peer.config.write_buffer_size:
            self._pause()

    def close(self, disconnect: Disconnect | None) -> None:
        """Disconnect push and end of stream; the session ends when the client ends it.

        As with WebSocket's closing handshake, the client (centrifuge-js closes its
        transport on a ``disconnect`` push) ends the session, or after ``_CLOSE_WAIT``
        seconds the server sends CLOSE_WEBTRANSPORT_SESSION itself. Closing the session
        at once would let a browser discard what the stream still held, and with it the
        disconnect code.
        """
        if self._closed:
            return
        peer = self._peer
        stream_id = self.stream_id
        code, reason = (0, "") if disconnect is None else (disconnect.code, disconnect.reason)
        self._capsule = close_session_capsule(code, reason)
        if stream_id is not None:
            push = b""
            if disconnect is not None:
                push = self._codec.encode_disconnect(disconnect)
                if self.encoding == JSON:
                    push += b"\n"
            try:
                peer.quic.send_stream_data(stream_id, push, end_stream=True)
            except _STREAM_GONE as e:  # the stream is already over
                _log.debug("webtransport: closing a half-closed stream: {e}", e=e)
        self._release()
        if stream_id is None:
            self.send_capsule()
        else:
            peer.closing[self.session_id] = self
            self._write_timer = peer.clock.callLater(_CLOSE_WAIT, self.send_capsule)
        peer.schedule_transmit()

    def send_capsule(self) -> None:
        """End the session (CLOSE_WEBTRANSPORT_SESSION on the CONNECT stream), once."""
        capsule, self._capsule = self._capsule, None
        self._cancel_write_timer()
        peer = self._peer
        peer.closing.pop(self.session_id, None)
        if capsule is None or peer.gone:
            return
        try:
            peer.h3.send_data(self.session_id, capsule, end_stream=True)
        except _STREAM_GONE as e:  # the client ended the session first
            _log.debug("webtransport: session already closed: {e}", e=e)
        peer.schedule_transmit()

    # --- flow control ------------------------------------------------------------------

    def _pause(self) -> None:
        client = self.client
        if client is None:
            return
        self._paused = True
        client.pause_writing()
        timeout = self._peer.config.write_timeout
        if timeout > 0:
            self._write_timer = self._peer.clock.callLater(timeout, self._write_expired)

    def check_drained(self) -> None:
        """Resume a paused client once half the write buffer is acknowledged."""
        stream_id = self.stream_id
        if not self._paused or stream_id is None:
            return
        peer = self._peer
        if quic_stream_backlog(peer.quic, stream_id) <= peer.config.write_buffer_size // 2:
            self._paused = False
            self._cancel_write_timer()
            if self.client is not None:
                self.client.resume_writing()

    def _write_expired(self) -> None:
        self._write_timer = None
        if self.client is not None:
            self.client.close(Disconnect.WRITE_ERROR)

    def _cancel_write_timer(self) -> None:
        timer = self._write_timer
        self._write_timer = None
        if timer is not None and timer.active():
            timer.cancel()

    # --- end ---------------------------------------------------------------------------

    def lost(self) -> None:
        """The client ended or reset the session: release its client."""
        if self._closed:
            return
        self._release()
        client = self.client
        self.client = None
        if client is not None:
            client.transport_lost()

    def _release(self) -> None:
        self._closed = True
        self._buffer = b""
        self._cancel_write_timer()
        self._peer.session_ended(self)


class QuicPeer:
    """One QUIC connection: its HTTP/3 layer, timer and WebTransport sessions."""

    def __init__(self, listener: QuicListener, quic: QuicConnection) -> None:
        self.listener = listener
        self.quic = quic
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.config = listener.config
        self.clock = listener.clock
        self.sessions: dict[int, WebTransportSession] = {}
        #: Sessions the server closed, until the client ends them too (by session id).
        self.closing: dict[int, WebTransportSession] = {}
        self.cids: set[bytes] = set()
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._flush: IDelayedCall | None = None
        #: Request streams answered with an error status (more HEADERS on them are ignored).
        self._answered: set[int] = set()
        self.gone = False
        #: The QUIC handshake is not complete yet (counted in ``listener.handshaking``).
        self.in_handshake = True
        # a connection must open a session in time, as a client must connect in time
        # (QUIC pings alone would keep it open until max_connections is reached)
        self._linger: IDelayedCall | None = self.clock.callLater(
            listener.session_deadline, self.close, "no session"
        )

    # --- input -----------------------------------------------------------------------

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram from the peer."""
        self.quic.receive_datagram(data, addr, now=self.clock.seconds())
        self._process()
        self.transmit()

    def _process(self) -> None:
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            self._quic_event(event)
            if self.gone:
                return
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
            event = quic.next_event()
        for session in list(self.sessions.values()):
            session.check_drained()

    def _quic_event(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.HandshakeCompleted):
            self.listener.handshake_over(self)
        elif isinstance(event, quic_events.ConnectionIdIssued):
            self.listener.add_cid(event.connection_id, self)
        elif isinstance(event, quic_events.ConnectionIdRetired):
            self.listener.remove_cid(event.connection_id)
        elif isinstance(event, quic_events.ConnectionTerminated):
            self._terminated()
        elif isinstance(event, quic_events.StreamReset | quic_events.StopSendingReceived):
            self._stream_gone(event.stream_id)

    def _stream_gone(self, stream_id: int) -> None:
        for session in list(self.sessions.values()):
            if stream_id in (session.session_id, session.stream_id):
                session.lost()
        closing = self.closing.get(stream_id)
        if closing is not None:
            closing.send_capsule()

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self._headers(event)
        elif isinstance(event, WebTransportStreamDataReceived):
            session = self.sessions.get(event.session_id)
            if session is not None:
                session.stream_data(event.stream_id, event.data, event.stream_ended)
            elif event.session_id not in self.closing:  # (a closing session's: ignored)
                self.refuse_stream(event.stream_id)
        elif isinstance(event, DataReceived) and event.stream_ended:
            # capsules on a session's CONNECT stream; the end of it ends the session
            session = self.sessions.get(event.stream_id)
            if session is not None:
                session.lost()
            closing = self.closing.get(event.stream_id)
            if closing is not None:  # the client ended a session the server closed
                closing.send_capsule()

    def _headers(self, event: HeadersReceived) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in event.headers:
            headers.setdefault(name, value)
        stream_id = event.stream_id
        if stream_id in self.sessions or stream_id in self._answered:
            return  # trailers, or more headers on a request already answered: ignored
        config = self.config
        method = headers.get(b":method")
        path = headers.get(b":path", b"").decode("latin-1")
        parts = urlsplit(path)
        if not config.enabled or parts.path.rstrip("/") != config.handler_prefix.rstrip("/"):
            self._refuse(stream_id, 404, "not found")
            return
        if method != b"CONNECT" or headers.get(b":protocol") != b"webtransport":
            self._refuse(stream_id, 400, "WebTransport (extended CONNECT) only")
            return
        listener = self.listener
        origin = headers.get(b"origin")
        origin_text = origin.decode("latin-1") if origin is not None else None
        if not listener.origins.allows(origin_text):
            _log.info("webtransport from origin {origin} refused", origin=origin_text)
            self._refuse(stream_id, 403, "origin not allowed")
            return
        if len(self.sessions) >= config.max_sessions_per_connection:
            self._refuse(stream_id, 429, "too many sessions on this connection")
            return
        node = listener.node
        if listener.stopping or not node.admit():
            self._refuse(stream_id, 503, "connection limit reached")
            return
        query = parse_qs(parts.query)
        encoding = PROTOBUF if query.get("cf_protocol", [""])[0] == PROTOBUF else JSON
        self.h3.send_headers(
            stream_id,
            [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
        )
        session = WebTransportSession(self, stream_id, encoding)
        self.sessions[stream_id] = session
        self._cancel_linger()
        request_headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in headers.items()
            if not k.startswith(b":")
        }
        session.client = node.make_client(session, headers=request_headers, encoding=encoding)
        listener.sessions_opened += 1

    def _refuse(self, stream_id: int, status: int, text: str) -> None:
        self._answered.add(stream_id)
        if len(self._answered) > _MAX_ANSWERED:  # bounded: forget one
            self._answered.pop()
        try:
            self.h3.send_headers(
                stream_id,
                [(b":status", str(status).encode()),
                 (b"content-type", b"text/plain; charset=utf-8")],
            )
            self.h3.send_data(stream_id, text.encode() + b"\n", end_stream=True)
        except _STREAM_GONE as e:  # the client ended it
            _log.debug("webtransport: cannot answer stream {id}: {e}", id=stream_id, e=e)

    def refuse_stream(self, stream_id: int) -> None:
        """Stop a stream the server does not serve (both directions when it has two)."""
        quic = self.quic
        try:
            quic.stop_stream(stream_id, _REFUSED)
            if stream_id % 4 == 0:  # bidirectional: our side too
                quic.reset_stream(stream_id, _REFUSED)
        except _STREAM_GONE:
            pass  # already ended
        self.schedule_transmit()

    # --- sessions --------------------------------------------------------------------

    def session_ended(self, session: WebTransportSession) -> None:
        """A session closed; the connection closes a moment after its last one."""
        if self.sessions.pop(session.session_id, None) is None:
            return
        self.listener.sessions_closed += 1
        if not self.sessions and not self.gone:
            self._cancel_linger()
            linger = 0.2 if self.listener.stopping else _LINGER
            self._linger = self.clock.callLater(linger, self.close)

    def _cancel_linger(self) -> None:
        linger = self._linger
        self._linger = None
        if linger is not None and linger.active():
            linger.cancel()

    def close(self, reason: str = "") -> None:
        """Close the QUIC connection (CONNECTION_CLOSE, no error)."""
        self._linger = None
        if self.gone:
            return
        if self.closing:
            for session in list(self.closing.values()):
                session.send_capsule()
            self.transmit()  # the capsules go out before CONNECTION_CLOSE
        self.quic.close(error_code=0, reason_phrase=reason)
        self.transmit()

    # --- output ----------------------------------------------------------------------

    def schedule_transmit(self) -> None:
        """Send what is pending at the end of this reactor turn (writes coalesce)."""
        if self._flush is None and not self.gone:
            self._flush = self.clock.callLater(0, self._flushed)

    def _flushed(self) -> None:
        self._flush = None
        self.transmit()

    def transmit(self) -> None:
        """Send pending datagrams and re-arm the timer."""
        if self.gone:
            return
        now = self.clock.seconds()
        write = self.listener.send
        for data, addr in self.quic.datagrams_to_send(now=now):
            write(data, addr)
        at = self.quic.get_timer()
        if at != self._timer_at:
            self._cancel_timer()
            if at is not None:
                self._timer = self.clock.callLater(max(0.0, at - now), self._on_timer)
                self._timer_at = at
        # closing can end the connection without a ConnectionTerminated event to come
        self._process()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=self.clock.seconds())
        self._process()
        self.transmit()

    def _cancel_timer(self) -> None:
        timer = self._timer
        self._timer = None
        self._timer_at = None
        if timer is not None and timer.active():
            timer.cancel()

    def _terminated(self) -> None:
        if self.gone:
            return
        self.gone = True
        self._cancel_timer()
        self._cancel_linger()
        flush = self._flush
        self._flush = None
        if flush is not None and flush.active():
            flush.cancel()
        for session in list(self.sessions.values()):
            session.lost()
        for session in list(self.closing.values()):
            session.send_capsule()
        self.listener.peer_gone(self)


class QuicListener(DatagramProtocol):
    """The UDP side of HTTP/3: routes datagrams to QUIC connections by connection id."""

    def __init__(
        self,
        node: Node,
        origins: OriginPolicy,
        config: WebTransportConfig,
        quic_config: QuicConfiguration,
        clock: IReactorTime,
        reset_key: bytes | None = None,
    ) -> None:
        self.node = node
        self.origins = origins
        self.config = config
        self.quic_config = quic_config
        self.clock = clock
        self.peers: OpenConnections[QuicPeer] = OpenConnections(clock)
        self._by_cid: dict[bytes, QuicPeer] = {}
        self.stopping = False
        #: Counters (tests and logs): sessions accepted and closed, datagrams dropped.
        self.sessions_opened = 0
        self.sessions_closed = 0
        self.dropped = 0
        self.send_errors = 0
        #: Connections whose QUIC handshake is not complete.
        self.handshaking = 0
        #: Retry packets sent, and Initials dropped for an invalid or expired token.
        self.retries_sent = 0
        self.tokens_refused = 0
        #: Handshakes in progress from which new Initials must prove their address.
        self.retry_threshold = max(1, config.max_connections // _RETRY_FRACTION)
        self._tokens = QuicRetryTokenHandler()  # a fresh key per process
        #: Secret of the Stateless Reset tokens (:func:`reset_secret`; a fresh one when
        #: None: then only this process's own connections can be reset).
        self._reset_key = reset_key if reset_key is not None else os.urandom(32)
        #: Stateless Resets sent, and the current one-second budget's start and count.
        self.resets_sent = 0
        self._reset_window = 0.0
        self._resets_in_window = 0
        #: Seconds a new QUIC connection has to open a session (``client.stale_close_delay``).
        self.session_deadline = node.config.client.stale_close_delay or 10.0

    @property
    def open_sessions(self) -> int:
        """WebTransport sessions open now."""
        return self.sessions_opened - self.sessions_closed

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Route one datagram; nothing it holds may stop the listener."""
        try:
            self._route(datagram, addr)
        except Exception:  # a bug: keep serving the other connections
            _log.failure("webtransport: datagram from {addr} failed", addr=addr)

    def _route(self, data: bytes, addr: tuple[str, int]) -> None:
        config = self.quic_config
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=config.connection_id_length
            )
        except ValueError:
            self.dropped += 1
            return
        peer = self._by_cid.get(header.destination_cid)
        if peer is not None:
            peer.datagram(data, addr)
            return
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in config.supported_versions
        ):
            if len(data) >= _MIN_INITIAL:  # never answer a small packet with a larger one
                self.send(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=config.supported_versions,
                    ),
                    addr,
                )
            return
        if header.packet_type == QuicPacketType.ONE_RTT:
            self._stateless_reset(header.destination_cid, len(data), addr)
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < _MIN_INITIAL:
            self.dropped += 1
            return
        if self.stopping or len(self.peers) >= self.config.max_connections:
            self.dropped += 1
            _log.debug("webtransport: new QUIC connection from {addr} ignored", addr=addr)
            return
        original_cid = header.destination_cid
        retry_cid: bytes | None = None
        if header.token:
            validated = self._validate_token(header, addr)
            if validated is None:
                return
            original_cid, retry_cid = validated, header.destination_cid
        elif self.handshaking >= self.retry_threshold:
            self._retry(header, addr)
            return
        quic: QuicConnection = quic_connection_with_reset_tokens(
            self.reset_token,
            configuration=config,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        peer = QuicPeer(self, quic)
        self.peers.add(peer)
        self.handshaking += 1
        self.add_cid(header.destination_cid, peer)
        self.add_cid(quic.host_cid, peer)
        peer.datagram(data, addr)

    def reset_token(self, cid: bytes) -> bytes:
        """The Stateless Reset token of connection id ``cid``."""
        return hmac.new(self._reset_key, cid, hashlib.sha256).digest()[:16]

    def _stateless_reset(self, cid: bytes, size: int, addr: tuple[str, int]) -> None:
        """End the sender's connection ``cid``, which this process does not hold."""
        length = min(size - 1, _MAX_RESET)
        now = self.clock.seconds()
        if now - self._reset_window >= 1.0:
            self._reset_window, self._resets_in_window = now, 0
        if length < _MIN_RESET or self._resets_in_window >= _RESETS_PER_SECOND:
            self.dropped += 1
            return
        self._resets_in_window += 1
        self.resets_sent += 1
        # a short header's first byte (form 0, fixed bit 1), unpredictable bits, the token
        noise = os.urandom(length - 16)
        packet = bytes([0x40 | (noise[0] & 0x3F)]) + noise[1:] + self.reset_token(cid)
        _log.debug("webtransport: stateless reset to {addr}", addr=addr)
        self.send(packet, addr)

    def _retry(self, header: QuicHeader, addr: tuple[str, int]) -> None:
        """Answer an Initial with a Retry carrying a token for ``addr`` (keeps no state).

        The Retry is smaller than the Initial (at least 1200 bytes) it answers.
        """
        assert header.version is not None  # a long header
        retry_cid = os.urandom(self.quic_config.connection_id_length)
        token = self._tokens.create_token(
            address=addr,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=retry_cid,
            now=self.clock.seconds(),
        )
        self.retries_sent += 1
        self.send(
            encode_quic_retry(
                version=header.version,
                source_cid=retry_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            ),
            addr,
        )

    def _validate_token(self, header: QuicHeader, addr: tuple[str, int]) -> bytes | None:
        """The original destination connection id in a valid token, or None (dropped).

        A token is valid for the address it was made for, sent to the Retry's connection
        id, for ``_RETRY_TOKEN_LIFETIME`` seconds. The Initial of a bad token is dropped
        without an answer: its sender may not be at ``addr``.
        """
        now = retry_validation_time(self.clock.seconds(), _RETRY_TOKEN_LIFETIME)
        try:
            return self._tokens.validate_token(
                address=addr, destination_cid=header.destination_cid, token=header.token,
                now=now,
            )
        except ValueError as e:
            self.tokens_refused += 1
            self.dropped += 1
            _log.debug("webtransport: Initial from {addr} dropped: {e}", addr=addr, e=e)
            return None

    def handshake_over(self, peer: QuicPeer) -> None:
        """``peer``'s handshake completed or the connection ended (counted once)."""
        if peer.in_handshake:
            peer.in_handshake = False
            self.handshaking -= 1

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram; a send error drops it (QUIC retransmits or times out)."""
        transport = self.transport
        if transport is None:
            return
        try:
            transport.write(data, addr)
        except (OSError, MessageLengthError) as e:
            self.send_errors += 1
            _log.debug("webtransport: send to {addr} failed: {e}", addr=addr, e=e)

    def add_cid(self, cid: bytes, peer: QuicPeer) -> None:
        """Route datagrams for ``cid`` to ``peer``."""
        self._by_cid[cid] = peer
        peer.cids.add(cid)

    def remove_cid(self, cid: bytes) -> None:
        """``cid`` was retired."""
        peer = self._by_cid.pop(cid, None)
        if peer is not None:
            peer.cids.discard(cid)

    def peer_gone(self, peer: QuicPeer) -> None:
        """A QUIC connection ended: forget its ids."""
        for cid in peer.cids:
            if self._by_cid.get(cid) is peer:
                del self._by_cid[cid]
        peer.cids.clear()
        self.handshake_over(peer)
        self.peers.discard(peer)

    def stop(self, timeout: float) -> Deferred[None]:
        """Refuse new sessions; fires when every connection has closed (or ``timeout``)."""
        self.stopping = True
        for peer in self.peers:
            if not peer.sessions:
                peer.close("shutdown")
        return self.peers.wait_empty(timeout)


class HTTP3Service(Service):
    """Listens for QUIC on UDP ``port``; stopping drains the sessions first.

    ``reuse_port``: bind with ``SO_REUSEPORT`` (shared with other processes). ``fd``: serve
    this already bound UDP socket (a worker of ``--workers N`` gets its own from the
    supervisor, which keeps it across the worker's restarts) instead of binding one.
    """

    def __init__(
        self,
        listener: QuicListener,
        port: int,
        interface: str,
        reactor: Any,
        drain: float = 5.0,
        reuse_port: bool = False,
        fd: int | None = None,
    ) -> None:
        self.listener = listener
        self._port_number = port
        self._interface = interface
        self._reactor = reactor
        self._drain = drain
        self._reuse_port = reuse_port
        self._fd = fd
        self._port: Any = None

    @property
    def port(self) -> int:
        """The UDP port listened on (the one asked for, or the one chosen for 0)."""
        if self._port is None:
            return self._port_number
        port: int = self._port.getHost().port
        return port

    def startService(self) -> None:
        """Bind the UDP port (raises when it cannot)."""
        super().startService()
        if self._fd is not None:
            # A worker of --workers N: the supervisor made this SO_REUSEPORT socket and
            # keeps it open while the worker restarts, so the kernel's choice of socket
            # for a client address (a hash over the group's sockets) never changes.
            sock = socket.socket(fileno=self._fd)
            try:
                sock.setblocking(False)
                self._port = self._reactor.adoptDatagramPort(
                    sock.fileno(), sock.family, self.listener, maxPacketSize=65535
                )
            finally:
                sock.detach()  # the descriptor stays open: a restarted service adopts it again
        elif self._reuse_port:
            sock = reuse_port_socket(socket.SOCK_DGRAM, self._interface, self._port_number)
            try:
                sock.setblocking(False)
                self._port = self._reactor.adoptDatagramPort(
                    sock.fileno(), sock.family, self.listener, maxPacketSize=65535
                )
            finally:
                sock.close()  # the reactor holds its own duplicate of the descriptor
        else:
            self._port = self._reactor.listenUDP(
                self._port_number, self.listener, interface=self._interface, maxPacketSize=65535
            )
        _log.info("HTTP/3 (WebTransport) on UDP port {port}", port=self.port)

    def stopService(self) -> Deferred[None]:
        """Close the sessions (the node sends them 3001), then the port."""
        super().stopService()
        d = self.listener.stop(self._drain)
        d.addErrback(lambda f: _log.info("HTTP/3: connections still open at shutdown"))

        def unbind(_: object) -> Any:
            port, self._port = self._port, None
            return None if port is None else port.stopListening()

        d.addCallback(unbind)
        return d
