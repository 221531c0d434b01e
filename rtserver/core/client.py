"""One client connection: command processing, subscriptions, timers.

A transport creates a :class:`Client` with its :class:`~rtserver.core.ports.ISink` and
feeds it raw frames with :meth:`Client.receive`; everything else (decoding, ordering,
permissions, replies, pings, expiry) happens here, identically for every transport.

Commands of a connection are processed strictly in order: a command that waits on the
node holds back the ones after it. Every timer goes through the injected clock and
every close path (:meth:`Client.close`, :meth:`Client.transport_lost`) cancels them all.

The client talks only to its node's :class:`~rtserver.core.ports.ClientNode` facade,
never to an engine. The decisions that need no state of the connection live in pure
modules: :mod:`~rtserver.core.connecting` (server-side channels, unidirectional
errors), :mod:`~rtserver.core.tokens` (token outcomes, ``expires``/``ttl``),
:mod:`~rtserver.core.subscription` (how a subscription is configured) and
:mod:`~rtserver.core.recovery` (the position and recovery part of a subscribe result).

The backend proxies (docs/proxies.rst) are asked where a comment says "proxy hook":
connect without a token, refresh at expiry, subscribe, publish, sub_refresh at expiry,
rpc. The client only sees the :class:`~rtserver.core.proxy.IProxy` port.
"""

from __future__ import annotations

import enum
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeVar

import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from rtserver.config import ChannelOptions
from rtserver.core.connecting import (
    anonymous_allowed,
    connect_result,
    header_user,
    server_side_channels,
    uni_disconnect,
)
from rtserver.core.permissions import (
    may_publish,
    may_read_history,
    may_read_presence,
    may_subscribe,
)
from rtserver.core.ports import ClientNode, ISink
from rtserver.core.proxy import (
    ConnectProxyRequest,
    ProxyCommon,
    ProxyEntry,
    ProxyFailure,
    ProxyResult,
    PublishProxyRequest,
    PublishProxyResult,
    RefreshProxyRequest,
    RefreshProxyResult,
    RPCProxyRequest,
    SubRefreshProxyRequest,
    SubRefreshProxyResult,
    SubscribeProxyRequest,
    SubscribeProxyResult,
    check_json,
    rpc_options,
)
from rtserver.core.recovery import positioned_result, recovery_filter, recovery_result
from rtserver.core.subscription import (
    Subscription,
    SubState,
    client_subscription,
    negotiate,
    server_subscription,
)
from rtserver.core.tokens import (
    check_unexpired,
    expiry_fields,
    verify_connection_token,
    verify_subscription_token,
)
from rtserver.core.types import (
    ConnectionToken,
    DisconnectControl,
    HistoryFilter,
    SubscribeControl,
    SubscriptionToken,
)
from rtserver.core.writer import (
    DELTA_SHAPES,
    ClientWriter,
    Payload,
    SharedPush,
    json_publication,
    wire_shape,
)
from rtserver.logs import Logger, log_failure
from rtserver.protocol import codec, fossil, protobuf
from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.encoding import JSON, PROTOBUF, Codec, codec_for
from rtserver.protocol.frames import (
    ClientInfo,
    Command,
    ConnectRequest,
    HistoryRequest,
    ProtocolError,
    Publication,
    PublishRequest,
    RefreshRequest,
    RPCRequest,
    StreamPosition,
    SubRefreshRequest,
    SubscribeRequest,
    channel_of,
)

__all__ = ["Client"]

# Any: command results are JSON objects of mixed value types (the codec encodes them).
Result = dict[str, Any]

_log = Logger()
_R = TypeVar("_R", bound="ProxyResult | None")
#: How long a connection or subscription is extended when its refresh proxy fails.
_REFRESH_RETRY = 60
#: ``SubState.SUBSCRIBING`` once: an enum member read through its class costs a
#: ``__getattr__`` call on Python 3.11, and the fan-out reads it once per delivery.
_SUBSCRIBING: Final = SubState.SUBSCRIBING
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_NO_METADATA: Mapping[str, str | bytes] = MappingProxyType({})
#: The server ping of each encoding, one shared payload each.
_PING_PAYLOADS = {
    JSON: Payload(codec.PING, shared=True),
    PROTOBUF: Payload(protobuf.PING, shared=True),
}


class State(enum.Enum):
    """Connection lifecycle."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class Client:
    """A connection speaking the client protocol over some transport."""

    __slots__ = (
        "_busy",
        "_clock",
        "_codec",
        "_config",
        "_connect_failed",
        "_emulated_headers",
        "_expire_timer",
        "_header_user",
        "_node",
        "_pending",
        "_ping_payload",
        "_ping_timer",
        "_pong_timer",
        "_proxy_calls",
        "_shape",
        "_sink",
        "_stale_timer",
        "_state",
        "_subs",
        "_uni",
        "_writer",
        "conn_info",
        "encoding",
        "expire_at",
        "grpc_metadata",
        "headers",
        "id",
        "meta",
        "name",
        "session",
        "user",
        "version",
    )

    def __init__(
        self,
        node: ClientNode,
        sink: ISink,
        *,
        headers: dict[str, str] | None = None,
        grpc_metadata: Mapping[str, str | bytes] | None = None,
        encoding: str = JSON,
    ) -> None:
        self._node = node
        self._sink = sink
        self._clock = node.clock
        self._config = node.config.client
        self.id = str(uuid.uuid4())
        self.session = str(uuid.uuid4()) if sink.emulation or sink.unidirectional else ""
        self.headers = headers or {}
        #: The metadata of a ``uni_grpc`` client's call (lower-case keys), for proxies.
        self.grpc_metadata: Mapping[str, str | bytes] = (
            MappingProxyType({k.lower(): v for k, v in grpc_metadata.items()})
            if grpc_metadata
            else _NO_METADATA
        )
        self.user = ""
        self.conn_info: bytes | None = None
        self.meta: bytes | None = None  # connection meta (raw JSON): token or connect proxy
        self.expire_at = 0
        #: The user came from ``client.user_id_http_header``: no personal channel.
        self._header_user = False
        self._emulated_headers: Mapping[str, str] = _NO_HEADERS
        self._proxy_calls: set[Deferred[Any]] | None = None  # made by the first proxy call
        self.name = ""
        self.version = ""
        self._state = State.CONNECTING
        self._connect_failed = False
        self._uni = bool(sink.unidirectional)
        #: The client protocol encoding (``json`` or ``protobuf``), fixed at the handshake.
        self.encoding = encoding
        self._codec: Codec = codec_for(encoding)
        self._shape = wire_shape(encoding, self._uni)
        self._ping_payload = _PING_PAYLOADS[encoding]
        self._subs: dict[str, Subscription] = {}
        self._writer = ClientWriter(sink, node.scheduler, self._config.queue_max_size, self._slow)
        self._pending: deque[Command] = deque()
        self._busy = False
        self._ping_timer: IDelayedCall | None = None
        self._pong_timer: IDelayedCall | None = None
        self._expire_timer: IDelayedCall | None = None
        self._stale_timer: IDelayedCall | None = None
        if self._config.stale_close_delay > 0:
            self._stale_timer = self._clock.callLater(
                self._config.stale_close_delay, self.close, Disconnect.STALE
            )

    # --- properties ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether connect succeeded and the connection is open."""
        return self._state is State.CONNECTED

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._state is State.CLOSED

    @property
    def emulation(self) -> bool:
        """Whether commands reach this client through ``/emulation``."""
        return self._sink.emulation

    @property
    def transport_name(self) -> str:
        """The transport this client uses (``websocket``, ``sse``, ...)."""
        return self._sink.transport_name

    @property
    def queued_bytes(self) -> int:
        """Output bytes waiting for the transport (held while it is full)."""
        return self._writer.queued_bytes

    def channels(self) -> list[str]:
        """Channels this client is subscribed to."""
        return list(self._subs)

    def info(self, channel: str = "") -> ClientInfo:
        """This client's ClientInfo, with ``chan_info`` of ``channel`` if subscribed."""
        sub = self._subs.get(channel)
        return ClientInfo(
            user=self.user,
            client=self.id,
            conn_info=self.conn_info,
            chan_info=sub.chan_info if sub is not None else None,
        )

    # --- input -----------------------------------------------------------------------

    def receive(self, data: bytes | str) -> None:
        """Process one transport frame of commands in the client's encoding.

        Unidirectional clients send no commands (see :meth:`start_unidirectional`).
        """
        if self._state is State.CLOSED:
            return
        if self._uni:
            self.close(Disconnect.BAD_REQUEST)
            return
        try:
            commands = self._codec.decode_commands(data)
        except ProtocolError as e:
            _log.debug("client {client}: bad frame: {detail}", client=self.id, detail=e.detail)
            self.close(Disconnect.BAD_REQUEST)
            return
        self._pending.extend(commands)
        self._drain()

    def _drain(self) -> None:
        while self._pending and not self._busy and self._state is not State.CLOSED:
            cmd = self._pending.popleft()
            d = self._dispatch(cmd)
            if d is not None and not d.called:
                self._busy = True
                d.addBoth(self._resume)
                return

    def _resume(self, _: object) -> None:
        self._busy = False
        self._drain()

    def _dispatch(self, cmd: Command) -> Deferred[None] | None:
        method = cmd.method
        if method is None:
            if self._state is not State.CONNECTED:
                self.close(Disconnect.BAD_REQUEST)
            else:
                self._pong()
            return None
        if method == "connect":
            if self._state is State.CONNECTED or self._connect_failed:
                self.close(Disconnect.BAD_REQUEST)
                return None
            return self._run(cmd, self._connect(cmd))
        if self._state is not State.CONNECTED:
            self.close(Disconnect.BAD_REQUEST)
            return None
        if method == "send":
            # No message handler is configured on this server.
            self.close(Disconnect.NOT_AVAILABLE)
            return None
        if not cmd.id:
            self.close(Disconnect.BAD_REQUEST)
            return None
        handler = self._HANDLERS.get(method)
        if handler is None:
            self._reply_error(cmd, Error.NOT_AVAILABLE)
            return None
        return self._run(cmd, handler(self, cmd))

    # Any: a handler awaits Deferreds of several result types (Deferred.fromCoroutine's own
    # signature uses Any the same way).
    def _run(self, cmd: Command, coro: Coroutine[Deferred[Any], Any, None]) -> Deferred[None]:
        start = self._clock.seconds()
        d = Deferred.fromCoroutine(coro)
        d.addErrback(self._command_failed, cmd)
        d.addCallback(self._command_done, cmd.method or "", start)
        return d

    def _command_done(self, _: None, method: str, start: float) -> None:
        self._node.stats.commands.observe(method, self._clock.seconds() - start)

    def _command_failed(self, failure: Failure, cmd: Command) -> None:
        exc = failure.value
        if isinstance(exc, Disconnect):
            self.close(exc)
            return
        if not isinstance(exc, Error):
            log_failure(
                _log, failure, "client {client}: {method} failed", client=self.id, method=cmd.method
            )
            exc = Error.INTERNAL
        if cmd.method == "connect":
            # a failed connect leaves no server-side subscription behind; the
            # connection may only be closed now
            self._connect_failed = True
            self._drop_subscriptions()
        self._reply_error(cmd, exc)

    # --- output ----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._writer.enqueue(Payload(data))

    def _reply(self, cmd: Command, result: Result) -> None:
        if self._state is State.CLOSED:
            return
        assert cmd.method is not None
        self._send(self._codec.encode_reply(cmd.id, cmd.method, result))

    def _reply_error(self, cmd: Command, error: Error) -> None:
        stats = self._node.stats
        stats.count(stats.reply_errors, (cmd.method or "", error.code))
        if self._state is State.CLOSED:
            return
        if cmd.id:
            self._send(self._codec.encode_error(cmd.id, error))

    def _push(self, channel: str, kind: str, body: Result) -> None:
        self._send(self._codec.encode_push(channel, kind, body, uni=self._uni))

    def deliver_publication(self, sub: Subscription, pub: Publication, push: SharedPush) -> None:
        """Fan-out entry point: queue a publication for this subscriber."""
        if sub.state is _SUBSCRIBING:
            sub.buffer.append((pub, push))
            return
        if sub.positioned and pub.offset:
            if pub.epoch and sub.epoch and pub.epoch != sub.epoch:
                self.insufficient_state(sub)
                return
            if pub.offset <= sub.offset:
                return
            if pub.offset != sub.offset + 1:
                self.insufficient_state(sub)
                return
            sub.offset = pub.offset
        flt = sub.tags_filter
        if flt is not None and not push.matches(flt):
            return  # filtered out (its offset still advanced the position above)
        if sub.delta:
            self._enqueue_delta(sub, pub, push)
            return
        self._enqueue_shared(push)

    def _enqueue_delta(self, sub: Subscription, pub: Publication, push: SharedPush) -> None:
        """A delta subscriber's publication: a delta, or the full payload.

        The delta when the subscriber's base is the channel's previous publication, else
        the full payload, which becomes its base.
        """
        full_shape, delta_shape = DELTA_SHAPES[self._shape]
        payload = None
        prev = push.prev
        if prev is not None and prev.offset and sub.delta_base == prev.offset:
            payload = push.payload(delta_shape)
        if payload is None:
            payload = push.payload(full_shape)
            if payload is None:
                self.close(Disconnect.INAPPROPRIATE_PROTOCOL)
                return
        sub.delta_base = pub.offset
        self._writer.enqueue(payload)

    def deliver_push(self, sub: Subscription, push: SharedPush) -> None:
        """Fan-out entry point for join/leave pushes."""
        if sub.state is _SUBSCRIBING:
            sub.buffer.append((None, push))
            return
        self._enqueue_shared(push)

    def _enqueue_shared(self, push: SharedPush) -> None:
        payload = push.payload(self._shape)
        if payload is None:
            # Protobuf bytes that are not JSON cannot reach a JSON client (Centrifugo's
            # rule, docs/client-protocol.rst "Protobuf encoding").
            self.close(Disconnect.INAPPROPRIATE_PROTOCOL)
            return
        self._writer.enqueue(payload)

    def _wire_publication(self, pub: Publication, as_string: bool = False) -> Result:
        """``pub`` for a reply; raises 3506 when a JSON client cannot receive its data.

        ``as_string``: a JSON delta subscriber's recovered publication, whose ``data`` is
        the JSON text as a JSON string (see
        docs/client-protocol.rst, "Delta compression and tag filters").
        """
        if self.encoding == PROTOBUF:
            return pub.to_wire()
        body = json_publication(pub)
        if body is None:
            raise Disconnect.INAPPROPRIATE_PROTOCOL
        if as_string:
            data = protobuf.json_payload(pub.data)
            text = None if data is None else fossil.json_data(data)
            if text is None:
                raise Disconnect.INAPPROPRIATE_PROTOCOL
            body["data"] = orjson.Fragment(text)
        return body

    def pause_writing(self) -> None:
        """The transport's buffer is full."""
        self._writer.pause()

    def resume_writing(self) -> None:
        """The transport's buffer drained."""
        self._writer.resume()

    def _slow(self) -> None:
        _log.info("client {client} disconnected: output queue full", client=self.id)
        self.close(Disconnect.SLOW)

    # --- lifecycle -------------------------------------------------------------------

    def close(self, disconnect: Disconnect | None = None) -> None:
        """End the connection; idempotent. Queued output is flushed first."""
        if self._end(flush=True):
            if disconnect is not None:
                self._node.stats.count(self._node.stats.disconnects, disconnect.code)
            self._sink.close(disconnect)

    def transport_lost(self) -> None:
        """The transport went away; nothing more can be written."""
        self._end(flush=False)

    def _end(self, flush: bool) -> bool:
        """Close once: timers, subscriptions and the node's registration go; False if done."""
        if self._state is State.CLOSED:
            return False
        self._state = State.CLOSED
        self._cleanup()
        self._writer.close(flush=flush)
        return True

    def _cleanup(self) -> None:
        for timer in (self._stale_timer, self._ping_timer, self._pong_timer, self._expire_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._stale_timer = self._ping_timer = self._pong_timer = self._expire_timer = None
        if self._proxy_calls:
            for call in list(self._proxy_calls):
                call.cancel()  # a backend answering after the client left is not waited for
        self._pending.clear()
        self._drop_subscriptions()
        self._node.remove_client(self)

    def _drop_subscriptions(self) -> None:
        for channel in list(self._subs):
            self._remove_subscription(channel)

    # --- timers ----------------------------------------------------------------------

    def _start_pings(self) -> None:
        interval = self._config.ping_interval
        if interval > 0:
            self._ping_timer = self._clock.callLater(interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._state is not State.CONNECTED:
            return
        self._writer.enqueue(self._ping_payload)
        if self._sink.pong and self._config.pong_timeout > 0 and self._pong_timer is None:
            self._pong_timer = self._clock.callLater(
                self._config.pong_timeout, self.close, Disconnect.NO_PONG
            )
        self._ping_timer = self._clock.callLater(self._config.ping_interval, self._ping)

    def _pong(self) -> None:
        if self._pong_timer is not None:
            if self._pong_timer.active():
                self._pong_timer.cancel()
            self._pong_timer = None

    def _schedule_expiry(self) -> None:
        if self._expire_timer is not None and self._expire_timer.active():
            self._expire_timer.cancel()
        self._expire_timer = None
        if not self.expire_at:
            return
        delay = max(0.0, self.expire_at - self._clock.seconds())
        if self._node.proxies.refresh is None:
            delay += self._config.expired_close_delay
        self._expire_timer = self._clock.callLater(delay, self._check_expired)

    def _check_expired(self) -> None:
        self._expire_timer = None
        refresh = self._node.proxies.refresh
        if refresh is not None and self._state is State.CONNECTED:
            # proxy hook (refresh): the server refreshes the connection at expiry
            d = Deferred.fromCoroutine(self._proxy_refresh(refresh))
            d.addErrback(self._background_failed, "refresh")
            return
        if self.expire_at and self._clock.seconds() >= self.expire_at:
            self.close(Disconnect.EXPIRED)
        else:
            self._schedule_expiry()

    def _schedule_sub_expiry(self, sub: Subscription) -> None:
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None
        if not sub.expire_at:
            return
        delay = max(0.0, sub.expire_at - self._clock.seconds())
        if self._sub_refresh_proxy(sub.opts) is None:
            delay += self._config.expired_sub_close_delay
        sub.timer = self._clock.callLater(delay, self._check_sub_expired, sub)

    def _check_sub_expired(self, sub: Subscription) -> None:
        sub.timer = None
        if self._subs.get(sub.channel) is not sub:
            return
        entry = self._sub_refresh_proxy(sub.opts)
        if entry is not None and self._state is State.CONNECTED:
            # proxy hook (sub_refresh): the server refreshes the subscription at expiry
            d = Deferred.fromCoroutine(self._proxy_sub_refresh(entry, sub))
            d.addErrback(self._background_failed, "sub_refresh")
            return
        if sub.expire_at and self._clock.seconds() >= sub.expire_at:
            if sub.server_side:
                self.close(Disconnect.SUB_EXPIRED)
            else:
                self.unsubscribe(sub.channel, Unsubscribe.EXPIRED)
        else:
            self._schedule_sub_expiry(sub)

    def _expiry(self, expire_at: int) -> dict[str, bool | int]:
        return expiry_fields(expire_at, self._clock.seconds())

    # --- connect ---------------------------------------------------------------------

    async def _connect(self, cmd: Command) -> None:
        req = ConnectRequest.parse(cmd.params)
        result = await self._accept(req)
        self._reply(cmd, result)
        self._go_live()

    async def _accept(self, req: ConnectRequest) -> Result:
        """Authenticate and establish server-side subscriptions; returns the result.

        The caller writes the result (reply or push) and then calls :meth:`_go_live`.
        """
        node = self._node
        config = self._config
        self.name, self.version = req.name, req.version
        self._emulated_headers = req.headers
        connect_proxy = node.proxies.connect
        connect_data: bytes | None = None
        if not req.token and connect_proxy is not None:
            # proxy hook (connect): the backend authenticates a connect without a token
            token, connect_data = await self._proxy_connect(connect_proxy, req)
        else:
            token = await self._authenticate(req)
            if self.closed:  # closed while the verifier fetched keys (JWKS)
                raise Disconnect.INVALID_TOKEN
            if token.meta is not None:
                self.meta = orjson.dumps(token.meta)
        self.user = token.user
        self.conn_info = token.info
        now = self._clock.seconds()
        check_unexpired(token.expire_at, now)
        self.expire_at = token.expire_at
        limit = config.user_connection_limit
        if limit and self.user and node.user_connections(self.user) >= limit:
            raise Disconnect.CONNECTION_LIMIT

        subs_result: dict[str, Result] = {}
        # As Centrifugo: a user from the header gets no personal channel (nor single connection)
        personal_user = "" if self._header_user else self.user
        for channel, grant, opts in server_side_channels(
            token, personal_user, config, node.resolver
        ):
            sub = server_subscription(
                channel,
                opts,
                info=grant.info if grant is not None else None,
                overrides=grant.overrides if grant is not None else None,
            )
            sub_result = await self._establish(sub, req.subs.get(channel), reject_unrecovered=False)
            if grant is not None and grant.data is not None:
                sub_result["data"] = orjson.Fragment(grant.data)
            subs_result[channel] = sub_result
        if self._state is State.CLOSED:
            return {}

        result = connect_result(
            config,
            client_id=self.id,
            version=node.version,
            # with a refresh proxy the server refreshes: no expires/ttl for the client
            expire_at=self.expire_at if node.proxies.refresh is None else 0,
            now=now,
            subs=subs_result,
            pong=self._sink.pong,
            session=self.session,
            node=node.uid if self._sink.emulation else "",
        )
        if connect_data is not None:
            result["data"] = orjson.Fragment(connect_data)
        self._state = State.CONNECTED
        if self._stale_timer is not None and self._stale_timer.active():
            self._stale_timer.cancel()
        self._stale_timer = None
        node.add_client(self)
        return result

    def start_unidirectional(self, data: bytes | str | None) -> None:
        """Connect a unidirectional client from its bare ``ConnectRequest`` JSON.

        The result goes out as a ``{"connect":...}`` push; channels in the request's
        ``subs`` are subscribed like client subscriptions, unauthorized ones skipped.
        """
        if self._state is not State.CONNECTING or self._busy:
            self.close(Disconnect.BAD_REQUEST)
            return
        try:
            params = orjson.loads(data) if data and data.strip() else None
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise ProtocolError("connect request must be an object")
            req = ConnectRequest.parse(params)
        except (orjson.JSONDecodeError, ProtocolError):
            self.close(Disconnect.BAD_REQUEST)
            return
        self._busy = True
        d = Deferred.fromCoroutine(self._connect_unidirectional(req))
        d.addErrback(self._unidirectional_failed)

    async def _connect_unidirectional(self, req: ConnectRequest) -> None:
        result = await self._accept(req)
        if self._state is not State.CONNECTED:
            return
        for channel, hint in req.subs.items():
            if channel in self._subs:
                continue
            try:
                maybe_sub = await self._authorize_subscribe(hint)
                if maybe_sub is None:
                    continue  # subscribe-proxy namespaces: not for unidirectional subs
                sub = maybe_sub
                sub_result = await self._establish(sub, hint, reject_unrecovered=False)
            except Error as e:
                _log.debug(
                    "client {client}: uni subscription to {channel} skipped: {error}",
                    client=self.id,
                    channel=channel,
                    error=e,
                )
                continue
            if self._subs.get(channel) is sub:
                result.setdefault("subs", {})[channel] = sub_result
        if self._state is State.CONNECTED:
            self._send(self._codec.encode_push("", "connect", result, uni=True))
            self._go_live()

    def _unidirectional_failed(self, failure: Failure) -> None:
        exc = failure.value
        if isinstance(exc, Disconnect):
            self.close(exc)
        elif isinstance(exc, Error):
            self.close(uni_disconnect(exc))
        else:
            log_failure(_log, failure, "client {client}: connect failed", client=self.id)
            self.close(Disconnect.SERVER_ERROR)

    def _go_live(self) -> None:
        """After the connect result is written: timers on, buffered pushes out."""
        if self._state is not State.CONNECTED:
            return
        personal = self._config.subscribe_to_user_personal_channel
        if personal.enabled and personal.single_connection and self.user and not self._header_user:
            control = DisconnectControl(
                user=self.user,
                code=Disconnect.CONNECTION_LIMIT.code,
                reason=Disconnect.CONNECTION_LIMIT.reason,
                whitelist=(self.id,),
            )
            self._node.background(self._node.control(control), "single-connection disconnect")
        self._start_pings()
        self._schedule_expiry()
        for sub in list(self._subs.values()):
            if sub.state is SubState.SUBSCRIBING:
                self._flush_buffer(sub)
            self._joined(sub)

    async def _authenticate(self, req: ConnectRequest) -> ConnectionToken:
        config = self._config
        if req.token:
            token = await self._verify_connection_token(req.token, Error.TOKEN_EXPIRED)
            if not token.user and config.disallow_anonymous_connection_tokens:
                raise Disconnect.INVALID_TOKEN
            return token
        return self._without_credentials()

    def _without_credentials(self) -> ConnectionToken:
        """No token, no connect proxy answer: anonymous if allowed, else the header's user.

        Centrifugo's order: anonymous access wins over ``client.user_id_http_header``.
        """
        if anonymous_allowed(self._config):
            return ConnectionToken(user="")
        user = header_user(self.headers, self._config.user_id_http_header)
        if not user:
            raise Disconnect.BAD_REQUEST
        self._header_user = True
        return ConnectionToken(user=user)

    async def _verify_connection_token(self, raw: str, expired: Exception) -> ConnectionToken:
        return await verify_connection_token(
            self._node.verifier, raw, self._clock.seconds(), expired, self.id
        )

    async def _verify_sub_token(self, raw: str, channel: str) -> SubscriptionToken:
        return await verify_subscription_token(
            self._node.verifier,
            raw,
            self._clock.seconds(),
            channel=channel,
            user=self.user,
            client_id=self.id,
        )

    # --- subscribe -------------------------------------------------------------------

    async def _subscribe(self, cmd: Command) -> None:
        req = SubscribeRequest.parse(cmd.params)
        if not req.channel:
            raise ProtocolError("subscribe needs a channel")
        maybe_sub = await self._authorize_subscribe(req)
        data: bytes | None = None
        if maybe_sub is None:
            sub, data = await self._proxy_subscribe(req)
        else:
            sub = maybe_sub
        negotiate(sub, req)
        result = await self._establish(sub, req, reject_unrecovered=req.reject_unrecovered)
        if self._subs.get(sub.channel) is not sub:
            return  # closed or unsubscribed while waiting
        if data is not None:
            result["data"] = orjson.Fragment(data)
        if sub.delta:
            result["delta"] = True
        if self._sub_refresh_proxy(sub.opts) is None:
            result.update(self._expiry(sub.expire_at))
        self._schedule_sub_expiry(sub)
        self._reply(cmd, result)
        self._flush_buffer(sub)
        self._joined(sub)

    async def _authorize_subscribe(self, req: SubscribeRequest) -> Subscription | None:
        """Permission checks (docs/client-protocol.rst, "Channels"); the new subscription.

        None: the namespace has ``subscribe_proxy_enabled`` and the backend decides.
        """
        node = self._node
        resolver = node.resolver
        channel = req.channel
        resolver.check_name(channel)
        opts = resolver.options(channel)
        if channel in self._subs:
            raise Error.ALREADY_SUBSCRIBED
        if len(self._subs) >= self._config.channel_limit:
            raise Error.LIMIT_EXCEEDED
        token: SubscriptionToken | None = None
        if req.token:
            token = await self._verify_sub_token(req.token, channel)
            if self.closed:  # closed while the verifier fetched keys (JWKS)
                raise Error.PERMISSION_DENIED
        elif resolver.is_private(channel):
            raise Error.PERMISSION_DENIED
        elif resolver.is_user_limited(channel, opts):
            if not resolver.user_allowed(channel, self.user):
                raise Error.PERMISSION_DENIED
        elif opts.subscribe_proxy_enabled:
            # proxy hook (subscribe): the backend allows or refuses, see _proxy_subscribe
            resolver.check_regex(channel, opts)
            return None
        elif not may_subscribe(opts, self.user, self._config.insecure):
            raise Error.PERMISSION_DENIED
        if token is None:
            resolver.check_regex(channel, opts)
        else:
            check_unexpired(token.expire_at, self._clock.seconds())
        return client_subscription(req, opts, token, self.user, self._config.insecure)

    async def _establish(
        self, sub: Subscription, req: SubscribeRequest | None, *, reject_unrecovered: bool
    ) -> Result:
        """Register ``sub`` (buffering live publications) and compute its result.

        The caller writes the result, then calls :meth:`_flush_buffer`.
        """
        channel = sub.channel
        self._subs[channel] = sub
        try:
            return await self._position(sub, req, reject_unrecovered)
        except BaseException:
            if self._subs.get(channel) is sub:
                self._remove_subscription(channel)
            raise

    async def _position(
        self, sub: Subscription, req: SubscribeRequest | None, reject_unrecovered: bool
    ) -> Result:
        node = self._node
        channel = sub.channel
        await node.add_subscription(channel, self, sub)
        if self._subs.get(channel) is not sub or not sub.positioned:
            return {}
        top: StreamPosition
        if req is not None and req.recover and sub.recoverable:
            cache = sub.opts.force_recovery_mode == "cache"
            limit = self._config.recovery_max_publication_limit
            flt = recovery_filter(cache, req.offset, limit)
            history = await node.read_stream(channel, flt, sub.opts)

            recovered: list[Publication] = []

            def wire(pub: Publication) -> Result:
                # recovered publications are full; the last one is a delta subscriber's base
                sub.delta_base = pub.offset
                recovered.append(pub)
                return self._wire_publication(pub, sub.delta)

            tags = sub.tags_filter
            result = recovery_result(
                history,
                req.offset,
                req.epoch,
                cache=cache,
                reject_unrecovered=reject_unrecovered,
                wire=wire,
                keep=None if tags is None else (lambda pub: tags.matches(pub.tags)),
            )
            if sub.delta and recovered:
                node.seed_delta_base(channel, recovered[-1])
            top = history.position
        else:
            top = await node.stream_top(channel, sub.opts)
            result = {"offset": top.offset}
        sub.offset = top.offset
        sub.epoch = top.epoch
        return positioned_result(result, top, sub.recoverable)

    def _flush_buffer(self, sub: Subscription) -> None:
        """Switch ``sub`` to live, delivering what arrived while subscribing."""
        buffered, sub.buffer = sub.buffer, []
        sub.state = SubState.LIVE
        for pub, push in buffered:
            if pub is None:
                self._enqueue_shared(push)
            else:
                self.deliver_publication(sub, pub, push)
            if self._subs.get(sub.channel) is not sub:
                return

    def refresh_presence(self) -> None:
        """Re-add presence of live subscriptions (engines expire entries not refreshed)."""
        node = self._node
        for sub in self._subs.values():
            if sub.presence and sub.state is SubState.LIVE:
                node.background(node.add_presence(sub.channel, self.id, self.info(sub.channel)))

    def _joined(self, sub: Subscription) -> None:
        """Presence and join event for a subscription that just went live."""
        node = self._node
        if sub.presence:
            node.background(node.add_presence(sub.channel, self.id, self.info(sub.channel)))
        if sub.emit_join_leave:
            node.background(node.publish_join(sub.channel, self.info(sub.channel)))

    def _remove_subscription(self, channel: str) -> Subscription | None:
        sub = self._subs.pop(channel, None)
        if sub is None:
            return None
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None
        node = self._node
        node.remove_subscription(channel, self)
        if sub.state is SubState.LIVE:
            if sub.presence:
                node.background(node.remove_presence(channel, self.id, self.user))
            if sub.emit_join_leave:
                info = ClientInfo(self.user, self.id, self.conn_info, sub.chan_info)
                node.background(node.publish_leave(channel, info))
        return sub

    def insufficient_state(self, sub: Subscription) -> None:
        """The subscriber's stream position is lost: resubscribe (2500) or reconnect (3010)."""
        _log.info(
            "client {client}: gap in {channel}, position lost", client=self.id, channel=sub.channel
        )
        if sub.server_side:
            self.close(Disconnect.INSUFFICIENT_STATE)
        else:
            self.unsubscribe(sub.channel, Unsubscribe.INSUFFICIENT_STATE)

    def unsubscribe(self, channel: str, unsub: Unsubscribe = Unsubscribe.SERVER) -> None:
        """Server-initiated unsubscribe with an ``unsubscribe`` push."""
        if self._remove_subscription(channel) is not None and self._state is State.CONNECTED:
            self._send(self._codec.encode_unsubscribe(channel, unsub, uni=self._uni))

    async def server_subscribe(self, ctrl: SubscribeControl) -> None:
        """Subscribe server-side at runtime (server API ``subscribe``)."""
        if self._state is not State.CONNECTED or ctrl.channel in self._subs:
            return
        opts = self._node.resolver.options(ctrl.channel)
        sub = server_subscription(
            ctrl.channel,
            opts,
            info=ctrl.info,
            overrides=ctrl.overrides,
            expire_at=ctrl.expire_at,
        )
        hint = None
        if ctrl.recover_since is not None:
            hint = SubscribeRequest(
                channel=ctrl.channel,
                recover=True,
                offset=ctrl.recover_since.offset,
                epoch=ctrl.recover_since.epoch,
            )
        result = await self._establish(sub, hint, reject_unrecovered=False)
        if self._subs.get(sub.channel) is not sub:
            return
        if ctrl.data is not None:
            result["data"] = orjson.Fragment(ctrl.data)
        result.update(self._expiry(sub.expire_at))
        self._schedule_sub_expiry(sub)
        self._push(ctrl.channel, "subscribe", result)
        self._flush_buffer(sub)
        self._joined(sub)

    # --- other commands --------------------------------------------------------------

    async def _unsubscribe(self, cmd: Command) -> None:
        channel = channel_of(cmd.params)
        if not channel:
            raise ProtocolError("unsubscribe needs a channel")
        self._remove_subscription(channel)
        self._reply(cmd, {})

    def _options_for(self, channel: str) -> ChannelOptions:
        if not channel:
            raise ProtocolError("command needs a channel")
        self._node.resolver.check_name(channel)
        return self._node.resolver.options(channel)

    async def _publish(self, cmd: Command) -> None:
        req = PublishRequest.parse(cmd.params)
        opts = self._options_for(req.channel)
        if opts.publish_proxy_enabled:
            # proxy hook (publish): the backend allows, refuses or rewrites the publication
            answer = await self._proxy_publish(req, opts)
            await self._node.publish(
                req.channel,
                req.data if answer.data is None else answer.data,
                info=self.info(req.channel),
                tags=dict(answer.tags),
                skip_history=answer.skip_history,
                idempotency_key=answer.idempotency_key,
                delta=answer.delta,
                version=answer.version,
                version_epoch=answer.version_epoch,
                opts=opts,
            )
            self._reply(cmd, {})
            return
        subscribed = req.channel in self._subs
        if not may_publish(opts, self.user, subscribed, self._config.insecure):
            raise Error.PERMISSION_DENIED
        await self._node.publish(req.channel, req.data, info=self.info(req.channel), opts=opts)
        self._reply(cmd, {})

    def _check_presence(self, channel: str) -> None:
        opts = self._options_for(channel)
        if not opts.presence:
            raise Error.NOT_AVAILABLE
        subscribed = channel in self._subs
        if not may_read_presence(opts, self.user, subscribed, self._config.insecure):
            raise Error.PERMISSION_DENIED

    async def _presence(self, cmd: Command) -> None:
        channel = channel_of(cmd.params)
        self._check_presence(channel)
        presence = await self._node.presence(channel)
        self._reply(cmd, {"presence": {cid: info.to_wire() for cid, info in presence.items()}})

    async def _presence_stats(self, cmd: Command) -> None:
        channel = channel_of(cmd.params)
        self._check_presence(channel)
        stats = await self._node.presence_stats(channel)
        self._reply(cmd, {"num_clients": stats.num_clients, "num_users": stats.num_users})

    async def _history(self, cmd: Command) -> None:
        req = HistoryRequest.parse(cmd.params)
        opts = self._options_for(req.channel)
        if not opts.history_enabled:
            raise Error.NOT_AVAILABLE
        subscribed = req.channel in self._subs
        if not may_read_history(opts, self.user, subscribed, self._config.insecure):
            raise Error.PERMISSION_DENIED
        max_limit = self._config.history_max_publication_limit
        limit = req.limit
        if max_limit and (limit < 0 or limit > max_limit):
            limit = max_limit
        result = await self._node.history(
            req.channel, HistoryFilter(since=req.since, limit=limit, reverse=req.reverse), opts
        )
        self._reply(
            cmd,
            {
                "publications": [self._wire_publication(p) for p in result.publications],
                "epoch": result.position.epoch,
                "offset": result.position.offset,
            },
        )

    async def _refresh(self, cmd: Command) -> None:
        if self._node.proxies.refresh is not None:
            raise Disconnect.BAD_REQUEST  # the server refreshes through its refresh proxy
        req = RefreshRequest.parse(cmd.params)
        if not req.token:
            raise ProtocolError("refresh needs a token")
        token = await self._verify_connection_token(req.token, Disconnect.EXPIRED)
        if token.user != self.user:
            raise Disconnect.INVALID_TOKEN
        check_unexpired(token.expire_at, self._clock.seconds())
        self.expire_at = token.expire_at
        if token.info is not None:
            self.conn_info = token.info
        self._schedule_expiry()
        result: Result = {"client": self.id, "version": self._node.version}
        result.update(self._expiry(self.expire_at))
        self._reply(cmd, result)

    async def _sub_refresh(self, cmd: Command) -> None:
        req = SubRefreshRequest.parse(cmd.params)
        if not req.channel or not req.token:
            raise ProtocolError("sub_refresh needs channel and token")
        sub = self._subs.get(req.channel)
        if sub is None:
            raise Error.PERMISSION_DENIED
        try:
            token = await self._verify_sub_token(req.token, req.channel)
        except Error as e:
            if e.code == Error.TOKEN_EXPIRED.code:
                self._reply(cmd, {})
                return
            raise Disconnect.INVALID_TOKEN from None
        check_unexpired(token.expire_at, self._clock.seconds())
        sub.expire_at = token.expire_at
        if token.info is not None:
            sub.chan_info = token.info
        self._schedule_sub_expiry(sub)
        self._reply(cmd, self._expiry(sub.expire_at))

    async def _rpc(self, cmd: Command) -> None:
        req = RPCRequest.parse(cmd.params)
        proxies = self._node.proxies
        ping = proxies.rpc_config.ping
        if ping.enabled and req.method == ping.method:
            self._reply(cmd, {})
            return
        if not proxies.rpc:
            raise Error.NOT_AVAILABLE.with_message("rpc is not available: no rpc proxy configured")
        opts = rpc_options(proxies.rpc_config, req.method)
        entry = proxies.rpc.get(opts.proxy_name) if opts.proxy_enabled else None
        if entry is None:
            raise Error.NOT_AVAILABLE
        # proxy hook (rpc): the backend answers
        request = RPCProxyRequest(**self._proxy_common(entry), method=req.method, data=req.data)
        reply = await self._ask(entry, "rpc", entry.backend.rpc(request))
        result: Result = {}
        if reply is not None and reply.data is not None:
            result["data"] = orjson.Fragment(reply.data)
        self._reply(cmd, result)

    async def _not_available(self, cmd: Command) -> None:
        raise Error.NOT_AVAILABLE

    # Any: as in _run.
    _HANDLERS: dict[str, Callable[[Client, Command], Coroutine[Deferred[Any], Any, None]]] = {
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "publish": _publish,
        "presence": _presence,
        "presence_stats": _presence_stats,
        "history": _history,
        "refresh": _refresh,
        "sub_refresh": _sub_refresh,
        "rpc": _rpc,
        "ping": _not_available,
    }

    # --- backend proxies (docs/proxies.rst) -----------------------------------------------

    def _proxy_protocol(self) -> str:
        """The ``protocol`` field of proxy requests: ``json`` or ``protobuf``."""
        return self.encoding

    def _proxy_common(self, entry: ProxyEntry) -> ProxyCommon:
        return ProxyCommon(
            client=self.id,
            transport=self.transport_name,
            protocol=self._proxy_protocol(),
            encoding=entry.encoding,
            user=self.user,
            headers={k.lower(): v for k, v in self.headers.items()},
            emulated_headers={k.lower(): v for k, v in self._emulated_headers.items()},
            grpc_metadata=self.grpc_metadata,
            meta=self.meta if entry.include_meta else None,
        )

    async def _call(self, entry: ProxyEntry, kind: str, call: Deferred[_R]) -> _R:
        """Await a proxy call under its timeout; cancelled when the connection closes.

        Raises:
            Error: the backend's error.
            Disconnect: the backend's disconnect; 3000 when the client left meanwhile.
            ProxyFailure: the backend failed (logged here, once, with the proxy name).
        """
        d = self._node.proxies.call(entry, call, self._clock)
        key = (entry.protocol, kind, entry.name)
        start = self._clock.seconds()
        if self._proxy_calls is None:
            self._proxy_calls = set()
        self._proxy_calls.add(d)
        try:
            result = await d
            check_json(result)
            return result
        except (Error, Disconnect):
            raise
        except CancelledError:
            raise Disconnect.CONNECTION_CLOSED from None
        except Exception as e:
            stats = self._node.stats
            stats.count(stats.proxy_errors, key)
            reason = str(e) if isinstance(e, ProxyFailure) else repr(e)
            _log.warn(
                "proxy {proxy}: {kind} for client {client} failed: {reason}",
                proxy=entry.name,
                kind=kind,
                client=self.id,
                reason=reason,
            )
            raise ProxyFailure(reason) from None
        finally:
            self._node.stats.proxies.observe(key, self._clock.seconds() - start)
            self._proxy_calls.discard(d)  # set above; the connection may have closed since

    async def _ask(self, entry: ProxyEntry, kind: str, call: Deferred[_R]) -> _R:
        """:meth:`_call` for a command: a failed backend is error 100 (temporary)."""
        try:
            return await self._call(entry, kind, call)
        except ProxyFailure:
            raise Error.INTERNAL from None

    def _background_failed(self, failure: Failure, kind: str) -> None:
        exc = failure.value
        if isinstance(exc, Disconnect):
            self.close(exc)
            return
        log_failure(_log, failure, "client {client}: {kind} failed", client=self.id, kind=kind)
        self.close(Disconnect.SERVER_ERROR)

    async def _proxy_connect(
        self, entry: ProxyEntry, req: ConnectRequest
    ) -> tuple[ConnectionToken, bytes | None]:
        """The connect proxy's credentials as a token; and the connect result's data."""
        request = ConnectProxyRequest(
            **self._proxy_common(entry),
            name=req.name,
            version=req.version,
            data=req.data,
            channels=tuple(req.subs) if self._uni else (),
        )
        reply = await self._ask(entry, "connect", entry.backend.connect(request))
        if reply is None:  # the backend gave no credentials
            return self._without_credentials(), None
        self.meta = reply.meta
        token = ConnectionToken(
            user=reply.user,
            expire_at=reply.expire_at,
            info=reply.info,
            channels=reply.channels,
            subs=dict(reply.subs),
        )
        return token, reply.data

    async def _proxy_refresh(self, entry: ProxyEntry) -> None:
        request = RefreshProxyRequest(**self._proxy_common(entry))
        try:
            reply = await self._call(entry, "refresh", entry.backend.refresh(request))
        except ProxyFailure:
            reply = RefreshProxyResult(expire_at=int(self._clock.seconds()) + _REFRESH_RETRY)
        except Error:
            reply = None  # an error is no result: the connection expires
        if self._state is not State.CONNECTED:
            return
        now = self._clock.seconds()
        if reply is None or reply.expired or (reply.expire_at and reply.expire_at <= now):
            self.close(Disconnect.EXPIRED)
            return
        self.expire_at = reply.expire_at
        if reply.info is not None:
            self.conn_info = reply.info
        if reply.meta is not None:
            self.meta = reply.meta
        self._schedule_expiry()

    def _sub_refresh_proxy(self, opts: ChannelOptions) -> ProxyEntry | None:
        if not opts.sub_refresh_proxy_enabled:
            return None
        return self._node.proxies.sub_refresh.get(opts.sub_refresh_proxy_name)

    async def _proxy_subscribe(self, req: SubscribeRequest) -> tuple[Subscription, bytes | None]:
        """The subscription the subscribe proxy allows; and the subscribe result's data."""
        opts = self._node.resolver.options(req.channel)
        entry = self._node.proxies.subscribe.get(opts.subscribe_proxy_name)
        if entry is None:
            raise Error.NOT_AVAILABLE
        request = SubscribeProxyRequest(
            **self._proxy_common(entry), channel=req.channel, token=req.token, data=req.data
        )
        reply = await self._ask(entry, "subscribe", entry.backend.subscribe(request))
        if reply is None:
            reply = SubscribeProxyResult()
        check_unexpired(reply.expire_at, self._clock.seconds())
        if req.channel in self._subs:
            raise Error.ALREADY_SUBSCRIBED
        # only what the namespace forces, then the backend's overrides (as Centrifugo)
        sub = server_subscription(
            req.channel, opts, info=reply.info, overrides=reply.override, expire_at=reply.expire_at
        )
        sub.server_side = False
        return sub, reply.data

    async def _proxy_sub_refresh(self, entry: ProxyEntry, sub: Subscription) -> None:
        request = SubRefreshProxyRequest(**self._proxy_common(entry), channel=sub.channel)
        try:
            reply = await self._call(entry, "sub_refresh", entry.backend.sub_refresh(request))
        except ProxyFailure:
            reply = SubRefreshProxyResult(expire_at=int(self._clock.seconds()) + _REFRESH_RETRY)
        except Error:
            reply = None
        if self._state is not State.CONNECTED or self._subs.get(sub.channel) is not sub:
            return
        now = self._clock.seconds()
        if reply is None or reply.expired or (reply.expire_at and reply.expire_at <= now):
            if sub.server_side:
                self.close(Disconnect.SUB_EXPIRED)
            else:
                self.unsubscribe(sub.channel, Unsubscribe.EXPIRED)
            return
        sub.expire_at = reply.expire_at
        if reply.info is not None:
            sub.chan_info = reply.info
        self._schedule_sub_expiry(sub)

    async def _proxy_publish(self, req: PublishRequest, opts: ChannelOptions) -> PublishProxyResult:
        """The backend's publish result (no result: the client's data as is)."""
        entry = self._node.proxies.publish.get(opts.publish_proxy_name)
        if entry is None:
            raise Error.NOT_AVAILABLE
        request = PublishProxyRequest(
            **self._proxy_common(entry), channel=req.channel, data=req.data
        )
        reply = await self._ask(entry, "publish", entry.backend.publish(request))
        return PublishProxyResult() if reply is None else reply

    # --- server-side control -----------------------------------------------------------

    def refresh(self, *, expired: bool, expire_at: int, info: bytes | None) -> None:
        """Server API ``refresh``: expire now, or extend the connection."""
        if self._state is not State.CONNECTED:
            return
        if expired:
            self.close(Disconnect.EXPIRED)
            return
        self.expire_at = expire_at
        if info is not None:
            self.conn_info = info
        self._schedule_expiry()
        if self._uni:
            self._push("", "refresh", self._expiry(expire_at))
