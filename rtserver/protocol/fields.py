"""Typed readers for fields of decoded JSON objects.

The client protocol, the server API and tokens all read the same kinds of fields and
differ only in how a bad one is reported: :class:`FieldReader` takes that as a factory
(``fail(detail) -> Exception``). Absent or ``null`` fields read as empty values.

Raw JSON payloads are re-encoded compactly with :func:`compact_json`, which accepts any
value the JSON parser produced: orjson parses documents nested up to 1024 levels
(deeper is a decode error), but its encoder stops at 254 levels, so deeper values are
encoded in pieces of at most ``_PIECE_DEPTH`` levels spliced together as
``orjson.Fragment``; the bytes are identical to a single ``orjson.dumps``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["MAX_JSON_DEPTH", "FieldReader", "compact_json", "has_control_characters"]

#: Deepest nesting of arrays/objects orjson parses in one document (1025 is an error).
MAX_JSON_DEPTH = 1024
#: Levels encoded per piece by :func:`compact_json`; below orjson's encoder limit (254).
_PIECE_DEPTH = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds an ASCII control character (U+0000-U+001F, U+007F)."""
    return _CONTROL.search(text) is not None


def compact_json(value: Any) -> bytes:
    """Compact JSON of a parsed value, however deep; the bytes never contain a newline.

    Raises:
        orjson.JSONEncodeError: ``value`` is not JSON (never for parser output).
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        if not isinstance(value, dict | list):
            raise
    return orjson.dumps(_in_pieces(value))


def _in_pieces(root: dict[str, Any] | list[Any]) -> Any:
    """A copy of ``root`` where every subtree ``_PIECE_DEPTH`` levels high is a Fragment.

    Iterative (post-order over an explicit stack), so Python's recursion limit does not
    apply; each piece handed to ``orjson.dumps`` is at most ``_PIECE_DEPTH`` levels deep.
    """
    # Each frame: (container, its items, index of the next child, rebuilt children, height).
    stack: list[tuple[dict[str, Any] | list[Any], list[tuple[Any, Any]], list[Any], list[int]]]
    stack = [(root, _items(root), [], [0])]
    result: Any = None
    while stack:
        container, items, built, height = stack[-1]
        if len(built) < len(items):
            key, child = items[len(built)]
            if isinstance(child, dict | list) and child:
                stack.append((child, _items(child), [], [0]))
                continue
            built.append((key, child))
            continue
        stack.pop()
        if isinstance(container, dict):
            rebuilt: Any = {k: v for k, v in built}
        else:
            rebuilt = [v for _, v in built]
        level = height[0] + 1
        if level >= _PIECE_DEPTH:
            rebuilt, level = orjson.Fragment(orjson.dumps(rebuilt)), 0
        if not stack:
            result = rebuilt
            break
        parent = stack[-1]
        parent[2].append((parent[1][len(parent[2])][0], rebuilt))
        parent[3][0] = max(parent[3][0], level)
    return result


def _items(container: dict[str, Any] | list[Any]) -> list[tuple[Any, Any]]:
    if isinstance(container, dict):
        return list(container.items())
    return list(enumerate(container))


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
                return compact_json(orjson.loads(decoded))
            except orjson.JSONDecodeError:
                raise self.fail(f"{b64key} must encode JSON: this server is JSON-only") from None
        if key not in obj:
            return None
        try:
            return compact_json(obj[key])
        except orjson.JSONEncodeError:
            raise self.fail(f"{key} must be JSON") from None
