"""Subscriptions: per-channel state of a client, and how a new one is configured.

:func:`client_subscription` and :func:`server_subscription` are the two ways a
subscription comes to be (a ``subscribe`` command; a token's ``channels``/``subs``,
the personal channel or the server API); both are pure given the channel's options.
The recovery rules are in :mod:`rtserver.core.recovery`.
"""

from __future__ import annotations

import enum

from twisted.internet.interfaces import IDelayedCall

from rtserver.config import ChannelOptions
from rtserver.core.permissions import may_read_history, may_read_presence
from rtserver.core.types import Overrides, SubscriptionToken
from rtserver.core.writer import SharedPush
from rtserver.protocol.filters import Filter, FilterError, subscription_filter
from rtserver.protocol.frames import Publication, SubscribeRequest

__all__ = [
    "SubState",
    "Subscription",
    "client_subscription",
    "negotiate",
    "server_subscription",
]


class SubState(enum.Enum):
    """Subscription lifecycle: publications are buffered until the reply is out."""

    SUBSCRIBING = "subscribing"
    LIVE = "live"


class Subscription:
    """One channel subscription of one client."""

    __slots__ = (
        "buffer",
        "chan_info",
        "channel",
        "check_top",
        "delta",
        "delta_base",
        "emit_join_leave",
        "epoch",
        "expire_at",
        "offset",
        "opts",
        "positioned",
        "presence",
        "push_join_leave",
        "recoverable",
        "server_side",
        "state",
        "tags_filter",
        "timer",
    )

    def __init__(self, channel: str, opts: ChannelOptions, server_side: bool) -> None:
        self.channel = channel
        self.opts = opts
        self.server_side = server_side
        self.state = SubState.SUBSCRIBING
        self.positioned = False
        self.recoverable = False
        self.presence = opts.presence
        self.emit_join_leave = opts.join_leave
        self.push_join_leave = False
        self.offset = 0
        self.epoch = ""
        self.check_top = 0  # stream top seen ahead of this subscriber at the last check
        self.chan_info: bytes | None = None
        self.expire_at = 0
        self.buffer: list[tuple[Publication | None, SharedPush]] = []
        self.timer: IDelayedCall | None = None
        #: Fossil delta compression negotiated (publications go out as deltas).
        self.delta = False
        #: Offset of the last publication this delta subscriber got (its delta base);
        #: 0 when it has none and the next publication must go out full.
        self.delta_base = 0
        #: The ``tf`` filter: only publications whose tags match are delivered.
        self.tags_filter: Filter | None = None

    def apply(self, overrides: Overrides) -> None:
        """Apply token or API overrides of namespace options."""
        if overrides.presence is not None:
            self.presence = overrides.presence
        if overrides.join_leave is not None:
            self.emit_join_leave = overrides.join_leave
        if overrides.force_push_join_leave is not None and self.emit_join_leave:
            self.push_join_leave = overrides.force_push_join_leave
        if overrides.force_positioning:
            self.positioned = True
        if overrides.force_recovery and self.opts.history_enabled:
            self.recoverable = self.positioned = True



def client_subscription(
    req: SubscribeRequest,
    opts: ChannelOptions,
    token: SubscriptionToken | None,
    user: str,
    insecure: bool,
) -> Subscription:
    """A ``subscribe`` command's subscription (permission to subscribe already checked).

    Positioning, recovery and join/leave pushes are granted when the namespace forces
    them, or when the client asks and may read history/presence (a subscription token or
    ``insecure`` grants both). The token's expiry, channel info and overrides apply.
    """
    sub = Subscription(req.channel, opts, server_side=False)
    insecure = insecure or token is not None
    history_ok = opts.history_enabled and may_read_history(opts, user, True, insecure)
    presence_ok = may_read_presence(opts, user, True, insecure)
    sub.recoverable = opts.history_enabled and (
        opts.force_recovery or (req.recoverable and (opts.allow_recovery or history_ok))
    )
    sub.positioned = sub.recoverable or (
        opts.history_enabled
        and (opts.force_positioning or (req.positioned and (opts.allow_positioning or history_ok)))
    )
    sub.push_join_leave = opts.join_leave and (
        opts.force_push_join_leave or (req.join_leave and presence_ok)
    )
    if token is not None:
        sub.expire_at = token.expire_at
        sub.chan_info = token.info
        sub.apply(token.overrides)
    return sub


def negotiate(sub: Subscription, req: SubscribeRequest) -> None:
    """Apply the request's ``delta`` and ``tf`` to a client subscription.

    Delta is granted as in Centrifugo: requested, listed in the namespace's
    ``allowed_delta_types``, and the subscription is positioned (which needs history);
    otherwise the reply says nothing and publications go out plain.

    Raises:
        Error: 107 for a ``tf`` not allowed in the namespace, combined with ``delta``, or
            malformed.
    """
    try:
        sub.tags_filter = subscription_filter(
            req.tf, delta=req.delta, allowed=sub.opts.allow_tags_filter
        )
    except FilterError as e:
        raise e.to_error() from None
    sub.delta = bool(req.delta) and req.delta in sub.opts.allowed_delta_types and sub.positioned


def server_subscription(
    channel: str,
    opts: ChannelOptions,
    *,
    info: bytes | None = None,
    overrides: Overrides | None = None,
    expire_at: int = 0,
) -> Subscription:
    """A server-side subscription: only what the namespace forces, then the overrides."""
    sub = Subscription(channel, opts, server_side=True)
    sub.positioned = opts.force_positioning or opts.force_recovery
    sub.recoverable = opts.force_recovery
    sub.push_join_leave = opts.join_leave and opts.force_push_join_leave
    sub.chan_info = info
    if overrides is not None:
        sub.apply(overrides)
    sub.expire_at = expire_at
    return sub
