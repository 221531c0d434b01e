"""GRPC messages to executor requests and executor responses back to GRPC messages.

The server API executor (:mod:`rtserver.api.executor`) takes and returns the JSON shapes
of the HTTP API. This module maps the schema's request messages onto those shapes and the
executor's response bodies onto the schema's response messages, so both APIs share one
implementation of every command (docs/server-api.rst, "GRPC API").

Payloads: ``bytes`` fields (``data``, ``info``, ``conn_info``...) carry JSON text. A
request's JSON bytes are parsed here (error 107 when they are not JSON: rtserver is
JSON-only) and handed to the executor as values, which re-encodes them compactly; the
``b64*`` string fields are passed through for the executor to decode. Pure functions:
no I/O, no reactor.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf.message import Message

from rtserver.api import schema
from rtserver.api.executor import PublishCommand
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.protocol.codes import Error
from rtserver.protocol.fields import compact_json

__all__ = [
    "METHODS",
    "UNKNOWN_COMMAND",
    "Method",
    "batch_commands",
    "batch_publishes",
    "encode_batch_publish_response",
    "encode_publish_response",
    "error_message",
    "json_payload",
    "publish_command",
]

#: The method name an empty (or Centrifugo PRO) batch :class:`Command` runs as: the
#: executor answers it with error 104, as for any unknown method.
UNKNOWN_COMMAND = ""

_OVERRIDES = (
    "presence",
    "join_leave",
    "force_recovery",
    "force_positioning",
    "force_push_join_leave",
)


def json_payload(raw: bytes, field: str) -> Any:
    """The JSON value of a ``bytes`` payload field.

    Raises:
        Error: 107 when ``raw`` is not JSON.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise schema.bad_request(f"{field} must be JSON: this server is JSON-only") from None


def _payload(params: dict[str, Any], key: str, raw: bytes, b64: str) -> None:
    """Set ``key`` (a JSON value) or ``b64<key>`` in ``params`` when the request has one."""
    if b64:
        params["b64" + key] = b64
    elif raw:
        params[key] = json_payload(raw, key)


def _position(pos: pb.StreamPosition) -> dict[str, Any]:
    return {"offset": pos.offset, "epoch": pos.epoch}


# --- requests --------------------------------------------------------------------------


def _publication(req: pb.PublishRequest | pb.BroadcastRequest) -> dict[str, Any]:
    # Only fields that differ from their default: absent keys read as defaults, and a
    # batch of small publications spends its time here.
    params: dict[str, Any] = {}
    if req.b64data:
        params["b64data"] = req.b64data
    elif req.data:
        params["data"] = json_payload(req.data, "data")
    if req.skip_history:
        params["skip_history"] = True
    if req.tags:
        params["tags"] = dict(req.tags)
    if req.idempotency_key:
        params["idempotency_key"] = req.idempotency_key
    if req.delta:
        params["delta"] = True
    if req.version:
        params["version"] = req.version
    if req.version_epoch:
        params["version_epoch"] = req.version_epoch
    return params


def publish_params(req: pb.PublishRequest) -> dict[str, Any]:
    """``publish``."""
    params = _publication(req)
    params["channel"] = req.channel
    return params


def publish_command(req: pb.PublishRequest) -> PublishCommand:
    """``publish`` as the executor's typed command.

    What :func:`publish_params` and the executor's parsing make of the request, without
    the detour through JSON-shaped params.

    Raises:
        Error: 107 when the channel is missing or invalid (checked first, as by the
            executor's ``publish``), or the data is missing or not JSON.
    """
    schema.check_channel(req.channel)
    if req.b64data:
        data = schema.raw_json({"b64data": req.b64data}, "data", "b64data")
    elif req.data:
        data = compact_json(json_payload(req.data, "data"))
    else:
        data = None
    if data is None:
        raise schema.bad_request("data is required")
    return PublishCommand(
        req.channel,
        data,
        dict(req.tags) if req.tags else {},
        req.skip_history,
        req.idempotency_key,
        req.delta,
        req.version,
        req.version_epoch,
    )


def broadcast_params(req: pb.BroadcastRequest) -> dict[str, Any]:
    """``broadcast``."""
    params = _publication(req)
    params["channels"] = list(req.channels)
    return params


def subscribe_params(req: pb.SubscribeRequest) -> dict[str, Any]:
    """``subscribe``."""
    params: dict[str, Any] = {
        "channel": req.channel,
        "user": req.user,
        "expire_at": req.expire_at,
        "client": req.client,
        "session": req.session,
    }
    _payload(params, "info", req.info, req.b64info)
    _payload(params, "data", req.data, req.b64data)
    if req.HasField("recover_since"):
        params["recover_since"] = _position(req.recover_since)
    if req.HasField("override"):
        override: dict[str, Any] = {}
        for name in _OVERRIDES:
            if req.override.HasField(name):
                override[name] = {"value": getattr(req.override, name).value}
        params["override"] = override
    return params


def unsubscribe_params(req: pb.UnsubscribeRequest) -> dict[str, Any]:
    """``unsubscribe``."""
    return {"channel": req.channel, "user": req.user, "client": req.client, "session": req.session}


def disconnect_params(req: pb.DisconnectRequest) -> dict[str, Any]:
    """``disconnect``; without ``disconnect`` the executor's default (3503) applies."""
    params: dict[str, Any] = {
        "user": req.user,
        "client": req.client,
        "session": req.session,
        "whitelist": list(req.whitelist),
    }
    if req.HasField("disconnect"):
        params["disconnect"] = {"code": req.disconnect.code, "reason": req.disconnect.reason}
    return params


def refresh_params(req: pb.RefreshRequest) -> dict[str, Any]:
    """``refresh``."""
    params: dict[str, Any] = {
        "user": req.user,
        "client": req.client,
        "expired": req.expired,
        "expire_at": req.expire_at,
        "session": req.session,
    }
    _payload(params, "info", req.info, "")
    return params


def channel_params(
    req: pb.PresenceRequest | pb.PresenceStatsRequest | pb.HistoryRemoveRequest,
) -> dict[str, Any]:
    """``presence``, ``presence_stats``, ``history_remove``."""
    return {"channel": req.channel}


def history_params(req: pb.HistoryRequest) -> dict[str, Any]:
    """``history``."""
    params: dict[str, Any] = {"channel": req.channel, "limit": req.limit, "reverse": req.reverse}
    if req.HasField("since"):
        params["since"] = _position(req.since)
    return params


def channels_params(req: pb.ChannelsRequest) -> dict[str, Any]:
    """``channels``."""
    return {"pattern": req.pattern}


def info_params(req: pb.InfoRequest) -> dict[str, Any]:
    """``info``."""
    return {}


def rpc_params(req: pb.RPCRequest) -> dict[str, Any]:
    """``rpc``: ``params`` is not read, as no RPC extension exists."""
    return {"method": req.method}


# --- results ---------------------------------------------------------------------------


def _bytes(value: Any) -> bytes:
    """Raw JSON of a result value (an ``orjson.Fragment`` or a plain value)."""
    return orjson.dumps(value)


def _client_info(obj: dict[str, Any]) -> pb.ClientInfo:
    info = pb.ClientInfo(user=obj["user"], client=obj["client"])
    if "conn_info" in obj:
        info.conn_info = _bytes(obj["conn_info"])
    if "chan_info" in obj:
        info.chan_info = _bytes(obj["chan_info"])
    return info


def publish_result(result: dict[str, Any]) -> pb.PublishResult:
    """``{offset, epoch}`` (both omitted for channels without history)."""
    out = pb.PublishResult()
    _fill_publish(out, result)
    return out


def _fill_publish(out: pb.PublishResult, result: dict[str, Any]) -> None:
    if result:
        out.offset = result["offset"]
        out.epoch = result["epoch"]


def broadcast_result(result: dict[str, Any]) -> pb.BroadcastResult:
    """One :class:`PublishResponse` per channel, in request order."""
    out = pb.BroadcastResult()
    for response in result["responses"]:
        item = out.responses.add()
        if "error" in response:
            item.error.CopyFrom(error_message(response["error"]))
        else:
            item.result.CopyFrom(publish_result(response["result"]))
    return out


def presence_result(result: dict[str, Any]) -> pb.PresenceResult:
    """Client id -> :class:`ClientInfo`."""
    out = pb.PresenceResult()
    for client_id, info in result["presence"].items():
        out.presence[client_id].CopyFrom(_client_info(info))
    return out


def presence_stats_result(result: dict[str, Any]) -> pb.PresenceStatsResult:
    """Connection and distinct user counts."""
    return pb.PresenceStatsResult(num_clients=result["num_clients"], num_users=result["num_users"])


def history_result(result: dict[str, Any]) -> pb.HistoryResult:
    """Publications with the stream's current ``offset`` and ``epoch``."""
    out = pb.HistoryResult(offset=result["offset"], epoch=result["epoch"])
    for publication in result["publications"]:
        # Bytes that are not JSON come as b64data from the executor; GRPC carries them raw.
        raw = (
            base64.b64decode(publication["b64data"])
            if "b64data" in publication
            else _bytes(publication["data"])
        )
        item = out.publications.add(data=raw, offset=publication.get("offset", 0))
        if "info" in publication:
            item.info.CopyFrom(_client_info(publication["info"]))
        if publication.get("tags"):
            item.tags.update(publication["tags"])
    return out


def channels_result(result: dict[str, Any]) -> pb.ChannelsResult:
    """Channel name -> :class:`ChannelInfo`."""
    out = pb.ChannelsResult()
    for name, info in result["channels"].items():
        out.channels[name].num_clients = info["num_clients"]
    return out


def info_result(result: dict[str, Any]) -> pb.InfoResult:
    """One :class:`NodeResult` per live node."""
    out = pb.InfoResult()
    for node in result["nodes"]:
        out.nodes.add(
            uid=node["uid"],
            name=node["name"],
            version=node["version"],
            num_clients=node["num_clients"],
            num_users=node["num_users"],
            num_channels=node["num_channels"],
            num_subs=node["num_subs"],
            uptime=node["uptime"],
        )
    return out


def empty_result(cls: type[Message]) -> Callable[[dict[str, Any]], Message]:
    """The result converter of a command whose result is the empty object."""

    def convert(result: dict[str, Any]) -> Message:
        return cls()

    return convert


def error_message(error: dict[str, Any]) -> pb.Error:
    """The executor's ``{"code", "message"}`` as :class:`Error`."""
    return pb.Error(code=error["code"], message=error["message"])


# --- the method table ------------------------------------------------------------------


class Method:
    """One unary method of ``CentrifugoApi``: its messages and conversions.

    Args:
        rpc: the schema's method name (``PresenceStats``).
        name: the executor's command name (``presence_stats``).
        request: the request message class.
        response: the response message class (fields ``error`` = 1, ``result`` = 2).
        params: request message -> executor params (may raise :class:`Error`).
        result: executor ``result`` object -> result message.
    """

    __slots__ = ("name", "params", "request", "response", "result", "rpc")

    def __init__(
        self,
        rpc: str,
        name: str,
        request: type[Message],
        response: type[Message],
        params: Callable[[Any], dict[str, Any]],
        result: Callable[[dict[str, Any]], Message],
    ) -> None:
        self.rpc = rpc
        self.name = name
        self.request = request
        self.response = response
        self.params = params
        self.result = result

    def respond(self, body: dict[str, Any]) -> Message:
        """The response message for an executor response body."""
        error = body.get("error")
        if error is not None:
            return self.response(error=error_message(error))
        return self.response(result=self.result(body["result"]))


#: Every command but ``batch`` (see :mod:`rtserver.grpcapi.service`), by executor name.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "Publish",
            "publish",
            pb.PublishRequest,
            pb.PublishResponse,
            publish_params,
            publish_result,
        ),
        Method(
            "Broadcast",
            "broadcast",
            pb.BroadcastRequest,
            pb.BroadcastResponse,
            broadcast_params,
            broadcast_result,
        ),
        Method(
            "Subscribe",
            "subscribe",
            pb.SubscribeRequest,
            pb.SubscribeResponse,
            subscribe_params,
            empty_result(pb.SubscribeResult),
        ),
        Method(
            "Unsubscribe",
            "unsubscribe",
            pb.UnsubscribeRequest,
            pb.UnsubscribeResponse,
            unsubscribe_params,
            empty_result(pb.UnsubscribeResult),
        ),
        Method(
            "Disconnect",
            "disconnect",
            pb.DisconnectRequest,
            pb.DisconnectResponse,
            disconnect_params,
            empty_result(pb.DisconnectResult),
        ),
        Method(
            "Presence",
            "presence",
            pb.PresenceRequest,
            pb.PresenceResponse,
            channel_params,
            presence_result,
        ),
        Method(
            "PresenceStats",
            "presence_stats",
            pb.PresenceStatsRequest,
            pb.PresenceStatsResponse,
            channel_params,
            presence_stats_result,
        ),
        Method(
            "History",
            "history",
            pb.HistoryRequest,
            pb.HistoryResponse,
            history_params,
            history_result,
        ),
        Method(
            "HistoryRemove",
            "history_remove",
            pb.HistoryRemoveRequest,
            pb.HistoryRemoveResponse,
            channel_params,
            empty_result(pb.HistoryRemoveResult),
        ),
        Method("Info", "info", pb.InfoRequest, pb.InfoResponse, info_params, info_result),
        Method("RPC", "rpc", pb.RPCRequest, pb.RPCResponse, rpc_params, empty_result(pb.RPCResult)),
        Method(
            "Refresh",
            "refresh",
            pb.RefreshRequest,
            pb.RefreshResponse,
            refresh_params,
            empty_result(pb.RefreshResult),
        ),
        Method(
            "Channels",
            "channels",
            pb.ChannelsRequest,
            pb.ChannelsResponse,
            channels_params,
            channels_result,
        ),
    )
}


# --- batch -----------------------------------------------------------------------------


def batch_commands(req: pb.BatchRequest) -> tuple[list[dict[str, Any]], dict[int, Error]]:
    """The executor's ``commands`` list and the commands that could not be converted.

    Returns:
        ``commands``: ``{name: params}`` per convertible command, in order (a command
        with no known field set runs as :data:`UNKNOWN_COMMAND`, answered with 104);
        ``failed``: request index -> the error its reply carries instead.
    """
    commands: list[dict[str, Any]] = []
    failed: dict[int, Error] = {}
    for i, command in enumerate(req.commands):
        name = _set_field(command)
        if name is None:
            commands.append({UNKNOWN_COMMAND: {}})
            continue
        method = METHODS[name]
        try:
            commands.append({name: method.params(getattr(command, name))})
        except Error as e:
            failed[i] = e
    return commands, failed


def batch_publishes(
    req: pb.BatchRequest,
) -> tuple[list[PublishCommand], dict[int, Error]] | None:
    """A batch of publish commands only (the common batch), typed; None for any other.

    Returns:
        The convertible publishes in order, and request index -> the error of each
        command that could not be converted.
    """
    commands: list[PublishCommand] = []
    failed: dict[int, Error] = {}
    for i, command in enumerate(req.commands):
        if not command.HasField("publish"):
            return None
        try:
            commands.append(publish_command(command.publish))
        except Error as e:
            failed[i] = e
    return commands, failed


def _set_field(command: pb.Command) -> str | None:
    """The one command field set (the first, if a client set several)."""
    if command.HasField("publish"):
        return "publish"
    fields = command.ListFields()
    if not fields:
        return None
    return str(fields[0][0].name)


def batch_response(
    replies: list[dict[str, Any]], failed: dict[int, Error], total: int
) -> pb.BatchResponse:
    """Merge the executor's replies with the conversion failures, in request order."""
    out = pb.BatchResponse()
    executed = iter(replies)
    for i in range(total):
        reply = out.replies.add()
        error = failed.get(i)
        body = error.to_wire() if error is not None else None
        if body is not None:
            reply.error.CopyFrom(error_message(body))
            continue
        item = next(executed)
        if "error" in item:
            reply.error.CopyFrom(error_message(item["error"]))
            continue
        [(name, result)] = item.items()
        if name == "publish":  # the common case, filled in place
            reply.publish.SetInParent()
            _fill_publish(reply.publish, result)
        else:
            getattr(reply, name).CopyFrom(METHODS[name].result(result))
    return out


# --- responses of the publish fast path, encoded by hand -------------------------------
#
# Field numbers from api.proto (checked against Centrifugo's by tests/grpcapi/test_schema.py):
# BatchResponse.replies = 1; Reply.error = 2, Reply.publish = 4; PublishResponse.error = 1,
# PublishResponse.result = 2; PublishResult.offset = 1, .epoch = 2; Error.code = 1,
# .message = 2. Each tag byte is (number << 3) | wire type.

#: A reply holding an empty PublishResult (no history): ``Reply{publish: {}}`` in
#: ``BatchResponse.replies``.
_EMPTY_PUBLISH_REPLY = b"\x0a\x02\x22\x00"


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, body: bytes) -> bytes:
    return tag + _uvarint(len(body)) + body


def _publish_result_bytes(result: dict[str, Any]) -> bytes:
    if not result:
        return b""
    epoch = result["epoch"].encode()
    offset = result["offset"]
    return (b"\x08" + _uvarint(offset) if offset else b"") + _delimited(b"\x12", epoch)


def _error_bytes(error: Error) -> bytes:
    message = error.message.encode()
    return (b"\x08" + _uvarint(error.code) if error.code else b"") + (
        _delimited(b"\x12", message) if message else b""
    )


def encode_publish_response(outcome: dict[str, Any] | Error) -> bytes:
    """A ``PublishResponse`` of one typed publish's outcome."""
    if isinstance(outcome, Error):
        return _delimited(b"\x0a", _error_bytes(outcome))
    return _delimited(b"\x12", _publish_result_bytes(outcome))


def encode_batch_publish_response(
    outcomes: list[dict[str, Any] | Error], failed: dict[int, Error], total: int
) -> bytes:
    """A ``BatchResponse`` of :func:`batch_publishes`, in request order.

    ``outcomes`` are the executed commands' results or errors, ``failed`` the commands
    that could not be converted (by request index).
    """
    parts: list[bytes] = []
    executed = iter(outcomes)
    for i in range(total):
        outcome: dict[str, Any] | Error | None = failed.get(i)
        if outcome is None:
            outcome = next(executed)
        if isinstance(outcome, Error):
            reply = _delimited(b"\x12", _error_bytes(outcome))
        elif not outcome:
            parts.append(_EMPTY_PUBLISH_REPLY)
            continue
        else:
            reply = _delimited(b"\x22", _publish_result_bytes(outcome))
        parts.append(_delimited(b"\x0a", reply))
    return b"".join(parts)
