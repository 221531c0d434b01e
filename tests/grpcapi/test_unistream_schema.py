"""uni_grpc's schema is Centrifugo's: names, numbers and types of every field.

``CENTRIFUGO`` is the field table of Centrifugo v6's published ``unistream.proto``
(internal/unigrpc/unistream/unistream.proto of centrifugal/centrifugo at commit f25c7abd,
2026-07-15): message -> field -> (number, type). A field renumbered, retyped or renamed
in rtserver's schema fails here, and so does a field missing on either side.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from protoschema import (
    FieldTable,
    compiled_schema,
    declared_mismatches,
    embedded_schema,
    left_out,
    message_proto,
)

from rtserver.grpcapi.proto import unistream_pb2
from rtserver.protocol.protobuf import SCHEMA_SOURCE

CENTRIFUGO: FieldTable = {
    "ConnectRequest": {"token": (1, "string"), "data": (2, "bytes"), "subs": (3, "map"),
                       "name": (4, "string"), "version": (5, "string"),
                       "headers": (6, "map")},
    "SubscribeRequest": {"recover": (3, "bool"), "epoch": (6, "string"),
                         "offset": (7, "uint64")},
    "Push": {"channel": (2, "string"), "pub": (4, "Publication"), "join": (5, "Join"),
             "leave": (6, "Leave"), "unsubscribe": (7, "Unsubscribe"),
             "message": (8, "Message"), "subscribe": (9, "Subscribe"),
             "connect": (10, "Connect"), "disconnect": (11, "Disconnect"),
             "refresh": (12, "Refresh")},
    "ClientInfo": {"user": (1, "string"), "client": (2, "string"), "conn_info": (3, "bytes"),
                   "chan_info": (4, "bytes")},
    "Publication": {"data": (4, "bytes"), "info": (5, "ClientInfo"), "offset": (6, "uint64"),
                    "tags": (7, "map")},
    "Join": {"info": (1, "ClientInfo")},
    "Leave": {"info": (1, "ClientInfo")},
    "Unsubscribe": {"code": (2, "uint32"), "reason": (3, "string")},
    "Subscribe": {"recoverable": (1, "bool"), "epoch": (4, "string"), "offset": (5, "uint64"),
                  "positioned": (6, "bool"), "data": (7, "bytes")},
    "Message": {"data": (1, "bytes")},
    "Connect": {"client": (1, "string"), "version": (2, "string"), "data": (3, "bytes"),
                "subs": (4, "map"), "expires": (5, "bool"), "ttl": (6, "uint32"),
                "ping": (7, "uint32"), "pong": (8, "bool"), "session": (9, "string"),
                "node": (10, "string")},
    "Disconnect": {"code": (1, "uint32"), "reason": (2, "string"), "reconnect": (3, "bool")},
    "Refresh": {"expires": (1, "bool"), "ttl": (2, "uint32")},
    "SubscribeResult": {"expires": (1, "bool"), "ttl": (2, "uint32"),
                        "recoverable": (3, "bool"), "epoch": (6, "string"),
                        "publications": (7, "repeated Publication"),
                        "recovered": (8, "bool"), "offset": (9, "uint64"),
                        "positioned": (10, "bool"), "data": (11, "bytes"),
                        "was_recovering": (12, "bool")},
}

def _proto(message: str) -> descriptor_pb2.DescriptorProto:
    return message_proto(unistream_pb2.DESCRIPTOR, message)


def mismatches(proto: descriptor_pb2.DescriptorProto) -> list[str]:
    """How ``proto`` differs from Centrifugo's message of the same name."""
    theirs = CENTRIFUGO[proto.name]
    return declared_mismatches(proto, theirs) + [
        f"{proto.name}.{name} = {number} is missing" for name, number in left_out(proto, theirs)
    ]


def test_package_service_and_method_are_centrifugos() -> None:
    """Consumers generated from either schema call the same method with the same messages."""
    assert unistream_pb2.DESCRIPTOR.package == "centrifugal.centrifugo.unistream"
    service = unistream_pb2.DESCRIPTOR.services_by_name["CentrifugoUniStream"]
    [consume] = service.methods
    assert (consume.name, consume.input_type.name, consume.output_type.name) == (
        "Consume", "ConnectRequest", "Push")
    assert (consume.client_streaming, consume.server_streaming) == (False, True)


def test_every_message_matches_centrifugo() -> None:
    """Same messages; same names, numbers and types in each."""
    assert set(unistream_pb2.DESCRIPTOR.message_types_by_name) == set(CENTRIFUGO)
    for message in CENTRIFUGO:
        assert mismatches(_proto(message)) == [], message


def test_a_renumbered_field_is_caught() -> None:
    """The comparison fails on a renumbered or dropped field."""
    renumbered = _proto("Push")
    next(f for f in renumbered.field if f.name == "pub").number = 3
    assert mismatches(renumbered) == [
        "Push.pub is (3, 'Publication'), Centrifugo's is (4, 'Publication')"]
    dropped = _proto("SubscribeRequest")
    del dropped.field[0]
    assert mismatches(dropped) == ["SubscribeRequest.recover = 3 is missing"]


def test_the_server_codec_uses_the_same_numbers() -> None:
    """The client protocol codec that encodes uni_grpc pushes numbers every field alike.

    The server sends bytes made by rtserver/protocol/protobuf.py, not by the generated
    classes: each field of the unistream schema must have the same number and type there.
    """
    for message, fields in CENTRIFUGO.items():
        codec = {name: (number, type_) for type_, name, number in SCHEMA_SOURCE[message]}
        for name, (number, kind) in fields.items():
            their_number, their_type = codec[name]
            assert their_number == number, f"{message}.{name}"
            if kind == "map":
                assert their_type.startswith("map<"), f"{message}.{name}"
            else:
                assert their_type == kind, f"{message}.{name}"


def test_generated_descriptor_is_the_schema(tmp_path: Path) -> None:
    """unistream_pb2 embeds exactly what unistream.proto compiles to.

    Fails when unistream.proto was edited and the modules were not regenerated.
    """
    compiled = compiled_schema("rtserver/grpcapi/proto/unistream.proto", tmp_path)
    assert embedded_schema(unistream_pb2) == compiled, \
        "unistream_pb2 is stale: run python scripts/grpc_gen.py"
