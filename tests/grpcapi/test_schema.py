"""rtserver's GRPC schema: Centrifugo's contract, and generated modules that are current.

``CENTRIFUGO`` is the field table of Centrifugo v6's published ``api.proto``
(internal/apiproto/api.proto of centrifugal/centrifugo at commit f25c7abd, 2026-07-15):
message -> field -> (number, type), for every message rtserver's schema declares, PRO
fields included. A field renumbered, retyped or renamed in rtserver's schema fails
here; so does a Centrifugo field that rtserver leaves out without reserving its number.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from protoschema import (
    FieldTable,
    compiled_schema,
    declared_mismatches,
    embedded_schema,
    left_out,
    message_proto,
)

from rtserver.grpcapi.proto import api_pb2

ROOT = Path(__file__).resolve().parents[2]

CENTRIFUGO: FieldTable = {
    "Command": {"publish": (4, "PublishRequest"), "broadcast": (5, "BroadcastRequest"), "subscribe": (6, "SubscribeRequest"), "unsubscribe": (7, "UnsubscribeRequest"), "disconnect": (8, "DisconnectRequest"), "presence": (9, "PresenceRequest"), "presence_stats": (10, "PresenceStatsRequest"), "history": (11, "HistoryRequest"), "history_remove": (12, "HistoryRemoveRequest"), "info": (13, "InfoRequest"), "rpc": (14, "RPCRequest"), "refresh": (15, "RefreshRequest"), "channels": (16, "ChannelsRequest"), "connections": (17, "ConnectionsRequest"), "update_user_status": (18, "UpdateUserStatusRequest"), "get_user_status": (19, "GetUserStatusRequest"), "delete_user_status": (20, "DeleteUserStatusRequest"), "block_user": (21, "BlockUserRequest"), "unblock_user": (22, "UnblockUserRequest"), "revoke_token": (23, "RevokeTokenRequest"), "invalidate_user_tokens": (24, "InvalidateUserTokensRequest"), "device_register": (25, "DeviceRegisterRequest"), "device_update": (26, "DeviceUpdateRequest"), "device_remove": (27, "DeviceRemoveRequest"), "device_list": (28, "DeviceListRequest"), "device_topic_list": (29, "DeviceTopicListRequest"), "device_topic_update": (30, "DeviceTopicUpdateRequest"), "user_topic_list": (31, "UserTopicListRequest"), "user_topic_update": (32, "UserTopicUpdateRequest"), "send_push_notification": (33, "SendPushNotificationRequest"), "update_push_status": (34, "UpdatePushStatusRequest"), "cancel_push": (35, "CancelPushRequest"), "map_publish": (36, "MapPublishRequest"), "map_remove": (37, "MapRemoveRequest"), "map_read_state": (38, "MapReadStateRequest"), "map_read_stream": (39, "MapReadStreamRequest"), "map_stats": (40, "MapStatsRequest"), "map_clear": (41, "MapClearRequest"), "shared_poll_publish": (42, "SharedPollPublishRequest")},
    "Error": {"code": (1, "uint32"), "message": (2, "string")},
    "Reply": {"error": (2, "Error"), "publish": (4, "PublishResult"), "broadcast": (5, "BroadcastResult"), "subscribe": (6, "SubscribeResult"), "unsubscribe": (7, "UnsubscribeResult"), "disconnect": (8, "DisconnectResult"), "presence": (9, "PresenceResult"), "presence_stats": (10, "PresenceStatsResult"), "history": (11, "HistoryResult"), "history_remove": (12, "HistoryRemoveResult"), "info": (13, "InfoResult"), "rpc": (14, "RPCResult"), "refresh": (15, "RefreshResult"), "channels": (16, "ChannelsResult"), "connections": (17, "ConnectionsResult"), "update_user_status": (18, "UpdateUserStatusResult"), "get_user_status": (19, "GetUserStatusResult"), "delete_user_status": (20, "DeleteUserStatusResult"), "block_user": (21, "BlockUserResult"), "unblock_user": (22, "UnblockUserResult"), "revoke_token": (23, "RevokeTokenResult"), "invalidate_user_tokens": (24, "InvalidateUserTokensResult"), "device_register": (25, "DeviceRegisterResult"), "device_update": (26, "DeviceUpdateResult"), "device_remove": (27, "DeviceRemoveResult"), "device_list": (28, "DeviceListResult"), "device_topic_list": (29, "DeviceTopicListResult"), "device_topic_update": (30, "DeviceTopicUpdateResult"), "user_topic_list": (31, "UserTopicListResult"), "user_topic_update": (32, "UserTopicUpdateResult"), "send_push_notification": (33, "SendPushNotificationResult"), "update_push_status": (34, "UpdatePushStatusResult"), "cancel_push": (35, "CancelPushResult"), "map_publish": (36, "MapPublishResult"), "map_remove": (37, "MapRemoveResult"), "map_read_state": (38, "MapReadStateResult"), "map_read_stream": (39, "MapReadStreamResult"), "map_stats": (40, "MapStatsResult"), "map_clear": (41, "MapClearResult"), "shared_poll_publish": (42, "SharedPollPublishResult")},
    "BatchRequest": {"commands": (1, "repeated Command"), "parallel": (2, "bool")},
    "BatchResponse": {"replies": (1, "repeated Reply")},
    "PublishRequest": {"channel": (1, "string"), "data": (2, "bytes"), "b64data": (3, "string"), "skip_history": (4, "bool"), "tags": (5, "map"), "idempotency_key": (6, "string"), "delta": (7, "bool"), "version": (8, "uint64"), "version_epoch": (9, "string")},
    "PublishResponse": {"error": (1, "Error"), "result": (2, "PublishResult")},
    "PublishResult": {"offset": (1, "uint64"), "epoch": (2, "string")},
    "BroadcastRequest": {"channels": (1, "repeated string"), "data": (2, "bytes"), "b64data": (3, "string"), "skip_history": (4, "bool"), "tags": (5, "map"), "idempotency_key": (6, "string"), "delta": (7, "bool"), "version": (8, "uint64"), "version_epoch": (9, "string")},
    "BroadcastResponse": {"error": (1, "Error"), "result": (2, "BroadcastResult")},
    "BroadcastResult": {"responses": (1, "repeated PublishResponse")},
    "SubscribeRequest": {"channel": (1, "string"), "user": (2, "string"), "expire_at": (3, "int64"), "info": (4, "bytes"), "b64info": (5, "string"), "client": (6, "string"), "data": (7, "bytes"), "b64data": (8, "string"), "recover_since": (9, "StreamPosition"), "override": (10, "SubscribeOptionOverride"), "session": (11, "string"), "label_filter": (12, "FilterNode"), "all_users": (13, "bool")},
    "SubscribeResponse": {"error": (1, "Error"), "result": (2, "SubscribeResult")},
    "BoolValue": {"value": (1, "bool")},
    "Int32Value": {"value": (1, "int32")},
    "SubscribeOptionOverride": {"presence": (1, "BoolValue"), "join_leave": (2, "BoolValue"), "force_recovery": (3, "BoolValue"), "force_positioning": (4, "BoolValue"), "force_push_join_leave": (5, "BoolValue")},
    "SubscribeResult": {},
    "UnsubscribeRequest": {"channel": (1, "string"), "user": (2, "string"), "client": (3, "string"), "session": (4, "string"), "label_filter": (5, "FilterNode"), "all_users": (6, "bool")},
    "UnsubscribeResponse": {"error": (1, "Error"), "result": (2, "UnsubscribeResult")},
    "UnsubscribeResult": {},
    "Disconnect": {"code": (1, "uint32"), "reason": (2, "string")},
    "DisconnectRequest": {"user": (1, "string"), "disconnect": (2, "Disconnect"), "client": (3, "string"), "whitelist": (4, "repeated string"), "session": (5, "string"), "label_filter": (6, "FilterNode"), "all_users": (7, "bool")},
    "DisconnectResponse": {"error": (1, "Error"), "result": (2, "DisconnectResult")},
    "DisconnectResult": {},
    "PresenceRequest": {"channel": (1, "string")},
    "PresenceResponse": {"error": (1, "Error"), "result": (2, "PresenceResult")},
    "ClientInfo": {"user": (1, "string"), "client": (2, "string"), "conn_info": (3, "bytes"), "chan_info": (4, "bytes")},
    "PresenceResult": {"presence": (1, "map")},
    "PresenceStatsRequest": {"channel": (1, "string")},
    "PresenceStatsResponse": {"error": (1, "Error"), "result": (2, "PresenceStatsResult")},
    "PresenceStatsResult": {"num_clients": (1, "uint32"), "num_users": (2, "uint32")},
    "StreamPosition": {"offset": (1, "uint64"), "epoch": (2, "string")},
    "HistoryRequest": {"channel": (1, "string"), "limit": (2, "int32"), "since": (3, "StreamPosition"), "reverse": (4, "bool")},
    "HistoryResponse": {"error": (1, "Error"), "result": (2, "HistoryResult")},
    "Publication": {"data": (2, "bytes"), "info": (3, "ClientInfo"), "offset": (4, "uint64"), "tags": (5, "map")},
    "HistoryResult": {"publications": (1, "repeated Publication"), "epoch": (2, "string"), "offset": (3, "uint64")},
    "HistoryRemoveRequest": {"channel": (1, "string")},
    "HistoryRemoveResponse": {"error": (1, "Error"), "result": (2, "HistoryRemoveResult")},
    "HistoryRemoveResult": {},
    "InfoRequest": {},
    "InfoResponse": {"error": (1, "Error"), "result": (2, "InfoResult")},
    "InfoResult": {"nodes": (1, "repeated NodeResult")},
    "RPCRequest": {"method": (1, "string"), "params": (2, "bytes")},
    "RPCResponse": {"error": (1, "Error"), "result": (2, "RPCResult")},
    "RPCResult": {"data": (1, "bytes")},
    "RefreshRequest": {"user": (1, "string"), "client": (2, "string"), "expired": (3, "bool"), "expire_at": (4, "int64"), "info": (5, "bytes"), "session": (6, "string"), "label_filter": (7, "FilterNode"), "all_users": (8, "bool")},
    "RefreshResponse": {"error": (1, "Error"), "result": (2, "RefreshResult")},
    "RefreshResult": {},
    "NodeResult": {"uid": (1, "string"), "name": (2, "string"), "version": (3, "string"), "num_clients": (4, "uint32"), "num_users": (5, "uint32"), "num_channels": (6, "uint32"), "uptime": (7, "uint32"), "metrics": (8, "Metrics"), "process": (9, "Process"), "num_subs": (10, "uint32")},
    "Metrics": {"interval": (1, "double"), "items": (2, "map")},
    "Process": {"cpu": (1, "double"), "rss": (2, "int64")},
    "ChannelsRequest": {"pattern": (1, "string")},
    "ChannelsResponse": {"error": (1, "Error"), "result": (2, "ChannelsResult")},
    "ChannelsResult": {"channels": (1, "map")},
    "ChannelInfo": {"num_clients": (1, "uint32")},
}

#: Centrifugo's CentrifugoApi methods: name -> (request, response).
CENTRIFUGO_METHODS = {
    "Batch": ("BatchRequest", "BatchResponse"),
    "Publish": ("PublishRequest", "PublishResponse"),
    "Broadcast": ("BroadcastRequest", "BroadcastResponse"),
    "Subscribe": ("SubscribeRequest", "SubscribeResponse"),
    "Unsubscribe": ("UnsubscribeRequest", "UnsubscribeResponse"),
    "Disconnect": ("DisconnectRequest", "DisconnectResponse"),
    "Presence": ("PresenceRequest", "PresenceResponse"),
    "PresenceStats": ("PresenceStatsRequest", "PresenceStatsResponse"),
    "History": ("HistoryRequest", "HistoryResponse"),
    "HistoryRemove": ("HistoryRemoveRequest", "HistoryRemoveResponse"),
    "Info": ("InfoRequest", "InfoResponse"),
    "RPC": ("RPCRequest", "RPCResponse"),
    "Refresh": ("RefreshRequest", "RefreshResponse"),
    "Channels": ("ChannelsRequest", "ChannelsResponse"),
    "Connections": ("ConnectionsRequest", "ConnectionsResponse"),
    "UpdateUserStatus": ("UpdateUserStatusRequest", "UpdateUserStatusResponse"),
    "GetUserStatus": ("GetUserStatusRequest", "GetUserStatusResponse"),
    "DeleteUserStatus": ("DeleteUserStatusRequest", "DeleteUserStatusResponse"),
    "BlockUser": ("BlockUserRequest", "BlockUserResponse"),
    "UnblockUser": ("UnblockUserRequest", "UnblockUserResponse"),
    "RevokeToken": ("RevokeTokenRequest", "RevokeTokenResponse"),
    "InvalidateUserTokens": ("InvalidateUserTokensRequest", "InvalidateUserTokensResponse"),
    "DeviceRegister": ("DeviceRegisterRequest", "DeviceRegisterResponse"),
    "DeviceUpdate": ("DeviceUpdateRequest", "DeviceUpdateResponse"),
    "DeviceRemove": ("DeviceRemoveRequest", "DeviceRemoveResponse"),
    "DeviceList": ("DeviceListRequest", "DeviceListResponse"),
    "DeviceTopicList": ("DeviceTopicListRequest", "DeviceTopicListResponse"),
    "DeviceTopicUpdate": ("DeviceTopicUpdateRequest", "DeviceTopicUpdateResponse"),
    "UserTopicList": ("UserTopicListRequest", "UserTopicListResponse"),
    "UserTopicUpdate": ("UserTopicUpdateRequest", "UserTopicUpdateResponse"),
    "SendPushNotification": ("SendPushNotificationRequest", "SendPushNotificationResponse"),
    "UpdatePushStatus": ("UpdatePushStatusRequest", "UpdatePushStatusResponse"),
    "CancelPush": ("CancelPushRequest", "CancelPushResponse"),
    "MapPublish": ("MapPublishRequest", "MapPublishResponse"),
    "MapRemove": ("MapRemoveRequest", "MapRemoveResponse"),
    "MapReadState": ("MapReadStateRequest", "MapReadStateResponse"),
    "MapReadStream": ("MapReadStreamRequest", "MapReadStreamResponse"),
    "MapStats": ("MapStatsRequest", "MapStatsResponse"),
    "MapClear": ("MapClearRequest", "MapClearResponse"),
    "SharedPollPublish": ("SharedPollPublishRequest", "SharedPollPublishResponse"),
}

#: The methods of Centrifugo's open-source API, all of which rtserver serves.
OSS_METHODS = {
    "Batch", "Publish", "Broadcast", "Subscribe", "Unsubscribe", "Disconnect", "Presence",
    "PresenceStats", "History", "HistoryRemove", "Info", "RPC", "Refresh", "Channels",
}

def _proto(message: str) -> descriptor_pb2.DescriptorProto:
    return message_proto(api_pb2.DESCRIPTOR, message)


def mismatches(proto: descriptor_pb2.DescriptorProto) -> list[str]:
    """How ``proto`` differs from Centrifugo's message of the same name."""
    theirs = CENTRIFUGO[proto.name]
    reserved = {n for r in proto.reserved_range for n in range(r.start, r.end)}
    return declared_mismatches(proto, theirs) + [
        f"{proto.name}.{name} = {number} is neither declared nor reserved"
        for name, number in left_out(proto, theirs)
        if number not in reserved
    ]


def test_package_and_service_name_are_centrifugos() -> None:
    """Stubs of either schema address the same fully-qualified service."""
    assert api_pb2.DESCRIPTOR.package == "centrifugal.centrifugo.api"
    assert list(api_pb2.DESCRIPTOR.services_by_name) == ["CentrifugoApi"]


def test_every_open_source_method_with_centrifugos_messages() -> None:
    """Each OSS method exists, with Centrifugo's request and response messages."""
    service = api_pb2.DESCRIPTOR.services_by_name["CentrifugoApi"]
    ours = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert set(ours) == OSS_METHODS
    for name, messages in ours.items():
        assert CENTRIFUGO_METHODS[name] == messages, name


@pytest.mark.parametrize("message", sorted(CENTRIFUGO))
def test_fields_match_centrifugo(message: str) -> None:
    """Same names, numbers and types; Centrifugo fields left out are reserved numbers."""
    assert mismatches(_proto(message)) == []


def test_every_declared_message_is_in_the_table() -> None:
    """No message of rtserver's own invention slips into the Centrifugo package."""
    assert set(api_pb2.DESCRIPTOR.message_types_by_name) == set(CENTRIFUGO)


def test_a_renumbered_or_dropped_field_is_caught() -> None:
    """The comparison fails on the edits a careless change to api.proto would make."""
    renumbered = _proto("PublishRequest")
    next(f for f in renumbered.field if f.name == "data").number = 10
    assert mismatches(renumbered) == [
        "PublishRequest.data is (10, 'bytes'), Centrifugo's is (2, 'bytes')"
    ]
    retyped = _proto("HistoryRequest")
    next(f for f in retyped.field if f.name == "limit").type = FieldDescriptor.TYPE_INT64
    assert mismatches(retyped) == [
        "HistoryRequest.limit is (2, 'int64'), Centrifugo's is (2, 'int32')"
    ]
    dropped = _proto("SubscribeRequest")
    del dropped.reserved_range[:]
    assert mismatches(dropped) == [
        "SubscribeRequest.label_filter = 12 is neither declared nor reserved",
        "SubscribeRequest.all_users = 13 is neither declared nor reserved",
    ]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grpc_gen", ROOT / "scripts" / "grpc_gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_descriptor_is_the_schema(tmp_path: Path) -> None:
    """api_pb2 embeds exactly what api.proto compiles to (any grpcio-tools version).

    Fails when api.proto was edited and the modules were not regenerated.
    """
    compiled = compiled_schema("rtserver/grpcapi/proto/api.proto", tmp_path)
    assert embedded_schema(api_pb2) == compiled, "api_pb2 is stale: run python scripts/grpc_gen.py"


def test_generated_stubs_cover_every_method() -> None:
    """api_pb2_grpc has a client stub method and a servicer method per schema method."""
    from rtserver.grpcapi.proto import api_pb2_grpc

    names = {m.name for m in api_pb2.DESCRIPTOR.services_by_name["CentrifugoApi"].methods}
    assert names == OSS_METHODS
    for name in names:
        assert callable(getattr(api_pb2_grpc.CentrifugoApiServicer, name))


def test_generated_modules_match_the_schema(tmp_path: Path) -> None:
    """The checked-in api_pb2*.py files are byte for byte what scripts/grpc_gen.py makes.

    Generated code carries the generator's version, so the comparison needs the
    grpcio-tools release the files were made with (the one the test extra pins as the
    minimum); with another release the descriptor test above still guards the schema.
    """
    from importlib.metadata import version

    from rtserver.grpcapi.proto import api_pb2_grpc

    installed = version("grpcio-tools")
    if installed != api_pb2_grpc.GRPC_GENERATED_VERSION:
        pytest.skip(f"files made by grpcio-tools {api_pb2_grpc.GRPC_GENERATED_VERSION}, "
                    f"{installed} installed")
    generator = _load_generator()
    for rel in generator.generate(tmp_path):
        fresh = (tmp_path / rel).read_text()
        assert (ROOT / rel).read_text() == fresh, f"{rel} is stale: run python scripts/grpc_gen.py"
