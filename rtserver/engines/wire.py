"""Payload encoding for engines that share state between nodes (the Redis engine).

Payloads are JSON (orjson), **not** the Protobuf messages of Go Centrifugo: nodes of
the two servers must never share a Redis prefix.

* A publication is a JSON header object (``info``, ``tags``, ``time``, ``delta``;
  omit-empty), a
  newline, then the publication ``data`` bytes unchanged. Compact JSON never contains a
  newline, so splitting at the first newline is exact and ``data`` is never re-encoded.
* On a channel's PUB/SUB subject, a message is a publication (optionally prefixed
  ``__p1:<offset>:<epoch>__`` when it has a stream position), or ``__j__`` / ``__l__``
  followed by a ClientInfo for join / leave (Centrifugo's prefixes); :func:`deliver`
  decodes one for any broker.
* A ClientInfo (join, leave, presence) is ``{"user","client","conn_info","chan_info"}``
  with the info fields as raw JSON (absent when None).
* A control message is ``{"type": <class name>, "data": {fields}}`` for any dataclass in
  :data:`rtserver.core.types.CONTROL_TYPES`: ``bytes`` fields are embedded raw JSON,
  ``None`` fields are omitted, nested dataclasses (StreamPosition, Overrides) become
  objects and tuples become arrays. ``{"type": "probe"}`` is the deaf-link probe.

Decoding raises :class:`WireError` for anything malformed; callers log and drop it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any

import orjson

from rtserver.core.ports import IEngineHandler
from rtserver.core.types import CONTROL_TYPES, ControlMessage
from rtserver.protocol.fields import compact_json
from rtserver.protocol.frames import ClientInfo, Publication

__all__ = [
    "JOIN_PREFIX",
    "LEAVE_PREFIX",
    "PROBE",
    "PUB_PREFIX",
    "WireError",
    "decode_client_info",
    "decode_control",
    "decode_publication",
    "deliver",
    "encode_client_info",
    "encode_control",
    "encode_publication",
]

#: The control payload a node publishes on its own channel to probe a quiet link.
PROBE = b'{"type":"probe"}'

#: Channel message prefixes: a positioned publication, a join, a leave.
PUB_PREFIX = b"__p1:"
JOIN_PREFIX = b"__j__"
LEAVE_PREFIX = b"__l__"


class WireError(ValueError):
    """A payload that cannot be decoded."""


# --- publications and client info ----------------------------------------------------


def _info_obj(info: ClientInfo) -> dict[str, Any]:
    return info.to_wire()


def encode_client_info(info: ClientInfo) -> bytes:
    """Compact JSON of a ClientInfo."""
    return orjson.dumps(_info_obj(info))


def _info_from(obj: Any) -> ClientInfo:
    if not isinstance(obj, dict):
        raise WireError("client info must be an object")
    user, client = obj.get("user", ""), obj.get("client", "")
    if not isinstance(user, str) or not isinstance(client, str):
        raise WireError("client info user/client must be strings")
    conn_info = obj.get("conn_info", _MISSING)
    chan_info = obj.get("chan_info", _MISSING)
    return ClientInfo(
        user,
        client,
        None if conn_info is _MISSING else compact_json(conn_info),
        None if chan_info is _MISSING else compact_json(chan_info),
    )


_MISSING = object()


def _json(raw: bytes, what: str) -> Any:
    """``raw`` parsed; :class:`WireError` naming ``what`` when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise WireError(f"{what} is not JSON: {e}") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` parsed; :class:`WireError` naming ``what`` unless it is a JSON object."""
    obj = _json(raw, what)
    if not isinstance(obj, dict):
        raise WireError(f"{what} must be an object")
    return obj


def decode_client_info(payload: bytes) -> ClientInfo:
    """A ClientInfo from :func:`encode_client_info` bytes."""
    return _info_from(_json(payload, "client info"))


def encode_publication(publication: Publication) -> bytes:
    """Header JSON, newline, data (offset and epoch travel outside the payload)."""
    header: dict[str, Any] = {}
    if publication.info is not None:
        header["info"] = _info_obj(publication.info)
    if publication.tags:
        header["tags"] = publication.tags
    if publication.time:
        header["time"] = publication.time
    if publication.delta:
        header["delta"] = True
    return orjson.dumps(header) + b"\n" + publication.data


def decode_publication(payload: bytes, offset: int = 0, epoch: str = "") -> Publication:
    """A Publication from :func:`encode_publication` bytes, at ``offset`` in ``epoch``."""
    head, sep, data = payload.partition(b"\n")
    if not sep or not data:
        raise WireError("publication payload has no data")
    header = _json_object(head, "publication header")
    info = header.get("info")
    tags = header.get("tags")
    time = header.get("time", 0)
    delta = header.get("delta", False)
    if tags is not None and not (
        isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
    ):
        raise WireError("publication tags must map strings to strings")
    if not isinstance(time, int):
        raise WireError("publication time must be an integer")
    if not isinstance(delta, bool):
        raise WireError("publication delta must be a boolean")
    return Publication(
        data=data,
        info=None if info is None else _info_from(info),
        offset=offset,
        tags=tags or None,
        time=time,
        epoch=epoch,
        delta=delta,
    )


# --- control messages ---------------------------------------------------------------


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return orjson.Fragment(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_fields(value)
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


def _encode_fields(value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if v is not None:
            body[f.name] = _encode_value(v)
    return body


def encode_control(message: ControlMessage) -> bytes:
    """Compact JSON of a control message (any dataclass in CONTROL_TYPES)."""
    name = type(message).__name__
    if CONTROL_TYPES.get(name) is not type(message):
        raise TypeError(f"{name} is not a control message type")
    return orjson.dumps({"type": name, "data": _encode_fields(message)})


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_SCALARS = (str, int, float, bool)


def _decode_value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and options != [bytes]:  # present null in a bytes field: b"null"
            return None
        if len(options) != 1:
            raise WireError(f"{where}: unsupported union type")
        return _decode_value(options[0], value, where)
    if hint is bytes:
        return compact_json(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_fields(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise WireError(f"{where}: expected an array")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_decode_value(item, v, where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected an object")
        return value
    if hint in _SCALARS:
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise WireError(f"{where}: expected {hint.__name__}")
        return value
    raise WireError(f"{where}: unsupported field type {hint!r}")


def _decode_fields(cls: type, body: Any, where: str) -> Any:
    if not isinstance(body, dict):
        raise WireError(f"{where}: expected an object")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _decode_value(hints[f.name], body[f.name], f"{where}.{f.name}")
        elif f.default is None:
            kwargs[f.name] = None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise WireError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)


def decode_control(payload: bytes) -> ControlMessage | None:
    """A control message, or None for a probe."""
    obj = _json_object(payload, "control message")
    name = obj.get("type")
    if name == "probe":
        return None
    if not isinstance(name, str) or name not in CONTROL_TYPES:
        raise WireError(f"unknown control message type {name!r}")
    cls = CONTROL_TYPES[name]
    message: ControlMessage = _decode_fields(cls, obj.get("data", {}), name)
    return message


# --- channel messages ----------------------------------------------------------------


def deliver(handler: IEngineHandler, channel: str, data: bytes) -> None:
    """Decode one message received on ``channel``'s subject and hand it to ``handler``.

    Raises:
        WireError: (or UnicodeDecodeError / ValueError) the message is malformed.
    """
    if data.startswith(PUB_PREFIX):
        end = data.find(b"__", len(PUB_PREFIX))
        if end < 0:
            raise WireError("publication prefix is not terminated")
        offset, sep, epoch = data[len(PUB_PREFIX) : end].partition(b":")
        if not sep or not offset.isdigit():
            raise WireError("publication prefix has no offset/epoch")
        pub = decode_publication(data[end + 2 :], int(offset), epoch.decode())
        handler.handle_publication(channel, pub)
    elif data.startswith(JOIN_PREFIX):
        handler.handle_join(channel, decode_client_info(data[len(JOIN_PREFIX) :]))
    elif data.startswith(LEAVE_PREFIX):
        handler.handle_leave(channel, decode_client_info(data[len(LEAVE_PREFIX) :]))
    else:
        handler.handle_publication(channel, decode_publication(data))
