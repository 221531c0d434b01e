"""Wire compatibility of the Protobuf codec with centrifuge-python's generated classes.

centrifuge-python 0.7.0 ships the generated module of Centrifugo's ``client.proto``
(``centrifuge.protocol.client_pb2``) and uses it when ``use_protobuf=True``. Here it is the
peer: the schema is compared field by field, and messages cross between rtserver's codec
and the generated classes in both directions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbvalues import MESSAGE_NAMES, message

from rtserver.protocol import protobuf
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import ClientInfo, Publication, PublishRequest, SubscribeRequest

client_pb2 = pytest.importorskip("centrifuge.protocol.client_pb2")
codecs = pytest.importorskip("centrifuge.codecs")
from google.protobuf.descriptor import Descriptor, FieldDescriptor  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

PROTO = Path(protobuf.__file__).with_name("client.proto")

_TYPE_NAMES = {
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
}


def _type_of(field: FieldDescriptor) -> str:
    """A descriptor field's type spelled as in a .proto file."""
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        return f"map<string, {_type_of(entry.fields_by_name['value'])}>"
    name = entry.name if entry is not None else _TYPE_NAMES[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _proto_file_fields() -> dict[str, list[tuple[str, str, int]]]:
    """Fields per message of rtserver's client.proto, by a small line parser."""
    messages: dict[str, list[tuple[str, str, int]]] = {}
    current = ""
    for line in PROTO.read_text().splitlines():
        line = line.split("//")[0].strip()
        if m := re.fullmatch(r"message (\w+) \{\}?", line):
            current = m.group(1)
            messages[current] = []
        elif m := re.fullmatch(r"((?:repeated )?[\w<>, ]+?) (\w+) = (\d+);", line):
            messages[current].append((m.group(1), m.group(2), int(m.group(3))))
    return messages


def test_proto_file_and_codec_tables_agree() -> None:
    """client.proto and the codec's SCHEMA_SOURCE list the same fields, in the same order."""
    assert _proto_file_fields() == {k: list(v) for k, v in protobuf.SCHEMA_SOURCE.items()}


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_schema_matches_the_sdk_field_by_field(name: str) -> None:
    """Every message has exactly the SDK's fields: names, numbers, types, labels."""
    descriptor: Descriptor = client_pb2.DESCRIPTOR.message_types_by_name[name]
    theirs = sorted((_type_of(f), f.name, f.number) for f in descriptor.fields)
    assert sorted(protobuf.SCHEMA_SOURCE[name]) == theirs


def test_schema_covers_every_sdk_message() -> None:
    """No message of the SDK's schema is missing (Dictionary-style extras aside, none exist)."""
    assert set(client_pb2.DESCRIPTOR.message_types_by_name) == set(protobuf.SCHEMA_SOURCE)


# --- values across the two implementations -------------------------------------------------


def to_dict(msg: Message) -> dict[str, Any]:
    """A generated message as the present-fields dict rtserver's decoder returns."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            nested = entry.fields_by_name["value"].message_type is not None
            out[field.name] = {k: to_dict(v) if nested else v for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [to_dict(v) if entry is not None else v for v in value]
        elif entry is not None:
            out[field.name] = to_dict(value)
        else:
            out[field.name] = value
    return out


def fill(msg: Message, value: dict[str, Any]) -> Message:
    """Set the fields of a generated message from a present-fields dict."""
    msg.SetInParent()
    for name, item in value.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        entry = field.message_type
        target = getattr(msg, name)
        if entry is not None and entry.GetOptions().map_entry:
            for key, val in item.items():
                if entry.fields_by_name["value"].message_type is not None:
                    fill(target[key], val)
                else:
                    target[key] = val
        elif field.is_repeated:
            for val in item:
                fill(target.add(), val) if entry is not None else target.append(val)
        elif entry is not None:
            fill(target, item)
        else:
            setattr(msg, name, item)
    return msg


def _has_map(name: str, value: dict[str, Any]) -> bool:
    for type_, field, _ in protobuf.SCHEMA_SOURCE[name]:
        if field not in value:
            continue
        if type_.startswith("map<"):
            return True
        inner = type_.removeprefix("repeated ")
        if inner in protobuf.SCHEMA_SOURCE:
            items = value[field] if type_.startswith("repeated ") else [value[field]]
            if any(_has_map(inner, item) for item in items):
                return True
    return False


any_message = st.sampled_from(MESSAGE_NAMES).flatmap(lambda n: st.tuples(st.just(n), message(n)))


@settings(max_examples=150, deadline=None)
@given(any_message)
def test_rtserver_bytes_parse_in_the_sdk(named: tuple[str, dict[str, Any]]) -> None:
    """What rtserver encodes, the SDK's classes parse to the same fields."""
    name, value = named
    parsed = getattr(client_pb2, name).FromString(protobuf.encode_message(name, value))
    assert to_dict(parsed) == value


@settings(max_examples=150, deadline=None)
@given(any_message)
def test_sdk_bytes_decode_in_rtserver(named: tuple[str, dict[str, Any]]) -> None:
    """What the SDK's classes serialise, rtserver decodes to the same fields.

    Without maps (whose entry order is free) rtserver's own encoding is byte-identical.
    """
    name, value = named
    data = fill(getattr(client_pb2, name)(), value).SerializeToString()
    assert protobuf.decode_message(name, data) == value
    if not _has_map(name, value):
        assert protobuf.encode_message(name, value) == data


# --- the SDK's own code paths ------------------------------------------------------------------


def test_commands_from_the_sdk_codec() -> None:
    """Commands as centrifuge-python's protobuf codec frames them decode into request values."""
    frame = codecs._ProtobufCodec.encode_commands(
        [
            {"id": 1, "connect": {"token": "t", "name": "python"}},
            {"id": 2, "subscribe": {"channel": "c", "flag": "1", "recover": True, "offset": "5"}},
            {"id": 3, "publish": {"channel": "c", "data": "AAH/"}},  # base64 of 00 01 ff
            {},
        ]
    )
    commands = protobuf.decode_commands(frame)
    assert [(c.id, c.method) for c in commands] == [
        (1, "connect"),
        (2, "subscribe"),
        (3, "publish"),
        (0, None),
    ]
    sub = SubscribeRequest.parse(commands[1].params)
    assert (sub.channel, sub.flag, sub.recover, sub.offset) == ("c", 1, True, 5)
    assert PublishRequest.parse(commands[2].params) == PublishRequest("c", b"\x00\x01\xff")


def test_replies_read_by_the_sdk_codec() -> None:
    """A frame of rtserver replies and pushes is what centrifuge-python's codec reads."""
    pub = Publication(b"\x00bin", ClientInfo("u", "c"), offset=2**40, tags={"k": "v"})
    frame = protobuf.join(
        [
            protobuf.encode_reply(1, "connect", {"client": "abc", "ping": 25, "pong": True}),
            protobuf.encode_error(2, Error.TOO_MANY_REQUESTS),
            protobuf.encode_publication_push("news", pub),
            protobuf.encode_reply(3, "presence_stats", {"num_clients": 0, "num_users": 0}),
            protobuf.PING,
        ]
    )
    assert codecs._ProtobufCodec.decode_replies(frame) == [
        {"id": 1, "connect": {"client": "abc", "ping": 25, "pong": True}},
        {"id": 2, "error": {"code": 111, "message": "too many requests", "temporary": True}},
        {
            "push": {
                "channel": "news",
                "pub": {
                    "data": "AGJpbg==",
                    "info": {"user": "u", "client": "c"},
                    "offset": str(2**40),
                    "tags": {"k": "v"},
                },
            }
        },
        {"id": 3, "presence_stats": {}},
        {},
    ]
