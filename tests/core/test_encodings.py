"""JSON and Protobuf connections on one node: encode-once fan-out, payload rules, pings.

Fast unit tests on a ``Clock``: clients are created with ``encoding=`` as the transports
do after the handshake, and their output is decoded with the codec of their encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from twisted.internet.task import Clock

from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.core.writer import Payload
from rtserver.protocol import codec, protobuf
from rtserver.testing import RecordingSink, make_node

SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True, "ping_interval": 5, "pong_timeout": 2},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "allow_publish_for_subscriber": True,
            "allow_publish_for_anonymous": True,
            "allow_history_for_subscriber": True,
            "allow_history_for_anonymous": True,
            "history_size": 10,
            "history_ttl": "60s",
        }
    },
}


class PayloadSink(RecordingSink):
    """A RecordingSink that also keeps the Payload objects it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[Payload] = []

    def write(self, payloads: Sequence[Payload]) -> None:
        self.payloads.extend(payloads)
        super().write(payloads)


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pb_command(obj: dict[str, Any]) -> bytes:
    body = protobuf.encode_message("Command", obj)
    return uvarint(len(body)) + body


def pb_replies(sink: RecordingSink) -> list[dict[str, Any]]:
    """Every Reply written to a Protobuf sink, decoded (bytes fields as bytes)."""
    out = []
    for batch in sink.batches:
        for data in batch:
            pos = 0
            while pos < len(data):
                length, start = 0, pos
                shift = 0
                while True:
                    byte = data[start]
                    start += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                out.append(protobuf.decode_message("Reply", data[start : start + length]))
                pos = start + length
    return out


def connect(node: Node, clock: Clock, encoding: str, channel: str) -> tuple[Client, PayloadSink]:
    sink = PayloadSink()
    client = node.make_client(sink, encoding=encoding)
    if encoding == "protobuf":
        client.receive(
            pb_command({"id": 1, "connect": {}})
            + pb_command({"id": 2, "subscribe": {"channel": channel}})
        )
    else:
        client.receive(
            b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"%s"}}' % channel.encode()
        )
    clock.advance(0)
    assert client.connected and client.channels() == [channel]
    assert client.encoding == encoding
    sink.clear()
    sink.payloads.clear()
    return client, sink


class Counter:
    """Counts calls of the wrapped encoder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.calls = 0
        original = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def test_a_mixed_audience_costs_exactly_two_encodings_per_publication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3 JSON and 3 Protobuf subscribers: each publication is encoded once per encoding."""
    node, clock = make_node(SETTINGS)
    json_clients = [connect(node, clock, "json", "mixed") for _ in range(3)]
    pb_clients = [connect(node, clock, "protobuf", "mixed") for _ in range(3)]
    json_encodings = Counter(monkeypatch, codec, "encode_push")
    pb_encodings = Counter(monkeypatch, protobuf, "encode_publication_push")
    sent = [orjson.dumps({"n": i}) for i in range(5)]
    for data in sent:
        node.publish("mixed", data)
    clock.advance(0)

    assert (json_encodings.calls, pb_encodings.calls) == (5, 5)
    for _, sink in json_clients:
        assert [p["pub"]["data"] for p in sink.pushes()] == [orjson.loads(d) for d in sent]
    for _, sink in pb_clients:
        assert [r["push"]["pub"]["data"] for r in pb_replies(sink)] == sent
    # every subscriber of one encoding was handed the same payload objects
    for group in (json_clients, pb_clients):
        first = group[0][1].payloads
        assert len(first) == 5
        for _, sink in group[1:]:
            assert all(a is b for a, b in zip(sink.payloads, first, strict=True))
    assert not set(map(id, json_clients[0][1].payloads)) & set(map(id, pb_clients[0][1].payloads))
    node.stop()


def test_a_protobuf_only_channel_never_encodes_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Publications (and joins) to Protobuf subscribers only never pay for the JSON form."""
    node, clock = make_node(SETTINGS)
    clients = [connect(node, clock, "protobuf", "pb-only") for _ in range(2)]
    json_encodings = Counter(monkeypatch, codec, "encode_push")
    node.publish("pb-only", b'{"a":1}')
    clock.advance(0)
    assert json_encodings.calls == 0
    for _, sink in clients:
        assert [r["push"]["pub"]["data"] for r in pb_replies(sink)] == [b'{"a":1}']
    node.stop()


def test_protobuf_bytes_reach_json_clients_as_json_or_close_them_with_3506() -> None:
    """Raw bytes from a Protobuf publisher: JSON when valid (newlines dropped), else 3506."""
    node, clock = make_node(SETTINGS)
    publisher, pub_sink = connect(node, clock, "protobuf", "raw")
    json_client, json_sink = connect(node, clock, "json", "raw")
    pretty = b'{\n  "text": "hi"\n}'
    publisher.receive(pb_command({"id": 3, "publish": {"channel": "raw", "data": pretty}}))
    clock.advance(0)
    assert [r["push"]["pub"]["data"] for r in pb_replies(pub_sink) if "push" in r] == [pretty]
    assert json_sink.pushes()[0]["pub"]["data"] == {"text": "hi"}
    assert b"\n" not in json_sink.batches[0][0]

    binary = b"\x00\xffnot json"
    publisher.receive(pb_command({"id": 4, "publish": {"channel": "raw", "data": binary}}))
    clock.advance(0)
    pushes = [r["push"]["pub"]["data"] for r in pb_replies(pub_sink) if "push" in r]
    assert pushes == [pretty, binary]
    assert json_client.closed
    assert json_sink.closed_with is not None and json_sink.closed_with.code == 3506
    assert publisher.connected
    node.stop()


def test_history_with_binary_data_closes_a_json_reader_with_3506() -> None:
    """History holding non-JSON bytes: Protobuf readers get them, JSON readers get 3506."""
    node, clock = make_node(SETTINGS)
    publisher, pub_sink = connect(node, clock, "protobuf", "hist")
    publisher.receive(pb_command({"id": 3, "publish": {"channel": "hist", "data": b"\x01\x02"}}))
    publisher.receive(pb_command({"id": 4, "history": {"channel": "hist", "limit": 10}}))
    clock.advance(0)
    history = next(r for r in pb_replies(pub_sink) if r.get("id") == 4)["history"]
    assert [p["data"] for p in history["publications"]] == [b"\x01\x02"]

    reader, reader_sink = connect(node, clock, "json", "hist")
    reader.receive(b'{"id":3,"history":{"channel":"hist","limit":10}}')
    clock.advance(0)
    assert reader_sink.replies() == []
    assert reader_sink.closed_with is not None and reader_sink.closed_with.code == 3506
    node.stop()


def test_pings_and_pongs_in_each_encoding() -> None:
    """The server ping is ``{}`` for JSON and the empty Reply (``00``) for Protobuf."""
    node, clock = make_node(SETTINGS)
    pb_client, pb_sink = connect(node, clock, "protobuf", "p")
    json_client, json_sink = connect(node, clock, "json", "p")
    clock.advance(5)
    assert pb_sink.batches == [[protobuf.PING]] and protobuf.PING == b"\x00"
    assert json_sink.batches == [[b"{}"]]
    pb_client.receive(b"\x00")  # the pong: an empty Command
    json_client.receive(b"{}")
    clock.advance(0)
    assert pb_client.connected and json_client.connected
    node.stop()


def test_a_json_command_on_a_protobuf_connection_is_a_bad_request() -> None:
    """Protobuf clients are decoded as Protobuf only: JSON text is malformed input (3501)."""
    node, _ = make_node(SETTINGS)
    client = node.make_client(sink := RecordingSink(), encoding="protobuf")
    client.receive(b'{"id":1,"connect":{}}')
    assert sink.closed_with is not None and sink.closed_with.code == 3501
    node.stop()
