"""Every use of another library's undocumented internals, in one place.

rtserver reaches past the public API of Twisted, Autobahn, txredisapi, aioquic and hpack
in a few spots where the public API costs too much CPU or memory per connection or per
command. Each such spot is one small function below, in a section headed with the
library, the internal it relies on and why; ``tests/test_compat.py`` has a test per
entry that fails loudly when the internal disappears or changes shape, and ``setup.cfg``
bounds each of these libraries below its next major release.

Nothing outside this module may touch another library's private attributes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from autobahn.websocket.protocol import WebSocketServerProtocol
from twisted.internet import tcp

__all__ = [
    "encode_redis_command",
    "hpack_decode_huffman",
    "hpack_static_table",
    "preset_protocol_options",
    "quic_connection_with_reset_tokens",
    "quic_stream_backlog",
    "redis_protocol_base",
    "require_client_certificate",
    "send_now",
    "set_twistd_logger",
    "ssl_server_context",
    "take_unparsed_bytes",
    "use_clock",
    "write_now",
]


# --- Twisted: eager send on an idle TCP connection ---------------------------------------
#
# ``tcp.Server`` buffers a write and sends it on the reactor's next write pass. When
# nothing is buffered, one ``socket.send()`` at once saves that pass (and a wake-up) per
# message (docs/performance.rst, "Eager send"). Relies on ``tcp.Server.dataBuffer``,
# ``_tempDataBuffer`` (writes not yet joined into ``dataBuffer``), ``connected``,
# ``disconnecting`` and ``socket``.


def send_now(transport: object, data: bytes) -> int:
    """Send ``data`` straight to the socket of an idle plain-TCP server transport.

    Only a ``tcp.Server`` (not TLS, not a test transport) with nothing buffered and not
    disconnecting qualifies; anything else is left to the transport's own ``write`` so
    that order is kept.

    Args:
        transport: The connection's transport.
        data: The bytes to send.

    Returns:
        How many leading bytes of ``data`` the kernel took (0 when the transport does
        not qualify, or on ``EAGAIN`` or a dead peer: Twisted's write path handles both).
        The caller writes the rest with ``transport.write``.
    """
    if (
        type(transport) is not tcp.Server
        or transport.dataBuffer
        or transport._tempDataBuffer
        or not transport.connected
        or transport.disconnecting
    ):
        return 0
    try:
        return transport.socket.send(data)
    except OSError:
        return 0


_TCP_SERVER = tcp.Server


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` with one immediate ``send()`` when :func:`send_now` would qualify.

    The same as ``send_now`` followed by ``transport.write`` of what the kernel did not
    take, in one call: this runs once per frame written to every subscriber, so the
    second function call is worth saving.

    Args:
        transport: The connection's transport; None (the connection is gone) writes
            nothing. Any: it is only required to have ``write``.
        data: The bytes to send.
    """
    if (
        type(transport) is _TCP_SERVER
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    elif transport is None:
        return
    transport.write(data)


# --- Twisted: the log observer of twistd, chosen by a plugin's options ----------------------
#
# twistd builds its log observer from its own options (``--logger``, ``--logfile``) after
# the plugin's options are parsed and before the plugin's service starts. A plugin's
# ``usage.Options`` reaches twistd's options through ``parent`` (set by ``usage`` on
# sub-command options); setting ``--logger`` there before twistd's ``postOptions``
# resolves it makes twistd install the plugin's observer instead of its text one.


def set_twistd_logger(options: Any, factory: str) -> str | None:
    """Make twistd log through ``factory`` (a dotted name) unless ``--logger`` was given.

    Args:
        options: The plugin's ``usage.Options`` inside ``postOptions``.
        factory: Fully-qualified name of a callable returning an ``ILogObserver``.

    Returns:
        twistd's ``--logfile`` ("" when none), or None when ``options`` has no twistd
        parent or ``--logger`` was given on the command line (nothing changed).
    """
    parent = getattr(options, "parent", None)
    if parent is None or "logger" not in parent or parent["logger"] is not None:
        return None
    parent["logger"] = factory
    return str(parent.get("logfile") or "")


# --- Twisted: bytes an HTTP channel read past a request it handed over ----------------------
#
# A WebSocket upgrade (Autobahn's ``WebSocketResource``) takes the transport away from
# twisted.web's ``HTTPChannel`` while the channel is still inside its ``dataReceived``:
# whatever the same read carried after the request head stays in the channel and never
# reaches the WebSocket protocol. Relies on ``HTTPChannel._dataBuffer`` (a list of bytes:
# what arrived while a request was being handled, kept for the next request) and
# ``LineReceiver._buffer`` (bytes read and not yet passed on as lines or raw data).


def take_unparsed_bytes(channel: object) -> bytes:
    """What ``channel`` (an ``HTTPChannel``) read past its current request; cleared."""
    pending: list[bytes] = getattr(channel, "_dataBuffer", [])
    data = b"".join(pending) + getattr(channel, "_buffer", b"")
    if data:
        channel._dataBuffer = []  # type: ignore[attr-defined]
        channel._buffer = b""  # type: ignore[attr-defined]
    return data


# --- Twisted: the TLS options of an ``ssl:`` endpoint description ------------------------
#
# ``twisted.internet.endpoints.serverFromString`` turns ``ssl:PORT:privateKey=...`` into
# an ``SSL4ServerEndpoint`` holding the ``CertificateOptions`` it built from the files
# (``_parseSSL``: privateKey, certKey, extraCertChain, dhParameters, sslmethod) in
# ``_sslContextFactory``. A worker of ``--workers N`` listens on its own ``SO_REUSEPORT``
# socket instead of the endpoint's, and wraps its site in TLS with these same options, so
# an ``ssl:`` description means the same TLS with one process or with N.
#
# Client certificates (``http_server.tls.client_ca_pem``): the description has no
# argument for them, so the options are given a trust root afterwards, before their
# first ``getContext()``. ``CertificateOptions`` builds its OpenSSL context lazily from
# its ``verify``, ``requireCertificate`` and ``trustRoot`` attributes (the values its
# ``trustRoot=`` argument sets); once built, the context cannot be changed (pyOpenSSL
# refuses to mutate a context that made a connection).


def require_client_certificate(endpoint: Any, client_ca: Any) -> None:
    """Make an ``SSL4ServerEndpoint`` (not listening yet) verify client certificates.

    Every client must then present a certificate ``client_ca`` verifies, as with
    ``CertificateOptions(trustRoot=client_ca)``.

    Args:
        endpoint: An ``SSL4ServerEndpoint``, e.g. the ``endpoint`` of the service
            ``twisted.application.strports.service`` makes of an ``ssl:`` description.
        client_ca: An ``IOpenSSLTrustRoot`` (``ssl.trustRootFromCertificates``).

    Raises:
        ValueError: ``endpoint`` is no ``SSL4ServerEndpoint``.
    """
    from twisted.internet import endpoints

    if not isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        raise ValueError(f"{endpoint!r} is no ssl: endpoint")
    options = endpoint._sslContextFactory
    options.trustRoot = client_ca
    options.verify = True
    options.requireCertificate = True


def ssl_server_context(description: str, client_ca: Any = None) -> Any:
    """The TLS context factory Twisted's ``ssl:`` endpoint makes of ``description``.

    ``client_ca``: None, or an ``IOpenSSLTrustRoot`` every client's certificate must
    verify with (:func:`require_client_certificate`).

    Raises:
        ValueError: ``description`` is no ``ssl:`` description.
        OSError, OpenSSL.SSL.Error: a file cannot be read or holds no usable PEM data.
    """
    from twisted.internet import endpoints

    endpoint = endpoints.serverFromString(None, description)
    if not isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        raise ValueError(f"{description!r} is no ssl: endpoint description")
    if client_ca is not None:
        require_client_certificate(endpoint, client_ca)
    return endpoint._sslContextFactory


# --- Autobahn: connection options as class attributes -------------------------------------
#
# ``WebSocketProtocol._connectionMade`` copies every name in ``CONFIG_ATTRS`` from the
# factory onto each new connection (~40 instance attributes per idle connection) and
# passes ``pformat()`` of all of them to ``log.debug`` eagerly (~125 µs of CPU per
# connection with 29 options, spent even when debug logging is off). A per-factory
# subclass that already holds the options as class attributes and has an empty
# ``CONFIG_ATTRS`` gives every connection the same options with neither cost.
# ``CONFIG_ATTRS`` is read nowhere else in Autobahn.


def preset_protocol_options(factory: Any, base: type[WebSocketServerProtocol]) -> dict[str, Any]:
    """Set ``factory.protocol`` to a subclass of ``base`` carrying the factory's options.

    Call it after the factory's last ``setProtocolOptions``. The subclass keeps the base
    class's name; callables among the options (e.g. ``perMessageCompressionAccept``)
    stay plain functions, not methods.

    Args:
        factory: An Autobahn ``WebSocketServerFactory``. Any: Twisted types
            ``Factory.protocol`` as a callable returning its own protocol type, which a
            connection class declaring its concrete factory cannot match.
        base: The connection class.

    Returns:
        The options now held by the protocol class (for a one-off debug log line).
    """
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS}
    namespace: dict[str, Any] = {
        k: staticmethod(v) if callable(v) else v for k, v in options.items()
    }
    namespace["CONFIG_ATTRS"] = ()
    factory.protocol = type(base.__name__, (base,), namespace)
    return options


# --- txredisapi: command encoding and clock ------------------------------------------------
#
# ``RedisProtocol._build_command`` encodes every argument through several generic calls
# (~2 µs each; a history publish has 14 arguments). The subclass below encodes
# bytes/str/int arguments in one pass, byte for byte the same, and falls back to
# txredisapi for anything else. The PUB/SUB link writes encoded commands itself (its
# replies do not go through txredisapi's reply queue), so it calls ``_build_command``
# too. ``callLater`` is the class attribute txredisapi schedules its reply timeouts
# with; setting it on a connection puts those timeouts on the injected clock.


@functools.cache
def redis_protocol_base() -> type:
    """``txredisapi.RedisProtocol`` with fast command encoding (imported on first use).

    txredisapi is imported lazily because importing it installs the default reactor.
    """
    import txredisapi

    class FastEncoding(txredisapi.RedisProtocol):
        """RESP encoding of bytes/str/int arguments in one pass."""

        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                if isinstance(arg, bytes):
                    value = arg
                elif isinstance(arg, str):
                    value = arg.encode(self.charset or "utf-8", self.errors or "strict")
                elif isinstance(arg, int) and not isinstance(arg, bool):
                    value = b"%d" % arg
                else:
                    return bytes(super()._build_command(*args, **kwargs))
                parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
            return b"".join(parts)

    return FastEncoding


def encode_redis_command(proto: Any, *args: Any) -> bytes:
    """The RESP encoding of one command, as ``proto`` would send it.

    Args:
        proto: A connection built from :func:`redis_protocol_base` (Any: txredisapi is
            untyped).
        *args: The command and its arguments.
    """
    command: bytes = proto._build_command(*args)
    return command


def use_clock(proto: Any, call_later: Callable[..., Any]) -> None:
    """Make a txredisapi connection schedule its reply timeouts with ``call_later``."""
    proto.callLater = call_later


# --- aioquic: output of a QUIC stream not yet acknowledged -------------------------------
#
# ``QuicConnection.send_stream_data`` buffers without bound: the stream keeps every byte
# until the peer acknowledges it. The WebTransport sink pauses its client's writer while
# this backlog is above ``webtransport.write_buffer_size`` (the slow-client bound, as
# TCP's buffer is on WebSocket). Relies on ``QuicConnection._streams`` (id -> QuicStream),
# ``QuicStream.sender`` and ``QuicStreamSender._buffer`` (sent-or-pending bytes from the
# first unacknowledged offset).


def quic_stream_backlog(connection: Any, stream_id: int) -> int:
    """Bytes written to stream ``stream_id`` of ``connection`` and not yet acknowledged."""
    stream = connection._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


# --- aioquic: how long a Retry token is accepted -----------------------------------------
#
# ``QuicRetryTokenHandler.validate_token`` refuses a token older than
# ``aioquic.quic.retry.TOKEN_LIFETIME`` (30 s in aioquic 1.x) and takes the current time
# as an argument. rtserver accepts Retry tokens for a shorter time (clients return them
# at once, RFC 9000 8.1.4): it validates with the time moved forward by the difference.


def retry_validation_time(now: float, lifetime: float) -> float:
    """The ``now`` to give ``validate_token`` so tokens expire after ``lifetime`` seconds."""
    from aioquic.quic import retry

    return now + max(0.0, float(retry.TOKEN_LIFETIME) - lifetime)


# --- aioquic: stateless reset tokens derived from the connection id ---------------------
#
# aioquic draws the stateless reset token of every connection id a server issues at random
# (``os.urandom``), in ``QuicConnection.__init__`` (the first id, ``_host_cids[0]``, whose
# token goes in the transport parameters) and in ``_replenish_connection_ids`` (the ids
# sent in NEW_CONNECTION_ID frames). A process that does not hold a connection (a worker
# of ``--workers N`` restarted after a crash, a server restarted on the same port) can end
# it with a Stateless Reset (RFC 9000 10.3) only when the token is a function of the
# connection id and a secret it knows: the tokens are replaced by ``token(cid)`` right
# after aioquic makes them, before any is sent. Relies on ``_host_cids`` (a list of
# ``QuicConnectionId`` with ``cid`` and ``stateless_reset_token``) and on
# ``_replenish_connection_ids`` being where later ids are made.


@functools.cache
def _reset_token_connection() -> type[Any]:
    from aioquic.quic.connection import QuicConnection

    class ResetTokenConnection(QuicConnection):
        def __init__(self, token: Callable[[bytes], bytes], **kwargs: Any) -> None:
            self._rt_token = token
            super().__init__(**kwargs)
            self._rt_derive()

        def _replenish_connection_ids(self) -> None:
            super()._replenish_connection_ids()
            self._rt_derive()

        def _rt_derive(self) -> None:
            for connection_id in self._host_cids:
                connection_id.stateless_reset_token = self._rt_token(connection_id.cid)

    return ResetTokenConnection


def quic_connection_with_reset_tokens(token: Callable[[bytes], bytes], **kwargs: Any) -> Any:
    """A server ``QuicConnection(**kwargs)`` whose ids' reset tokens are ``token(cid)``."""
    return _reset_token_connection()(token, **kwargs)


# --- hpack: the static table and the Huffman decoder --------------------------------------
#
# The reactor GRPC server decodes header blocks with its own HPACK decoder
# (grpcapi/hpack_decoder.py: hpack's ``Decoder`` costs several times more per block). It
# takes RFC 7541's static table (Appendix A) and Huffman decoding (5.2, with hpack's
# padding and EOS checks) from hpack's modules ``hpack.table`` (``HeaderTable.STATIC_TABLE``)
# and ``hpack.huffman_table`` (``decode_huffman``), which hpack does not document.


def hpack_static_table() -> tuple[tuple[bytes, bytes], ...]:
    """RFC 7541's static table, index 1 first, as (name, value) octets."""
    from hpack.table import HeaderTable

    return tuple(HeaderTable.STATIC_TABLE)


def hpack_decode_huffman(octets: bytes) -> bytes:
    """Huffman-decoded ``octets``; ``hpack.HPACKDecodingError`` on bad padding or EOS."""
    from hpack.huffman_table import decode_huffman

    decoded: bytes = decode_huffman(octets)
    return decoded
