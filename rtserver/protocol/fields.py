"""Typed readers for fields of decoded JSON objects.

The client protocol, the server API and tokens all read the same kinds of fields and
differ only in how a bad one is reported: :class:`FieldReader` takes that as a factory
(``fail(detail) -> Exception``). Absent or ``null`` fields read as empty values.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["FieldReader"]


class FieldReader:
    """Reads optional, typed fields; a wrong type raises ``fail(detail)``."""

    def __init__(self, fail: Callable[[str], Exception]) -> None:
        self.fail = fail

    def string(self, obj: dict[str, Any], key: str, *, name: str = "") -> str:
        """A string (``""`` when absent); ``name`` replaces ``key`` in the error."""
        value = obj.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(f"{name or key} must be a string")
        return value

    def boolean(self, obj: dict[str, Any], key: str) -> bool:
        """A boolean (``False`` when absent)."""
        value = obj.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(f"{key} must be a boolean")
        return value

    def integer(self, obj: dict[str, Any], key: str, lo: int, hi: int, *, name: str = "") -> int:
        """An integer within ``[lo, hi]`` (``0`` when absent)."""
        value = obj.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(f"{name or key} must be an integer in [{lo}, {hi}]")
        return value

    def object(self, obj: dict[str, Any], key: str) -> dict[str, Any]:
        """A nested object (``{}`` when absent)."""
        value = obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{key} must be an object")
        return value

    def string_list(self, obj: dict[str, Any], key: str) -> list[str]:
        """A list of strings (``[]`` when absent)."""
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{key} must be a list of strings")
        return value

    def string_map(self, obj: dict[str, Any], key: str) -> dict[str, str]:
        """An object mapping strings to strings (``{}`` when absent)."""
        value = self.object(obj, key)
        if not all(isinstance(v, str) for v in value.values()):
            raise self.fail(f"{key} must map strings to strings")
        return value

    def raw_json(self, obj: dict[str, Any], key: str, b64key: str = "") -> bytes | None:
        """Compact JSON bytes of ``key``, or of base64 ``b64key`` (which wins); None if absent.

        The bytes never contain a newline, so they can be spliced into a frame.
        """
        encoded = self.string(obj, b64key) if b64key else ""
        if encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise self.fail(f"{b64key} must be valid base64") from None
            try:
                return orjson.dumps(orjson.loads(decoded))
            except orjson.JSONDecodeError:
                raise self.fail(f"{b64key} must encode JSON: this server is JSON-only") from None
        if key not in obj:
            return None
        try:
            return orjson.dumps(obj[key])
        except orjson.JSONEncodeError:
            raise self.fail(f"{key} must be JSON") from None
