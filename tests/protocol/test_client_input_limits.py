"""Refused and accepted client input: integer ranges, JSON depth, channel names.

Through a real Client on a Clock-driven node: what the peer sees (replies, pushes, the
close code) is what is asserted.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from rtserver.protocol.fields import MAX_JSON_DEPTH
from rtserver.testing import RecordingSink, make_node

SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "allow_publish_for_client": True,
            "allow_publish_for_anonymous": True,
        },
        "namespaces": [
            {
                "name": "hist",
                "history_size": 10,
                "history_ttl": "300s",
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
                "allow_publish_for_client": True,
                "allow_publish_for_anonymous": True,
                "allow_history_for_client": True,
                "allow_history_for_anonymous": True,
            }
        ],
    },
}


class Peer:
    def __init__(self, node: Any, clock: Any) -> None:
        self.clock = clock
        self.sink = RecordingSink()
        self.client = node.make_client(self.sink)
        self.send(b'{"id":1,"connect":{}}')
        assert self.client.connected

    def send(self, frame: bytes) -> None:
        self.client.receive(frame)
        self.clock.advance(0)

    def reply(self, cmd_id: int) -> dict[str, Any]:
        [reply] = [r for r in self.sink.replies() if r["id"] == cmd_id]
        return reply

    def raw_lines(self) -> list[bytes]:
        return [m for batch in self.sink.batches for m in batch]


@pytest.fixture
def env() -> Any:
    node, clock = make_node(SETTINGS)
    yield node, clock
    node.stop()
    clock.advance(0)


def nested(depth: int) -> bytes:
    """A JSON value ``depth`` levels deep: ``[{"a":[{"a":...}]}]``."""
    head = b'[{"a":' * (depth // 2) + (b"[" if depth % 2 else b"")
    tail = (b"]" if depth % 2 else b"") + b"}]" * (depth // 2)
    return head + b"1" + tail


# --- JSON depth ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [255, 300, MAX_JSON_DEPTH - 2])
def test_deep_publication_data_is_delivered_unchanged(env: Any, depth: int) -> None:
    """Data nested past orjson's 254-level encoder limit: accepted, as by Centrifugo.

    The frame ``{"id":..,"publish":{..,"data":D}}`` adds two levels, so ``D`` may nest
    up to 1022 levels within the parser's 1024.
    """
    node, clock = env
    subscriber, publisher = Peer(node, clock), Peer(node, clock)
    subscriber.send(b'{"id":2,"subscribe":{"channel":"hist:deep"}}')
    data = nested(depth)
    publisher.send(b'{"id":2,"publish":{"channel":"hist:deep","data":%s}}' % data)
    assert publisher.reply(2) == {"id": 2, "publish": {}}
    push = b'{"push":{"channel":"hist:deep","pub":{"data":%s,"info":' % data
    assert [line for line in subscriber.raw_lines() if line.startswith(push)]
    publisher.send(b'{"id":3,"history":{"channel":"hist:deep","limit":-1}}')
    assert b'"publications":[{"data":%s,"info":' % data in publisher.raw_lines()[-1]


def test_frame_deeper_than_the_parser_limit_is_a_bad_request(env: Any) -> None:
    node, clock = env
    publisher = Peer(node, clock)
    data = nested(MAX_JSON_DEPTH - 1)  # the frame is 1025 levels deep
    publisher.send(b'{"id":2,"publish":{"channel":"hist:deep","data":%s}}' % data)
    assert publisher.sink.closed_with is not None and publisher.sink.closed_with.code == 3501


# --- channel names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "a\nb", "tab\there", "del\x7f", "hist:\x1f"])
@pytest.mark.parametrize("command", ["subscribe", "publish", "history"])
def test_channel_names_with_control_characters_are_refused(
    env: Any, name: str, command: str
) -> None:
    node, clock = env
    peer = Peer(node, clock)
    params: dict[str, Any] = {"channel": name}
    if command == "publish":
        params["data"] = {}
    peer.send(orjson.dumps({"id": 2, command: params}))
    assert peer.reply(2)["error"] == {
        "code": 107,
        "message": "channel name must not contain control characters",
    }
    assert peer.client.connected
    assert peer.client.channels() == []


# --- integer fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b'{"id":4294967296,"presence":{"channel":"c"}}',  # id is uint32
        b'{"id":-1,"presence":{"channel":"c"}}',
        b'{"id":2,"subscribe":{"channel":"c","offset":18446744073709551616}}',  # uint64
        b'{"id":2,"subscribe":{"channel":"c","offset":-1}}',
        b'{"id":2,"subscribe":{"channel":"c","flag":9223372036854775808}}',  # int64
        b'{"id":2,"history":{"channel":"hist:c","limit":2147483648}}',  # int32
        b'{"id":2,"history":{"channel":"hist:c","since":{"offset":1e30}}}',
        b'{"id":2,"history":{"channel":"hist:c","limit":1.5}}',
    ],
)
def test_out_of_range_integer_fields_disconnect_3501(env: Any, command: bytes) -> None:
    node, clock = env
    peer = Peer(node, clock)
    peer.send(command)
    assert peer.sink.closed_with is not None and peer.sink.closed_with.code == 3501
    assert peer.sink.replies()[1:] == []


def test_integer_fields_at_their_bounds_are_accepted(env: Any) -> None:
    node, clock = env
    peer = Peer(node, clock)
    peer.send(b'{"id":4294967295,"subscribe":{"channel":"c","flag":-9223372036854775808}}')
    peer.send(b'{"id":3,"history":{"channel":"hist:c","limit":2147483647,'
              b'"since":{"offset":18446744073709551615,"epoch":""}}}')
    assert "subscribe" in peer.reply(4294967295)
    assert peer.reply(3)["history"]["publications"] == []
    assert peer.client.connected
