"""The GRPC proxy adapter: Centrifugo's ``CentrifugoProxy`` service over grpcio.

One channel per ``grpc://host:port`` endpoint (HTTP/2 keep-alive by grpcio): plaintext,
or TLS with ``grpc.tls`` (grpcio's SSL credentials: ``server_ca_pem`` or the system's
roots, ``cert_pem``/``key_pem`` for mutual TLS, ``server_name`` as the name checked;
``insecure_skip_verify``, which grpcio cannot do, through :class:`TLSRelay`),
gzip-compressed requests with ``grpc.compression``. Calls use grpcio's future API: the
answer arrives on a grpcio thread and is handed to the reactor with ``callFromThread``;
cancelling the Deferred (the core's timeout, or the client leaving) cancels the RPC.
Messages are ``proxy.proto`` (Centrifugo's field numbers). ``http_headers``/
``emulated_headers`` and a ``uni_grpc`` client's metadata listed in ``grpc_metadata``
become metadata as in Centrifugo (lower-case keys), then
``grpc.credentials_key``/``credentials_value`` (Centrifugo's per-RPC credentials, sent
with or without TLS as Centrifugo does; they replace a forwarded header of that name).
``grpc.static_metadata`` comes first: a forwarded header or the credentials replace a key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from rtserver.config import ClientTLSConfig, ProxyConfig, load_pem
from rtserver.core.proxy import (
    ConnectProxyRequest,
    ConnectProxyResult,
    IProxy,
    ProxyFailure,
    ProxyRequest,
    PublishProxyRequest,
    PublishProxyResult,
    RefreshProxyRequest,
    RefreshProxyResult,
    RPCProxyRequest,
    RPCProxyResult,
    SubRefreshProxyRequest,
    SubRefreshProxyResult,
    SubscribeProxyRequest,
    SubscribeProxyResult,
)
from rtserver.core.types import Overrides, SubscriptionGrant
from rtserver.protocol.codes import Disconnect, Error
from rtserver.proxy import proxy_pb2 as pb
from rtserver.proxy.relay import TLSRelay

__all__ = ["SERVICE", "GRPCProxy", "channel_credentials"]

SERVICE = "/centrifugal.centrifugo.proxy.CentrifugoProxy/"
_T = TypeVar("_T")


def metadata(config: ProxyConfig, request: ProxyRequest) -> tuple[tuple[str, str | bytes], ...]:
    """The metadata of a call, in Centrifugo's order: a later source replaces a key.

    ``grpc.static_metadata``, emulated and transport headers allowed by the config, a
    ``uni_grpc`` client's metadata listed in ``grpc_metadata``, then the credentials.
    """
    out: dict[str, str | bytes] = {
        name.lower(): value for name, value in config.grpc.static_metadata.items()
    }
    emulated = {h.lower() for h in config.emulated_headers}
    for name, value in request.emulated_headers.items():
        if name.lower() in emulated:
            out[name.lower()] = value
    allowed = {h.lower() for h in config.http_headers}
    for name, value in request.headers.items():
        if name.lower() in allowed:
            out[name.lower()] = value
    if request.grpc_metadata:
        listed = {k.lower() for k in config.grpc_metadata}
        for name, item in request.grpc_metadata.items():
            if name in listed:
                out[name] = item
    if config.grpc.credentials_key:
        out[config.grpc.credentials_key.lower()] = config.grpc.credentials_value
    # grpcio wants bytes for binary (``-bin``) keys; grpc-go sends a string's bytes.
    return tuple(
        (k, v.encode() if isinstance(v, str) and k.endswith("-bin") else v) for k, v in out.items()
    )


def _tls_pem(tls: ClientTLSConfig, key: str) -> tuple[bytes | None, bytes | None, bytes | None]:
    """``(server CA, client certificate, its key)`` PEM bytes of ``tls`` (None: unset)."""
    roots = load_pem(tls.server_ca_pem, f"{key}.server_ca_pem") if tls.server_ca_pem else None
    chain = private = None
    if tls.cert_pem and tls.key_pem:
        chain = load_pem(tls.cert_pem, f"{key}.cert_pem")
        private = load_pem(tls.key_pem, f"{key}.key_pem")
    return roots, chain, private


def channel_credentials(tls: ClientTLSConfig, key: str) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """The grpcio channel credentials and options of an enabled, verifying ``grpc.tls``.

    Args:
        tls: The proxy's TLS object (``insecure_skip_verify`` goes through
            :class:`~rtserver.proxy.relay.TLSRelay` instead: grpcio always verifies).
        key: Its configuration key, for error messages.

    Returns:
        ``(credentials, options)``: the options override the name checked against the
        certificate when ``server_name`` is set.

    Raises:
        ConfigError: a PEM value cannot be loaded.
    """
    import grpc

    roots, chain, private = _tls_pem(tls, key)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=private, certificate_chain=chain
    )
    options = (("grpc.ssl_target_name_override", tls.server_name),) if tls.server_name else ()
    return credentials, options


# --- values <-> messages ---------------------------------------------------------------------


def _fill_common(msg: Any, request: ProxyRequest) -> None:
    msg.client = request.client
    msg.transport = request.transport
    msg.protocol = request.protocol
    msg.encoding = request.encoding


def _fill_data(msg: Any, data: bytes | None, binary: bool) -> None:
    if data is None:
        return
    if binary:
        msg.b64data = base64.b64encode(data).decode("ascii")
    else:
        msg.data = data


def _raw(msg: Any, name: str) -> bytes | None:
    """``name`` or ``b64<name>`` of a result message; None when empty."""
    encoded: str = getattr(msg, "b64" + name)
    if encoded:
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProxyFailure(f"b64{name} is not base64") from None
    value: bytes = getattr(msg, name)
    return value or None


def _overrides(msg: Any) -> Overrides:
    if not msg.HasField("override"):
        return Overrides()
    override = msg.override

    def flag(name: str) -> bool | None:
        return bool(getattr(override, name).value) if override.HasField(name) else None

    return Overrides(
        presence=flag("presence"),
        join_leave=flag("join_leave"),
        force_push_join_leave=flag("force_push_join_leave"),
        force_recovery=flag("force_recovery"),
        force_positioning=flag("force_positioning"),
    )


def _outcome(response: Any) -> Any:
    """The response's ``result`` message (None if absent); raises its error/disconnect."""
    if response.HasField("disconnect"):
        code = response.disconnect.code
        if not 4000 <= code <= 4999:
            raise ProxyFailure(f"disconnect code {code} outside 4000-4999")
        raise Disconnect(code, response.disconnect.reason)
    if response.HasField("error"):
        error = response.error
        if not error.code:
            raise ProxyFailure("error code 0")
        raise Error(error.code, error.message, error.temporary)
    return response.result if response.HasField("result") else None


def _connect_result(r: Any) -> ConnectProxyResult:
    subs = {
        channel: SubscriptionGrant(
            info=_raw(o, "info"), data=_raw(o, "data"), overrides=_overrides(o)
        )
        for channel, o in r.subs.items()
    }
    return ConnectProxyResult(
        user=r.user,
        expire_at=r.expire_at,
        info=_raw(r, "info"),
        data=_raw(r, "data"),
        channels=tuple(r.channels),
        subs=subs,
        meta=r.meta or None,
    )


# --- the adapter -------------------------------------------------------------------------------


@implementer(IProxy)
class GRPCProxy:
    """A ``grpc://host:port`` backend answering proxy events."""

    def __init__(self, name: str, config: ProxyConfig, *, reactor: Any) -> None:
        """Open a channel to ``config.endpoint`` (connected lazily by grpcio).

        Args:
            name: The proxy's name in log lines.
            config: Endpoint and metadata rules (the timeout is applied by the core).
            reactor: The server's reactor (answers are handed to it from grpcio threads).
        """
        import grpc

        self.name = name
        self._config = config
        self._reactor = reactor
        self._binary = config.binary_encoding
        target = config.endpoint.removeprefix("grpc://")
        compression = grpc.Compression.Gzip if config.grpc.compression else None
        tls = config.grpc.tls
        self._relay: TLSRelay | None = None
        if tls.enabled and tls.insecure_skip_verify:
            self._relay = TLSRelay(name, target, reactor=reactor, tls=tls,
                                   key=f"proxy {name}: grpc.tls")
            self._channel = grpc.insecure_channel(
                "unix:" + self._relay.path, options=(("grpc.default_authority", target),),
                compression=compression,
            )
        elif tls.enabled:
            credentials, options = channel_credentials(tls, f"proxy {name}: grpc.tls")
            self._channel = grpc.secure_channel(
                target, credentials, options=options, compression=compression
            )
        else:
            self._channel = grpc.insecure_channel(target, compression=compression)
        self._methods: dict[str, Any] = {}

    def close(self) -> Deferred[None]:
        """Close the channel, then the TLS relay if any (at server shutdown)."""
        self._channel.close()
        if self._relay is not None:
            return self._relay.close()
        return succeed(None)

    def _call(
        self, method: str, msg: Any, response_type: Any, request: ProxyRequest,
        convert: Callable[[Any], _T],
    ) -> Deferred[_T | None]:
        stub = self._methods.get(method)
        if stub is None:
            stub = self._methods[method] = self._channel.unary_unary(
                SERVICE + method,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
        future = stub.future(msg, metadata=metadata(self._config, request))
        def cancel(_: Deferred[_T | None]) -> None:
            future.cancel()

        d: Deferred[_T | None] = Deferred(cancel)

        def fire(result: Any) -> None:
            if d.called:
                return
            try:
                value = _outcome(result)
                d.callback(None if value is None else convert(value))
            except Exception as e:  # each becomes the call's failure
                d.errback(e)

        def failed(reason: str) -> None:
            if not d.called:
                d.errback(ProxyFailure(reason))

        def done(f: Any) -> None:  # on a grpcio thread
            if f.cancelled():
                return
            error = f.exception()
            if error is not None:
                code = getattr(error, "code", lambda: None)()
                detail = getattr(error, "details", lambda: "")()
                reason = f"GRPC {getattr(code, 'name', code)}: {detail}"
                self._reactor.callFromThread(failed, reason)
            else:
                self._reactor.callFromThread(fire, f.result())

        future.add_done_callback(done)
        return d

    def connect(self, request: ConnectProxyRequest) -> Deferred[ConnectProxyResult | None]:
        """Call ``Connect``."""
        msg = pb.ConnectRequest(name=request.name, version=request.version,
                                channels=list(request.channels))
        _fill_common(msg, request)
        _fill_data(msg, request.data, self._binary)
        return self._call("Connect", msg, pb.ConnectResponse, request, _connect_result)

    def refresh(self, request: RefreshProxyRequest) -> Deferred[RefreshProxyResult | None]:
        """Call ``Refresh``."""
        msg = pb.RefreshRequest(user=request.user, meta=request.meta or b"")
        _fill_common(msg, request)
        return self._call(
            "Refresh", msg, pb.RefreshResponse, request,
            lambda r: RefreshProxyResult(
                expired=r.expired, expire_at=r.expire_at, info=_raw(r, "info"),
                meta=r.meta or None,
            ),
        )

    def subscribe(self, request: SubscribeProxyRequest) -> Deferred[SubscribeProxyResult | None]:
        """Call ``Subscribe``."""
        msg = pb.SubscribeRequest(user=request.user, channel=request.channel,
                                  token=request.token, meta=request.meta or b"")
        _fill_common(msg, request)
        _fill_data(msg, request.data, self._binary)
        return self._call(
            "Subscribe", msg, pb.SubscribeResponse, request,
            lambda r: SubscribeProxyResult(
                info=_raw(r, "info"), data=_raw(r, "data"), override=_overrides(r),
                expire_at=r.expire_at,
            ),
        )

    def publish(self, request: PublishProxyRequest) -> Deferred[PublishProxyResult | None]:
        """Call ``Publish``."""
        msg = pb.PublishRequest(user=request.user, channel=request.channel,
                                meta=request.meta or b"")
        _fill_common(msg, request)
        _fill_data(msg, request.data, self._binary)
        return self._call(
            "Publish", msg, pb.PublishResponse, request,
            lambda r: PublishProxyResult(
                data=_raw(r, "data"), skip_history=r.skip_history, tags=dict(r.tags),
                idempotency_key=r.idempotency_key, delta=r.delta, version=r.version,
                version_epoch=r.version_epoch,
            ),
        )

    def sub_refresh(
        self, request: SubRefreshProxyRequest
    ) -> Deferred[SubRefreshProxyResult | None]:
        """Call ``SubRefresh``."""
        msg = pb.SubRefreshRequest(user=request.user, channel=request.channel,
                                   meta=request.meta or b"")
        _fill_common(msg, request)
        return self._call(
            "SubRefresh", msg, pb.SubRefreshResponse, request,
            lambda r: SubRefreshProxyResult(
                expired=r.expired, expire_at=r.expire_at, info=_raw(r, "info")
            ),
        )

    def rpc(self, request: RPCProxyRequest) -> Deferred[RPCProxyResult | None]:
        """Call ``RPC``."""
        msg = pb.RPCRequest(user=request.user, method=request.method, meta=request.meta or b"")
        _fill_common(msg, request)
        _fill_data(msg, request.data, self._binary)
        return self._call(
            "RPC", msg, pb.RPCResponse, request, lambda r: RPCProxyResult(data=_raw(r, "data"))
        )
