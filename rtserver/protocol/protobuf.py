"""Protobuf codec of the client protocol: the binary twin of :mod:`rtserver.protocol.codec`.

A transport frame (a WebSocket binary message, an HTTP-stream body or chunk, the
``data`` of an ``/emulation`` request) holds one or more messages, each prefixed by its
length as an unsigned varint. :func:`decode_commands` returns the same
:class:`~rtserver.protocol.frames.Command` values as the JSON codec, so the client state
machine does not depend on the encoding; the ``encode_*`` functions take the same values
as their JSON counterparts and return one length-prefixed message each, so several are
joined into a frame by plain concatenation (:func:`join`).

Bytes fields (``data``, ``conn_info``, ``chan_info``) carry the payload bytes unchanged.
In decoded commands they appear as ``orjson.Fragment`` values, which the request parsers
of :mod:`~rtserver.protocol.frames` read as raw bytes exactly as they read JSON values.
Bytes that go on to JSON clients must pass :func:`json_payload` first.

The schema (field names, numbers and types) is :data:`SCHEMA`, the hand-written twin of
``rtserver/protocol/client.proto``. Decoding is strict about structure and lenient about
unknown fields, like the JSON codec: a truncated varint or length, a length beyond the
frame, a wrong wire type for a known field, an invalid wire type, invalid UTF-8 in a
string, an out-of-range integer or nesting deeper than :data:`MAX_DEPTH` raise
:class:`~rtserver.protocol.frames.ProtocolError` (``Disconnect(3501, "bad request")``);
well-formed fields with numbers the schema does not know are skipped. No length prefix is
trusted before its bytes are there, so memory stays proportional to the input's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from rtserver.protocol.codec import parse_command
from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import MAX_UINT32, MAX_UINT64, ClientInfo, Command, ProtocolError
from rtserver.protocol.frames import Publication as PublicationValue

__all__ = [
    "MAX_DEPTH",
    "PING",
    "SCHEMA",
    "complete_end",
    "decode_commands",
    "decode_emulation_request",
    "decode_message",
    "encode_disconnect",
    "encode_error",
    "encode_join_leave_push",
    "encode_message",
    "encode_publication_push",
    "encode_push",
    "encode_reply",
    "encode_unsubscribe",
    "join",
    "json_payload",
    "longest_message",
    "unframe",
]

#: Deepest nesting of messages accepted in a command (a ``tf`` filter tree is the only
#: recursive message; ``Command > ConnectRequest > subs > SubscribeRequest > tf`` is 4).
MAX_DEPTH: Final = 32

# --- schema --------------------------------------------------------------------------

#: Field tables per message: ``(type, name, number)`` with the type spelled as in
#: ``client.proto``. Order is the order fields are encoded in.
SCHEMA_SOURCE: Final[dict[str, tuple[tuple[str, str, int], ...]]] = {
    "Command": (
        ("uint32", "id", 1),
        ("ConnectRequest", "connect", 4),
        ("SubscribeRequest", "subscribe", 5),
        ("UnsubscribeRequest", "unsubscribe", 6),
        ("PublishRequest", "publish", 7),
        ("PresenceRequest", "presence", 8),
        ("PresenceStatsRequest", "presence_stats", 9),
        ("HistoryRequest", "history", 10),
        ("PingRequest", "ping", 11),
        ("SendRequest", "send", 12),
        ("RPCRequest", "rpc", 13),
        ("RefreshRequest", "refresh", 14),
        ("SubRefreshRequest", "sub_refresh", 15),
    ),
    "Reply": (
        ("uint32", "id", 1),
        ("Error", "error", 2),
        ("Push", "push", 4),
        ("ConnectResult", "connect", 5),
        ("SubscribeResult", "subscribe", 6),
        ("UnsubscribeResult", "unsubscribe", 7),
        ("PublishResult", "publish", 8),
        ("PresenceResult", "presence", 9),
        ("PresenceStatsResult", "presence_stats", 10),
        ("HistoryResult", "history", 11),
        ("PingResult", "ping", 12),
        ("RPCResult", "rpc", 13),
        ("RefreshResult", "refresh", 14),
        ("SubRefreshResult", "sub_refresh", 15),
    ),
    "Push": (
        ("int64", "id", 1),
        ("string", "channel", 2),
        ("Publication", "pub", 4),
        ("Join", "join", 5),
        ("Leave", "leave", 6),
        ("Unsubscribe", "unsubscribe", 7),
        ("Message", "message", 8),
        ("Subscribe", "subscribe", 9),
        ("Connect", "connect", 10),
        ("Disconnect", "disconnect", 11),
        ("Refresh", "refresh", 12),
    ),
    "Error": (("uint32", "code", 1), ("string", "message", 2), ("bool", "temporary", 3)),
    "EmulationRequest": (("string", "node", 1), ("string", "session", 2), ("bytes", "data", 3)),
    "ClientInfo": (
        ("string", "user", 1),
        ("string", "client", 2),
        ("bytes", "conn_info", 3),
        ("bytes", "chan_info", 4),
    ),
    "Publication": (
        ("bytes", "data", 4),
        ("ClientInfo", "info", 5),
        ("uint64", "offset", 6),
        ("map<string, string>", "tags", 7),
        ("bool", "delta", 8),
        ("int64", "time", 9),
        ("string", "channel", 10),
    ),
    "StreamPosition": (("uint64", "offset", 1), ("string", "epoch", 2)),
    "FilterNode": (
        ("string", "op", 1),
        ("string", "key", 2),
        ("string", "cmp", 3),
        ("string", "val", 4),
        ("repeated string", "vals", 5),
        ("repeated FilterNode", "nodes", 6),
    ),
    "ConnectRequest": (
        ("string", "token", 1),
        ("bytes", "data", 2),
        ("map<string, SubscribeRequest>", "subs", 3),
        ("string", "name", 4),
        ("string", "version", 5),
        ("map<string, string>", "headers", 6),
        ("int64", "flag", 7),
    ),
    "ConnectResult": (
        ("string", "client", 1),
        ("string", "version", 2),
        ("bool", "expires", 3),
        ("uint32", "ttl", 4),
        ("bytes", "data", 5),
        ("map<string, SubscribeResult>", "subs", 6),
        ("uint32", "ping", 7),
        ("bool", "pong", 8),
        ("string", "session", 9),
        ("string", "node", 10),
        ("int64", "time", 11),
    ),
    "SubscribeRequest": (
        ("string", "channel", 1),
        ("string", "token", 2),
        ("bool", "recover", 3),
        ("string", "epoch", 6),
        ("uint64", "offset", 7),
        ("bytes", "data", 8),
        ("bool", "positioned", 9),
        ("bool", "recoverable", 10),
        ("bool", "join_leave", 11),
        ("string", "delta", 12),
        ("FilterNode", "tf", 13),
        ("int64", "flag", 14),
    ),
    "SubscribeResult": (
        ("bool", "expires", 1),
        ("uint32", "ttl", 2),
        ("bool", "recoverable", 3),
        ("string", "epoch", 6),
        ("repeated Publication", "publications", 7),
        ("bool", "recovered", 8),
        ("uint64", "offset", 9),
        ("bool", "positioned", 10),
        ("bytes", "data", 11),
        ("bool", "was_recovering", 12),
        ("bool", "delta", 13),
        ("int64", "id", 14),
    ),
    "UnsubscribeRequest": (("string", "channel", 1),),
    "UnsubscribeResult": (),
    "PublishRequest": (("string", "channel", 1), ("bytes", "data", 2)),
    "PublishResult": (),
    "PresenceRequest": (("string", "channel", 1),),
    "PresenceResult": (("map<string, ClientInfo>", "presence", 1),),
    "PresenceStatsRequest": (("string", "channel", 1),),
    "PresenceStatsResult": (("uint32", "num_clients", 1), ("uint32", "num_users", 2)),
    "HistoryRequest": (
        ("string", "channel", 1),
        ("int32", "limit", 7),
        ("StreamPosition", "since", 8),
        ("bool", "reverse", 9),
    ),
    "HistoryResult": (
        ("repeated Publication", "publications", 1),
        ("string", "epoch", 2),
        ("uint64", "offset", 3),
    ),
    "PingRequest": (),
    "PingResult": (),
    "SendRequest": (("bytes", "data", 1),),
    "RPCRequest": (("bytes", "data", 1), ("string", "method", 2)),
    "RPCResult": (("bytes", "data", 1),),
    "RefreshRequest": (("string", "token", 1),),
    "RefreshResult": (
        ("string", "client", 1),
        ("string", "version", 2),
        ("bool", "expires", 3),
        ("uint32", "ttl", 4),
    ),
    "SubRefreshRequest": (("string", "channel", 1), ("string", "token", 2)),
    "SubRefreshResult": (("bool", "expires", 1), ("uint32", "ttl", 2)),
    "Join": (("ClientInfo", "info", 1),),
    "Leave": (("ClientInfo", "info", 1),),
    "Unsubscribe": (("uint32", "code", 2), ("string", "reason", 3)),
    "Subscribe": (
        ("bool", "recoverable", 1),
        ("string", "epoch", 4),
        ("uint64", "offset", 5),
        ("bool", "positioned", 6),
        ("bytes", "data", 7),
    ),
    "Message": (("bytes", "data", 1),),
    "Connect": (
        ("string", "client", 1),
        ("string", "version", 2),
        ("bytes", "data", 3),
        ("map<string, SubscribeResult>", "subs", 4),
        ("bool", "expires", 5),
        ("uint32", "ttl", 6),
        ("uint32", "ping", 7),
        ("bool", "pong", 8),
        ("string", "session", 9),
        ("string", "node", 10),
        ("int64", "time", 11),
    ),
    "Disconnect": (("uint32", "code", 1), ("string", "reason", 2), ("bool", "reconnect", 3)),
    "Refresh": (("bool", "expires", 1), ("uint32", "ttl", 2)),
}

# Field kinds. Varint kinds come first (wire type 0), then length-delimited (wire type 2).
_BOOL, _UINT32, _UINT64, _INT32, _INT64 = range(5)
_STRING, _BYTES, _MESSAGE, _STR_LIST, _MSG_LIST, _STR_MAP, _MSG_MAP = range(5, 12)
_LAST_VARINT = _INT64
_SCALARS: Final = {
    "bool": _BOOL,
    "uint32": _UINT32,
    "uint64": _UINT64,
    "int32": _INT32,
    "int64": _INT64,
    "string": _STRING,
    "bytes": _BYTES,
}


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message: its kind, and the message type it holds if any."""

    name: str
    number: int
    kind: int
    message: str
    tag: bytes


class Message:
    """A message type: its fields by number (decoding) and by name (encoding)."""

    __slots__ = ("by_name", "by_number", "fields", "name")

    def __init__(self, name: str, fields: tuple[Field, ...]) -> None:
        self.name = name
        self.fields = fields
        self.by_number = {f.number: f for f in fields}
        self.by_name = {f.name: f for f in fields}


def _field(type_: str, name: str, number: int) -> Field:
    message = ""
    if type_ in _SCALARS:
        kind = _SCALARS[type_]
    elif type_ == "repeated string":
        kind = _STR_LIST
    elif type_ == "map<string, string>":
        kind = _STR_MAP
    elif type_.startswith("repeated "):
        kind, message = _MSG_LIST, type_.removeprefix("repeated ")
    elif type_.startswith("map<string, "):
        kind, message = _MSG_MAP, type_.removeprefix("map<string, ").removesuffix(">")
    else:
        kind, message = _MESSAGE, type_
    wire = 0 if kind <= _LAST_VARINT else 2
    return Field(name, number, kind, message, _uvarint(number << 3 | wire))


def _uvarint(value: int) -> bytes:
    if value < 0x80:
        return _VARINT1[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINT1: Final = tuple(bytes((i,)) for i in range(0x80))

#: Compiled schema: message name -> :class:`Message`.
SCHEMA: Final = {
    name: Message(name, tuple(_field(*spec) for spec in fields))
    for name, fields in SCHEMA_SOURCE.items()
}
_COMMAND: Final = SCHEMA["Command"]
_REPLY: Final = SCHEMA["Reply"]
_PUSH: Final = SCHEMA["Push"]

# --- decoding ------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint at ``pos``: at most 10 bytes, at most 64 bits."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result > MAX_UINT64:
                raise ProtocolError("varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError("varint longer than 10 bytes")


def _length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length prefix at ``pos``; the bytes it claims must be there."""
    byte = buf[pos] if pos < end else 0x80
    if byte < 0x80:
        length, pos = byte, pos + 1
    else:
        length, pos = _varint(buf, pos, end)
    if length > end - pos:
        raise ProtocolError("length beyond the end of the data")
    return length, pos


def _skip(buf: bytes, pos: int, end: int, wire: int) -> int:
    """Skip an unknown field's value; its wire type must be a valid proto3 one."""
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 2:
        length, pos = _length(buf, pos, end)
        return pos + length
    size = 8 if wire == 1 else 4 if wire == 5 else 0
    if not size:
        raise ProtocolError(f"invalid wire type {wire}")
    if size > end - pos:
        raise ProtocolError("truncated fixed-size field")
    return pos + size


def _text(buf: bytes, pos: int, stop: int) -> str:
    try:
        return buf[pos:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("string is not valid UTF-8") from None


def _decode(buf: bytes, pos: int, end: int, msg: Message, depth: int, frag: bool) -> dict[str, Any]:
    """Decode the fields in ``buf[pos:end]`` into a JSON-shaped dict (present fields only)."""
    if depth > MAX_DEPTH:
        raise ProtocolError("messages nested too deeply")
    out: dict[str, Any] = {}
    by_number = msg.by_number
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number = key >> 3
        wire = key & 7
        field = by_number.get(number)
        if field is None:
            if not 0 < number <= 0x1FFFFFFF:
                raise ProtocolError("invalid field number")
            pos = _skip(buf, pos, end, wire)
            continue
        kind = field.kind
        if kind <= _LAST_VARINT:
            if wire != 0:
                raise ProtocolError(f"wrong wire type for {msg.name}.{field.name}")
            value = buf[pos] if pos < end else 0x80
            if value < 0x80:
                pos += 1
            else:
                value, pos = _varint(buf, pos, end)
            out[field.name] = _integer(field, value)
            continue
        if wire != 2:
            raise ProtocolError(f"wrong wire type for {msg.name}.{field.name}")
        length, pos = _length(buf, pos, end)
        stop = pos + length
        name = field.name
        if kind == _STRING:
            out[name] = _text(buf, pos, stop)
        elif kind == _BYTES:
            raw = buf[pos:stop]
            out[name] = orjson.Fragment(raw) if frag else raw
        elif kind == _MESSAGE:
            sub = _decode(buf, pos, stop, SCHEMA[field.message], depth + 1, frag)
            prev = out.get(name)
            out[name] = sub if prev is None else _merge(SCHEMA[field.message], prev, sub)
        elif kind == _MSG_LIST:
            item = _decode(buf, pos, stop, SCHEMA[field.message], depth + 1, frag)
            out.setdefault(name, []).append(item)
        elif kind == _STR_LIST:
            out.setdefault(name, []).append(_text(buf, pos, stop))
        else:
            entry, value = _map_entry(buf, pos, stop, field, depth + 1, frag)
            out.setdefault(name, {})[entry] = value
        pos = stop
    return out


def _integer(field: Field, value: int) -> int | bool:
    kind = field.kind
    if kind == _BOOL:
        return value != 0
    if kind == _UINT64:
        return value
    if kind == _UINT32:
        if value > MAX_UINT32:
            raise ProtocolError(f"{field.name} does not fit uint32")
        return value
    if value >= 2**63:
        value -= 2**64
    if kind == _INT32 and not -(2**31) <= value < 2**31:
        raise ProtocolError(f"{field.name} does not fit int32")
    return value


def _map_entry(
    buf: bytes, pos: int, end: int, field: Field, depth: int, frag: bool
) -> tuple[str, Any]:
    """One map entry (``key = 1``, ``value = 2``); absent parts read as empty."""
    if depth > MAX_DEPTH:
        raise ProtocolError("messages nested too deeply")
    key = ""
    value: Any = None
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number not in (1, 2):
            if not 0 < number <= 0x1FFFFFFF:
                raise ProtocolError("invalid field number")
            pos = _skip(buf, pos, end, wire)
            continue
        if wire != 2:
            raise ProtocolError(f"wrong wire type in a {field.name} entry")
        length, pos = _length(buf, pos, end)
        stop = pos + length
        if number == 1:
            key = _text(buf, pos, stop)
        elif field.kind == _STR_MAP:
            value = _text(buf, pos, stop)
        else:
            value = _decode(buf, pos, stop, SCHEMA[field.message], depth + 1, frag)
        pos = stop
    if value is None:
        value = "" if field.kind == _STR_MAP else {}
    return key, value


def _merge(msg: Message, prev: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Protobuf merge of a repeated singular message field: later scalars win."""
    for name, value in new.items():
        kind = msg.by_name[name].kind
        old = prev.get(name)
        if old is None:
            prev[name] = value
        elif kind == _MESSAGE:
            prev[name] = _merge(SCHEMA[msg.by_name[name].message], old, value)
        elif kind in (_STR_LIST, _MSG_LIST):
            old.extend(value)
        elif kind in (_STR_MAP, _MSG_MAP):
            old.update(value)
        else:
            prev[name] = value
    return prev


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    """Decode one message (no length prefix) of type ``name``; bytes fields as ``bytes``.

    Raises:
        ProtocolError: on malformed input.
    """
    return _decode(data, 0, len(data), SCHEMA[name], 0, False)


def decode_commands(data: bytes | str) -> list[Command]:
    """Split a binary frame into commands, in order.

    Raises:
        ProtocolError: on a text frame, malformed Protobuf, a bad command (as in the JSON
            codec) or a frame without any command.
    """
    if isinstance(data, str):
        raise ProtocolError("text frame on a Protobuf connection")
    end = len(data)
    pos = 0
    commands = []
    while pos < end:
        length, pos = _length(data, pos, end)
        stop = pos + length
        commands.append(parse_command(_decode(data, pos, stop, _COMMAND, 0, True)))
        pos = stop
    if not commands:
        raise ProtocolError("empty frame")
    return commands


def complete_end(data: bytes) -> int:
    """Where the last complete varint-delimited message of a byte stream ends (0: none).

    Stream transports (WebTransport) receive messages cut anywhere; what follows the
    returned offset waits for more bytes.

    Raises:
        ProtocolError: a length prefix longer than 10 bytes or beyond 64 bits.
    """
    end = len(data)
    pos = 0
    while pos < end:
        try:
            length, start = _varint(data, pos, end)
        except ProtocolError:
            if end - pos >= 10:
                raise
            return pos
        if length > end - start:
            return pos
        pos = start + length
    return pos


def longest_message(data: bytes) -> int:
    """The length of the longest varint-delimited message in ``data`` (whole messages).

    Raises:
        ProtocolError: on a malformed or cut length prefix.
    """
    end = len(data)
    pos = longest = 0
    while pos < end:
        length, pos = _length(data, pos, end)
        longest = max(longest, length)
        pos += length
    return longest


def decode_emulation_request(body: bytes) -> tuple[str, str, bytes]:
    """``(node, session, data)`` of a Protobuf ``/emulation`` body (no length prefix).

    Raises:
        ProtocolError: on malformed input.
    """
    fields = decode_message("EmulationRequest", body)
    return fields.get("node", ""), fields.get("session", ""), fields.get("data", b"")


# --- encoding ------------------------------------------------------------------------


def _bytes_of(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, orjson.Fragment):
        return orjson.dumps(value)
    raise TypeError(f"bytes field holds {type(value).__name__}")


def _encode(msg: Message, obj: Mapping[str, Any]) -> bytes:
    """Encode a JSON-shaped dict in field-number order (as Go and upb do).

    Empty scalars and ``None`` are omitted; a present message is written even when empty.
    """
    parts: list[bytes] = []
    add = parts.append
    seen = 0
    for field in msg.fields:
        value = obj.get(field.name)
        if value is None:
            if field.name in obj:
                seen += 1
            continue
        seen += 1
        kind = field.kind
        tag = field.tag
        if kind <= _LAST_VARINT:
            if value:
                add(tag)
                add(_uvarint(value + 2**64 if value < 0 else int(value)))
        elif kind == _STRING or kind == _BYTES:
            raw = value.encode("utf-8") if kind == _STRING else _bytes_of(value)
            if raw:
                add(tag)
                add(_uvarint(len(raw)))
                add(raw)
        elif kind == _MESSAGE:
            _add_delimited(parts, tag, _encode(SCHEMA[field.message], value))
        elif kind == _MSG_LIST:
            sub = SCHEMA[field.message]
            for item in value:
                _add_delimited(parts, tag, _encode(sub, item))
        elif kind == _STR_LIST:
            for item in value:
                raw = item.encode("utf-8")
                add(tag)
                add(_uvarint(len(raw)))
                add(raw)
        else:
            for key, item in value.items():
                raw = key.encode("utf-8")
                if kind == _STR_MAP:
                    val = item.encode("utf-8")
                else:
                    val = _encode(SCHEMA[field.message], item)
                entry = b"\x0a" + _uvarint(len(raw)) + raw + b"\x12" + _uvarint(len(val)) + val
                _add_delimited(parts, tag, entry)
    if seen != len(obj):
        unknown = sorted(set(obj) - set(msg.by_name))
        raise ValueError(f"{msg.name} has no field {unknown}")
    return b"".join(parts)


def _add_delimited(parts: list[bytes], tag: bytes, body: bytes) -> None:
    parts.append(tag)
    parts.append(_uvarint(len(body)))
    parts.append(body)


def _framed(body: bytes) -> bytes:
    return _uvarint(len(body)) + body


def unframe(data: bytes) -> bytes:
    """The message of one length-prefixed message (the inverse of the framing).

    Raises:
        ProtocolError: ``data`` is not exactly one length-prefixed message.
    """
    end = len(data)
    length, pos = _length(data, 0, end)
    if pos + length != end:
        raise ProtocolError("bytes after the length-prefixed message")
    return data[pos:]


def encode_message(name: str, obj: Mapping[str, Any]) -> bytes:
    """Encode one message of type ``name`` (no length prefix) from a JSON-shaped dict.

    Bytes fields take ``bytes`` or ``orjson.Fragment``; ``None`` values are omitted.
    """
    return _encode(SCHEMA[name], obj)


#: The server ping (and a client pong): an empty message, length-prefixed.
PING: Final = b"\x00"


def encode_reply(cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
    """A successful reply; the result field is present even when empty."""
    return _framed(_encode(_REPLY, {"id": cmd_id, method: result}))


def encode_error(cmd_id: int, error: Error) -> bytes:
    """An error reply."""
    return _framed(_encode(_REPLY, {"id": cmd_id, "error": error.to_wire()}))


def encode_push(channel: str, kind: str, body: dict[str, Any], *, uni: bool = False) -> bytes:
    """A push; bidirectional transports wrap it in ``Reply.push``, uni ones do not."""
    push = _encode(_PUSH, {"channel": channel, kind: body})
    if uni:
        return _framed(push)
    return _framed(b"\x22" + _uvarint(len(push)) + push)


def encode_unsubscribe(channel: str, unsub: Unsubscribe, *, uni: bool = False) -> bytes:
    """The ``unsubscribe`` push for a server-initiated unsubscribe."""
    return encode_push(channel, "unsubscribe", unsub.to_wire(), uni=uni)


def encode_disconnect(disconnect: Disconnect, *, uni: bool = False) -> bytes:
    """The ``disconnect`` push for transports without close frames."""
    return encode_push("", "disconnect", disconnect.to_wire(), uni=uni)


def _client_info(info: ClientInfo) -> bytes:
    user = info.user.encode()
    client = info.client.encode()
    out = b"\x0a" + _uvarint(len(user)) + user if user else b""
    if client:
        out += b"\x12" + _uvarint(len(client)) + client
    if info.conn_info:
        out += b"\x1a" + _uvarint(len(info.conn_info)) + info.conn_info
    if info.chan_info:
        out += b"\x22" + _uvarint(len(info.chan_info)) + info.chan_info
    return out


def _publication(pub: PublicationValue, data: bytes, delta: bool) -> bytes:
    out = b"\x22" + _uvarint(len(data)) + data if data else b""
    if pub.info is not None:
        info = _client_info(pub.info)
        out += b"\x2a" + _uvarint(len(info)) + info
    if pub.offset:
        out += b"\x30" + _uvarint(pub.offset)
    if pub.tags:
        for key, value in pub.tags.items():
            k = key.encode()
            v = value.encode()
            entry = b"\x0a" + _uvarint(len(k)) + k + b"\x12" + _uvarint(len(v)) + v
            out += b"\x3a" + _uvarint(len(entry)) + entry
    if delta:
        out += b"\x40\x01"
    return out


def encode_publication_push(
    channel: str,
    pub: PublicationValue,
    *,
    uni: bool = False,
    data: bytes | None = None,
    delta: bool = False,
) -> bytes:
    """The ``pub`` push of ``pub``, built from the value directly (the fan-out hot path).

    Byte for byte what ``encode_push(channel, "pub", pub.to_wire(), uni=uni)`` returns.
    ``data`` replaces the publication's data and ``delta`` sets its ``delta`` field (a
    fossil delta for a subscriber that negotiated delta compression).
    """
    body = _publication(pub, pub.data if data is None else data, delta)
    ch = channel.encode()
    push = (b"\x12" + _uvarint(len(ch)) + ch if ch else b"") + b"\x22" + _uvarint(len(body)) + body
    if uni:
        return _framed(push)
    return _framed(b"\x22" + _uvarint(len(push)) + push)


def encode_join_leave_push(
    channel: str, kind: str, info: ClientInfo, *, uni: bool = False
) -> bytes:
    """The ``join`` or ``leave`` push for ``info`` (fan-out), without the generic walk.

    Byte for byte what ``encode_push(channel, kind, {"info": info.to_wire()}, uni=uni)``
    returns.
    """
    if kind not in ("join", "leave"):
        raise ValueError(f"not a join/leave push: {kind!r}")
    tag = b"\x2a" if kind == "join" else b"\x32"
    inner = _client_info(info)
    body = b"\x0a" + _uvarint(len(inner)) + inner
    ch = channel.encode()
    push = (b"\x12" + _uvarint(len(ch)) + ch if ch else b"") + tag + _uvarint(len(body)) + body
    if uni:
        return _framed(push)
    return _framed(b"\x22" + _uvarint(len(push)) + push)


def join(payloads: list[bytes]) -> bytes:
    """Join encoded (length-prefixed) messages into one transport frame."""
    if len(payloads) == 1:
        return payloads[0]
    return b"".join(payloads)


# --- bytes on the way to JSON clients ---------------------------------------------------


def json_payload(data: bytes) -> bytes | None:
    r"""``data`` as a JSON value for JSON clients, or None when it is not JSON.

    Centrifugo's rule for payloads that arrive as raw bytes (from Protobuf clients):
    raw ``\n`` bytes are dropped (JSON only has them as whitespace between tokens, and
    they delimit messages in a JSON frame), and what remains must be valid JSON. When it
    is not, the payload cannot reach JSON clients; Centrifugo disconnects such a client
    with 3506 "inappropriate protocol" instead of sending it a broken frame.
    """
    if b"\n" in data:
        data = data.replace(b"\n", b"")
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return data
