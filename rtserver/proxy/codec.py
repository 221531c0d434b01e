"""Centrifugo's JSON proxy bodies: request values to JSON, JSON responses to result values.

Sans-I/O. Field names and shapes are those of Centrifugo v6's HTTP proxy
(docs/proxies.rst, "Requests and responses"): empty fields are left out of requests;
a response is ``{"result": {...}}``, ``{"error": {"code", "message", "temporary"}}`` or
``{"disconnect": {"code", "reason"}}``. Raw JSON values (``data``, ``info``, ``meta``)
travel as JSON; with ``binary_encoding`` ``data`` goes as ``b64data`` and the backend may
answer ``b64data``/``b64info``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from rtserver.core.proxy import (
    MAX_VERSION,
    ConnectProxyRequest,
    ConnectProxyResult,
    ProxyFailure,
    ProxyRequest,
    PublishProxyRequest,
    PublishProxyResult,
    RefreshProxyResult,
    RPCProxyRequest,
    RPCProxyResult,
    SubRefreshProxyRequest,
    SubRefreshProxyResult,
    SubscribeProxyRequest,
    SubscribeProxyResult,
)
from rtserver.core.types import Overrides, SubscriptionGrant
from rtserver.protocol.codes import Disconnect, Error

__all__ = [
    "decode_connect",
    "decode_publish",
    "decode_refresh",
    "decode_rpc",
    "decode_sub_refresh",
    "decode_subscribe",
    "encode_request",
]

# Any: JSON objects of mixed value types, on both sides of the codec.
JSON = dict[str, Any]
_T = TypeVar("_T")


def _put_data(body: JSON, data: bytes | None, binary: bool) -> None:
    if data is None:
        return
    if binary:
        body["b64data"] = base64.b64encode(data).decode("ascii")
    else:
        body["data"] = orjson.Fragment(data)


def encode_request(request: ProxyRequest) -> bytes:
    """The JSON body of ``request`` (one of the event request values)."""
    body: JSON = {
        "client": request.client,
        "transport": request.transport,
        "protocol": request.protocol,
        "encoding": request.encoding,
    }
    binary = request.encoding == "binary"
    if request.user:
        body["user"] = request.user
    if request.meta is not None:
        body["meta"] = orjson.Fragment(request.meta)
    if isinstance(request, ConnectProxyRequest):
        body.pop("user", None)
        if request.name:
            body["name"] = request.name
        if request.version:
            body["version"] = request.version
        _put_data(body, request.data, binary)
        if request.channels:
            body["channels"] = list(request.channels)
    elif isinstance(request, SubscribeProxyRequest):
        body["channel"] = request.channel
        if request.token:
            body["token"] = request.token
        _put_data(body, request.data, binary)
    elif isinstance(request, PublishProxyRequest):
        body["channel"] = request.channel
        _put_data(body, request.data, binary)
    elif isinstance(request, SubRefreshProxyRequest):
        body["channel"] = request.channel
    elif isinstance(request, RPCProxyRequest):
        body["method"] = request.method
        _put_data(body, request.data, binary)
    return orjson.dumps(body)


# --- responses -------------------------------------------------------------------------------


def _result(raw: bytes) -> JSON | None:
    """The ``result`` object; raises the backend's error or disconnect.

    Raises:
        Error: the response's ``error``.
        Disconnect: the response's ``disconnect``.
        ProxyFailure: the body is not a proxy response.
    """
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProxyFailure("invalid JSON in response") from None
    if not isinstance(reply, dict):
        raise ProxyFailure("response is not a JSON object")
    disconnect = reply.get("disconnect")
    if disconnect is not None:
        code = _int(disconnect, "code") if isinstance(disconnect, dict) else 0
        if not 4000 <= code <= 4999:
            raise ProxyFailure(f"disconnect code {code} outside 4000-4999")
        return _raise(Disconnect(code, _str(disconnect, "reason")))
    error = reply.get("error")
    if error is not None:
        code = _int(error, "code") if isinstance(error, dict) else 0
        if not 0 < code < 2**32:
            raise ProxyFailure(f"error code {code} is not a positive 32-bit number")
        return _raise(Error(code, _str(error, "message"), _bool(error, "temporary")))
    result = reply.get("result")
    if result is None:
        return None
    if not isinstance(result, dict):
        raise ProxyFailure("result is not a JSON object")
    return result


def _raise(exc: Exception) -> JSON:
    raise exc


def _str(obj: JSON, key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProxyFailure(f"{key} must be a string")
    return value


def _int(obj: JSON, key: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProxyFailure(f"{key} must be a non-negative integer")
    return value


def _bool(obj: JSON, key: str) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProxyFailure(f"{key} must be true or false")
    return value


def _raw(obj: JSON, key: str) -> bytes | None:
    """``key`` as raw JSON, or ``b64<key>`` decoded; None when absent."""
    encoded = obj.get("b64" + key)
    if encoded:
        if not isinstance(encoded, str):
            raise ProxyFailure(f"b64{key} must be a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProxyFailure(f"b64{key} is not base64") from None
    if key not in obj or obj[key] is None:
        return None
    return orjson.dumps(obj[key])


def _overrides(obj: JSON) -> Overrides:
    override = obj.get("override")
    if override is None:
        return Overrides()
    if not isinstance(override, dict):
        raise ProxyFailure("override must be an object")

    def flag(name: str) -> bool | None:
        value = override.get(name)
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("value", False), bool):
            raise ProxyFailure(f"override.{name} must be {{\"value\": bool}}")
        return bool(value.get("value", False))

    return Overrides(
        presence=flag("presence"),
        join_leave=flag("join_leave"),
        force_push_join_leave=flag("force_push_join_leave"),
        force_recovery=flag("force_recovery"),
        force_positioning=flag("force_positioning"),
    )


def _decoder(build: Callable[[JSON], _T]) -> Callable[[bytes], _T | None]:
    def decode(raw: bytes) -> _T | None:
        result = _result(raw)
        if result is None:
            return None
        return build(result)

    return decode


def _connect(result: JSON) -> ConnectProxyResult:
    channels = result.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ProxyFailure("channels must be a list of strings")
    subs_obj = result.get("subs") or {}
    if not isinstance(subs_obj, dict):
        raise ProxyFailure("subs must be an object")
    subs: dict[str, SubscriptionGrant] = {}
    for channel, options in subs_obj.items():
        if not isinstance(options, dict):
            raise ProxyFailure("subs values must be objects")
        subs[channel] = SubscriptionGrant(
            info=_raw(options, "info"), data=_raw(options, "data"), overrides=_overrides(options)
        )
    return ConnectProxyResult(
        user=_str(result, "user"),
        expire_at=_int(result, "expire_at"),
        info=_raw(result, "info"),
        data=_raw(result, "data"),
        channels=tuple(channels),
        subs=subs,
        meta=_raw(result, "meta"),
    )


def _refresh(result: JSON) -> RefreshProxyResult:
    return RefreshProxyResult(
        expired=_bool(result, "expired"),
        expire_at=_int(result, "expire_at"),
        info=_raw(result, "info"),
        meta=_raw(result, "meta"),
    )


def _subscribe(result: JSON) -> SubscribeProxyResult:
    return SubscribeProxyResult(
        info=_raw(result, "info"),
        data=_raw(result, "data"),
        override=_overrides(result),
        expire_at=_int(result, "expire_at"),
    )


def _tags(obj: JSON) -> dict[str, str]:
    tags = obj.get("tags")
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise ProxyFailure("tags must be an object")
    return tags


def _uint64(obj: JSON, key: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise ProxyFailure(f"{key} must be an integer in [0, {MAX_VERSION}]")
    return value


def _publish(result: JSON) -> PublishProxyResult:
    # PublishProxyResult checks the tag values' types
    return PublishProxyResult(
        data=_raw(result, "data"),
        skip_history=_bool(result, "skip_history"),
        tags=_tags(result),
        idempotency_key=_str(result, "idempotency_key"),
        delta=_bool(result, "delta"),
        version=_uint64(result, "version"),
        version_epoch=_str(result, "version_epoch"),
    )


def _sub_refresh(result: JSON) -> SubRefreshProxyResult:
    return SubRefreshProxyResult(
        expired=_bool(result, "expired"),
        expire_at=_int(result, "expire_at"),
        info=_raw(result, "info"),
    )


def _rpc(result: JSON) -> RPCProxyResult:
    return RPCProxyResult(data=_raw(result, "data"))


decode_connect = _decoder(_connect)
decode_refresh = _decoder(_refresh)
decode_subscribe = _decoder(_subscribe)
decode_publish = _decoder(_publish)
decode_sub_refresh = _decoder(_sub_refresh)
decode_rpc = _decoder(_rpc)
