"""The outbound path: encoded payloads, per-turn coalescing, bounded queues.

Every message for a connection goes through its :class:`ClientWriter`. Messages queued
within one reactor turn are handed to the transport together on the next turn (one
write, frames bounded in messages and bytes by the transport), and the bytes waiting are
bounded: past ``max_bytes`` the connection is cut as a slow consumer (3008) instead of
buffering without limit. With ``client.write_delay`` the flush waits that long instead,
so bursts spread over several turns share frames and ``send()`` calls.

A publication is encoded once (:class:`SharedPush`) and its :class:`Payload` is shared
by all subscribers; transports cache their framing of it on the payload, so the
WebSocket frame for a publication is built once too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from rtserver.core.ports import ISink
from rtserver.logs import Logger
from rtserver.protocol import codec

__all__ = ["ClientWriter", "FlushScheduler", "Payload", "SharedPush"]

_log = Logger()


class Payload:
    """One encoded message (a single JSON line) plus transport framings of it."""

    __slots__ = ("_framed", "data", "shared", "size")

    def __init__(self, data: bytes, shared: bool = False) -> None:
        self.data = data
        self.size = len(data)
        self.shared = shared
        self._framed: dict[str, bytes] | None = None

    def framed(self, kind: str, build: Callable[[bytes], bytes]) -> bytes:
        """The payload framed by ``build``, computed once per framing kind."""
        if not self.shared:
            return build(self.data)
        cache = self._framed
        if cache is None:
            cache = self._framed = {}
        out = cache.get(kind)
        if out is None:
            out = cache[kind] = build(self.data)
        return out

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Payload({self.data!r})"


class SharedPush:
    """A push to many connections, encoded at most once per wire shape."""

    __slots__ = ("_bidi", "_uni", "body", "channel", "kind")

    # Any: the push body is a JSON object of mixed values, encoded by the codec.
    def __init__(self, channel: str, kind: str, body: dict[str, Any]) -> None:
        self.channel = channel
        self.kind = kind
        self.body = body
        self._bidi: Payload | None = None
        self._uni: Payload | None = None

    def payload(self, uni: bool) -> Payload:
        """The payload for bidirectional (``{"push":...}``) or unidirectional clients."""
        if uni:
            if self._uni is None:
                data = codec.encode_push(self.channel, self.kind, self.body, uni=True)
                self._uni = Payload(data, shared=True)
            return self._uni
        if self._bidi is None:
            data = codec.encode_push(self.channel, self.kind, self.body)
            self._bidi = Payload(data, shared=True)
        return self._bidi


class FlushScheduler:
    """Flushes every writer that has output, once, at the start of the next turn.

    One ``callLater`` per turn serves all connections instead of one per connection.
    ``delay`` (``client.write_delay``) postpones the flush by that many seconds: output
    queued meanwhile is coalesced, trading up to ``delay`` of latency for fewer frames
    and syscalls. 0 flushes on the next turn.
    """

    __slots__ = ("_call", "_clock", "_delay", "_pending")

    def __init__(self, clock: IReactorTime, delay: float = 0.0) -> None:
        self._clock = clock
        self._delay = max(0.0, delay)
        self._pending: list[ClientWriter] = []
        self._call: IDelayedCall | None = None

    def add(self, writer: ClientWriter) -> None:
        """Flush ``writer`` on the next turn (or after the write delay)."""
        self._pending.append(writer)
        if self._call is None:
            self._call = self._clock.callLater(self._delay, self._run)

    def _run(self) -> None:
        self._call = None
        pending, self._pending = self._pending, []
        for writer in pending:
            try:
                writer.flush()
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
        self._queued_bytes += payload.size
        if self._queued_bytes > self._max_bytes:
            self._closed = True
            self._queue = []
            self._queued_bytes = 0
            self._on_overflow()
            return
        if not self._scheduled and not self._paused:
            self._scheduled = True
            self._scheduler.add(self)

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
