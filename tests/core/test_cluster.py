"""Cluster membership, surveys, cross-node emulation and presence refresh on a Clock.

Nodes here share an in-process control bus (a memory engine per node whose control
messages reach every node on the bus); the Redis engine carries the same messages
between processes (tests/engines and tests/cluster).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from rtserver import config as rtconfig
from rtserver.core.node import Node
from rtserver.core.ports import IEngineHandler
from rtserver.core.types import ControlMessage
from rtserver.engines.memory import MemoryEngine
from rtserver.protocol import protobuf
from rtserver.protocol.frames import ClientInfo, Publication
from rtserver.testing import RecordingSink, make_node

SETTINGS: dict[str, Any] = {
    # No server pings: these clients answer none, and the tests span minutes.
    "client": {"allow_anonymous_connect_without_token": True, "presence_update_interval": "10s",
               "ping_interval": "0s"},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True, "presence": True,
                              "allow_subscribe_for_anonymous": True},
        "namespaces": [
            {"name": "pos", "history_size": 10, "history_ttl": "300s",
             "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
             "force_positioning": True},
            {"name": "brief", "history_size": 10, "history_ttl": "5s",
             "history_meta_ttl": "10s", "allow_subscribe_for_client": True,
             "allow_subscribe_for_anonymous": True, "force_positioning": True},
        ],
    },
    "http_stream": {"enabled": True},
}


class Bus:
    """Delivers control messages between the nodes attached to it."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def deliver(self, message: ControlMessage, node: str) -> None:
        for uid, target in list(self.nodes.items()):
            if not node or node == uid:
                target.handle_control(message)


class BusEngine(MemoryEngine):
    """A memory engine whose control messages travel over a shared Bus.

    With ``losing`` set, publications are stored in history but never reach the node, as
    when a Redis PUB/SUB link drops a message.
    """

    shared = True

    def __init__(self, clock: Clock, bus: Bus) -> None:
        super().__init__(clock, cleanup_interval=0)
        self.bus = bus
        self.losing = False

    def start(self, handler: IEngineHandler) -> Deferred[None]:
        return super().start(LossyLink(self, handler))

    def publish_control(self, message: ControlMessage, node: str = "") -> Deferred[None]:
        self.bus.deliver(message, node)
        return succeed(None)


@implementer(IEngineHandler)
class LossyLink:
    """Passes everything to the node except publications while the engine is losing."""

    def __init__(self, engine: BusEngine, node: IEngineHandler) -> None:
        self.engine, self.node, self.uid = engine, node, node.uid

    def handle_publication(self, channel: str, publication: Publication) -> None:
        if not self.engine.losing:
            self.node.handle_publication(channel, publication)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.node.handle_join(channel, info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.node.handle_leave(channel, info)

    def handle_control(self, message: ControlMessage) -> None:
        self.node.handle_control(message)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bus() -> Bus:
    return Bus()


def start_node(clock: Clock, bus: Bus, name: str) -> Node:
    cfg = rtconfig.from_mapping({**SETTINGS, "node": {"name": name}})
    node = Node(BusEngine(clock, bus), cfg, clock=clock, name=name)
    bus.nodes[node.uid] = node
    node.start()
    return node


def connect(node: Node, clock: Clock, *commands: dict[str, Any]) -> tuple[Any, RecordingSink]:
    sink = RecordingSink(emulation=True)
    client = node.make_client(sink)
    client.receive(orjson.dumps({"id": 1, "connect": {}}))
    for i, cmd in enumerate(commands, start=2):
        client.receive(orjson.dumps({"id": i, **cmd}))
    clock.advance(0)
    return client, sink


def pump(clock: Clock, seconds: int) -> None:
    """Advance one second at a time, as a real reactor would run the loops."""
    for _ in range(seconds):
        clock.advance(1)


def names(node: Node) -> list[str]:
    return sorted(n["name"] for n in node.info())


def test_nodes_see_each_other(clock: Clock, bus: Bus) -> None:
    """Both nodes list both nodes in ``info`` once they announced themselves."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    assert names(a) == names(b) == ["a", "b"]
    a.stop(), b.stop()


def test_a_new_node_learns_of_its_peers_at_once(clock: Clock, bus: Bus) -> None:
    """Peers answer a newcomer's first announcement with theirs, not at their next tick.

    Until it knows its peers a node cannot forward an /emulation request to the session's
    node (a restarted --workers worker, or a new node behind a load balancer).
    """
    a = start_node(clock, bus, "a")
    clock.advance(3)
    b = start_node(clock, bus, "b")
    clock.advance(0)
    assert names(b) == ["a", "b"]
    assert names(a) == ["a", "b"]
    a.stop(), b.stop()


def test_a_silent_node_is_forgotten(clock: Clock, bus: Bus) -> None:
    """A node killed without a goodbye disappears within expiry + one sweep (7 s + 9 s)."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    del bus.nodes[b.uid]  # b is cut off: nothing more reaches it or the others from it
    b.engine.bus = Bus()
    pump(clock, 9)
    assert names(a) == ["a", "b"]  # last heard at 3 s: still within 7 s at the 9 s sweep
    pump(clock, 9)
    assert names(a) == ["a"]
    a.stop(), b.stop()


def test_a_stopping_node_leaves_at_once(clock: Clock, bus: Bus) -> None:
    """A graceful stop announces the shutdown; peers forget the node immediately."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    b.stop()
    assert names(a) == ["a"]
    a.stop()
    assert clock.getDelayedCalls() == []


def test_channels_are_counted_cluster_wide(clock: Clock, bus: Bus) -> None:
    """``channels`` sums subscriber counts of every node."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    connect(a, clock, {"subscribe": {"channel": "room"}})
    connect(b, clock, {"subscribe": {"channel": "room"}})
    connect(b, clock, {"subscribe": {"channel": "solo"}})
    d = a.channels()
    assert d.called
    assert d.result == {"room": 2, "solo": 1}
    only = b.channels("ro*")
    assert only.result == {"room": 2}
    a.stop(), b.stop()


def test_survey_of_a_vanished_node_times_out_with_partial_answers(
    clock: Clock, bus: Bus
) -> None:
    """A node that died before the sweep costs a survey its timeout, not an error."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    connect(a, clock, {"subscribe": {"channel": "room"}})
    del bus.nodes[b.uid]
    d = a.channels()
    assert not d.called
    clock.advance(a.cluster.survey_timeout)
    assert d.result == {"room": 1}
    a.stop(), b.stop()


def test_emulation_reaches_a_session_on_another_node(clock: Clock, bus: Bus) -> None:
    """Commands posted to node A for a session on node B are executed on B."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    _, sink = connect(b, clock)
    session = sink.replies()[0]["connect"]["session"]
    assert sink.replies()[0]["connect"]["node"] == b.uid
    command = orjson.dumps({"id": 2, "subscribe": {"channel": "room"}})
    found = a.emulate(session, b.uid, command)
    clock.advance(0)
    assert found.result is True
    assert sink.replies()[-1] == {"id": 2, "subscribe": {}}
    assert a.emulate("no-such-session", b.uid, command).result is False
    assert a.emulate(session, "no-such-node", command).result is False
    a.stop(), b.stop()


def test_protobuf_emulation_bytes_cross_nodes_unchanged(clock: Clock, bus: Bus) -> None:
    """A Protobuf session's binary commands survive forwarding (base64 in the survey)."""
    a, b = start_node(clock, bus, "a"), start_node(clock, bus, "b")
    clock.advance(3)
    sink = RecordingSink(emulation=True)
    client = b.make_client(sink, encoding="protobuf")
    connect_cmd = protobuf.encode_message("Command", {"id": 1, "connect": {}})
    client.receive(bytes([len(connect_cmd)]) + connect_cmd)
    clock.advance(0)
    reply = protobuf.decode_message("Reply", sink.batches[0][0][1:])
    session = reply["connect"]["session"]
    # field 2 of Command (unknown, skipped) holds bytes that are not UTF-8
    subscribe = protobuf.encode_message("Command", {"id": 2, "subscribe": {"channel": "room"}})
    subscribe = b"\x12\x02\xff\xfe" + subscribe
    found = a.emulate(session, b.uid, bytes([len(subscribe)]) + subscribe)
    clock.advance(0)
    assert found.result is True
    last = sink.batches[-1][-1]
    assert protobuf.decode_message("Reply", last[1:]) == {"id": 2, "subscribe": {}}
    assert client.channels() == ["room"]
    a.stop(), b.stop()


def test_presence_is_refreshed_while_subscribed(clock: Clock, bus: Bus) -> None:
    """Every presence_update_interval each live subscription re-adds its presence."""
    a = start_node(clock, bus, "a")
    client, _ = connect(a, clock, {"subscribe": {"channel": "room"}})
    assert list(a.engine.presence("room").result) == [client.id]
    a.engine.remove_presence("room", client.id, "")  # as if the engine expired the entry
    assert a.presence("room").result == {}
    clock.advance(10)
    assert list(a.engine.presence("room").result) == [client.id]
    client.close(None)
    clock.advance(10)
    assert a.engine.presence("room").result == {}
    a.stop()


def test_memory_engine_node_runs_no_cluster_timers() -> None:
    """A single node on the memory engine announces nothing and keeps no loops."""
    node, clock = make_node(SETTINGS)
    assert [n["name"] for n in node.info()] == [node.name]
    assert clock.getDelayedCalls() == []
    node.stop()


def test_new_epoch_under_a_positioned_subscription_is_insufficient_state(
    clock: Clock, bus: Bus
) -> None:
    """A live publication from a restarted stream (new epoch) makes the client resubscribe."""
    a = start_node(clock, bus, "a")
    _, sink = connect(a, clock, {"subscribe": {"channel": "pos:x"}})
    offset = sink.replies()[-1]["subscribe"].get("offset", 0)
    pub = Publication(data=b'{"n":1}', offset=offset + 1, epoch="another-epoch")
    a.handle_publication("pos:x", pub)
    clock.advance(0)
    unsub = [p for p in sink.pushes() if "unsubscribe" in p]
    assert unsub and unsub[0]["unsubscribe"]["code"] == 2500
    a.stop()


def _publish_unseen(node: Node, channel: str) -> None:
    """Append to the stream without delivering: a publication lost on its way here."""
    engine = node.engine
    assert isinstance(engine, BusEngine)
    engine.losing = True
    try:
        node.publish(channel, b'{"lost":true}')
    finally:
        engine.losing = False


def _unsubscribes(sink: RecordingSink) -> list[int]:
    return [p["unsubscribe"]["code"] for p in sink.pushes() if "unsubscribe" in p]


def test_position_check_finds_a_publication_lost_in_a_quiet_channel(
    clock: Clock, bus: Bus
) -> None:
    """A positioned subscriber that missed the last publication learns it within 2 checks."""
    a = start_node(clock, bus, "a")
    clock.advance(0)
    _, sink = connect(a, clock, {"subscribe": {"channel": "pos:quiet"}})
    _publish_unseen(a, "pos:quiet")
    pump(clock, 40)
    assert _unsubscribes(sink) == []  # could still be in flight at the first check
    pump(clock, 40)
    assert _unsubscribes(sink) == [2500]
    a.stop()


def test_position_check_tolerates_publications_in_flight(clock: Clock, bus: Bus) -> None:
    """Behind at one check but caught up by the next: no resubscribe."""
    a = start_node(clock, bus, "a")
    clock.advance(0)
    _, sink = connect(a, clock, {"subscribe": {"channel": "pos:busy"}})
    _publish_unseen(a, "pos:busy")
    pump(clock, 40)
    sub = next(s for _, s in a.hub.subscribers("pos:busy"))
    sub.offset = 1  # the publication arrived after the check read the stream top
    a.publish("pos:busy", b'{"n":2}')
    clock.advance(0)
    pump(clock, 80)
    assert _unsubscribes(sink) == []
    a.stop()


def test_position_check_finds_a_restarted_stream(clock: Clock, bus: Bus) -> None:
    """A stream whose epoch changed (its Redis state was lost) makes subscribers resubscribe."""
    a = start_node(clock, bus, "a")
    clock.advance(0)
    _, sink = connect(a, clock, {"subscribe": {"channel": "brief:reset"}})
    # the stream's metadata lives 10 s without traffic: the check at 40 s finds a new epoch
    pump(clock, 40)
    assert _unsubscribes(sink) == [2500]
    a.stop()


def test_connection_limit_counts_open_clients() -> None:
    """``client.connection_limit`` admits up to N open connections; a close frees a slot."""
    node, _ = make_node({"client": {"connection_limit": 2}})
    first = node.make_client(RecordingSink())
    assert node.admit()
    node.make_client(RecordingSink())
    assert not node.admit()
    first.close(None)
    assert node.admit()
    node.stop()


def test_connection_rate_limit_is_per_second() -> None:
    """``client.connection_rate_limit`` admits N new connections per second."""
    node, clock = make_node({"client": {"connection_rate_limit": 3}})
    assert [node.admit() for _ in range(4)] == [True, True, True, False]
    clock.advance(1)
    assert node.admit()
    node.stop()
