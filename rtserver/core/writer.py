"""The outbound path: encoded payloads, per-turn coalescing, bounded queues.

Every message for a connection goes through its :class:`ClientWriter`. Messages queued
within one reactor turn are handed to the transport together on the next turn (one
write, frames bounded in messages and bytes by the transport), and the bytes waiting are
bounded: past ``max_bytes`` the connection is cut as a slow consumer (3008) instead of
buffering without limit. With ``client.write_delay`` the flush waits that long instead,
so bursts spread over several turns share frames and ``send()`` calls.

A publication is encoded once per wire shape (:class:`SharedPush`: JSON or Protobuf,
bidirectional or unidirectional) and each :class:`Payload` is shared by all subscribers
of that shape; transports cache their framing of it on the payload, so the WebSocket
frame for a publication is built once per shape too.

Subscribers that negotiated delta compression get three more shapes (bidirectional
only: delta is negotiated by a ``subscribe`` command): :data:`JSON_DELTA_SHAPE` and
:data:`PB_DELTA_SHAPE` carry the fossil delta against the channel's previous
publication, computed once per publication (:meth:`SharedPush.patch`), and
:data:`JSON_FULL_STR_SHAPE` is the full payload as a JSON string, which is how JSON
delta subscribers receive full payloads (Protobuf ones get the plain :data:`PB_SHAPE`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from rtserver.core.ports import ISink
from rtserver.logs import Logger
from rtserver.protocol import codec, fossil, protobuf
from rtserver.protocol.encoding import JSON, PROTOBUF
from rtserver.protocol.filters import Filter
from rtserver.protocol.frames import ClientInfo, Publication

__all__ = [
    "DELTA_SHAPES",
    "ENCODERS",
    "JSON_DELTA_SHAPE",
    "JSON_FULL_STR_SHAPE",
    "JSON_SHAPE",
    "JSON_UNI_SHAPE",
    "PB_DELTA_SHAPE",
    "PB_SHAPE",
    "PB_UNI_SHAPE",
    "ClientWriter",
    "FlushScheduler",
    "Payload",
    "SharedPush",
    "json_publication",
    "wire_shape",
]

_log = Logger()

#: ``Payload.frames`` of a payload that is not shared: nothing is ever stored in it.
_UNCACHED: Final[dict[str, bytes]] = {}


class Payload:
    """One encoded message (a JSON line, or a length-prefixed Protobuf message).

    Transports cache their framings of a shared payload on it (:meth:`framed`);
    ``frames`` holds them by framing kind (always empty for a payload that is not
    shared), so a transport's write path can look a framing up without a call.
    """

    __slots__ = ("data", "frames", "shared", "size")

    def __init__(self, data: bytes, shared: bool = False) -> None:
        self.data = data
        self.size = len(data)
        self.shared = shared
        self.frames: dict[str, bytes] = {} if shared else _UNCACHED

    def framed(self, kind: str, build: Callable[[bytes], bytes]) -> bytes:
        """The payload framed by ``build``, computed once per framing kind."""
        out = self.frames.get(kind)
        if out is None:
            out = build(self.data)
            if self.shared:
                self.frames[kind] = out
        return out

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Payload({self.data!r})"


#: Wire shapes of a push: the encoding, and whether the push is wrapped for
#: bidirectional transports (``{"push":...}`` / ``Reply.push``) or bare (unidirectional).
JSON_SHAPE: Final = "json"
JSON_UNI_SHAPE: Final = "json-uni"
PB_SHAPE: Final = "pb"
PB_UNI_SHAPE: Final = "pb-uni"
#: A publication for a JSON delta subscriber: ``data`` is a JSON string holding the full
#: payload text.
JSON_FULL_STR_SHAPE: Final = "json-full-str"
#: A publication for a JSON delta subscriber: ``data`` is a JSON string holding the
#: fossil delta, and ``"delta": true``.
JSON_DELTA_SHAPE: Final = "json-delta"
#: A publication for a Protobuf delta subscriber: ``data`` is the delta, ``delta`` set.
PB_DELTA_SHAPE: Final = "pb-delta"

#: For a connection's shape, the shapes of a delta subscriber's publications:
#: ``(full, delta)``. Unidirectional connections never negotiate delta.
DELTA_SHAPES: Final[dict[str, tuple[str, str]]] = {
    JSON_SHAPE: (JSON_FULL_STR_SHAPE, JSON_DELTA_SHAPE),
    PB_SHAPE: (PB_SHAPE, PB_DELTA_SHAPE),
}


def wire_shape(encoding: str, uni: bool) -> str:
    """The wire shape a connection of ``encoding`` (``json``/``protobuf``) receives."""
    if encoding == PROTOBUF:
        return PB_UNI_SHAPE if uni else PB_SHAPE
    if encoding == JSON:
        return JSON_UNI_SHAPE if uni else JSON_SHAPE
    raise ValueError(f"unknown encoding {encoding!r}")


# Any: the client-protocol Publication object, a JSON object of mixed values.
def json_publication(pub: Publication) -> dict[str, Any] | None:
    """``pub`` as a JSON ``Publication`` object, or None when its data is not JSON.

    Data published by Protobuf clients is raw bytes; JSON clients get it as JSON after
    raw newlines are dropped, when what remains is valid JSON
    (:func:`~rtserver.protocol.protobuf.json_payload`, docs/client-protocol.rst,
    "Protobuf encoding").
    """
    data = protobuf.json_payload(pub.data)
    if data is None:
        return None
    body = pub.to_wire()
    if data is not pub.data:
        body["data"] = orjson.Fragment(data)
    return body


class SharedPush:
    """A push to many connections, encoded at most once per wire shape.

    It keeps the value (a :class:`Publication`, or the :class:`ClientInfo` of a join or
    leave) and caches one :class:`Payload` per wire shape on first use, so a channel
    whose subscribers all speak one encoding pays for one encoding, and a mixed channel
    for one per shape present. A shape the value cannot be expressed in (Protobuf bytes
    that are not JSON, for JSON clients) has no payload: :meth:`payload` returns None
    and the caller closes that connection with 3506.

    New wire shapes plug in through :data:`ENCODERS` (shape -> encoder of a push).

    ``prev`` is the channel's previous publication when this one may go out as a fossil
    delta against it (the hub sets it); :meth:`patch` computes that delta once, and
    :meth:`matches` evaluates each distinct tag filter once.
    """

    __slots__ = ("_patch", "_payloads", "_verdicts", "channel", "info", "kind", "prev", "pub")

    def __init__(
        self,
        channel: str,
        kind: str,
        *,
        pub: Publication | None = None,
        info: ClientInfo | None = None,
        prev: Publication | None = None,
    ) -> None:
        if (pub is None) == (info is None):
            raise ValueError("a shared push holds a publication or a client info")
        self.channel = channel
        self.kind = kind
        self.pub = pub
        self.info = info
        self.prev = prev
        self._payloads: dict[str, Payload | None] = {}
        self._patch: bytes | None = None
        self._verdicts: dict[Filter, bool] | None = None

    @classmethod
    def publication(
        cls, channel: str, pub: Publication, prev: Publication | None = None
    ) -> SharedPush:
        """The ``pub`` push of a publication; ``prev`` is its delta base, if any."""
        return cls(channel, "pub", pub=pub, prev=prev)

    def patch(self) -> bytes | None:
        """The fossil delta from ``prev`` to this publication, computed on first use.

        None without a base, or when the delta would not be smaller than the payload
        (then the publication goes out full, Centrifugo's rule).
        """
        prev, pub = self.prev, self.pub
        if prev is None or pub is None:
            return None
        patch = self._patch
        if patch is None:
            patch, is_delta = fossil.delta_or_full(prev.data, pub.data)
            if not is_delta:
                self.prev = None  # not worth a delta: every delta subscriber gets it full
                return None
            self._patch = patch
        return patch

    def matches(self, flt: Filter) -> bool:
        """Whether the publication's tags match ``flt``, evaluated once per filter."""
        verdicts = self._verdicts
        if verdicts is None:
            verdicts = self._verdicts = {}
        verdict = verdicts.get(flt)
        if verdict is None:
            assert self.pub is not None
            verdict = verdicts[flt] = flt.matches(self.pub.tags)
        return verdict

    @classmethod
    def join_leave(cls, channel: str, kind: str, info: ClientInfo) -> SharedPush:
        """A ``join`` or ``leave`` push."""
        return cls(channel, kind, info=info)

    def payload(self, shape: str) -> Payload | None:
        """The shared payload in ``shape``, encoded on first use; None if inexpressible."""
        cache = self._payloads
        if shape in cache:
            return cache[shape]
        data = ENCODERS[shape](self)
        payload = cache[shape] = None if data is None else Payload(data, shared=True)
        return payload


def _json_push(push: SharedPush, uni: bool) -> bytes | None:
    if push.pub is not None:
        body = json_publication(push.pub)
        if body is None:
            return None
    else:
        assert push.info is not None
        body = {"info": push.info.to_wire()}
    return codec.encode_push(push.channel, push.kind, body, uni=uni)


def _pb_push(push: SharedPush, uni: bool) -> bytes:
    if push.pub is not None:
        return protobuf.encode_publication_push(push.channel, push.pub, uni=uni)
    assert push.info is not None
    return protobuf.encode_join_leave_push(push.channel, push.kind, push.info, uni=uni)


def _json_string_push(push: SharedPush, data: bytes, delta: bool) -> bytes | None:
    assert push.pub is not None
    text = fossil.json_data(data)
    if text is None:
        return None
    body = push.pub.to_wire()
    body["data"] = orjson.Fragment(text)
    if delta:
        body["delta"] = True
    return codec.encode_push(push.channel, "pub", body, uni=False)


def _json_full_str_push(push: SharedPush) -> bytes | None:
    # the JSON text JSON clients get (json_payload), as a string
    assert push.pub is not None
    data = protobuf.json_payload(push.pub.data)
    if data is None:
        return None
    return _json_string_push(push, data, False)


def _json_delta_push(push: SharedPush) -> bytes | None:
    # A JSON client's base is the JSON text it got; a delta between raw payloads only
    # rebuilds it when neither payload was changed on the way to JSON.
    patch = push.patch()
    if patch is None:
        return None
    assert push.pub is not None and push.prev is not None
    for data in (push.prev.data, push.pub.data):
        if protobuf.json_payload(data) is not data:
            return None
    return _json_string_push(push, patch, True)


def _pb_delta_push(push: SharedPush) -> bytes | None:
    patch = push.patch()
    if patch is None:
        return None
    assert push.pub is not None
    return protobuf.encode_publication_push(push.channel, push.pub, data=patch, delta=True)


#: How a push is encoded in each wire shape (None: not expressible in that shape; for a
#: delta shape: no delta, send the full shape).
ENCODERS: Final[dict[str, Callable[[SharedPush], bytes | None]]] = {
    JSON_SHAPE: lambda push: _json_push(push, False),
    JSON_UNI_SHAPE: lambda push: _json_push(push, True),
    PB_SHAPE: lambda push: _pb_push(push, False),
    PB_UNI_SHAPE: lambda push: _pb_push(push, True),
    JSON_FULL_STR_SHAPE: _json_full_str_push,
    JSON_DELTA_SHAPE: _json_delta_push,
    PB_DELTA_SHAPE: _pb_delta_push,
}


#: Writers flushed per reactor turn; the rest wait for the next turn (after its input).
FLUSH_SLICE = 64
#: A pass over the writers takes at most about this many turns: a larger fan-out is cut
#: into larger slices, so the input read (and queued) during one pass stays bounded.
FLUSH_TURNS = 16
#: A pass ends early, every writer still waiting written on the next turn, once a waiting
#: writer holds more than 1/FLUSH_HURRY of its byte bound: in overload (input faster than
#: the writes) queues of healthy connections never grow past that plus one turn of input,
#: and the server reads input no faster than it writes (back-pressure on publishers).
#: 1/16 (64 KiB of the default 1 MiB) keeps the bytes in flight near those of one pass
#: per turn; bench/RESULTS.md, "Fan-out under overload".
FLUSH_HURRY = 16


class FlushScheduler:
    """Flushes every writer that has output, once, at the start of the next turn.

    One ``callLater`` per turn serves all connections instead of one per connection.
    ``delay`` (``client.write_delay``) postpones the flush by that many seconds: output
    queued meanwhile is coalesced, trading up to ``delay`` of latency for fewer frames
    and syscalls. 0 flushes on the next turn.
    """

    __slots__ = ("_call", "_clock", "_delay", "_hurry", "_pending")

    def __init__(self, clock: IReactorTime, delay: float = 0.0) -> None:
        self._clock = clock
        self._delay = max(0.0, delay)
        self._pending: list[ClientWriter] = []
        self._call: IDelayedCall | None = None
        # a waiting writer passed 1/FLUSH_HURRY of its bound: write them all next turn
        self._hurry = False

    def add(self, writer: ClientWriter) -> None:
        """Flush ``writer`` on the next turn (or after the write delay)."""
        self._pending.append(writer)
        if self._call is None:
            self._call = self._clock.callLater(self._delay, self._run)

    def _run(self) -> None:
        self._call = None
        pending = self._pending
        if len(pending) > FLUSH_SLICE and not self._hurry:
            # a large fan-out is written in slices, reading input between them: what
            # arrives meanwhile joins the frames of the writers not yet flushed
            size = max(FLUSH_SLICE, len(pending) // FLUSH_TURNS)
            self._pending = pending[size:]
            pending = pending[:size]
            self._call = self._clock.callLater(0, self._run)
        else:
            # the pass ends: in overload (a queue passed its hurry mark) every writer
            # waiting is written now, before more input is read
            self._pending = []
            self._hurry = False
        for writer in pending:
            # ClientWriter.flush, inlined: this runs once per connection per turn
            writer._scheduled = False
            batch = writer._queue
            if writer._paused or writer._closed or not batch:
                continue
            writer._queue = []
            writer._queued_bytes = 0
            try:
                writer._sink.write(batch)
            except Exception:
                _log.failure("flush failed")

    def stop(self) -> None:
        """Cancel the pending flush (shutdown)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._pending = []


class ClientWriter:
    """A connection's outbound queue: coalesced per turn, bounded in bytes."""

    __slots__ = (
        "_closed",
        "_hurry_bytes",
        "_max_bytes",
        "_on_overflow",
        "_paused",
        "_queue",
        "_queued_bytes",
        "_scheduled",
        "_scheduler",
        "_sink",
    )

    def __init__(
        self,
        sink: ISink,
        scheduler: FlushScheduler,
        max_bytes: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._sink = sink
        self._scheduler = scheduler
        self._max_bytes = max_bytes
        self._hurry_bytes = max_bytes // FLUSH_HURRY
        self._on_overflow = on_overflow
        self._queue: list[Payload] = []
        self._queued_bytes = 0
        self._scheduled = False
        self._paused = False
        self._closed = False

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this queue (not yet handed to the transport)."""
        return self._queued_bytes

    def enqueue(self, payload: Payload) -> None:
        """Queue a payload; past the byte bound the overflow callback fires once."""
        if self._closed:
            return
        self._queue.append(payload)
        queued = self._queued_bytes = self._queued_bytes + payload.size
        if queued > self._hurry_bytes:
            if queued > self._max_bytes:
                self._closed = True
                self._queue = []
                self._queued_bytes = 0
                self._on_overflow()
                return
            if not self._paused:
                # a flush pass in progress would reach this writer too late: end it
                self._scheduler._hurry = True
        if not self._scheduled and not self._paused:
            self._scheduled = True
            # FlushScheduler.add, inlined: this runs once per connection per turn
            scheduler = self._scheduler
            scheduler._pending.append(self)
            if scheduler._call is None:
                scheduler._call = scheduler._clock.callLater(scheduler._delay, scheduler._run)

    def flush(self) -> None:
        """Hand everything queued to the transport in one batch."""
        self._scheduled = False
        if self._paused or self._closed or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._queued_bytes = 0
        self._sink.write(batch)

    def pause(self) -> None:
        """The transport's buffer is full: hold output (it still counts to the bound)."""
        self._paused = True

    def resume(self) -> None:
        """The transport drained: write what accumulated."""
        self._paused = False
        self.flush()

    def close(self, flush: bool) -> None:
        """Stop accepting output; ``flush`` writes what is queued first."""
        if self._closed:
            return
        if flush and not self._paused:
            self.flush()
        self._closed = True
        self._queue = []
        self._queued_bytes = 0
