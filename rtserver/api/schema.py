"""Field readers for server API requests.

Each reader takes the decoded ``params`` object and a key, and returns a typed value or
raises :class:`~rtserver.protocol.codes.Error` 107 with a message naming the field.
JSON ``null`` counts as absent (as in Centrifugo's Go decoder), except for raw JSON
payloads (``data``, ``info``), where ``null`` is a value.

Raw JSON payloads come back as compact JSON ``bytes`` re-encoded with orjson (in pieces
when nested deeper than its encoder's 254 levels), so they never contain a newline and
can be spliced into client frames unchanged. Integer fields are range-checked; the
ranges are listed in docs/server-api.rst ("Field ranges").
"""

from __future__ import annotations

from typing import Any

from rtserver.core.types import Overrides
from rtserver.protocol.codes import Error
from rtserver.protocol.fields import FieldReader, has_control_characters
from rtserver.protocol.frames import StreamPosition

__all__ = [
    "MAX_INT32",
    "MAX_INT64",
    "MAX_UINT64",
    "bad_request",
    "boolean",
    "channel",
    "check_channel",
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


_read = FieldReader(bad_request)

#: Optional typed fields; a wrong type is error 107 naming the field.
string = _read.string
boolean = _read.boolean
integer = _read.integer
string_list = _read.string_list
string_map = _read.string_map
raw_json = _read.raw_json


def required_string(params: dict[str, Any], key: str) -> str:
    """A string that must be present and non-empty."""
    value = string(params, key)
    if not value:
        raise bad_request(f"{key} is required")
    return value


def check_channel(name: str, what: str = "channel") -> str:
    """A channel name: non-empty, without control characters (U+0000-U+001F, U+007F)."""
    if not name:
        raise bad_request(f"{what} is required")
    if has_control_characters(name):
        raise bad_request(f"{what} must not contain control characters")
    return name


def channel(params: dict[str, Any], key: str = "channel") -> str:
    """The required channel name under ``key`` (see :func:`check_channel`)."""
    return check_channel(string(params, key), key)


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
