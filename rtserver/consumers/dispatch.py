"""What a consumed message means to the server API, as Centrifugo's consuming handler decides.

Sans-I/O apart from the executor call. A message is either a command (a method and its
request object) or, in publication data mode, data to publish into channels. The outcome
is :data:`DONE` (acknowledge: the command ran, or it can never run and was logged) or
:data:`RETRY` (leave it pending: an internal error, which another attempt may not get).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import orjson

from rtserver.logs import Logger
from rtserver.protocol.codes import Error

__all__ = ["COMMAND_METHODS", "DONE", "RETRY", "Call", "dispatch_command", "dispatch_publication"]

_log = Logger()

DONE = True
RETRY = False

#: The methods a consumer runs; any other method is skipped (acknowledged).
COMMAND_METHODS = frozenset(
    ("publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "history_remove", "refresh")
)

#: ``APIExecutor.call``: method and request object in, the response body out.
Call = Callable[[str, Any], Coroutine[Any, Any, dict[str, Any]]]

_INTERNAL = Error.INTERNAL.code
_TRUE = frozenset(("1", "t", "T", "true", "TRUE", "True"))
_FALSE = frozenset(("0", "f", "F", "false", "FALSE", "False"))


def _skip(consumer: str, method: str, reason: str) -> bool:
    _log.error(
        "consumer {consumer}: non retryable error during consuming, skip message "
        "(method {method!r}: {reason})",
        consumer=consumer,
        method=method,
        reason=reason,
    )
    return DONE


async def dispatch_command(call: Call, consumer: str, method: str, payload: bytes) -> bool:
    """Run one consumed command; :data:`DONE` or :data:`RETRY`.

    With ``method`` empty, ``payload`` is ``{"method": ..., "payload": ...}`` (the inner
    payload an object or a string holding JSON); otherwise it is the request object.
    """
    if not method:
        try:
            envelope = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            return _skip(consumer, "", f"malformed message: {e}")
        if not isinstance(envelope, dict):
            return _skip(consumer, "", "malformed message: not a JSON object")
        method = envelope.get("method") or ""
        if not isinstance(method, str):
            return _skip(consumer, "", "malformed message: method is not a string")
        inner = envelope.get("payload")
        if isinstance(inner, str):
            try:
                params: Any = orjson.loads(inner)
            except orjson.JSONDecodeError as e:
                return _skip(consumer, method, f"malformed payload: {e}")
        else:
            params = inner if inner is not None else {}
    else:
        try:
            params = orjson.loads(payload) if payload.strip() else {}
        except orjson.JSONDecodeError as e:
            return _skip(consumer, method, f"malformed payload: {e}")
    if method not in COMMAND_METHODS:
        _log.warn(
            "consumer {consumer}: method {method!r} is not supported by consumers, skip message",
            consumer=consumer,
            method=method[:64],
        )
        return DONE
    return _outcome(consumer, method, await call(method, params))


def _outcome(consumer: str, method: str, response: Mapping[str, Any]) -> bool:
    error = response.get("error")
    if error is not None:
        if error.get("code") == _INTERNAL:
            return RETRY
        return _skip(consumer, method, f"{error.get('code')}: {error.get('message')}")
    if method == "broadcast":
        # Any internal error of one channel retries the whole message (publishers may
        # use idempotency keys against duplicates).
        responses = response.get("result", {}).get("responses", ())
        if any((r.get("error") or {}).get("code") == _INTERNAL for r in responses):
            return RETRY
    return DONE


async def dispatch_publication(
    call: Call,
    consumer: str,
    data: bytes,
    channels: list[str],
    *,
    idempotency_key: str,
    delta: str,
    tags: dict[str, str],
) -> bool:
    """Publish ``data`` as it is into ``channels`` (publication data mode)."""
    if delta and delta not in _TRUE and delta not in _FALSE:
        return _skip(consumer, "publish", f"delta value {delta[:16]!r} is not a boolean")
    channels = [c for c in channels if c]
    if not channels:
        _log.info("consumer {consumer}: no channels found, skip message", consumer=consumer)
        return DONE
    params: dict[str, Any] = {"b64data": base64.b64encode(data).decode("ascii")}
    if idempotency_key:
        params["idempotency_key"] = idempotency_key
    if delta in _TRUE:
        params["delta"] = True
    if tags:
        params["tags"] = tags
    if len(channels) == 1:
        method, params["channel"] = "publish", channels[0]
    else:
        method, params["channels"] = "broadcast", channels
    return _outcome(consumer, method, await call(method, params))
