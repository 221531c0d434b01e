"""The periodic stream-position check of positioned subscriptions.

Live publications carry offsets, so a gap shows when the *next* publication arrives. A
publication lost on its way to this node (a Redis PUB/SUB link that dropped) in a channel
that then goes quiet would never show; so every ``interval`` (40 s, as Centrifugo's
``ClientChannelPositionCheckDelay``) the node reads each such channel's stream top once
and compares it with its subscribers:

* a different epoch: the stream restarted under them (lost state) -> insufficient state;
* behind the top: remembered; still behind *that* top at the next check -> insufficient
  state (publications in flight during one check are not a loss).

Insufficient state makes clients resubscribe (2500) or reconnect (3010) and recover.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from rtserver.config import ChannelOptions
from rtserver.core.loops import run_every
from rtserver.core.ports import Subscriber
from rtserver.core.subscription import Subscription, SubState
from rtserver.logs import Logger
from rtserver.protocol.frames import StreamPosition

__all__ = ["PositionCheck", "StreamTop", "Subscribers"]

_log = Logger()

#: Reads a channel's stream top (``Node.stream_top``).
StreamTop = Callable[[str, ChannelOptions], Deferred[StreamPosition]]


class Subscribers(Protocol):
    """The local subscribers by channel (the node's ``Hub``)."""

    def channels(self) -> Iterator[tuple[str, int]]:
        """``(channel, local subscriber count)`` for every channel."""

    def subscribers(self, channel: str) -> Sequence[tuple[Subscriber, Subscription]]:
        """A snapshot of ``channel``'s local subscribers."""


class PositionCheck:
    """Checks positioned subscriptions against their stream tops on a loop."""

    def __init__(
        self,
        subscribers: Subscribers,
        stream_top: StreamTop,
        clock: IReactorTime,
        interval: float = 40.0,
    ) -> None:
        self._subscribers = subscribers
        self._stream_top = stream_top
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        """Check every ``interval`` seconds from now on."""
        if self._interval <= 0 or self._loop is not None:
            return
        self._loop = run_every(
            self._clock, self._interval, self.check, "position check loop", now=False
        )

    def stop(self) -> None:
        """Stop checking."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> Deferred[list[None]]:
        """One pass over every channel with positioned local subscribers."""
        reads: list[Deferred[None]] = []
        for channel, _ in list(self._subscribers.channels()):
            subs = self._subscribers.subscribers(channel)
            if not any(sub.positioned for _, sub in subs):
                continue
            d = self._stream_top(channel, subs[0][1].opts).addCallback(self._compare, channel)
            reads.append(d.addErrback(_unavailable, channel))
        return gatherResults(reads)

    def _compare(self, top: StreamPosition, channel: str) -> None:
        for client, sub in self._subscribers.subscribers(channel):
            if not sub.positioned or sub.state is not SubState.LIVE or client.closed:
                continue
            if top.epoch != sub.epoch or (sub.check_top and sub.offset < sub.check_top):
                sub.check_top = 0
                client.insufficient_state(sub)
            elif sub.offset < top.offset:
                sub.check_top = top.offset
            else:
                sub.check_top = 0


def _unavailable(failure: Failure, channel: str) -> None:
    """The engine could not answer (e.g. Redis down): try again next time."""
    _log.debug("position check of {channel} skipped: {e}", channel=channel, e=failure.value)
