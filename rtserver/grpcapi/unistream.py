"""The unidirectional GRPC transport (``uni_grpc``): ``CentrifugoUniStream/Consume``.

A consumer calls ``Consume(ConnectRequest)`` and reads a stream of ``Push`` messages,
the same pushes the other unidirectional transports send (docs/transports.rst,
"Unidirectional GRPC"), encoded as Protobuf. Messages travel as raw bytes: the
handler has no (de)serializers; the request is read with the client protocol's codec
(:mod:`rtserver.protocol.protobuf`), whose numbering the unistream schema shares, and
the client speaks the Protobuf encoding, so its pushes are the core's ``pb-uni``
payloads (one encoding per publication for all consumers, :func:`push_bytes`).

Threads. The service runs on ``grpc.aio`` in an event loop thread of its own
(:class:`~rtserver.grpcapi.server.AioGRPCServerService`): each stream is a coroutine
there, not a thread. The coroutine connects the client through the
:class:`~rtserver.grpcapi.bridge.ReactorBridge` (the client lives in the reactor, like any
other); from then on the client's :class:`UniGRPCSink` (reactor thread) hands the
encoded pushes to an :class:`Outbox`, which wakes the coroutine on its loop, and the
coroutine writes them to grpcio. The outbox is bounded: past :data:`OUTBOX_BYTES` the sink
pauses the client's writer, whose own queue is bounded by ``client.queue_max_size``
(3008 beyond), so a consumer that stops reading is cut like any slow client. The
coroutine resumes the writer through the bridge when it has taken what was queued.

Proxies. The call's metadata (:func:`call_metadata`) goes with the client to the proxies,
which forward the keys their ``grpc_metadata`` lists, as Centrifugo does; a uni_grpc
client has no HTTP headers, so ``http_headers`` forward nothing of it.

Ends. A disconnect is written as the final push and ends the stream with status OK (as in
Centrifugo). When the consumer goes away (cancel, deadline), grpcio's done callback tells
the reactor through the bridge, which drops the client at once. A stream whose consumer
does not read its final pushes within :data:`CLOSE_GRACE` seconds is cancelled, so no
stream waits forever on a consumer that never reads again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from threading import Lock
from typing import Any, Final, cast

import grpc
import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.ports import ISink
from rtserver.core.writer import Payload
from rtserver.grpcapi.bridge import BridgeClosed, ReactorBridge, to_loop
from rtserver.logs import Logger
from rtserver.protocol import protobuf
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.encoding import PROTOBUF
from rtserver.protocol.frames import ProtocolError

__all__ = [
    "CLOSE_GRACE",
    "KEEPALIVE_OPTIONS",
    "OUTBOX_BYTES",
    "SERVICE_NAME",
    "TRANSPORT_NAME",
    "Outbox",
    "UniGRPCSink",
    "UniStreamServicer",
    "call_metadata",
    "connect_request_json",
    "push_bytes",
]

_log = Logger()

#: The fully-qualified GRPC service name of the transport.
SERVICE_NAME: Final = "centrifugal.centrifugo.unistream.CentrifugoUniStream"
#: The transport's name in logs and ``/metrics``.
TRANSPORT_NAME: Final = "uni_grpc"
#: Bytes handed to a stream's coroutine and not yet taken, beyond which the writer pauses.
OUTBOX_BYTES: Final = 65536
#: Seconds a closed stream's consumer gets to read its final pushes before the cancel.
CLOSE_GRACE: Final = 5.0
#: HTTP/2 keepalive as Centrifugo's uni_grpc server: ping an idle connection every 25 s,
#: drop it when the ping is not answered in 5 s; client pings more often than every 5 s
#: are refused.
KEEPALIVE_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_time_ms", 25000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
)



# --- messages --------------------------------------------------------------------------


def connect_request_json(data: bytes) -> bytes:
    """The JSON ``ConnectRequest`` the core takes, from a unistream ``ConnectRequest``.

    Only the unistream schema's fields are read (``subs`` values: ``recover``, ``epoch``,
    ``offset``, as Centrifugo copies them). ``data`` is kept when it is JSON; without a
    connect proxy nothing reads it.

    Raises:
        ProtocolError: the bytes are not a well-formed ``ConnectRequest``.
    """
    fields = protobuf.decode_message("ConnectRequest", data)
    out: dict[str, Any] = {}
    for key in ("token", "name", "version", "headers"):
        if fields.get(key):
            out[key] = fields[key]
    raw = fields.get("data")
    if raw:
        payload = protobuf.json_payload(raw)
        if payload is not None:
            out["data"] = orjson.Fragment(payload)
    subs: dict[str, dict[str, Any]] = {}
    for channel, hint in (fields.get("subs") or {}).items():
        subs[channel] = {k: hint[k] for k in ("recover", "epoch", "offset") if hint.get(k)}
    if subs:
        out["subs"] = subs
    return orjson.dumps(out)


def call_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str | bytes]:
    """The metadata of a ``Consume`` call as proxies forward it (``grpc_metadata``).

    Keys lower-cased (grpcio's already are); the values of a text key sent more than once
    joined with ``", "`` (the same value for HTTP and GRPC); a binary (``-bin``) key keeps
    its bytes, the last of repeated ones. Pseudo-headers (``:authority``...) are not
    metadata. grpcio bounds the whole: it refuses a call with more than 16 KiB of it.
    """
    out: dict[str, str | bytes] = {}
    for key, value in metadata:
        name = key.lower()
        if name.startswith(":"):
            continue
        previous = out.get(name)
        if isinstance(value, str) and isinstance(previous, str):
            out[name] = f"{previous}, {value}"
        else:
            out[name] = value
    return out


def push_bytes(data: bytes) -> bytes:
    """The bare ``Push`` message of a length-prefixed unidirectional Protobuf push.

    uni_grpc clients speak the Protobuf client protocol: the core encodes their pushes
    in the ``pb-uni`` wire shape (one ``Push`` with a varint length prefix, the same
    bytes the other unidirectional Protobuf consumers get), and a shared publication is
    encoded once for all of them. GRPC frames each message itself, so only the prefix
    goes: a slice, cached on a shared payload (:meth:`Payload.framed`) so every
    consumer of one publication sends the same bytes object. The server ping (a
    zero length) is the empty ``Push``.

    Raises:
        ProtocolError: the length prefix does not match the rest of ``data``.
    """
    return protobuf.unframe(data)


# --- the hand-off between the reactor and a stream's coroutine ---------------------------


class Outbox:
    """Encoded pushes from the reactor to one stream's coroutine, bounded in bytes.

    The reactor puts batches in (:meth:`put`, :meth:`end`: any thread); the stream's
    coroutine takes everything queued at once (:meth:`take`, on ``loop``), woken through
    ``loop.call_soon_threadsafe`` only when it is waiting. ``None`` in a batch marks the
    end of the stream.
    """

    __slots__ = ("_bytes", "_ended", "_items", "_limit", "_lock", "_loop", "_paused",
                 "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = OUTBOX_BYTES) -> None:
        self._loop = loop
        self._lock = Lock()
        self._items: list[bytes | None] = []
        self._bytes = 0
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._ended = False

    def put(self, messages: Sequence[bytes]) -> bool:
        """Queue ``messages``; True when the outbox went over its bound (pause the writer)."""
        with self._lock:
            if self._ended:
                return False
            self._items.extend(messages)
            self._bytes += sum(len(m) for m in messages)
            self._wake()
            if self._bytes > self._limit:
                self._paused = True
                return True
            return False

    def end(self) -> None:
        """No more messages: the stream stops after taking what is queued."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._items.append(None)
            self._wake()

    def _wake(self) -> None:
        """Under the lock: wake the waiting coroutine, if any."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            to_loop(self._loop, _release, waiter)

    async def take(self) -> tuple[list[bytes | None], bool]:
        """Everything queued, waiting for something.

        Returns:
            The messages, and whether the writer was paused meanwhile (the caller
            resumes it).
        """
        while True:
            with self._lock:
                if self._items:
                    items, self._items = self._items, []
                    self._bytes = 0
                    resume, self._paused = self._paused, False
                    return items, resume
                waiter = self._waiter = self._loop.create_future()
            await waiter


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@implementer(ISink)
class UniGRPCSink:
    """One ``uni_grpc`` client's output (reactor thread).

    Args:
        outbox: the hand-off to the stream's coroutine.
        clock: for the close grace.
        cancel: cancels the RPC (safe from any thread).
        close_grace: seconds the consumer gets to read the final pushes.
    """

    transport_name = TRANSPORT_NAME
    unidirectional = True
    emulation = False
    pong = False

    def __init__(self, outbox: Outbox, clock: IReactorTime, cancel: Callable[[], object],
                 close_grace: float = CLOSE_GRACE) -> None:
        self._outbox = outbox
        self._clock = clock
        self._cancel = cancel
        self._grace = close_grace
        self._closed = False
        self._grace_timer: IDelayedCall | None = None
        self.client: Client | None = None

    def write(self, payloads: Sequence[Payload]) -> None:
        """Hand the batch's ``Push`` messages to the stream's coroutine.

        The payloads are the core's ``pb-uni`` pushes; a shared one (a publication to
        many consumers) is unframed once and the same bytes go to every stream.
        """
        if self._closed:
            return
        try:
            messages = [p.framed(TRANSPORT_NAME, push_bytes) for p in payloads]
        except ProtocolError as e:
            _log.warn("uni_grpc: a push could not be unframed: {error}", error=e.detail)
            if self.client is not None:
                self.client.close(Disconnect.SERVER_ERROR)
            return
        if self._outbox.put(messages) and self.client is not None:
            self.client.pause_writing()

    def resume(self) -> None:
        """The stream's coroutine took what was queued: write what accumulated."""
        if not self._closed and self.client is not None:
            self.client.resume_writing()

    def close(self, disconnect: Disconnect | None) -> None:
        """The ``disconnect`` push, then the end of the stream (status OK)."""
        if self._closed:
            return
        self._closed = True
        if disconnect is not None:
            self._outbox.put([push_bytes(protobuf.encode_disconnect(disconnect, uni=True))])
        self._outbox.end()
        if self._grace > 0:
            self._grace_timer = self._clock.callLater(self._grace, self._expired)

    def _expired(self) -> None:
        self._grace_timer = None
        self._cancel()

    def lost(self) -> None:
        """The RPC ended (finished, cancelled or expired): release the client."""
        self._closed = True
        if self._grace_timer is not None and self._grace_timer.active():
            self._grace_timer.cancel()
        self._grace_timer = None
        client, self.client = self.client, None
        if client is not None:
            client.transport_lost()


# --- the service -----------------------------------------------------------------------


class UniStreamServicer:
    """Serves ``CentrifugoUniStream/Consume``: one client connection per stream.

    Args:
        node: the node the clients join.
        bridge: hands the connect and the stream's notifications to the reactor.
        close_grace: seconds a closed stream's consumer gets to read its final pushes.
        outbox_bytes: the bound of each stream's hand-off.
    """

    def __init__(self, node: Node, bridge: ReactorBridge, *, close_grace: float = CLOSE_GRACE,
                 outbox_bytes: int = OUTBOX_BYTES) -> None:
        self._node = node
        self._bridge = bridge
        self._grace = close_grace
        self._outbox_bytes = outbox_bytes

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of the service: raw bytes in and out (no serializers)."""
        consume: grpc.RpcMethodHandler = grpc.unary_stream_rpc_method_handler(self.Consume)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Consume": consume})

    async def Consume(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """Connect a client for this stream, then write its pushes until the end.

        Runs on the ``grpc.aio`` server's loop. A request that is not a
        ``ConnectRequest`` fails with INTERNAL, as grpc-go's unmarshalling error does in
        Centrifugo; a node over ``client.connection_limit`` or
        ``client.connection_rate_limit`` refuses with RESOURCE_EXHAUSTED; a stopping
        server with UNAVAILABLE.
        """
        try:
            connect = connect_request_json(request)
        except ProtocolError as e:
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"error unmarshalling request: {e.detail}")
        metadata = call_metadata(context.invocation_metadata() or ())
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        outbox = Outbox(loop, self._outbox_bytes)

        def cancel() -> None:
            if task is not None:
                to_loop(loop, task.cancel)

        def start() -> Deferred[UniGRPCSink | None]:
            node = self._node
            if not node.admit():
                return succeed(None)
            sink = UniGRPCSink(outbox, node.clock, cancel, self._grace)
            client = node.make_client(sink, encoding=PROTOBUF, grpc_metadata=metadata)
            sink.client = client
            client.start_unidirectional(connect)
            return succeed(sink)

        connected: asyncio.Future[object] = loop.create_future()
        self._bridge.submit(start, lambda outcome: to_loop(loop, _settle, connected, outcome))
        outcome = await connected
        if isinstance(outcome, Failure):
            if outcome.check(BridgeClosed):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            _log.failure("uni_grpc: connect failed", outcome)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        if not isinstance(outcome, UniGRPCSink):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "connection limit reached")
        sink: UniGRPCSink = outcome
        bridge = self._bridge

        def ended() -> None:
            outbox.end()
            bridge.post(sink.lost)

        # The stubs declare the callback as a class, not a protocol: any callable works.
        context.add_done_callback(cast("Any", lambda _context: ended()))
        try:
            while True:
                items, resume = await outbox.take()
                if resume:
                    bridge.post(sink.resume)
                for item in items:
                    if item is None:
                        return
                    await context.write(item)
        finally:
            ended()  # idempotent: the done callback may follow


def _settle(future: asyncio.Future[object], outcome: object) -> None:
    if not future.done():
        future.set_result(outcome)
