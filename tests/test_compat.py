"""Every internal rtserver._compat relies on is still there and still behaves as assumed.

One test (or two) per section of rtserver/_compat.py. A failure here after upgrading
Twisted, Autobahn or txredisapi names the internal that moved; fix _compat.py (and the
version bound in setup.cfg), not the callers.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from harness import tls_handshake_in_memory
from twisted.internet import defer, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rtserver import _compat
from rtserver.connections import websocket_server_options

# --- Twisted: eager send --------------------------------------------------------------


async def _tcp_pair() -> tuple[Any, list[bytes], Any, Any]:
    """A real server-side ``tcp.Server`` and what its peer receives."""
    received: list[bytes] = []
    server_side: defer.Deferred[Protocol] = defer.Deferred()

    class Accept(Protocol):
        def connectionMade(self) -> None:
            server_side.callback(self)

    class Sink(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    port = reactor.listenTCP(0, Factory.forProtocol(Accept), interface="127.0.0.1")
    client = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Sink()
    )
    accepted = await server_side
    return accepted.transport, received, client, port


@pytest_twisted.ensureDeferred
async def test_send_now_uses_the_socket_of_an_idle_tcp_server() -> None:
    """tcp.Server still has dataBuffer, _tempDataBuffer, connected, disconnecting, socket."""
    transport, received, client, port = await _tcp_pair()
    try:
        assert type(transport) is tcp.Server
        for name in ("dataBuffer", "_tempDataBuffer", "connected", "disconnecting", "socket"):
            assert hasattr(transport, name), f"twisted tcp.Server lost {name}"
        assert _compat.send_now(transport, b"now") == 3
        while b"".join(received) != b"now":
            await _turn()
    finally:
        client.transport.loseConnection()
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_send_now_never_overtakes_a_buffered_write() -> None:
    """A write Twisted has not sent yet (in _tempDataBuffer) makes send_now step aside."""
    transport, received, client, port = await _tcp_pair()
    try:
        transport.write(b"first")
        assert transport._tempDataBuffer, "twisted no longer buffers writes in _tempDataBuffer"
        assert _compat.send_now(transport, b"second") == 0
        transport.write(b"second")
        while b"".join(received) != b"firstsecond":
            await _turn()
    finally:
        client.transport.loseConnection()
        transport.loseConnection()
        await port.stopListening()


def test_send_now_leaves_other_transports_alone() -> None:
    """Anything but a plain tcp.Server (TLS, test transports) is not touched."""
    transport = StringTransport()
    assert _compat.send_now(transport, b"data") == 0
    assert transport.value() == b""


@pytest_twisted.ensureDeferred
async def test_write_now_sends_at_once_or_queues_behind_buffered_output() -> None:
    """write_now sends on an idle tcp.Server and writes behind anything buffered."""
    transport, received, client, port = await _tcp_pair()
    try:
        _compat.write_now(transport, b"now")
        assert not transport._tempDataBuffer and not transport.dataBuffer
        transport.write(b"-queued")
        _compat.write_now(transport, b"-after")
        while b"".join(received) != b"now-queued-after":
            await _turn()
    finally:
        client.transport.loseConnection()
        transport.loseConnection()
        await port.stopListening()


def test_write_now_uses_write_on_other_transports_and_ignores_none() -> None:
    """TLS or test transports get a plain write; a connection without one gets nothing."""
    transport = StringTransport()
    _compat.write_now(transport, b"data")
    assert transport.value() == b"data"
    _compat.write_now(None, b"data")


async def _turn() -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    await d


# --- Autobahn: options as class attributes -----------------------------------------------


def _connected_protocol(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Any]]:
    import autobahn.websocket.protocol as wsp

    formatted: list[Any] = []
    real = wsp.pformat
    monkeypatch.setattr(wsp, "pformat", lambda obj: formatted.append(obj) or real(obj))
    factory = WebSocketServerFactory(reactor=Clock())
    factory.setProtocolOptions(**websocket_server_options(4096, close_timeout=2.0))
    options = _compat.preset_protocol_options(factory, WebSocketServerProtocol)
    assert options["maxMessagePayloadSize"] == 4096
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    return proto, formatted


def test_autobahn_still_copies_options_listed_in_config_attrs() -> None:
    """Autobahn's server protocol names its per-connection options in CONFIG_ATTRS."""
    names = WebSocketServerProtocol.CONFIG_ATTRS
    assert "maxMessagePayloadSize" in names and "closeHandshakeTimeout" in names
    factory = WebSocketServerFactory()
    assert all(hasattr(factory, name) for name in names)


def test_preset_options_reach_every_connection_without_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection sees the factory's options, holds no copy, and formats none of them."""
    proto, formatted = _connected_protocol(monkeypatch)
    assert proto.maxMessagePayloadSize == 4096
    assert proto.closeHandshakeTimeout == 2.0
    assert proto.perMessageCompressionAccept([object()]) is None  # a function, not a method
    copied = set(vars(proto)) & set(WebSocketServerProtocol.CONFIG_ATTRS)
    assert copied == set()
    assert [obj for obj in formatted if obj] == []
    proto.connectionLost(Failure(ConnectionDone()))


# --- txredisapi: command encoding and clock -----------------------------------------------


def test_fast_redis_encoding_matches_txredisapi_byte_for_byte() -> None:
    """RedisProtocol._build_command exists, and the fast subclass encodes the same bytes."""
    import txredisapi

    plain = txredisapi.RedisProtocol(charset=None, convertNumbers=False)
    fast = _compat.redis_protocol_base()(charset=None, convertNumbers=False)
    for args in (
        ("PING",),
        ("SET", "kéy", b"\x00\xffbytes", 14, -3),
        ("EVALSHA", "abc", 2, b"k1", "k2", 1.5),  # a float: txredisapi's own path
        ("PUBLISH", "ch", b""),
    ):
        expected = plain._build_command(*args)
        assert _compat.encode_redis_command(fast, *args) == expected
        assert _compat.encode_redis_command(plain, *args) == expected


def test_redis_reply_timeouts_run_on_the_injected_clock() -> None:
    """Txredisapi schedules reply timeouts with its callLater attribute."""
    import txredisapi

    assert hasattr(txredisapi.RedisProtocol, "callLater")
    clock = Clock()
    proto = _compat.redis_protocol_base()(charset=None, convertNumbers=False, replyTimeout=2)
    _compat.use_clock(proto, clock.callLater)
    proto.makeConnection(StringTransport())
    failures: list[Any] = []
    proto.execute_command("PING").addErrback(failures.append)
    clock.advance(1.9)
    assert failures == []
    clock.advance(0.2)
    assert len(failures) == 1 and failures[0].check(txredisapi.TimeoutError)


# --- Twisted: twistd's log observer set from a plugin's options -------------------------


def test_twistd_takes_the_logger_a_plugin_sets(tmp_path: Any) -> None:
    """A plugin's ``parent`` is twistd's options; ``--logger`` set there is resolved."""
    import json

    from twisted.application import app
    from twisted.scripts.twistd import ServerOptions

    from rtserver import logs

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"log": {"format": "json"}}))
    log = tmp_path / "x.log"
    options = ServerOptions()
    options.parseOptions(["--logfile", str(log), "rtserver", "-c", str(cfg)])
    assert options["logger"] is logs.json_observer
    assert app.AppLogger(options)._observerFactory is logs.json_observer
    observer = logs.json_observer()
    observer({"log_format": "hello {who}", "who": "x", "log_time": 0.0})
    assert json.loads(log.read_text())["message"] == "hello x"
    logs.set_json_output("")
    # an explicit --logger wins
    options = ServerOptions()
    options.parseOptions(["--logger", "rtserver.logs.json_observer", "rtserver"])
    assert options.subOptions.parent is options
    assert _compat.set_twistd_logger(options.subOptions, "x.y") is None
    # options parsed outside twistd (no parent): nothing to set
    assert _compat.set_twistd_logger(object(), "x.y") is None


# --- Twisted: the TLS options of an ssl: description ---------------------------------------


# Twisted's CertificateOptions hands pyOpenSSL X509 and PKey objects to pyOpenSSL, which warns.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_ssl_server_context_is_the_one_twisted_listens_with(tmp_path: Any) -> None:
    """``ssl:`` descriptions become ``SSL4ServerEndpoint``s holding ``_sslContextFactory``."""
    from cryptography import x509
    from harness import make_certificate
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLContextFactory

    cert, key, _ = make_certificate(tmp_path)
    options = _compat.ssl_server_context(
        f"ssl:8443:privateKey={key}:certKey={cert}:extraCertChain={cert}"
    )
    assert IOpenSSLContextFactory.providedBy(options)
    context = options.getContext()
    assert isinstance(context, SSL.Context)
    served = SSL.Connection(context, None).get_certificate()
    assert served is not None
    assert served.to_cryptography() == x509.load_pem_x509_certificate(cert.read_bytes())
    with pytest.raises(ValueError, match="no ssl: endpoint"):
        _compat.ssl_server_context("tcp:8000")
    with pytest.raises(OSError):
        _compat.ssl_server_context(f"ssl:8443:privateKey={tmp_path / 'missing.pem'}")


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_ssl_endpoint_takes_a_client_ca(tmp_path: Any) -> None:
    """An ``ssl:`` description's options, given a client CA, require a client certificate.

    The trust root is set before the first ``getContext()``: ``verify``,
    ``requireCertificate`` and ``trustRoot`` are read when the context is built.
    """
    from OpenSSL import SSL
    from redisserver import make_tls
    from twisted.application import strports
    from twisted.internet import ssl
    from twisted.internet.endpoints import SSL4ServerEndpoint

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    good, other = make_tls(tmp_path / "a"), make_tls(tmp_path / "b")
    trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(good.ca_cert.read_bytes())])
    description = f"ssl:8443:privateKey={good.key}:certKey={good.cert}"
    listening = strports.service(description, Factory(), reactor=reactor)
    assert isinstance(listening.endpoint, SSL4ServerEndpoint)
    _compat.require_client_certificate(listening.endpoint, trust)
    assert listening.endpoint._sslContextFactory.requireCertificate
    with pytest.raises(ValueError, match="no ssl: endpoint"):
        _compat.require_client_certificate(object(), trust)
    context = _compat.ssl_server_context(description, trust).getContext()
    required = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    assert context.get_verify_mode() & required == required

    def attempt(files: Any | None) -> None:
        client_context = SSL.Context(SSL.TLS_METHOD)
        if files is not None:
            client_context.use_certificate_file(str(files.client_cert))
            client_context.use_privatekey_file(str(files.client_key))
        server = SSL.Connection(context, None)
        server.set_accept_state()
        client = SSL.Connection(client_context, None)
        client.set_connect_state()
        tls_handshake_in_memory(server, client)
        peer = server.get_peer_certificate(as_cryptography=True)
        assert peer is not None
        assert peer.subject.rfc4514_string() == "CN=rtserver test client"

    attempt(good)
    with pytest.raises(SSL.Error, match="did not return a certificate"):
        attempt(None)
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        attempt(other)


def test_quic_stream_backlog_reads_unacknowledged_bytes() -> None:
    """A QUIC stream keeps its unacknowledged bytes in ``QuicStreamSender._buffer``."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    stream_id = conn.get_next_available_stream_id()
    assert _compat.quic_stream_backlog(conn, stream_id) == 0
    conn.send_stream_data(stream_id, b"x" * 5000)
    assert _compat.quic_stream_backlog(conn, stream_id) == 5000


def test_quic_connection_with_reset_tokens_derives_every_host_ids_token(tmp_path: Any) -> None:
    """The ids are made in aioquic's ``__init__`` and ``_replenish_connection_ids``."""
    from harness import make_certificate

    from rtserver.transports.webtransport import quic_configuration

    cert, key, _ = make_certificate(tmp_path)

    def token(cid: bytes) -> bytes:
        return bytes(reversed(cid)) * 2

    conn = _compat.quic_connection_with_reset_tokens(
        token,
        configuration=quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0),
        original_destination_connection_id=b"o" * 8,
    )
    assert conn._host_cids[0].cid == conn.host_cid
    conn._remote_active_connection_id_limit = 8
    conn._replenish_connection_ids()
    assert len(conn._host_cids) == 8
    assert all(c.stateless_reset_token == token(c.cid) for c in conn._host_cids)


def test_retry_validation_time_shortens_aioquics_token_lifetime() -> None:
    """``validate_token`` refuses tokens older than ``retry.TOKEN_LIFETIME`` at ``now``."""
    from aioquic.quic.retry import QuicRetryTokenHandler

    handler = QuicRetryTokenHandler()
    addr = ("127.0.0.1", 4433)
    token = handler.create_token(
        address=addr, original_destination_connection_id=b"o" * 8,
        retry_source_connection_id=b"r" * 8, now=100.0,
    )
    for age, valid in ((9.9, True), (10.1, False)):
        now = _compat.retry_validation_time(100.0 + age, 10.0)
        try:
            odcid = handler.validate_token(
                address=addr, destination_cid=b"r" * 8, token=token, now=now
            )
        except ValueError:
            assert not valid
        else:
            assert valid and odcid == b"o" * 8


def test_hpack_static_table_and_huffman_decoder() -> None:
    """The ``hpack`` package keeps RFC 7541's static table and a strict Huffman decoder."""
    from hpack import HPACKDecodingError
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    table = _compat.hpack_static_table()
    assert len(table) == 61  # RFC 7541, Appendix A
    assert table[0] == (b":authority", b"")
    assert table[1] == (b":method", b"GET")
    assert table[60] == (b"www-authenticate", b"")
    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"www.example.com")
    assert encoded == bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")  # RFC 7541, C.4.1
    assert _compat.hpack_decode_huffman(encoded) == b"www.example.com"
    with pytest.raises(HPACKDecodingError):
        _compat.hpack_decode_huffman(encoded[:-1] + b"\x00")  # padding not all ones


def test_take_unparsed_bytes_finds_what_an_http_channel_kept() -> None:
    """``HTTPChannel._dataBuffer`` and ``LineReceiver._buffer`` still hold unparsed bytes."""
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    class Pending(Resource):
        isLeaf = True  # noqa: N815 - twisted.web's name

        def render_GET(self, request: Any) -> Any:
            return NOT_DONE_YET

    site = Site(Pending())
    site.protocol = HTTPChannel  # the channel itself, as rtserver's site builds it
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    # a request being handled: what follows it is kept for the next request
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x85early")
    assert _compat.take_unparsed_bytes(channel) == b"\x81\x85early"
    assert _compat.take_unparsed_bytes(channel) == b""
    # a head not yet complete: the partial line is kept by the line parser
    idle = site.buildProtocol(None)
    idle.makeConnection(StringTransport())
    idle.dataReceived(b"GET / HT")
    assert _compat.take_unparsed_bytes(idle) == b"GET / HT"
    idle.connectionLost(Failure(ConnectionDone()))
    channel.connectionLost(Failure(ConnectionDone()))
