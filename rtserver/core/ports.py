"""The ports the core owns: what engines, transports and authenticators implement.

* :class:`IEngine`: broker (pub/sub between nodes), history streams and presence.
  Every method returns a ``Deferred``. Memory and Redis engines pass one contract suite
  (``tests/engines/contract.py``).
* :class:`IEngineHandler`: the inbound side; the engine calls it for every publication,
  join, leave and control message that reaches this node.
* :class:`ISink`: what a transport gives a client connection.
* :class:`ITokenVerifier`: JWT verification for connection and subscription tokens.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IEngine", "IEngineHandler", "ISink", "ITokenVerifier"]


class IEngineHandler(Interface):
    """Receives what the engine delivers to this node."""

    uid = Attribute("This node's unique id (a random UUID per process).")

    def handle_publication(channel, publication):  # type: ignore[no-untyped-def]
        """A publication (offset assigned when the channel keeps history)."""

    def handle_join(channel, info):  # type: ignore[no-untyped-def]
        """A client joined ``channel`` (``info`` is a ClientInfo)."""

    def handle_leave(channel, info):  # type: ignore[no-untyped-def]
        """A client left ``channel``."""

    def handle_control(message):  # type: ignore[no-untyped-def]
        """A cluster-wide command (core.types.ControlMessage)."""


class IEngine(Interface):
    """Broker + history + presence. All methods return Deferreds."""

    shared = Attribute(
        "True when other nodes use the same engine (Redis): the node then announces "
        "itself, answers surveys and refreshes presence."
    )
    healthy = Attribute(
        "True while the engine can publish and deliver (memory: always; Redis: while "
        "both the command and the PUB/SUB links are up)."
    )

    def start(handler):  # type: ignore[no-untyped-def]
        """Begin delivering to ``handler`` (an IEngineHandler)."""

    def stop():  # type: ignore[no-untyped-def]
        """Release connections and timers."""

    def subscribe(channel):  # type: ignore[no-untyped-def]
        """Deliver ``channel``'s traffic to this node (first local subscriber)."""

    def unsubscribe(channel):  # type: ignore[no-untyped-def]
        """Stop delivering ``channel`` to this node (last local subscriber left)."""

    def publish(channel, publication, options):  # type: ignore[no-untyped-def]
        """Append to history (when enabled) and deliver to every node.

        Fires with the StreamPosition the publication got; ``offset`` is 0 and
        ``epoch`` empty when the channel keeps no history. A repeated
        ``options.idempotency_key`` within its TTL returns the first result and
        delivers nothing.
        """

    def publish_join(channel, info):  # type: ignore[no-untyped-def]
        """Deliver a join event to every node."""

    def publish_leave(channel, info):  # type: ignore[no-untyped-def]
        """Deliver a leave event to every node."""

    def publish_control(message, node=""):  # type: ignore[no-untyped-def]
        """Deliver a control message to every node (this one included).

        With ``node`` set, only the node whose uid it is receives the message.
        """

    def history(channel, filter, meta_ttl):  # type: ignore[no-untyped-def]
        """Read the stream; fires with a HistoryResult (position always set)."""

    def remove_history(channel):  # type: ignore[no-untyped-def]
        """Drop the stream's publications, keeping epoch and top offset."""

    def add_presence(channel, client_id, info):  # type: ignore[no-untyped-def]
        """Add or refresh one connection's presence in a channel."""

    def remove_presence(channel, client_id, user):  # type: ignore[no-untyped-def]
        """Remove one connection's presence."""

    def presence(channel):  # type: ignore[no-untyped-def]
        """Fires with ``{client_id: ClientInfo}``."""

    def presence_stats(channel):  # type: ignore[no-untyped-def]
        """Fires with PresenceStats."""


class ISink(Interface):
    """The transport side of one client connection."""

    transport_name = Attribute("Name used in logs and proxy requests, e.g. 'websocket'.")
    unidirectional = Attribute("True when the client sends nothing after connect.")
    emulation = Attribute("True when commands arrive through /emulation (session+node).")
    pong = Attribute("True when the client answers server pings.")

    def write(payloads):  # type: ignore[no-untyped-def]
        """Write a batch of Payloads (coalesced within one reactor turn), in order."""

    def close(disconnect):  # type: ignore[no-untyped-def]
        """Close the transport; ``disconnect`` is a Disconnect or None (plain close)."""


class ITokenVerifier(Interface):
    """Verifies JWTs; pure given the keys and ``now`` (unix seconds)."""

    def verify_connection_token(token, now):  # type: ignore[no-untyped-def]
        """Return a ConnectionToken or raise TokenExpired / InvalidToken."""

    def verify_subscription_token(token, now):  # type: ignore[no-untyped-def]
        """Return a SubscriptionToken or raise TokenExpired / InvalidToken."""
