"""The cluster as one node sees it: live peers from heartbeats, and surveys.

Every node announces itself (:class:`NodeInfo`) on the engine's control channel every
``heartbeat`` seconds; a peer not heard from for ``expire_after`` seconds is forgotten
(checked every ``sweep_interval``), and a node that stops gracefully says so
(:class:`NodeShutdown`) so peers forget it at once. A survey asks every live node (or
one) a question and collects their :class:`SurveyReply` messages until all answered or
the timeout passed. Timings follow Centrifugo: 3 s heartbeat, 7 s expiry, 9 s sweep.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from rtserver.core.loops import run_every
from rtserver.core.types import (
    ControlMessage,
    NodeInfo,
    NodeShutdown,
    SurveyReply,
    SurveyRequest,
)
from rtserver.logs import Logger

__all__ = ["Cluster", "SurveyCode"]

_log = Logger()

PublishControl = Callable[[ControlMessage, str], Deferred[None]]


class SurveyCode:
    """``SurveyReply.code`` values (Centrifugo's emulation survey codes)."""

    OK = 0
    BAD_REQUEST = 1
    NOT_FOUND = 2
    UNKNOWN_OP = 3


@dataclass
class _Survey:
    expected: int
    done: Deferred[list[SurveyReply]]
    timer: IDelayedCall | None = None
    replies: list[SurveyReply] = field(default_factory=list)


class Cluster:
    """Membership and surveys over the engine's control channel."""

    def __init__(
        self,
        uid: str,
        clock: IReactorTime,
        publish: PublishControl,
        local_info: Callable[[], NodeInfo],
        *,
        heartbeat: float = 3.0,
        expire_after: float = 7.0,
        sweep_interval: float = 9.0,
        survey_timeout: float = 10.0,
    ) -> None:
        self.uid = uid
        self._clock = clock
        self._publish = publish
        self._local_info = local_info
        self._heartbeat = heartbeat
        self._expire_after = expire_after
        self._sweep_interval = sweep_interval
        self.survey_timeout = survey_timeout
        self._peers: dict[str, tuple[NodeInfo, float]] = {}
        self._surveys: dict[str, _Survey] = {}
        self._loops: list[LoopingCall] = []

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Announce this node now and every heartbeat; sweep silent peers."""
        self._loops = [
            run_every(self._clock, self._heartbeat, self.announce, "node announcements", now=True),
            run_every(self._clock, self._sweep_interval, self.sweep, "peer sweep", now=False),
        ]

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return bool(self._loops)

    def stop(self) -> Deferred[None]:
        """Stop the loops, fail pending surveys and tell peers this node is leaving."""
        was_running = self.running
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for survey_id in list(self._surveys):
            self._finish(survey_id)
        self._peers.clear()
        if not was_running:
            return succeed(None)
        return self._publish(NodeShutdown(self.uid), "")

    def announce(self) -> Deferred[None]:
        """Publish this node's NodeInfo to every node."""
        d = self._publish(self._local_info(), "")
        # The engine reports its own link losses; repeating them every 3 s adds nothing.
        d.addErrback(lambda f: _log.debug("node announcement failed: {e}", e=f.value))
        return d

    def sweep(self) -> None:
        """Forget peers not heard from for ``expire_after`` seconds."""
        now = self._clock.seconds()
        for uid, (_, seen) in list(self._peers.items()):
            if now - seen > self._expire_after:
                del self._peers[uid]
                _log.info("node {uid} left the cluster (silent)", uid=uid)

    # --- inbound ---------------------------------------------------------------------

    def handle(self, message: ControlMessage) -> bool:
        """Take a membership or survey-reply message; False for anything else."""
        if isinstance(message, NodeInfo):
            if message.uid != self.uid:
                joined = message.uid not in self._peers
                self._peers[message.uid] = (message, self._clock.seconds())
                if joined:
                    _log.info("node {name} ({uid}) joined the cluster", name=message.name,
                              uid=message.uid)
                    if self.running:
                        # The newcomer learns of this node now, not at the next heartbeat.
                        self.announce()
            return True
        if isinstance(message, NodeShutdown):
            if self._peers.pop(message.uid, None) is not None:
                _log.info("node {uid} left the cluster (shutdown)", uid=message.uid)
            return True
        if isinstance(message, SurveyReply):
            survey = self._surveys.get(message.id)
            if survey is not None:
                survey.replies.append(message)
                if len(survey.replies) >= survey.expected:
                    self._finish(message.id)
            return True
        return False

    # --- queries ---------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        """This node and every live peer, this node first."""
        return [self._local_info(), *(info for info, _ in self._peers.values())]

    def knows(self, uid: str) -> bool:
        """True for this node and live peers."""
        return uid == self.uid or uid in self._peers

    def survey(self, op: str, data: bytes, node: str = "") -> Deferred[list[SurveyReply]]:
        """Ask every live node (or only ``node``); fires with the replies that arrived.

        Fires early once every asked node answered, else after ``survey_timeout`` with
        whatever came (a node that died mid-survey simply has no reply).
        """
        survey_id = str(uuid.uuid4())
        expected = 1 if node else 1 + len(self._peers)
        survey = _Survey(expected, Deferred())
        self._surveys[survey_id] = survey
        survey.timer = self._clock.callLater(self.survey_timeout, self._finish, survey_id)
        request = SurveyRequest(id=survey_id, op=op, sender=self.uid, data=data)
        sent = self._publish(request, node)
        sent.addErrback(self._survey_failed, survey_id)
        return survey.done

    def _survey_failed(self, failure: Failure, survey_id: str) -> None:
        survey = self._take(survey_id)
        if survey is not None:
            survey.done.errback(failure)

    def _finish(self, survey_id: str) -> None:
        survey = self._take(survey_id)
        if survey is not None:
            survey.done.callback(survey.replies)

    def _take(self, survey_id: str) -> _Survey | None:
        """Remove a pending survey and cancel its timeout."""
        survey = self._surveys.pop(survey_id, None)
        if survey is not None and survey.timer is not None and survey.timer.active():
            survey.timer.cancel()
        return survey
