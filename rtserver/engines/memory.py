"""The in-memory engine: single-node pub/sub, history streams and presence.

History semantics follow Centrifugo's streams: each channel has an ``epoch`` (random
string) and a top ``offset`` (+1 per publication). Publications are capped at
``history_size`` newest and all expire ``history_ttl`` after the last publish; the
epoch/top metadata lives ``history_meta_ttl`` (renewed by publishes and reads) and, once
it expires, the channel starts over with a new epoch so old positions are unrecoverable.
The metadata also keeps the last publication ``version`` and its ``version_epoch``
(:class:`~rtserver.core.types.PublishOptions`: outdated versions are suppressed), with the
Redis engine's rules.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections import deque
from collections.abc import Hashable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from rtserver.core.ports import IEngine, IEngineHandler
from rtserver.core.types import (
    SUPPRESS_IDEMPOTENCY,
    SUPPRESS_VERSION,
    ControlMessage,
    HistoryFilter,
    HistoryResult,
    PresenceStats,
    PublishOptions,
    Suppressed,
)
from rtserver.logs import Logger
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

__all__ = ["MemoryEngine", "new_epoch"]

_log = Logger()
_EPOCH_ALPHABET = string.ascii_letters


def new_epoch(rng: random.Random | random.SystemRandom) -> str:
    """A fresh 8-letter stream epoch."""
    return "".join(rng.choices(_EPOCH_ALPHABET, k=8))


class _Stream:
    """One channel's history: metadata plus the retained publications."""

    __slots__ = ("epoch", "expire_at", "meta_expire_at", "pubs", "top", "version", "version_epoch")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.top = 0
        self.pubs: deque[Publication] = deque()
        self.expire_at = 0.0
        self.meta_expire_at = 0.0
        # The last accepted publication version (0: none kept) and its epoch.
        self.version = 0
        self.version_epoch = ""

    def outdated(self, version: int, version_epoch: str) -> bool:
        """Whether a publication of ``version`` must be suppressed.

        An empty ``version_epoch`` compares with whatever epoch is kept, as Centrifugo's.
        """
        return (
            self.version > 0
            and version <= self.version
            and (not version_epoch or version_epoch == self.version_epoch)
        )


@implementer(IEngine)
class MemoryEngine:
    """Everything in this process; the default engine."""

    healthy = True
    shared = False

    def __init__(
        self,
        clock: IReactorTime,
        *,
        cleanup_interval: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._handler: IEngineHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._idempotency: dict[tuple[str, str], tuple[StreamPosition, float]] = {}
        self._cleanup = LoopingCall(self.expire)
        self._cleanup.clock = clock
        self._cleanup_interval = cleanup_interval

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, handler: IEngineHandler) -> Deferred[None]:
        """Deliver to ``handler`` and start the periodic cleanup."""
        self._handler = handler
        if self._cleanup_interval > 0 and not self._cleanup.running:
            d = self._cleanup.start(self._cleanup_interval, now=False)
            d.addErrback(lambda f: _log.failure("memory engine cleanup stopped", f))
        return succeed(None)

    @property
    def _target(self) -> IEngineHandler:
        if self._handler is None:
            raise RuntimeError("MemoryEngine.start() was not called")
        return self._handler

    def stop(self) -> Deferred[None]:
        """Stop the cleanup loop."""
        if self._cleanup.running:
            self._cleanup.stop()
        return succeed(None)

    @property
    def retained_streams(self) -> int:
        """Channels whose stream (epoch, top offset, publications) is held in memory."""
        return len(self._streams)

    def expire(self) -> None:
        """Drop expired publications, stream metadata and idempotency results."""
        now = self._clock.seconds()
        for channel, stream in list(self._streams.items()):
            if stream.meta_expire_at <= now:
                del self._streams[channel]
            elif stream.pubs and stream.expire_at <= now:
                stream.pubs.clear()
        for key, (_, expire_at) in list(self._idempotency.items()):
            if expire_at <= now:
                del self._idempotency[key]

    # --- broker ------------------------------------------------------------------------

    def subscribe(self, channel: str) -> Deferred[None]:
        """Nothing to do: every publication reaches the node's handler."""
        return succeed(None)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        """Nothing to do."""
        return succeed(None)

    def publish_order(self, channel: str) -> Hashable | None:
        """One lane: a publish is applied and delivered before :meth:`publish` returns."""
        return 0

    def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """Append to history when enabled, then deliver (:class:`Suppressed`: neither)."""
        now = self._clock.seconds()
        key = (channel, options.idempotency_key)
        if options.idempotency_key:
            cached = self._idempotency.get(key)
            if cached is not None and cached[1] > now:
                first = cached[0]
                return succeed(Suppressed(first.offset, first.epoch, SUPPRESS_IDEMPOTENCY))
        if options.history_size > 0 and options.history_ttl > 0:
            version = options.version
            if version > 0:
                kept = self._streams.get(channel)
                if (
                    kept is not None
                    and kept.meta_expire_at > now
                    and kept.outdated(version, options.version_epoch)
                ):
                    # Suppressed: no append, no delivery, no idempotent result, no TTL
                    # renewed; the answer is the current position (as in the Lua script).
                    return succeed(Suppressed(kept.top, kept.epoch, SUPPRESS_VERSION))
            stream = self._stream(channel, options.history_meta_ttl, now)
            if version > 0:
                stream.version = version
                stream.version_epoch = options.version_epoch
            if stream.pubs and stream.expire_at <= now:
                stream.pubs.clear()
            stream.top += 1
            publication = dataclasses.replace(publication, offset=stream.top, epoch=stream.epoch)
            stream.pubs.append(publication)
            while len(stream.pubs) > options.history_size:
                stream.pubs.popleft()
            stream.expire_at = now + options.history_ttl
            position = StreamPosition(stream.top, stream.epoch)
        else:
            position = StreamPosition(0, "")
        if options.idempotency_key:
            self._idempotency[key] = (position, now + options.idempotency_ttl)
        self._target.handle_publication(channel, publication)
        return succeed(position)

    def publish_join(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Deliver a join."""
        self._target.handle_join(channel, info)
        return succeed(None)

    def publish_leave(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Deliver a leave."""
        self._target.handle_leave(channel, info)
        return succeed(None)

    def publish_control(self, message: ControlMessage, node: str = "") -> Deferred[None]:
        """Deliver a control message to this (the only) node."""
        handler = self._target
        if not node or node == handler.uid:
            handler.handle_control(message)
        return succeed(None)

    # --- history -------------------------------------------------------------------------

    def _stream(self, channel: str, meta_ttl: float, now: float) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None or stream.meta_expire_at <= now:
            stream = self._streams[channel] = _Stream(new_epoch(self._rng))
        stream.meta_expire_at = now + meta_ttl
        return stream

    def history(
        self, channel: str, filter: HistoryFilter, meta_ttl: float
    ) -> Deferred[HistoryResult]:
        """Read the stream; creates its epoch if the channel has none yet."""
        now = self._clock.seconds()
        stream = self._stream(channel, meta_ttl, now)
        if stream.pubs and stream.expire_at <= now:
            stream.pubs.clear()
        position = StreamPosition(stream.top, stream.epoch)
        limit = filter.limit
        if limit == 0 or not stream.pubs:
            return succeed(HistoryResult([], position))
        since = filter.since
        if filter.reverse:
            pubs = [p for p in reversed(stream.pubs) if since is None or p.offset < since.offset]
        else:
            pubs = [p for p in stream.pubs if since is None or p.offset > since.offset]
        if limit > 0:
            pubs = pubs[:limit]
        return succeed(HistoryResult(pubs, position))

    def remove_history(self, channel: str) -> Deferred[None]:
        """Drop publications; epoch and top offset stay."""
        stream = self._streams.get(channel)
        if stream is not None:
            stream.pubs.clear()
        return succeed(None)

    # --- presence ----------------------------------------------------------------------

    def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> Deferred[None]:
        """Add or refresh a connection's presence."""
        self._presence.setdefault(channel, {})[client_id] = info
        return succeed(None)

    def remove_presence(self, channel: str, client_id: str, user: str) -> Deferred[None]:
        """Remove a connection's presence."""
        clients = self._presence.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._presence[channel]
        return succeed(None)

    def presence(self, channel: str) -> Deferred[dict[str, ClientInfo]]:
        """``{client_id: ClientInfo}`` for the channel."""
        return succeed(dict(self._presence.get(channel, {})))

    def presence_stats(self, channel: str) -> Deferred[PresenceStats]:
        """Connection and distinct-user counts."""
        clients = self._presence.get(channel, {})
        users = {info.user for info in clients.values()}
        return succeed(PresenceStats(num_clients=len(clients), num_users=len(users)))
