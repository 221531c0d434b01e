"""A blocking WebTransport test client on aioquic's sans-I/O QUIC and HTTP/3 connections.

It speaks to a real server over a UDP socket: ``select`` waits for a datagram or the
QUIC timer, never a fixed sleep. One client = one QUIC connection; :meth:`open_session`
sends the extended CONNECT, :meth:`open_stream` the bidirectional stream centrifuge-js
opens, and :meth:`read_until` collects what the server writes on it.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

DEFAULT_TIMEOUT = 10.0


@dataclass
class Stream:
    """What arrived on one stream."""

    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False


class WTClient:
    """One QUIC connection to ``host:port`` speaking HTTP/3 with WebTransport."""

    def __init__(self, host: str, port: int, *, cafile: Path | None = None) -> None:
        config = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536
        )
        if cafile is not None:
            config.load_verify_locations(str(cafile))
        else:
            config.verify_mode = ssl.CERT_NONE
        config.server_name = "localhost"
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.quic = QuicConnection(configuration=config)
        self.h3 = H3Connection(self.quic, enable_webtransport=True)
        self.responses: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, Stream] = {}
        self.streams: dict[int, Stream] = {}
        self.terminated: quic_events.ConnectionTerminated | None = None
        self.connected = False
        self.quic.connect(self.addr, now=time.monotonic())
        self.flush()

    # --- I/O ---------------------------------------------------------------------------

    def flush(self) -> None:
        for data, addr in self.quic.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, addr)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for datagrams or the QUIC timer; handle what came."""
        timer = self.quic.get_timer()
        now = time.monotonic()
        wait = timeout if timer is None else max(0.0, min(timeout, timer - now))
        readable, _, _ = select.select([self.sock], [], [], wait)
        if readable:
            self.sock.setblocking(False)
            try:
                while True:
                    try:
                        data, addr = self.sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    self.quic.receive_datagram(data, addr, now=time.monotonic())
            finally:
                self.sock.setblocking(True)
        elif timer is not None and time.monotonic() >= timer:
            self.quic.handle_timer(now=time.monotonic())
        self._events()
        self.flush()

    def _events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, quic_events.HandshakeCompleted):
                self.connected = True
            elif isinstance(event, quic_events.ConnectionTerminated):
                self.terminated = event
            elif isinstance(event, quic_events.StreamReset):
                self.streams.setdefault(event.stream_id, Stream()).reset = True
            elif (
                isinstance(event, quic_events.StreamDataReceived)
                and event.stream_id in self.streams
            ):
                # aioquic's H3Connection does not route the server's half of a stream
                # the client opened: read it as the raw stream it is
                stream = self.streams[event.stream_id]
                stream.data += event.data
                stream.ended |= event.end_stream
                event = self.quic.next_event()
                continue
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    self.responses[h3_event.stream_id] = list(h3_event.headers)
                    if h3_event.stream_ended:
                        self.bodies.setdefault(h3_event.stream_id, Stream()).ended = True
                elif isinstance(h3_event, DataReceived):
                    body = self.bodies.setdefault(h3_event.stream_id, Stream())
                    body.data += h3_event.data
                    body.ended |= h3_event.stream_ended
                elif isinstance(h3_event, WebTransportStreamDataReceived):
                    stream = self.streams.setdefault(h3_event.stream_id, Stream())
                    stream.data += h3_event.data
                    stream.ended |= h3_event.stream_ended
            event = self.quic.next_event()

    def wait(self, done: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT) -> None:
        """Pump until ``done()`` (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for the server")
            self.pump(left)

    # --- HTTP/3 and WebTransport -------------------------------------------------------

    def request(
        self, path: str, *, method: bytes = b"CONNECT", protocol: bytes | None = b"webtransport",
        origin: bytes | None = None,
    ) -> int:
        """Send a request's headers; returns its stream id."""
        self.wait(lambda: self.connected)
        stream_id = self.quic.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", f"localhost:{self.addr[1]}".encode()),
            (b":path", path.encode()),
        ]
        if protocol is not None:
            headers.append((b":protocol", protocol))
        if origin is not None:
            headers.append((b"origin", origin))
        self.h3.send_headers(stream_id, headers, end_stream=method != b"CONNECT")
        self.flush()
        return stream_id

    def status(self, stream_id: int) -> int:
        """The response status of ``stream_id`` (waits for it)."""
        self.wait(lambda: stream_id in self.responses)
        return int(dict(self.responses[stream_id])[b":status"])

    def open_session(self, path: str = "/connection/webtransport") -> int:
        """A WebTransport session (asserts 200); returns the session id."""
        session_id = self.request(path)
        status = self.status(session_id)
        assert status == 200, f"CONNECT {path}: {status}"
        return session_id

    def open_stream(self, session_id: int) -> int:
        """The client's bidirectional stream in ``session_id``."""
        stream_id = self.h3.create_webtransport_stream(session_id, is_unidirectional=False)
        self.streams[stream_id] = Stream()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream=end)
        self.flush()

    def reset(self, stream_id: int, code: int = 0) -> None:
        self.quic.reset_stream(stream_id, code)
        self.flush()

    def read_until(
        self, stream_id: int, done: Callable[[bytes], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> bytes:
        stream = self.streams.setdefault(stream_id, Stream())
        self.wait(lambda: done(bytes(stream.data)), timeout)
        return bytes(stream.data)

    def close(self) -> None:
        """CONNECTION_CLOSE, then forget the socket."""
        self.quic.close(error_code=0)
        self.flush()
        self.sock.close()

    def drop(self) -> None:
        """Vanish without a word (the server finds out by its idle timeout)."""
        self.sock.close()


def varint_frames(data: bytes) -> list[bytes]:
    """Split varint-delimited Protobuf messages."""
    buf = Buffer(data=data)
    out = []
    while not buf.eof():
        length = 0
        shift = 0
        while True:
            byte = buf.pull_uint8()
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.append(buf.pull_bytes(length))
    return out
