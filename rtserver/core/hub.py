"""The local registry of connections and subscriptions, and fan-out to them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from rtserver.core.ports import Subscriber
from rtserver.core.subscription import Subscription
from rtserver.core.writer import SharedPush
from rtserver.protocol.frames import ClientInfo, Publication

__all__ = ["Hub"]

#: The connection type the hub holds (``Client`` in a node); the hub itself needs only
#: the :class:`~rtserver.core.ports.Subscriber` port.
ConnT = TypeVar("ConnT", bound=Subscriber)


class Hub(Generic[ConnT]):
    """Connections by id, session and user; subscribers by channel.

    Broadcasts encode once per wire shape present among the subscribers (JSON and
    Protobuf, see :class:`SharedPush`) and iterate a snapshot of
    the subscriber set, so a delivery that closes a connection cannot break the loop.

    For channels with delta subscribers the hub keeps the last publication it fanned
    out: it is the base a publication flagged ``delta`` is encoded against (once, by the
    shared push) when it directly follows it in the stream.
    """

    def __init__(self) -> None:
        self._clients: dict[str, ConnT] = {}
        self._sessions: dict[str, ConnT] = {}
        self._users: dict[str, dict[str, ConnT]] = {}
        # Subscribers are connections, or node-level observers (the admin UI's channel
        # inspector) that are no connection and no user.
        self._subs: dict[str, dict[Subscriber, Subscription]] = {}
        #: Delta subscribers per channel, and the last publication of those channels.
        self._delta_subs: dict[str, int] = {}
        self._last: dict[str, Publication] = {}
        #: Connections accepted since start, by transport name (``/metrics``).
        self.accepted: dict[str, int] = {}

    # --- connections ---------------------------------------------------------------

    def add_client(self, client: ConnT) -> None:
        """Register a connected client."""
        self._clients[client.id] = client
        transport = client.transport_name
        self.accepted[transport] = self.accepted.get(transport, 0) + 1
        if client.session:
            self._sessions[client.session] = client
        self._users.setdefault(client.user, {})[client.id] = client

    def remove_client(self, client: ConnT) -> None:
        """Forget a client (its subscriptions must be removed separately)."""
        if self._clients.pop(client.id, None) is None:
            return
        if client.session:
            self._sessions.pop(client.session, None)
        users = self._users.get(client.user)
        if users is not None:
            users.pop(client.id, None)
            if not users:
                del self._users[client.user]

    def by_session(self, session: str) -> ConnT | None:
        """The connected client with this emulation session id."""
        return self._sessions.get(session)

    def user_clients(self, user: str) -> list[ConnT]:
        """A snapshot of ``user``'s connections on this node."""
        return list(self._users.get(user, {}).values())

    def clients(self) -> list[ConnT]:
        """A snapshot of every connection."""
        return list(self._clients.values())

    @property
    def num_clients(self) -> int:
        """Connections on this node."""
        return len(self._clients)

    @property
    def num_users(self) -> int:
        """Distinct users connected to this node."""
        return len(self._users)

    # --- subscriptions ---------------------------------------------------------------

    def add_subscriber(self, channel: str, client: Subscriber, sub: Subscription) -> bool:
        """Add a subscriber; True when it is the channel's first on this node."""
        if sub.delta:
            self._delta_subs[channel] = self._delta_subs.get(channel, 0) + 1
        subs = self._subs.get(channel)
        if subs is None:
            self._subs[channel] = {client: sub}
            return True
        old = subs.get(client)
        subs[client] = sub
        if old is not None and old.delta:
            self._forget_delta(channel)
        return False

    def _forget_delta(self, channel: str) -> None:
        count = self._delta_subs[channel] - 1
        if count:
            self._delta_subs[channel] = count
        else:
            del self._delta_subs[channel]
            self._last.pop(channel, None)

    def remove_subscriber(self, channel: str, client: Subscriber) -> bool:
        """Remove a subscriber; True when the channel has none left on this node."""
        subs = self._subs.get(channel)
        if subs is None:
            return False
        sub = subs.pop(client, None)
        if sub is None:
            return False
        if sub.delta:
            self._forget_delta(channel)
        if not subs:
            del self._subs[channel]
            return True
        return False

    def seed_delta_base(self, channel: str, pub: Publication) -> None:
        """Take a recovered publication as the channel's last one, if none is known.

        A delta subscriber that recovered has ``pub`` as its base; without it, the next
        publication would go out full although the subscriber could take a delta. The
        offset and epoch check of :meth:`broadcast_publication` keeps a stale seed
        harmless.
        """
        if channel in self._delta_subs and channel not in self._last:
            self._last[channel] = pub

    def has_subscribers(self, channel: str) -> bool:
        """Whether anyone on this node is subscribed to ``channel``."""
        return channel in self._subs

    def subscribers(self, channel: str) -> list[tuple[Subscriber, Subscription]]:
        """A snapshot of ``channel``'s local subscribers."""
        return list(self._subs.get(channel, {}).items())

    def channels(self) -> Iterator[tuple[str, int]]:
        """``(channel, local subscriber count)`` for every channel."""
        for channel, subs in self._subs.items():
            yield channel, len(subs)

    @property
    def num_channels(self) -> int:
        """Channels with at least one local subscriber."""
        return len(self._subs)

    @property
    def num_subscriptions(self) -> int:
        """Subscriptions on this node."""
        return sum(len(s) for s in self._subs.values())

    # --- fan-out ---------------------------------------------------------------------

    def broadcast_publication(self, channel: str, publication: Publication) -> None:
        """Deliver a publication to every local subscriber of ``channel``."""
        subs = self._subs.get(channel)
        if not subs:
            return
        prev = None
        if channel in self._delta_subs:
            last = self._last.get(channel)
            if (
                publication.delta
                and last is not None
                and last.offset
                and publication.offset == last.offset + 1
                and publication.epoch == last.epoch
            ):
                prev = last
            self._last[channel] = publication
        push = SharedPush.publication(channel, publication, prev)
        # a dict copy is a snapshot without one tuple per subscriber
        for client, sub in subs.copy().items():
            client.deliver_publication(sub, publication, push)

    def broadcast_join_leave(self, channel: str, kind: str, info: ClientInfo) -> None:
        """Deliver a join or leave to subscribers that asked for them."""
        subs = self._subs.get(channel)
        if not subs:
            return
        push = SharedPush.join_leave(channel, kind, info)
        for client, sub in subs.copy().items():
            if sub.push_join_leave:
                client.deliver_push(sub, push)
