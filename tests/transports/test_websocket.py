"""The WebSocket transport over real loopback sockets."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from liveserver import Server
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from wsclient import ClientFactory, RecordingClient, connect

from rtserver.core.types import DisconnectControl
from rtserver.protocol import codec

SETTINGS: dict[str, Any] = {
    "client": {
        "allow_anonymous_connect_without_token": True,
        "allowed_origins": ["https://*.example.com"],
        "queue_max_size": 65536,
    },
    "websocket": {"message_size_limit": 4096},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
        }
    },
}


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(SETTINGS)
    yield srv
    await srv.stop()


async def connected(srv: Server, **kwargs: Any) -> tuple[ClientFactory, RecordingClient]:
    factory = connect(srv.url, **kwargs)
    proto = await factory.opened
    proto.send_json({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "room"}})
    messages = await factory.next_messages()
    while len(messages) < 2:
        messages += await factory.next_messages()
    assert messages[0]["connect"]["client"] and messages[1] == {"id": 2, "subscribe": {}}
    return factory, proto


@pytest_twisted.ensureDeferred
async def test_publication_arrives_as_text_frame(server: Server) -> None:
    """A subscriber receives an API publication as a JSON text frame."""
    factory, proto = await connected(server)
    await server.node.publish("room", b'{"text":"hi"}')
    assert await factory.next_messages() == [{"push": {"channel": "room", "pub": {"data": {"text": "hi"}}}}]
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_publications_in_one_turn_share_one_frame(server: Server) -> None:
    """Several publications in one reactor turn reach a client as one newline-joined frame."""
    factory, proto = await connected(server)
    for i in range(3):
        server.node.publish("room", b'{"i":%d}' % i)
    messages = await factory.next_messages()
    assert [m["push"]["pub"]["data"]["i"] for m in messages] == [0, 1, 2]
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_all_subscribers_get_identical_bytes(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fan-out encodes a publication once and writes the same frame bytes to every subscriber."""
    clients = [await connected(server) for _ in range(3)]
    encoded: list[bytes] = []
    encode_push = codec.encode_push

    def counting(*args: Any, **kwargs: Any) -> bytes:
        data = encode_push(*args, **kwargs)
        encoded.append(data)
        return data

    monkeypatch.setattr(codec, "encode_push", counting)
    server.node.publish("room", b'{"n":1}')
    frames = [await f.frames.get() for f, _ in clients]
    assert len(set(frames)) == 1
    assert len(encoded) == 1, "the publication was encoded once per subscriber"
    for f, p in clients:
        p.sendClose()
        await f.closed


@pytest_twisted.ensureDeferred
async def test_disconnect_is_a_close_frame_with_code_and_reason(server: Server) -> None:
    """A server disconnect reaches the client as close code 3503 "force disconnect"."""
    factory, _ = await connected(server)
    await server.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    assert await factory.closed == (3503, "force disconnect")


@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused(server: Server) -> None:
    """A browser origin outside client.allowed_origins cannot upgrade."""
    factory = connect(server.url, origin="https://evil.test")
    with pytest.raises(ConnectionError):
        await factory.opened
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_allowed_origin_pattern_is_accepted(server: Server) -> None:
    """``https://*.example.com`` admits a matching browser origin."""
    factory, proto = await connected(server, origin="https://app.example.com")
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_1009(server: Server) -> None:
    """A message over websocket.message_size_limit is refused with close 1009."""
    factory, proto = await connected(server)
    proto.sendMessage(b'{"id":3,"publish":{"channel":"room","data":"' + b"x" * 5000 + b'"}}')
    code, _ = await factory.closed
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_binary_frame_is_inappropriate_protocol(server: Server) -> None:
    """Binary frames to a JSON connection close with 3506."""
    factory, proto = await connected(server)
    proto.sendMessage(b"\x00\x01", isBinary=True)
    assert (await factory.closed)[0] == 3506


@pytest_twisted.ensureDeferred
async def test_bad_command_closes_3501(server: Server) -> None:
    """Garbage input closes the connection with 3501 and the server keeps serving."""
    factory, proto = await connected(server)
    proto.sendMessage(b"{not json")
    assert (await factory.closed)[0] == 3501
    other, proto2 = await connected(server)
    proto2.sendClose()
    await other.closed


@pytest_twisted.ensureDeferred
async def test_stalled_reader_is_disconnected_slow(server: Server) -> None:
    """A client that stops reading is cut with 3008 once its queue bound is passed."""
    factory, proto = await connected(server)
    proto.transport.pauseProducing()
    big = b'{"blob":"' + b"x" * 60000 + b'"}'
    for _ in range(400):  # ~24 MB: far more than socket buffers hold
        server.node.publish("room", big)
        await task.deferLater(reactor, 0, lambda: None)  # one reactor turn: flush
    proto.transport.resumeProducing()
    code, _ = await factory.closed
    assert code == 3008


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_clients_with_3001() -> None:
    """Stopping the node closes connections with 3001 "shutdown" (clients reconnect)."""
    srv = Server(SETTINGS)
    factory, _ = await connected(srv)
    await srv.stop()
    assert await factory.closed == (3001, "shutdown")


@pytest_twisted.ensureDeferred
async def test_client_offering_permessage_deflate_connects_uncompressed(server: Server) -> None:
    """Browsers and SDKs offer permessage-deflate; the server declines it and serves as usual."""
    from autobahn.websocket.compress import PerMessageDeflateOffer

    factory = ClientFactory(server.url)
    factory.setProtocolOptions(
        openHandshakeTimeout=5, closeHandshakeTimeout=2,
        perMessageCompressionOffers=[PerMessageDeflateOffer()],
    )
    from autobahn.twisted.websocket import connectWS

    connectWS(factory)
    proto = await factory.opened
    # The server's handshake response names no extension: frames are not compressed.
    assert "sec-websocket-extensions" not in proto.http_headers
    assert proto.websocket_extensions_in_use == []
    proto.send_json({"id": 1, "connect": {}})
    assert (await factory.next_messages())[0]["connect"]["client"]
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_upgraded_connections_are_not_kept_by_the_site(server: Server) -> None:
    """Connection churn does not grow memory: the site forgets upgraded HTTP connections."""

    def live_channels() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, server.site.protocol))

    before = live_channels()
    for _ in range(5):
        factory = connect(server.url)
        proto = await factory.opened
        proto.sendClose()
        await factory.closed
    assert live_channels() == before


@pytest_twisted.ensureDeferred
async def test_connections_skip_autobahn_option_pretty_printing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection pays for pretty-printing Autobahn's ~40 options (~125 µs each)."""
    import autobahn.websocket.protocol as wsp

    formatted: list[Any] = []
    real = wsp.pformat
    monkeypatch.setattr(wsp, "pformat", lambda obj: formatted.append(obj) or real(obj))
    factory = connect(server.url)
    proto = await factory.opened
    proto.send_json({"id": 1, "connect": {}})
    assert (await factory.next_messages())[0]["connect"]["client"]
    proto.sendClose()
    await factory.closed
    # the test's own client is Autobahn too: its option lists name ClientFactory
    server_options = [
        obj
        for obj in formatted
        if isinstance(obj, list) and obj and all(entry[2] != "ClientFactory" for entry in obj)
    ]
    assert server_options == []


class _Raw(Protocol):
    """Writes ``payload`` in one send as soon as it connects; keeps what comes back."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


@pytest_twisted.ensureDeferred
async def test_frame_sent_before_the_handshake_completes_closes_the_connection(
    server: Server,
) -> None:
    """A frame in the same packet as the upgrade request closes the connection.

    RFC 6455 4.1 forbids sending before the 101 and Centrifugo refuses it; rtserver
    closes the connection and says why, instead of dropping the frame and leaving the
    client waiting for its reply.
    """
    request = (
        b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    raw = _Raw(request + _masked_text_frame(b'{"id":1,"connect":{}}'))
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), raw)
    received = await raw.closed.addTimeout(5, reactor)
    assert b'"id":1' not in received
    assert server.node.hub.num_clients == 0
