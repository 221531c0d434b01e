"""rtserver's ``proxy.proto``: Centrifugo's field numbers, and a generated module that is current.

``CENTRIFUGO`` is the field table of Centrifugo v6's ``internal/proxyproto/proxy.proto``
(PublishResult with the fields 4-8 Centrifugo v6.8.0 added): message -> field ->
(number, type), for every message rtserver's schema declares. rtserver leaves out
fields it does not use (``caps``, ``allow``); a declared field must have Centrifugo's
number and type, and ``PublishResult`` must be complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from protoschema import (
    FieldTable,
    compiled_schema,
    declared_mismatches,
    embedded_schema,
    left_out,
    message_proto,
)

from rtserver.proxy import proxy_pb2

_COMMON = {"client": (1, "string"), "transport": (2, "string"), "protocol": (3, "string"),
           "encoding": (4, "string")}
_OUTCOME = {"error": (2, "Error"), "disconnect": (3, "Disconnect")}

CENTRIFUGO: FieldTable = {
    "Disconnect": {"code": (1, "uint32"), "reason": (2, "string")},
    "Error": {"code": (1, "uint32"), "message": (2, "string"), "temporary": (3, "bool")},
    "BoolValue": {"value": (1, "bool")},
    "SubscribeOptionOverride": {
        "presence": (1, "BoolValue"), "join_leave": (2, "BoolValue"),
        "force_recovery": (3, "BoolValue"), "force_positioning": (4, "BoolValue"),
        "force_push_join_leave": (5, "BoolValue"),
    },
    "ConnectRequest": {**_COMMON, "data": (10, "bytes"), "b64data": (11, "string"),
                       "name": (12, "string"), "version": (13, "string"),
                       "channels": (14, "repeated string")},
    "SubscribeOptions": {"expire_at": (1, "int64"), "info": (2, "bytes"),
                         "b64info": (3, "string"), "data": (4, "bytes"),
                         "b64data": (5, "string"), "override": (6, "SubscribeOptionOverride")},
    "ConnectResult": {"user": (1, "string"), "expire_at": (2, "int64"), "info": (3, "bytes"),
                      "b64info": (4, "string"), "data": (5, "bytes"), "b64data": (6, "string"),
                      "channels": (7, "repeated string"), "subs": (8, "map"),
                      "meta": (9, "bytes"), "caps": (10, "repeated ChannelsCapability")},
    "ConnectResponse": {"result": (1, "ConnectResult"), **_OUTCOME},
    "RefreshRequest": {**_COMMON, "user": (10, "string"), "meta": (11, "bytes")},
    "RefreshResult": {"expired": (1, "bool"), "expire_at": (2, "int64"), "info": (3, "bytes"),
                      "b64info": (4, "string"), "meta": (5, "bytes"),
                      "caps": (6, "repeated ChannelsCapability")},
    "RefreshResponse": {"result": (1, "RefreshResult"), **_OUTCOME},
    "SubscribeRequest": {**_COMMON, "user": (10, "string"), "channel": (11, "string"),
                         "token": (12, "string"), "meta": (13, "bytes"), "data": (14, "bytes"),
                         "b64data": (15, "string")},
    "SubscribeResult": {"expire_at": (1, "int64"), "info": (2, "bytes"), "b64info": (3, "string"),
                        "data": (4, "bytes"), "b64data": (5, "string"),
                        "override": (6, "SubscribeOptionOverride"),
                        "allow": (7, "repeated string")},
    "SubscribeResponse": {"result": (1, "SubscribeResult"), **_OUTCOME},
    "PublishRequest": {**_COMMON, "user": (10, "string"), "channel": (11, "string"),
                       "data": (12, "bytes"), "b64data": (13, "string"), "meta": (14, "bytes")},
    "PublishResult": {"data": (1, "bytes"), "b64data": (2, "string"), "skip_history": (3, "bool"),
                      "tags": (4, "map"), "idempotency_key": (5, "string"), "delta": (6, "bool"),
                      "version": (7, "uint64"), "version_epoch": (8, "string")},
    "PublishResponse": {"result": (1, "PublishResult"), **_OUTCOME},
    "RPCRequest": {**_COMMON, "user": (10, "string"), "method": (11, "string"),
                   "data": (12, "bytes"), "b64data": (13, "string"), "meta": (14, "bytes")},
    "RPCResult": {"data": (1, "bytes"), "b64data": (2, "string")},
    "RPCResponse": {"result": (1, "RPCResult"), **_OUTCOME},
    "SubRefreshRequest": {**_COMMON, "user": (10, "string"), "channel": (11, "string"),
                          "meta": (12, "bytes")},
    "SubRefreshResult": {"expired": (1, "bool"), "expire_at": (2, "int64"),
                         "info": (3, "bytes"), "b64info": (4, "string")},
    "SubRefreshResponse": {"result": (1, "SubRefreshResult"), **_OUTCOME},
}

#: Messages rtserver declares in full (every Centrifugo field).
COMPLETE = {"PublishResult", "PublishResponse", "PublishRequest", "Error", "Disconnect"}

def _proto(message: str) -> descriptor_pb2.DescriptorProto:
    return message_proto(proxy_pb2.DESCRIPTOR, message)


def mismatches(proto: descriptor_pb2.DescriptorProto) -> list[str]:
    theirs = CENTRIFUGO[proto.name]
    found = declared_mismatches(proto, theirs)
    if proto.name in COMPLETE:
        found += [f"{proto.name}.{name} is missing" for name, _ in left_out(proto, theirs)]
    return found


def test_package_and_service_are_centrifugos() -> None:
    assert proxy_pb2.DESCRIPTOR.package == "centrifugal.centrifugo.proxy"
    service = proxy_pb2.DESCRIPTOR.services_by_name["CentrifugoProxy"]
    assert {m.name: (m.input_type.name, m.output_type.name) for m in service.methods} == {
        name: (f"{name}Request", f"{name}Response")
        for name in ("Connect", "Refresh", "Subscribe", "Publish", "RPC", "SubRefresh")
    }


@pytest.mark.parametrize("message", sorted(proxy_pb2.DESCRIPTOR.message_types_by_name))
def test_fields_match_centrifugo(message: str) -> None:
    assert mismatches(_proto(message)) == []


def test_a_renumbered_or_missing_publish_result_field_is_caught() -> None:
    renumbered = _proto("PublishResult")
    next(f for f in renumbered.field if f.name == "delta").number = 9
    assert mismatches(renumbered) == [
        "PublishResult.delta is (9, 'bool'), Centrifugo's is (6, 'bool')"
    ]
    dropped = _proto("PublishResult")
    del dropped.field[-1]
    assert mismatches(dropped) == ["PublishResult.version_epoch is missing"]


def test_generated_descriptor_is_the_schema(tmp_path: Path) -> None:
    """proxy_pb2 embeds what protoc makes of proxy.proto now.

    Fails when proxy.proto was edited and proxy_pb2 was not regenerated (the command is
    in proxy.proto's header).
    """
    compiled = compiled_schema("rtserver/proxy/proxy.proto", tmp_path)
    assert embedded_schema(proxy_pb2) == compiled, \
        "proxy_pb2 is stale: regenerate it (see proxy.proto)"
