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

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall

from rtserver.core.subscription import SubState
from rtserver.core.types import HistoryFilter, HistoryResult
from rtserver.logs import Logger

if TYPE_CHECKING:
    from rtserver.core.node import Node

__all__ = ["PositionCheck"]

_log = Logger()


class PositionCheck:
    """Checks positioned subscriptions against their stream tops on a loop."""

    def __init__(self, node: Node, interval: float = 40.0) -> None:
        self._node = node
        self._interval = interval
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        """Check every ``interval`` seconds from now on."""
        if self._interval <= 0 or self._loop is not None:
            return
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._node.clock
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: _log.failure("position check loop stopped", f)
        )

    def stop(self) -> None:
        """Stop checking."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> Deferred[Any]:
        """One pass over every channel with positioned local subscribers."""
        node = self._node
        reads = []
        for channel, _ in list(node.hub.channels()):
            subs = node.hub.subscribers(channel)
            if not any(sub.positioned for _, sub in subs):
                continue
            opts = subs[0][1].opts
            d = node.engine.history(channel, HistoryFilter(limit=0), node.meta_ttl(opts))
            d.addCallback(self._compare, channel)
            d.addErrback(_unavailable, channel)
            reads.append(d)
        return gatherResults(reads)

    def _compare(self, result: HistoryResult, channel: str) -> None:
        top = result.position
        for client, sub in self._node.hub.subscribers(channel):
            if not sub.positioned or sub.state is not SubState.LIVE or client.closed:
                continue
            if top.epoch != sub.epoch or (sub.check_top and sub.offset < sub.check_top):
                sub.check_top = 0
                client.insufficient_state(sub)
            elif sub.offset < top.offset:
                sub.check_top = top.offset
            else:
                sub.check_top = 0


def _unavailable(failure: Any, channel: str) -> None:
    """The engine could not answer (e.g. Redis down): try again next time."""
    _log.debug("position check of {channel} skipped: {e}", channel=channel, e=failure.value)
