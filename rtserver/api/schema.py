"""Field readers for server API requests.

Each reader takes the decoded ``params`` object and a key, and returns a typed value or
raises :class:`~rtserver.protocol.codes.Error` 107 with a message naming the field.
JSON ``null`` counts as absent (as in Centrifugo's Go decoder), except for raw JSON
payloads (``data``, ``info``), where ``null`` is a value.

Raw JSON payloads come back as compact JSON ``bytes`` re-encoded with orjson, so they
never contain a newline and can be spliced into client frames unchanged.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from rtserver.core.types import Overrides
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import StreamPosition

__all__ = [
    "MAX_INT32",
    "MAX_INT64",
    "MAX_UINT64",
    "bad_request",
    "boolean",
    "disconnect",
    "integer",
    "object_params",
    "overrides",
    "position",
    "raw_json",
    "required_string",
    "string",
    "string_list",
    "string_map",
]

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_UINT64 = 2**64 - 1

#: Override flags accepted in ``subscribe`` ``override`` (each ``{"value": bool}``).
_OVERRIDE_FLAGS = (
    "presence",
    "join_leave",
    "force_push_join_leave",
    "force_positioning",
    "force_recovery",
)

#: Close codes an API ``disconnect`` may use: the WebSocket application range.
_DISCONNECT_CODES = range(3000, 5000)
#: A WebSocket close reason must fit the 125-byte control frame with its 2-byte code.
_MAX_REASON_BYTES = 123


def bad_request(detail: str) -> Error:
    """Error 107 with a message that says what is wrong."""
    return Error.BAD_REQUEST.with_message(f"bad request: {detail}")


def object_params(params: Any, what: str = "params") -> dict[str, Any]:
    """The request object itself; ``None`` means an empty request."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise bad_request(f"{what} must be an object")
    return params


def string(params: dict[str, Any], key: str, *, name: str = "") -> str:
    """An optional string (``""`` when absent); ``name`` overrides ``key`` in errors."""
    value = params.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name or key} must be a string")
    return value


def required_string(params: dict[str, Any], key: str) -> str:
    """A string that must be present and non-empty."""
    value = string(params, key)
    if not value:
        raise bad_request(f"{key} is required")
    return value


def boolean(params: dict[str, Any], key: str) -> bool:
    """An optional boolean (``False`` when absent)."""
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{key} must be a boolean")
    return value


def integer(params: dict[str, Any], key: str, lo: int, hi: int, *, name: str = "") -> int:
    """An optional integer within ``[lo, hi]`` (``0`` when absent)."""
    value = params.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"{name or key} must be an integer in [{lo}, {hi}]")
    return value


def string_list(params: dict[str, Any], key: str) -> list[str]:
    """An optional list of strings (``[]`` when absent)."""
    value = params.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{key} must be a list of strings")
    return value


def string_map(params: dict[str, Any], key: str) -> dict[str, str]:
    """An optional object mapping strings to strings (``{}`` when absent)."""
    value = params.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f"{key} must map strings to strings")
    return value


def raw_json(params: dict[str, Any], key: str, b64key: str) -> bytes | None:
    """A raw JSON payload from ``key`` or its base64 twin ``b64key``; ``None`` if neither.

    ``b64key`` wins when both are given (as in Centrifugo). This server speaks JSON
    only, so the base64 bytes must themselves be a JSON document.
    """
    encoded = string(params, b64key)
    if encoded:
        return _b64_json(encoded, b64key)
    if key not in params:
        return None
    try:
        return orjson.dumps(params[key])
    except orjson.JSONEncodeError:
        raise bad_request(f"{key} must be JSON") from None


def _b64_json(encoded: str, key: str) -> bytes:
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{key} must be valid base64") from None
    try:
        return orjson.dumps(orjson.loads(decoded))
    except orjson.JSONDecodeError:
        raise bad_request(f"{key} must encode JSON: this server is JSON-only") from None


def position(params: dict[str, Any], key: str) -> StreamPosition | None:
    """An optional stream position ``{"offset": N, "epoch": E}``."""
    value = params.get(key)
    if value is None:
        return None
    obj = object_params(value, key)
    return StreamPosition(
        offset=integer(obj, "offset", 0, MAX_UINT64, name=f"{key}.offset"),
        epoch=string(obj, "epoch", name=f"{key}.epoch"),
    )


def overrides(params: dict[str, Any], key: str) -> Overrides:
    """Subscription overrides ``{"presence": {"value": true}, ...}``."""
    obj = object_params(params.get(key), key)
    flags: dict[str, bool] = {}
    for name in _OVERRIDE_FLAGS:
        entry = obj.get(name)
        if entry is None:
            continue
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, bool):
            raise bad_request(f'{key}.{name} must be {{"value": <boolean>}}')
        flags[name] = value
    return Overrides(**flags)


def disconnect(params: dict[str, Any], key: str, default: tuple[int, str]) -> tuple[int, str]:
    """A ``{"code": N, "reason": R}`` disconnect, or ``default`` when absent."""
    value = params.get(key)
    if value is None:
        return default
    obj = object_params(value, key)
    code = obj.get("code")
    if isinstance(code, bool) or not isinstance(code, int) or code not in _DISCONNECT_CODES:
        raise bad_request(f"{key}.code must be an integer in [3000, 4999]")
    reason = obj.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason.encode("utf-8")) > _MAX_REASON_BYTES:
        raise bad_request(f"{key}.reason must be a string of at most 123 bytes")
    return code, reason
