"""Subscriptions: per-channel state of a client and the recovery rules.

Recovery is all-or-nothing (reliability.md §1.2): a resubscribing client gets the whole
gap from history, or ``recovered: false`` and no publications.
"""

from __future__ import annotations

import enum

from twisted.internet.interfaces import IDelayedCall

from rtserver.config import ChannelOptions
from rtserver.core.types import Overrides
from rtserver.core.writer import SharedPush
from rtserver.protocol.frames import Publication, StreamPosition

__all__ = ["SubState", "Subscription", "cache_recovered", "recovered"]


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


def recovered(
    pubs: list[Publication], offset: int, epoch: str, top: StreamPosition
) -> list[Publication] | None:
    """The publications that fill the gap after ``offset``, or None when they can't.

    Recovery is all-or-nothing: the whole gap from history, or nothing.
    """
    if epoch and epoch != top.epoch:
        return None
    if not pubs:
        return pubs if top.offset == offset else None
    if pubs[0].offset == offset + 1 and pubs[-1].offset == top.offset:
        return pubs
    return None


def cache_recovered(
    latest: list[Publication], offset: int, epoch: str, top: StreamPosition
) -> list[Publication] | None:
    """Cache-mode recovery: the client needs only the newest publication, if any."""
    if epoch == top.epoch and offset == top.offset:
        return []
    if latest and latest[0].offset == top.offset:
        return latest
    return None
