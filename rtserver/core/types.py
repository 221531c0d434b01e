"""Domain values shared by the core, the engines and the adapters.

The message values the codec encodes (ClientInfo, Publication, StreamPosition) live in
``protocol/frames.py``; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from twisted.internet.defer import Deferred

from rtserver.protocol.frames import Publication, StreamPosition

__all__ = [
    "CONTROL_TYPES",
    "SUPPRESS_IDEMPOTENCY",
    "SUPPRESS_VERSION",
    "ConnectionToken",
    "ControlMessage",
    "DisconnectControl",
    "HistoryFilter",
    "HistoryResult",
    "InvalidToken",
    "NodeInfo",
    "NodeShutdown",
    "Overrides",
    "PresenceStats",
    "PublishOptions",
    "RefreshControl",
    "SubscribeControl",
    "SubscriptionGrant",
    "SubscriptionToken",
    "SuppressReason",
    "Suppressed",
    "SurveyReply",
    "SurveyRequest",
    "TokenExpired",
    "UnsubscribeControl",
    "UserControl",
]


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """Which part of a stream to read: ``limit`` 0 = none, -1 = all."""

    since: StreamPosition | None = None
    limit: int = 0
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications (oldest first unless reversed) and the stream's top position."""

    publications: list[Publication]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """How a publication is kept: history window, idempotency and version.

    ``version`` > 0 (with ``version_epoch``) drops outdated publications in a channel
    with history, as Centrifugo does: the stream's meta keeps the last version and
    version epoch; a publication whose version is not greater than the kept one is
    suppressed (not appended, not delivered) unless its version epoch is non-empty and
    differs from the kept one, which starts a new comparison. ``version`` 0: no check,
    and the kept version stays. Without history nothing is kept and nothing checked.
    """

    history_size: int = 0
    history_ttl: float = 0.0
    history_meta_ttl: float = 0.0
    idempotency_key: str = ""
    idempotency_ttl: float = 300.0
    version: int = 0
    version_epoch: str = ""


#: Why a publish was suppressed, with Centrifugo's names (``SuppressReason``).
SuppressReason = Literal["idempotency", "version"]
#: A repeated idempotency key: the first publish's result, nothing delivered.
SUPPRESS_IDEMPOTENCY: Final = "idempotency"
#: An outdated ``version`` (:class:`PublishOptions`): the stream's current position.
SUPPRESS_VERSION: Final = "version"


@dataclass(frozen=True, slots=True)
class Suppressed(StreamPosition):
    """A publish that appended and delivered nothing (Centrifugo's ``Suppressed``).

    What :meth:`IBroker.publish <rtserver.core.ports.IBroker.publish>` fires with then:
    a StreamPosition (the one the caller answers with: the first result of a repeated
    idempotency key, or the stream's current position for an outdated version) plus
    ``reason``. An accepted publish fires with a plain StreamPosition, so the common
    path allocates nothing more; ``isinstance(position, Suppressed)`` tells them apart.
    """

    reason: SuppressReason


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """Counts of a channel's presence."""

    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-subscription overrides of namespace options (token or API ``override``)."""

    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_recovery: bool | None = None
    force_positioning: bool | None = None


class TokenExpired(Exception):
    """The token's ``exp`` has passed (clients fetch a new one on 109)."""


class InvalidToken(Exception):
    """The token is malformed, badly signed, or has claims it must not have."""


class KeysLoading(InvalidToken):
    """The token names a key (``kid``) the verifier is fetching right now.

    The caller may wait for ``ready`` (it never fails) and verify once more; one that
    cannot wait treats it as the :class:`InvalidToken` it is.
    """

    def __init__(self, ready: Deferred[None]) -> None:
        super().__init__("unknown key id; keys are being fetched")
        self.ready = ready


@dataclass(frozen=True)
class SubscriptionGrant:
    """A server-side subscription granted by a connection token's ``subs`` claim."""

    info: bytes | None = None
    data: bytes | None = None
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True)
class ConnectionToken:
    """Verified claims of a connection JWT.

    ``expire_at`` is 0 when the connection never expires.
    """

    user: str
    expire_at: int = 0
    info: bytes | None = None
    channels: tuple[str, ...] = ()
    subs: dict[str, SubscriptionGrant] = field(default_factory=dict)
    meta: dict[str, Any] | None = None  # Any: the token's ``meta`` claim, arbitrary JSON


@dataclass(frozen=True)
class SubscriptionToken:
    """Verified claims of a subscription JWT."""

    user: str
    channel: str
    expire_at: int = 0
    info: bytes | None = None
    data: bytes | None = None
    overrides: Overrides = field(default_factory=Overrides)
    client: str = ""


# --- cluster-wide commands (server API subscribe/unsubscribe/disconnect/refresh) --------


@dataclass(frozen=True)
class SubscribeControl:
    """Subscribe a user's connections to a channel server-side."""

    user: str
    channel: str
    client: str = ""
    session: str = ""
    info: bytes | None = None
    data: bytes | None = None
    recover_since: StreamPosition | None = None
    expire_at: int = 0
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True)
class UnsubscribeControl:
    """Unsubscribe a user's connections from a channel."""

    user: str
    channel: str
    client: str = ""
    session: str = ""


@dataclass(frozen=True)
class DisconnectControl:
    """Disconnect a user's connections (except ``whitelist``)."""

    user: str
    code: int
    reason: str
    client: str = ""
    session: str = ""
    whitelist: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefreshControl:
    """Refresh (extend or expire) a user's connections server-side."""

    user: str
    client: str = ""
    session: str = ""
    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None


UserControl = SubscribeControl | UnsubscribeControl | DisconnectControl | RefreshControl


# --- node-to-node messages (cluster membership and surveys) ----------------------------


@dataclass(frozen=True)
class NodeInfo:
    """A node's periodic announcement on the control channel."""

    uid: str
    name: str
    version: str
    num_clients: int = 0
    num_users: int = 0
    num_channels: int = 0
    num_subs: int = 0
    uptime: int = 0


@dataclass(frozen=True)
class NodeShutdown:
    """A node is stopping gracefully: peers forget it at once."""

    uid: str


@dataclass(frozen=True)
class SurveyRequest:
    """Ask every node (or one) a question; answers go to ``sender`` only.

    ``data`` is raw JSON (the operation's arguments).
    """

    id: str
    op: str
    sender: str
    data: bytes = b"null"


@dataclass(frozen=True)
class SurveyReply:
    """One node's answer to a SurveyRequest; ``code`` 0 is success."""

    id: str
    sender: str
    code: int = 0
    data: bytes = b"null"


ControlMessage = UserControl | NodeInfo | NodeShutdown | SurveyRequest | SurveyReply

#: Every control message type by name (engines serialise control messages with it).
CONTROL_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        SubscribeControl,
        UnsubscribeControl,
        DisconnectControl,
        RefreshControl,
        NodeInfo,
        NodeShutdown,
        SurveyRequest,
        SurveyReply,
    )
}
