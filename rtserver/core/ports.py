"""The ports the core owns: what engines, transports and authenticators implement.

Two kinds, one per port, never mixed:

* zope interfaces for ports implemented *outside* the core (engines, transports, the
  JWT verifier). Implementations declare them with ``@implementer`` and mypy checks their
  signatures against the interface (the mypy-zope plugin); ``verifyObject`` checks them
  at test time.

  - :class:`IBroker`: pub/sub between nodes, join/leave and control messages, lifecycle.
  - :class:`IHistory`: the channels' streams (the broker's ``publish`` appends to them,
    so a history comes with its broker, as in Centrifugo).
  - :class:`IPresenceManager`: who is in a channel.
  - :class:`IEngine`: all three in one object (the memory and Redis engines). The node
    takes an engine and optionally a separate presence manager, so a broker of one kind
    and a presence manager of another can be combined later (Centrifugo v6's NATS broker
    with a Redis presence manager).
  - :class:`IEngineHandler`: the inbound side; the broker calls it for every
    publication, join, leave and control message that reaches this node.
  - :class:`ISink`: what a transport gives a client connection.
  - :class:`ITokenVerifier`: JWT verification for connection and subscription tokens.

* ``typing.Protocol`` for the core's *internal* seams, implemented by core classes and
  checked structurally:

  - :class:`ClientNode`: everything a :class:`~rtserver.core.client.Client` needs from
    its node (``Node`` implements it). A client never sees an engine.
  - :class:`Subscriber`: a connection as the hub and the position check see it.

The backend proxies (Centrifugo's connect/refresh/subscribe/publish/sub_refresh/RPC
proxies) are a further port, :class:`rtserver.core.proxy.IProxy`, called by the client at
the points marked "proxy hook" in ``core/client.py``; see docs/proxies.rst.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

    from rtserver.config import ChannelOptions, Config
    from rtserver.core.channels import ChannelResolver
    from rtserver.core.client import Client
    from rtserver.core.proxy import Proxies
    from rtserver.core.stats import NodeStats
    from rtserver.core.subscription import Subscription
    from rtserver.core.types import (
        ConnectionToken,
        ControlMessage,
        HistoryFilter,
        HistoryResult,
        PresenceStats,
        PublishOptions,
        SubscriptionToken,
    )
    from rtserver.core.writer import FlushScheduler, Payload, SharedPush
    from rtserver.protocol.codes import Disconnect
    from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

__all__ = [
    "ClientNode",
    "IBroker",
    "IEngine",
    "IEngineHandler",
    "IHistory",
    "IPresenceManager",
    "ISink",
    "ITokenVerifier",
    "Subscriber",
]

# zope interface methods are declared without ``self``; mypy-zope knows this.


class IEngineHandler(Interface):
    """Receives what the broker delivers to this node."""

    uid: str = Attribute("This node's unique id (a random UUID per process).")

    def handle_publication(channel: str, publication: Publication) -> None:
        """A publication (offset assigned when the channel keeps history)."""

    def handle_join(channel: str, info: ClientInfo) -> None:
        """A client joined ``channel``."""

    def handle_leave(channel: str, info: ClientInfo) -> None:
        """A client left ``channel``."""

    def handle_control(message: ControlMessage) -> None:
        """A cluster-wide command or node-to-node message."""


class IBroker(Interface):
    """Pub/sub between nodes. Every method returns a Deferred."""

    shared: bool = Attribute(
        "True when other nodes use the same broker (Redis): the node then announces "
        "itself, answers surveys and refreshes presence."
    )
    healthy: bool = Attribute(
        "True while the broker can publish and deliver (memory: always; Redis: while "
        "both the command and the PUB/SUB links are up)."
    )

    def start(handler: IEngineHandler) -> Deferred[None]:
        """Begin delivering to ``handler``."""

    def stop() -> Deferred[None]:
        """Release connections and timers."""

    def subscribe(channel: str) -> Deferred[None]:
        """Deliver ``channel``'s traffic to this node (first local subscriber)."""

    def unsubscribe(channel: str) -> Deferred[None]:
        """Stop delivering ``channel`` to this node (last local subscriber left)."""

    def publish(
        channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """Append to history (when enabled) and deliver to every node.

        Fires with the StreamPosition the publication got; ``offset`` is 0 and
        ``epoch`` empty when the channel keeps no history. A suppressed publication
        fires with a :class:`~rtserver.core.types.Suppressed` position instead (a
        StreamPosition with a ``reason``; an accepted one never does):

        * ``"idempotency"``: a repeated ``options.idempotency_key`` within its TTL; the
          first result, nothing delivered.
        * ``"version"``: an outdated ``options.version`` (see
          :class:`~rtserver.core.types.PublishOptions`); nothing is appended or
          delivered, no idempotent result is kept, and the position is the stream's
          current one.
        """

    def publish_order(channel: str) -> Hashable | None:
        """Which in-order lane a publish into ``channel`` takes, or None if unknown.

        Publishes into channels with the same (non-None) key are applied, stored and
        delivered in the order :meth:`publish` was called, even when the next is called
        before the previous one's Deferred fired (one ordered connection, or a
        synchronous engine). The server API's sequential batch then issues a run of
        such publishes without waiting for each answer. None: no such promise (several
        connections, a cluster, a two-step publish); the caller waits for each result.
        """

    def publish_join(channel: str, info: ClientInfo) -> Deferred[None]:
        """Deliver a join event to every node."""

    def publish_leave(channel: str, info: ClientInfo) -> Deferred[None]:
        """Deliver a leave event to every node."""

    def publish_control(message: ControlMessage, node: str = "") -> Deferred[None]:
        """Deliver a control message to every node (this one included).

        With ``node`` set, only the node whose uid it is receives the message.
        """


class IHistory(Interface):
    """The channels' streams (appended to by :meth:`IBroker.publish`)."""

    def history(channel: str, filter: HistoryFilter, meta_ttl: float) -> Deferred[HistoryResult]:
        """Read the stream; fires with a HistoryResult (position always set)."""

    def remove_history(channel: str) -> Deferred[None]:
        """Drop the stream's publications, keeping epoch and top offset."""


class IPresenceManager(Interface):
    """Who is subscribed to a channel, across nodes."""

    def add_presence(channel: str, client_id: str, info: ClientInfo) -> Deferred[None]:
        """Add or refresh one connection's presence in a channel."""

    def remove_presence(channel: str, client_id: str, user: str) -> Deferred[None]:
        """Remove one connection's presence."""

    def presence(channel: str) -> Deferred[dict[str, ClientInfo]]:
        """Fires with ``{client_id: ClientInfo}``."""

    def presence_stats(channel: str) -> Deferred[PresenceStats]:
        """Fires with PresenceStats."""


class IEngine(IBroker, IHistory, IPresenceManager):
    """Broker, history and presence in one (the memory and Redis engines)."""


class ISink(Interface):
    """The transport side of one client connection."""

    transport_name: str = Attribute("Name used in logs and proxy requests, e.g. 'websocket'.")
    unidirectional: bool = Attribute("True when the client sends nothing after connect.")
    emulation: bool = Attribute("True when commands arrive through /emulation (session+node).")
    pong: bool = Attribute("True when the client answers server pings.")

    def write(payloads: Sequence[Payload]) -> None:
        """Write a batch of Payloads (coalesced within one reactor turn), in order."""

    def close(disconnect: Disconnect | None) -> None:
        """Close the transport; ``disconnect`` is None for a plain close."""


class ITokenVerifier(Interface):
    """Verifies JWTs; pure given the keys and ``now`` (unix seconds)."""

    def verify_connection_token(token: str, now: float) -> ConnectionToken:
        """Return a ConnectionToken or raise TokenExpired / InvalidToken."""

    def verify_subscription_token(token: str, now: float) -> SubscriptionToken:
        """Return a SubscriptionToken or raise TokenExpired / InvalidToken."""


class Subscriber(Protocol):
    """A connection as the hub (fan-out) and the position check see it."""

    @property
    def id(self) -> str:
        """The connection's id."""

    @property
    def user(self) -> str:
        """The connection's user ("" for anonymous)."""

    @property
    def session(self) -> str:
        """The emulation/unidirectional session id, or ""."""

    @property
    def transport_name(self) -> str:
        """The transport's name, counted per transport in ``/metrics``."""

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""

    def deliver_publication(self, sub: Subscription, pub: Publication, push: SharedPush) -> None:
        """Queue a publication (its encoding shared by every subscriber)."""

    def deliver_push(self, sub: Subscription, push: SharedPush) -> None:
        """Queue a join/leave push."""

    def insufficient_state(self, sub: Subscription) -> None:
        """The subscription's stream position is lost."""


class ClientNode(Protocol):
    """What a client needs from its node; ``Node`` implements it.

    The client reaches engines, the hub and the cluster only through these methods.
    """

    @property
    def clock(self) -> IReactorTime:
        """The injected clock."""

    @property
    def config(self) -> Config:
        """The server configuration (the client reads ``client``)."""

    @property
    def uid(self) -> str:
        """This node's id (sent to emulation clients)."""

    @property
    def version(self) -> str:
        """The server version in connect and refresh results."""

    @property
    def scheduler(self) -> FlushScheduler:
        """Flushes every writer once per reactor turn."""

    @property
    def stats(self) -> NodeStats:
        """Counters and timings for ``/metrics`` (commands, proxies, disconnects)."""

    @property
    def resolver(self) -> ChannelResolver:
        """Channel names to namespace options."""

    @property
    def proxies(self) -> Proxies:
        """The backend proxies (docs/proxies.rst); empty when none is configured."""

    @property
    def verifier(self) -> ITokenVerifier | None:
        """The JWT verifier; None when no token key is configured."""

    # --- connections and subscriptions on this node ---

    def add_client(self, client: Client) -> None:
        """Register a client whose connect succeeded."""

    def remove_client(self, client: Client) -> None:
        """Forget a closed client."""

    def user_connections(self, user: str) -> int:
        """How many connected clients ``user`` has on this node."""

    def add_subscription(self, channel: str, client: Client, sub: Subscription) -> Deferred[None]:
        """Add a local subscriber; fires once the broker delivers ``channel`` here."""

    def seed_delta_base(self, channel: str, pub: Publication) -> None:
        """A delta subscriber recovered up to ``pub``.

        The next publication may be a delta against it when this node has no previous
        publication of the channel.
        """

    def remove_subscription(self, channel: str, client: Client) -> None:
        """Remove a local subscriber."""

    # --- broker, history, presence ---

    def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        idempotency_key: str = "",
        delta: bool = False,
        version: int = 0,
        version_epoch: str = "",
        opts: ChannelOptions | None = None,
    ) -> Deferred[StreamPosition]:
        """Publish into a channel on every node (``delta``: as a fossil delta if negotiated).

        An outdated ``version`` is suppressed (see ``PublishOptions``).
        """

    def history(
        self, channel: str, flt: HistoryFilter, opts: ChannelOptions | None = None
    ) -> Deferred[HistoryResult]:
        """The ``history`` command's read (availability and epoch checked)."""

    def read_stream(
        self, channel: str, flt: HistoryFilter, opts: ChannelOptions
    ) -> Deferred[HistoryResult]:
        """Read a stream as it is (recovery on subscribe)."""

    def stream_top(self, channel: str, opts: ChannelOptions) -> Deferred[StreamPosition]:
        """A stream's current epoch and top offset."""

    def publish_join(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Announce a join to every node."""

    def publish_leave(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Announce a leave to every node."""

    def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> Deferred[None]:
        """Add or refresh a connection's presence."""

    def remove_presence(self, channel: str, client_id: str, user: str) -> Deferred[None]:
        """Remove a connection's presence."""

    def presence(self, channel: str) -> Deferred[dict[str, ClientInfo]]:
        """``{client_id: ClientInfo}`` of a channel."""

    def presence_stats(self, channel: str) -> Deferred[PresenceStats]:
        """A channel's presence counts."""

    def control(self, message: ControlMessage) -> Deferred[None]:
        """Send a control command to every node."""

    def background(self, d: Deferred[None], what: str = "background operation") -> None:
        """Run ``d`` detached, logging its failure."""
