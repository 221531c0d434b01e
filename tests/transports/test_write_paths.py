"""Every outbound write path delivers every message, in order.

The WebSocket transport sends eagerly on an idle plain-TCP socket and falls back to
``transport.write`` otherwise. These tests drive the fallbacks over real sockets: a TLS
connection (never eager), and a plain connection whose peer stops reading until the
kernel buffers and then Twisted's buffer fill (backpressure pauses the client's writer;
output accumulates and is written when the peer reads again).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from autobahn.twisted.websocket import connectWS
from liveserver import Server
from twisted.internet import defer, reactor, ssl, task, tcp
from twisted.internet.protocol import Factory, Protocol
from wsclient import ClientFactory, RecordingClient

from rtserver import config as rtconfig
from rtserver.core.writer import (
    FLUSH_SLICE,
    FLUSH_TURNS,
    ClientWriter,
    FlushScheduler,
    Payload,
)
from rtserver.service import build_node, build_site
from rtserver.transports.flow import write_eagerly
from rtserver.transports.websocket import WebSocketFactory, WebSocketProtocol, join_frames

SETTINGS: dict[str, Any] = {
    "client": {
        "allow_anonymous_connect_without_token": True,
        "queue_max_size": 16 * 1024 * 1024,
    },
    "websocket": {"write_timeout": "30s"},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
        }
    },
}
PAD = "x" * 400
CERT = Path(tcp.__file__).parent.parent / "test" / "server.pem"  # Twisted's test certificate


class TLSServer(Server):
    """The live site behind TLS (Twisted's test certificate), as ``ssl:`` listeners are."""

    def __init__(self, settings: dict[str, Any]) -> None:
        cfg = rtconfig.from_mapping(settings)
        self.node = build_node(cfg, reactor)
        self.site, self.drains = build_site(self.node, cfg, reactor)
        self.node.start()

    async def listen(self) -> None:
        # file-based context: Twisted's CertificateOptions hands pyOpenSSL X509 objects
        # over, which pyOpenSSL now deprecates (an error under filterwarnings)
        context = ssl.DefaultOpenSSLContextFactory(str(CERT), str(CERT))
        self.listening = reactor.listenSSL(0, self.site, context, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        self.url = f"wss://127.0.0.1:{self.port}/connection/websocket"


@pytest_twisted.async_yield_fixture
async def plain() -> AsyncIterator[Server]:
    srv = Server(SETTINGS)
    yield srv
    await srv.stop()


@pytest_twisted.async_yield_fixture
async def tls() -> AsyncIterator[Server]:
    srv = TLSServer(SETTINGS)
    await srv.listen()
    yield srv
    await srv.stop()


async def subscribe(srv: Server) -> tuple[ClientFactory, RecordingClient, WebSocketProtocol]:
    """Connect, subscribe to ``room``; also return the server side of the connection."""
    factory = ClientFactory(srv.url)
    factory.setProtocolOptions(openHandshakeTimeout=5, closeHandshakeTimeout=2)
    options = ssl.CertificateOptions(verify=False) if srv.url.startswith("wss") else None
    connectWS(factory, contextFactory=options)
    proto = await factory.opened
    proto.send_json({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "room"}})
    replies: list[Any] = []
    while len(replies) < 2:
        replies += await factory.next_messages()
    assert replies[1] == {"id": 2, "subscribe": {}}
    ws = next(d for d in srv.drains if isinstance(d, WebSocketFactory))
    (server_side,) = ws.connections
    return factory, proto, server_side


async def publish(srv: Server, first: int, count: int) -> None:
    """``count`` publications in one reactor turn (they share a flush)."""
    await defer.gatherResults(
        [
            defer.ensureDeferred(
                srv.node.publish("room", orjson.dumps({"i": i, "pad": PAD}))
            )
            for i in range(first, first + count)
        ]
    )


async def receive(factory: ClientFactory, count: int) -> list[int]:
    """The ``i`` of the next ``count`` publications."""
    seen: list[int] = []
    while len(seen) < count:
        for message in await factory.next_messages():
            seen.append(message["push"]["pub"]["data"]["i"])
    return seen


async def next_turn() -> None:
    await task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_tls_receives_everything_in_order(tls: Server) -> None:
    """Over TLS nothing is sent eagerly; single, coalesced and split frames all arrive."""
    factory, proto, server_side = await subscribe(tls)
    assert type(server_side.transport) is not tcp.Server
    await publish(tls, 0, 1)  # one message per turn
    await next_turn()
    await publish(tls, 1, 40)  # coalesced: 16 messages per frame at most
    await next_turn()
    for first in range(41, 200, 53):
        await publish(tls, first, min(53, 200 - first))
    assert await receive(factory, 200) == list(range(200))
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_full_socket_buffer_resumes_in_order(plain: Server) -> None:
    """A peer that stops reading gets everything, in order, once it reads again."""
    factory, proto, server_side = await subscribe(plain)
    transport: Any = server_side.transport
    assert type(transport) is tcp.Server  # the eager path is in use
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    proto.transport.pauseProducing()  # stop reading
    total = 0
    turns = 0
    while not transport.producerPaused:
        await publish(plain, total, 50)
        total += 50
        await next_turn()
        turns += 1
        assert turns < 200, "the server never saw a full buffer"
    # Output keeps queueing in the paused writer, across several turns.
    for _ in range(3):
        await publish(plain, total, 50)
        total += 50
        await next_turn()
    assert server_side.client is not None
    assert server_side.client.queued_bytes > 0
    proto.transport.resumeProducing()
    # keep publishing while the backlog drains: eager sends must not overtake it
    for _ in range(5):
        await publish(plain, total, 50)
        total += 50
        await next_turn()
    assert await receive(factory, total) == list(range(total))
    # and the eager path is used again afterwards
    await publish(plain, total, 1)
    assert await receive(factory, 1) == [total]
    proto.sendClose()
    await factory.closed


class RawPeer:
    """A plain blocking-socket peer of a Twisted ``tcp.Server`` transport.

    Its non-blocking :meth:`available` shows what the kernel already delivered: on
    loopback a ``send()`` lands in the peer's receive queue at once, so bytes present
    before the reactor ran were sent eagerly, and bytes absent are still in Twisted's
    buffer, waiting for the reactor's write pass.
    """

    def __init__(self, sock: socket.socket, transport: Any, port: Any) -> None:
        self.sock = sock
        self.transport = transport
        self._port = port

    def available(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    async def read(self, size: int) -> bytes:
        """Read ``size`` bytes, letting the reactor write in between."""
        data = b""
        for _ in range(10000):
            data += self.available()
            if len(data) >= size:
                return data
            await task.deferLater(reactor, 0, lambda: None)
        raise AssertionError(f"got {len(data)} of {size} bytes")

    async def close(self) -> None:
        self.sock.close()
        self.transport.loseConnection()
        await self._port.stopListening()


async def raw_peer(rcvbuf: int | None = None) -> RawPeer:
    """A listening ``tcp.Port`` and a raw client socket; the accepted server transport."""
    accepted: defer.Deferred[Any] = defer.Deferred()

    class Accept(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self.transport)

    port = reactor.listenTCP(0, Factory.forProtocol(Accept), interface="127.0.0.1")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port.getHost().port))
    transport = await accepted
    assert type(transport) is tcp.Server
    return RawPeer(sock, transport, port)


@pytest_twisted.ensureDeferred
async def test_eager_send_on_an_idle_transport_is_immediate() -> None:
    """On an idle plain-TCP transport the bytes reach the kernel at once."""
    peer = await raw_peer()
    try:
        write_eagerly(peer.transport, b"abcdef")
        assert peer.available() == b"abcdef"
    finally:
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_eager_send_never_overtakes_buffered_output() -> None:
    """With output buffered in Twisted, the frame goes behind it: order is kept."""
    peer = await raw_peer()
    try:
        peer.transport.write(b"older")  # buffered until the reactor's write pass
        write_eagerly(peer.transport, b"newer")
        assert peer.available() == b""
        assert await peer.read(10) == b"oldernewer"
    finally:
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_eager_send_partly_taken_leaves_the_rest_buffered() -> None:
    """What the kernel does not take is written later, once, in order."""
    peer = await raw_peer(rcvbuf=4096)
    try:
        peer.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 4096  # 1 MiB: far more than both kernel buffers
        write_eagerly(peer.transport, data)
        first = peer.available()
        assert 0 < len(first) < len(data)  # part went out at once
        assert first + await peer.read(len(data) - len(first)) == data
        assert peer.available() == b""
    finally:
        await peer.close()


def test_write_delay_coalesces_across_turns() -> None:
    """With a write delay, output queued within the delay leaves in one write."""
    clock = task.Clock()
    scheduler = FlushScheduler(clock, delay=0.005)
    writes: list[list[bytes]] = []

    class Sink:
        def write(self, payloads: list[Payload]) -> None:
            writes.append([p.data for p in payloads])

    writer = ClientWriter(Sink(), scheduler, max_bytes=1 << 20, on_overflow=lambda: None)
    writer.enqueue(Payload(b"a"))
    clock.advance(0.004)
    writer.enqueue(Payload(b"b"))
    assert writes == []
    clock.advance(0.001)
    assert writes == [[b"a", b"b"]]
    writer.enqueue(Payload(b"c"))
    clock.advance(0.005)
    assert writes == [[b"a", b"b"], [b"c"]]


@pytest.mark.parametrize(
    ("count", "first_slice"),
    [
        (FLUSH_SLICE * 2 + 10, FLUSH_SLICE),
        # a pass takes at most FLUSH_TURNS turns: larger fan-outs, larger slices
        (FLUSH_SLICE * FLUSH_TURNS * 2, FLUSH_SLICE * 2),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_large_fan_out_is_flushed_in_slices_between_input(
    count: int, first_slice: int
) -> None:
    """Past FLUSH_SLICE writers a flush continues on the next turn, after that turn's input.

    What is queued meanwhile (here: a second publication for everybody) joins the batch of
    every writer not yet flushed, so they get one write with both; the writers of the
    first slice get the second one in a write of its own. Each writer's order is kept.
    """
    scheduler = FlushScheduler(reactor)
    writes: list[list[list[bytes]]] = [[] for _ in range(count)]
    done: defer.Deferred[None] = defer.Deferred()
    delivered = 0

    class Sink:
        def __init__(self, index: int) -> None:
            self.index = index

        def write(self, payloads: list[Payload]) -> None:
            nonlocal delivered
            writes[self.index].append([p.data for p in payloads])
            delivered += len(payloads)
            if delivered == 2 * count:
                done.callback(None)

    writers = [
        ClientWriter(Sink(i), scheduler, max_bytes=1 << 20, on_overflow=lambda: None)
        for i in range(count)
    ]
    for writer in writers:
        writer.enqueue(Payload(b"a"))

    def second_publication() -> None:  # input handled between the first slice and the rest
        for writer in writers:
            writer.enqueue(Payload(b"b"))

    reactor.callLater(0, second_publication)
    await done
    assert writes[:first_slice] == [[[b"a"], [b"b"]]] * first_slice
    assert writes[first_slice:] == [[[b"a", b"b"]]] * (count - first_slice)


def test_frames_bounded_in_messages_and_bytes() -> None:
    """A batch splits into frames of at most N messages and about max bytes each."""
    payloads = [Payload(b"x" * 100) for _ in range(10)]
    data = join_frames(payloads, max_messages=4, max_bytes=250)
    frames = []
    while data:
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        frames.append(data[start : start + length])
        data = data[start + length :]
    assert [f.count(b"\n") + 1 for f in frames] == [2, 2, 2, 2, 2]
    assert b"\n".join(frames) == b"\n".join(p.data for p in payloads)
    big = join_frames([Payload(b"y" * 300)], max_messages=4, max_bytes=250)
    assert big.endswith(b"y" * 300)


def _frames_of(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        frames.append(data[start : start + length])
        data = data[start + length :]
    return frames


@pytest.mark.parametrize("binary", [False, True])
def test_frame_bounds_hold_at_the_exact_limits(binary: bool) -> None:
    """Batches at, just below and just above the message and byte bounds.

    One frame while both hold, a split as soon as either is passed; the separator after
    each message counts as a byte.
    """
    for count in (1, 2, 3, 4, 5):
        for size in (40, 49, 50, 51, 62, 63, 64, 83, 84, 100):
            payloads = [Payload(bytes([65 + i]) * size) for i in range(count)]
            frames = _frames_of(join_frames(payloads, 4, 250, binary=binary))
            sep = b"" if binary else b"\n"
            assert sep.join(frames) == sep.join(p.data for p in payloads)
            # the reference rule: a frame takes messages while it has fewer than 4 and its
            # messages plus one byte each (before the next) stay within 250 bytes
            expected, group, used = [], 0, 0
            for p in payloads:
                if group and (group >= 4 or used + p.size > 250):
                    expected.append(group)
                    group, used = 0, 0
                group += 1
                used += p.size + 1
            expected.append(group)
            if binary:
                counts = [len(f) // size for f in frames]
            else:
                counts = [f.count(b"\n") + 1 for f in frames]
            assert counts == expected, (count, size)


@pytest_twisted.ensureDeferred
async def test_subscribers_of_one_burst_share_its_frames_and_later_bursts_get_theirs(
    plain: Server,
) -> None:
    """A batch joined once per turn reaches every subscriber whole and in order.

    The next turn's batch (new payloads, possibly at the same addresses) is joined anew.
    """
    f1, p1, _ = await subscribe(plain)
    f2 = ClientFactory(plain.url)
    connectWS(f2)
    p2 = await f2.opened
    p2.send_json({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "room"}})
    replies: list[Any] = []
    while len(replies) < 2:
        replies += await f2.next_messages()
    ws = next(d for d in plain.drains if isinstance(d, WebSocketFactory))
    for first in (0, 3, 6):
        await publish(plain, first, 3)
        assert await receive(f1, 3) == [first, first + 1, first + 2]
        assert await receive(f2, 3) == [first, first + 1, first + 2]
        await next_turn()
        assert ws.joined_text == {}  # nothing is kept past the turn
    p1.sendClose()
    p2.sendClose()
    await f1.closed
    await f2.closed
