"""The IEngine contract: every engine must pass these tests.

A test module provides an ``engine_env`` fixture yielding an :class:`EngineEnv`; the
tests here only use the IEngine interface, the recording handler and ``env.advance``
(which moves the engine's clock and waits for deliveries to arrive).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rtserver.core.ports import IBroker, IEngine, IEngineHandler, IHistory, IPresenceManager
from rtserver.core.types import (
    SUPPRESS_IDEMPOTENCY,
    SUPPRESS_VERSION,
    DisconnectControl,
    HistoryFilter,
    PublishOptions,
    Suppressed,
)
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

HISTORY = PublishOptions(history_size=5, history_ttl=60.0, history_meta_ttl=3600.0)
NO_HISTORY = PublishOptions()


@implementer(IEngineHandler)
@dataclass
class RecordingHandler:
    """Records what the engine delivers."""

    publications: list[tuple[str, Publication]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)
    controls: list[Any] = field(default_factory=list)
    uid: str = "node-under-test"

    def handle_publication(self, channel: str, publication: Publication) -> None:
        self.publications.append((channel, publication))

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))

    def handle_control(self, message: Any) -> None:
        self.controls.append(message)


@dataclass
class EngineEnv:
    """An engine under test, its handler, and a way to move time."""

    engine: Any
    handler: RecordingHandler
    advance: Callable[[float], Deferred[None]]
    settle: Callable[[], Deferred[None]]


def versioned(version: int, epoch: str) -> PublishOptions:
    """History options with a publication version and version epoch."""
    return dataclasses.replace(HISTORY, version=version, version_epoch=epoch)


def pub(n: int) -> Publication:
    """A small publication numbered ``n``."""
    return Publication(data=b'{"n":%d}' % n)


class EngineContract:
    """Mix into a test class that has an ``engine_env`` fixture."""

    def test_provides_interface(self, engine_env: EngineEnv) -> None:
        """The engine declares and implements IEngine: broker, history and presence."""
        for port in (IEngine, IBroker, IHistory, IPresenceManager):
            assert verifyObject(port, engine_env.engine), port

    @pytest_twisted.ensureDeferred
    async def test_publish_reaches_subscribed_node(self, engine_env: EngineEnv) -> None:
        """A publication is delivered to the node that subscribed the channel."""
        e = engine_env.engine
        await e.subscribe("news")
        pos = await e.publish("news", pub(1), NO_HISTORY)
        await engine_env.settle()
        assert pos == StreamPosition(0, "")
        assert [(c, p.data) for c, p in engine_env.handler.publications] == [("news", b'{"n":1}')]

    @pytest_twisted.ensureDeferred
    async def test_offsets_increase_within_one_epoch(self, engine_env: EngineEnv) -> None:
        """History publications get offsets 1, 2, 3 and share one epoch."""
        e = engine_env.engine
        await e.subscribe("h")
        positions = [await e.publish("h", pub(i), HISTORY) for i in range(3)]
        assert [p.offset for p in positions] == [1, 2, 3]
        assert len({p.epoch for p in positions}) == 1 and positions[0].epoch
        await engine_env.settle()
        assert [p.offset for _, p in engine_env.handler.publications] == [1, 2, 3]

    @pytest_twisted.ensureDeferred
    async def test_publishes_on_one_lane_apply_in_call_order(self, engine_env: EngineEnv) -> None:
        """Publishes on one ``publish_order`` lane, not awaited one by one, keep call order.

        Stored and delivered in the order ``publish`` was called, with and without
        history mixed (a server API batch relies on it). An engine that promises no
        order answers None for every channel.
        """
        e = engine_env.engine
        lanes: dict[Any, list[str]] = {}
        for i in range(32):
            lanes.setdefault(e.publish_order(f"lane{i}"), []).append(f"lane{i}")
        ordered = [members for lane, members in lanes.items() if lane is not None]
        if not ordered:
            assert set(lanes) == {None}
            return
        a, b = max(ordered, key=len)[:2]
        for channel in (a, b):
            await e.subscribe(channel)
        issued = [(a if i % 3 else b, i) for i in range(12)]
        positions = await gatherResults(
            [e.publish(ch, pub(i), HISTORY if i % 2 else NO_HISTORY) for ch, i in issued]
        )
        await engine_env.settle()
        delivered = [(c, p.data) for c, p in engine_env.handler.publications]
        assert delivered == [(ch, pub(i).data) for ch, i in issued]
        for channel in (a, b):
            offsets = [
                p.offset
                for (ch, i), p in zip(issued, positions, strict=True)
                if ch == channel and i % 2
            ]
            assert offsets == list(range(1, len(offsets) + 1))

    @pytest_twisted.ensureDeferred
    async def test_history_window_and_filters(self, engine_env: EngineEnv) -> None:
        """Size cap keeps the newest; since/limit/reverse select as the protocol says."""
        e = engine_env.engine
        for i in range(8):
            top = await e.publish("h", pub(i), HISTORY)
        everything = await e.history("h", HistoryFilter(limit=-1), 3600.0)
        assert [p.offset for p in everything.publications] == [4, 5, 6, 7, 8]
        assert everything.position == top
        none = await e.history("h", HistoryFilter(limit=0), 3600.0)
        assert none.publications == [] and none.position == top
        since = await e.history("h", HistoryFilter(since=StreamPosition(5, ""), limit=2), 3600.0)
        assert [p.offset for p in since.publications] == [6, 7]
        rev = await e.history("h", HistoryFilter(limit=2, reverse=True), 3600.0)
        assert [p.offset for p in rev.publications] == [8, 7]
        rev_since = await e.history(
            "h", HistoryFilter(since=StreamPosition(6, ""), limit=-1, reverse=True), 3600.0
        )
        assert [p.offset for p in rev_since.publications] == [5, 4]

    @pytest_twisted.ensureDeferred
    async def test_history_of_unknown_channel_creates_epoch(self, engine_env: EngineEnv) -> None:
        """Reading an empty stream gives offset 0 and a stable epoch to position on."""
        e = engine_env.engine
        first = await e.history("empty", HistoryFilter(), 3600.0)
        second = await e.history("empty", HistoryFilter(), 3600.0)
        assert first.position.offset == 0 and first.position.epoch
        assert second.position == first.position
        pos = await e.publish("empty", pub(1), HISTORY)
        assert pos == StreamPosition(1, first.position.epoch)

    @pytest_twisted.ensureDeferred
    async def test_history_ttl_expires_publications_not_position(
        self, engine_env: EngineEnv
    ) -> None:
        """After history_ttl the publications are gone but offset and epoch remain."""
        e = engine_env.engine
        top = await e.publish("h", pub(1), HISTORY)
        await engine_env.advance(HISTORY.history_ttl + 1)
        result = await e.history("h", HistoryFilter(limit=-1), 3600.0)
        assert result.publications == []
        assert result.position == top
        nxt = await e.publish("h", pub(2), HISTORY)
        assert nxt == StreamPosition(2, top.epoch)

    @pytest_twisted.ensureDeferred
    async def test_meta_ttl_expiry_starts_new_epoch(self, engine_env: EngineEnv) -> None:
        """When stream metadata expires, the channel restarts with a new epoch."""
        e = engine_env.engine
        opts = PublishOptions(history_size=5, history_ttl=10.0, history_meta_ttl=20.0)
        old = await e.publish("h", pub(1), opts)
        await engine_env.advance(30)
        new = await e.publish("h", pub(2), opts)
        assert new.offset == 1 and new.epoch != old.epoch

    @pytest_twisted.ensureDeferred
    async def test_remove_history_keeps_position(self, engine_env: EngineEnv) -> None:
        """history_remove drops publications but keeps epoch and top offset."""
        e = engine_env.engine
        await e.publish("h", pub(1), HISTORY)
        top = await e.publish("h", pub(2), HISTORY)
        await e.remove_history("h")
        result = await e.history("h", HistoryFilter(limit=-1), 3600.0)
        assert result.publications == [] and result.position == top

    @pytest_twisted.ensureDeferred
    async def test_idempotent_publish(self, engine_env: EngineEnv) -> None:
        """A repeated idempotency key returns the first result and delivers once."""
        e = engine_env.engine
        await e.subscribe("h")
        opts = PublishOptions(
            history_size=5, history_ttl=60.0, history_meta_ttl=3600.0, idempotency_key="k1"
        )
        first = await e.publish("h", pub(1), opts)
        again = await e.publish("h", pub(1), opts)
        await engine_env.settle()
        assert type(first) is StreamPosition
        assert again == Suppressed(first.offset, first.epoch, SUPPRESS_IDEMPOTENCY)
        assert len(engine_env.handler.publications) == 1

    @pytest_twisted.ensureDeferred
    async def test_idempotent_publish_without_history(self, engine_env: EngineEnv) -> None:
        """Without history a repeated key is suppressed too, with the empty position."""
        e = engine_env.engine
        await e.subscribe("nh")
        opts = dataclasses.replace(NO_HISTORY, idempotency_key="k2")
        first = await e.publish("nh", pub(1), opts)
        again = await e.publish("nh", pub(2), opts)
        other = await e.publish("nh", pub(3), dataclasses.replace(opts, idempotency_key="k3"))
        await engine_env.settle()
        assert type(first) is StreamPosition and type(other) is StreamPosition
        assert again == Suppressed(0, "", SUPPRESS_IDEMPOTENCY)
        delivered = [p.data for c, p in engine_env.handler.publications if c == "nh"]
        assert delivered == [b'{"n":1}', b'{"n":3}']

    @pytest_twisted.ensureDeferred
    async def test_accepted_publish_is_not_suppressed(self, engine_env: EngineEnv) -> None:
        """A delivered publication fires with a plain StreamPosition, history or not."""
        e = engine_env.engine
        plain = await e.publish("a", pub(1), NO_HISTORY)
        kept = await e.publish("a", pub(2), HISTORY)
        versioned_ok = await e.publish("a", pub(3), versioned(7, "x"))
        keyed = await e.publish("a", pub(4), dataclasses.replace(HISTORY, idempotency_key="n"))
        assert [type(p) for p in (plain, kept, versioned_ok, keyed)] == [StreamPosition] * 4
        assert [plain.offset, kept.offset, versioned_ok.offset, keyed.offset] == [0, 1, 2, 3]

    @pytest_twisted.ensureDeferred
    async def test_outdated_version_is_suppressed(self, engine_env: EngineEnv) -> None:
        """Version 2 then 1 (same epoch): the second is neither kept nor delivered.

        The suppressed publish succeeds with the stream's current position.
        """
        e = engine_env.engine
        await e.subscribe("v")
        first = await e.publish("v", pub(1), versioned(2, "a"))
        again = await e.publish("v", pub(2), versioned(1, "a"))
        same = await e.publish("v", pub(3), versioned(2, "a"))
        newer = await e.publish("v", pub(4), versioned(3, "a"))
        await engine_env.settle()
        suppressed = Suppressed(1, first.epoch, SUPPRESS_VERSION)
        assert first.offset == 1 and again == suppressed and same == suppressed
        assert newer == StreamPosition(2, first.epoch)
        delivered = [p.data for c, p in engine_env.handler.publications if c == "v"]
        assert delivered == [b'{"n":1}', b'{"n":4}']
        kept = await e.history("v", HistoryFilter(limit=-1), 3600.0)
        assert [p.data for p in kept.publications] == [b'{"n":1}', b'{"n":4}']
        assert kept.position == newer

    @pytest_twisted.ensureDeferred
    async def test_version_epoch_rules(self, engine_env: EngineEnv) -> None:
        """A new version epoch accepts a lower version; an empty one compares with any.

        Version 0 is never suppressed and leaves the kept version as it is.
        """
        e = engine_env.engine
        await e.subscribe("v")
        a5 = await e.publish("v", pub(1), versioned(5, "a"))
        b1 = await e.publish("v", pub(2), versioned(1, "b"))  # new epoch: accepted
        b1_again = await e.publish("v", pub(3), versioned(1, "b"))  # suppressed
        any1 = await e.publish("v", pub(4), versioned(1, ""))  # empty epoch: compared
        zero = await e.publish("v", pub(5), versioned(0, "b"))  # no version: accepted
        zero_again = await e.publish("v", pub(6), versioned(0, "b"))
        b1_after_zero = await e.publish("v", pub(7), versioned(1, "b"))  # still kept 1
        any2 = await e.publish("v", pub(8), versioned(2, ""))  # accepted; kept epoch ""
        b2 = await e.publish("v", pub(9), versioned(2, "b"))  # "b" differs from "": accepted
        await engine_env.settle()
        assert [a5.offset, b1.offset, zero.offset, zero_again.offset, any2.offset, b2.offset] == [
            1, 2, 3, 4, 5, 6]
        assert b1_again == any1 == Suppressed(b1.offset, b1.epoch, SUPPRESS_VERSION)
        assert b1_after_zero == Suppressed(zero_again.offset, b1.epoch, SUPPRESS_VERSION)
        delivered = [p.data for c, p in engine_env.handler.publications if c == "v"]
        assert delivered == [b'{"n":%d}' % n for n in (1, 2, 5, 6, 8, 9)]

    @pytest_twisted.ensureDeferred
    async def test_version_compares_whole_uint64(self, engine_env: EngineEnv) -> None:
        """Versions near 2**64 compare exactly (no rounding through doubles)."""
        e = engine_env.engine
        top = 2**64 - 1
        first = await e.publish("v", pub(1), versioned(top - 1, "e"))
        at_first = Suppressed(first.offset, first.epoch, SUPPRESS_VERSION)
        assert (await e.publish("v", pub(2), versioned(top - 2, "e"))) == at_first
        assert (await e.publish("v", pub(3), versioned(9, "e"))) == at_first
        last = await e.publish("v", pub(4), versioned(top, "e"))
        assert last.offset == 2
        at_last = Suppressed(last.offset, last.epoch, SUPPRESS_VERSION)
        assert (await e.publish("v", pub(5), versioned(top, "e"))) == at_last

    @pytest_twisted.ensureDeferred
    async def test_version_without_history_is_not_checked(self, engine_env: EngineEnv) -> None:
        """Without history nothing is kept, so every versioned publication is delivered."""
        e = engine_env.engine
        await e.subscribe("nv")
        opts = dataclasses.replace(NO_HISTORY, version=2, version_epoch="a")
        lower = dataclasses.replace(opts, version=1)
        positions = [await e.publish("nv", pub(i), o) for i, o in ((1, opts), (2, lower))]
        await engine_env.settle()
        assert positions == [StreamPosition(0, ""), StreamPosition(0, "")]
        delivered = [p.data for c, p in engine_env.handler.publications if c == "nv"]
        assert delivered == [b'{"n":1}', b'{"n":2}']

    @pytest_twisted.ensureDeferred
    async def test_suppressed_publish_keeps_no_idempotent_result(
        self, engine_env: EngineEnv
    ) -> None:
        """A suppressed publication's idempotency key is not remembered."""
        e = engine_env.engine
        await e.publish("v", pub(1), versioned(5, "a"))
        old = dataclasses.replace(versioned(4, "a"), idempotency_key="k")
        suppressed = await e.publish("v", pub(2), old)
        assert isinstance(suppressed, Suppressed) and suppressed.reason == SUPPRESS_VERSION
        assert suppressed.offset == 1
        new_epoch = dataclasses.replace(versioned(4, "b"), idempotency_key="k")
        accepted = await e.publish("v", pub(3), new_epoch)
        assert type(accepted) is StreamPosition and accepted.offset == 2
        repeated = await e.publish("v", pub(4), new_epoch)
        assert repeated == Suppressed(2, accepted.epoch, SUPPRESS_IDEMPOTENCY)

    @pytest_twisted.ensureDeferred
    async def test_presence(self, engine_env: EngineEnv) -> None:
        """Presence maps client ids to info; stats count clients and distinct users."""
        e = engine_env.engine
        await e.add_presence("p", "c1", ClientInfo("u1", "c1"))
        await e.add_presence("p", "c2", ClientInfo("u1", "c2", conn_info=b'{"a":1}'))
        await e.add_presence("p", "c3", ClientInfo("u2", "c3"))
        presence = await e.presence("p")
        assert set(presence) == {"c1", "c2", "c3"}
        assert presence["c2"].conn_info == b'{"a":1}'
        stats = await e.presence_stats("p")
        assert (stats.num_clients, stats.num_users) == (3, 2)
        await e.remove_presence("p", "c1", "u1")
        stats = await e.presence_stats("p")
        assert (stats.num_clients, stats.num_users) == (2, 2)
        empty = await e.presence_stats("nobody")
        assert (empty.num_clients, empty.num_users) == (0, 0)

    @pytest_twisted.ensureDeferred
    async def test_join_leave_and_control_are_delivered(self, engine_env: EngineEnv) -> None:
        """Join, leave and control messages reach the handler."""
        e = engine_env.engine
        await e.subscribe("p")
        info = ClientInfo("u1", "c1")
        await e.publish_join("p", info)
        await e.publish_leave("p", info)
        control = DisconnectControl(user="u1", code=3503, reason="force disconnect")
        await e.publish_control(control)
        await engine_env.settle()
        assert engine_env.handler.joins == [("p", info)]
        assert engine_env.handler.leaves == [("p", info)]
        assert engine_env.handler.controls == [control]
