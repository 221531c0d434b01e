"""One IEngine made of a broker, a history and a presence manager chosen apart.

Centrifugo v6 lets ``broker`` and ``presence_manager`` replace one side of ``engine``;
service.py builds the parts and this class gives the node a single engine. The node
never learns which backend each part is.

Parts other than the broker (an engine used only for its presence or history) are
started with a handler that drops whatever they deliver: the broker alone carries
publications and control messages, so nothing is handled twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from rtserver.core.ports import IBroker, IEngine, IEngineHandler, IHistory, IPresenceManager
from rtserver.core.types import (
    ControlMessage,
    HistoryFilter,
    HistoryResult,
    PresenceStats,
    PublishOptions,
)
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

__all__ = ["CompositeEngine"]


@implementer(IEngineHandler)
class _Discard:
    """The handler of a part that is not the broker: it delivers nothing to the node."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    def handle_publication(self, channel: str, publication: Publication) -> None:
        """Dropped: publications come through the broker."""

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        """Dropped."""

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        """Dropped."""

    def handle_control(self, message: ControlMessage) -> None:
        """Dropped: control messages come through the broker."""


@implementer(IEngine)
class CompositeEngine:
    """Broker, history and presence from different objects.

    Args:
        broker: PUB/SUB and control messages; started with the node as handler.
        history: streams (often the broker itself).
        presence: presence (an engine or a presence manager).
        parts: further objects to start (with a discarding handler) and stop, e.g. the
            Redis engine that serves presence and history for a NATS broker.
    """

    def __init__(
        self,
        broker: IBroker,
        history: IHistory,
        presence: IPresenceManager,
        parts: Sequence[IBroker] = (),
    ) -> None:
        self.broker = broker
        self._history = history
        self._presence = presence
        self.parts = [p for p in parts if p is not broker]

    @property
    def shared(self) -> bool:
        """Whether the broker connects several nodes."""
        return bool(self.broker.shared)

    @property
    def healthy(self) -> bool:
        """True while the broker and every other part are healthy."""
        return bool(self.broker.healthy) and all(p.healthy for p in self.parts)

    def start(self, handler: IEngineHandler) -> Deferred[None]:
        """Start the parts, then the broker; fires when all have tried."""
        discard = _Discard(handler.uid)
        ds = [p.start(discard) for p in self.parts]
        ds.append(self.broker.start(handler))
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def stop(self) -> Deferred[None]:
        """Stop the broker and the parts."""
        ds = [self.broker.stop(), *(p.stop() for p in self.parts)]
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # --- broker ----------------------------------------------------------------------

    def subscribe(self, channel: str) -> Deferred[None]:
        """The broker's."""
        return self.broker.subscribe(channel)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        """The broker's."""
        return self.broker.unsubscribe(channel)

    def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """The broker's (it appends to its history)."""
        return self.broker.publish(channel, publication, options)

    def publish_order(self, channel: str) -> Hashable | None:
        """The broker's."""
        return self.broker.publish_order(channel)

    def publish_join(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """The broker's."""
        return self.broker.publish_join(channel, info)

    def publish_leave(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """The broker's."""
        return self.broker.publish_leave(channel, info)

    def publish_control(self, message: ControlMessage, node: str = "") -> Deferred[None]:
        """The broker's."""
        return self.broker.publish_control(message, node)

    # --- history ---------------------------------------------------------------------

    def history(
        self, channel: str, filter: HistoryFilter, meta_ttl: float
    ) -> Deferred[HistoryResult]:
        """The history side's."""
        return self._history.history(channel, filter, meta_ttl)

    def remove_history(self, channel: str) -> Deferred[None]:
        """The history side's."""
        return self._history.remove_history(channel)

    # --- presence --------------------------------------------------------------------

    def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> Deferred[None]:
        """The presence side's."""
        return self._presence.add_presence(channel, client_id, info)

    def remove_presence(self, channel: str, client_id: str, user: str) -> Deferred[None]:
        """The presence side's."""
        return self._presence.remove_presence(channel, client_id, user)

    def presence(self, channel: str) -> Deferred[dict[str, ClientInfo]]:
        """The presence side's."""
        return self._presence.presence(channel)

    def presence_stats(self, channel: str) -> Deferred[PresenceStats]:
        """The presence side's."""
        return self._presence.presence_stats(channel)
