"""Hypothesis strategies for client-protocol messages, built from the Protobuf schema.

Values are JSON-shaped dicts in the form :func:`rtserver.protocol.protobuf.decode_message`
returns: only fields a proto3 encoder writes (scalars that are not empty), bytes fields
as ``bytes``, messages as dicts, maps as dicts, repeated fields as non-empty lists.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from rtserver.protocol.protobuf import SCHEMA_SOURCE

_INTS = {
    "uint32": st.integers(1, 2**32 - 1),
    "uint64": st.integers(1, 2**64 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1).filter(bool),
    "int64": st.integers(-(2**63), 2**63 - 1).filter(bool),
}
_text = st.text(max_size=12)


def message(name: str, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Any present-fields value of message ``name`` (nested messages to depth 3)."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for type_, field, _ in SCHEMA_SOURCE[name]:
        strategy = _field(type_, depth)
        if strategy is not None:
            optional[field] = strategy
    return st.fixed_dictionaries({}, optional=optional)


def _field(type_: str, depth: int) -> st.SearchStrategy[Any] | None:
    if type_ in _INTS:
        return _INTS[type_]
    if type_ == "bool":
        return st.just(True)
    if type_ == "string":
        return st.text(min_size=1, max_size=12)
    if type_ == "bytes":
        return st.binary(min_size=1, max_size=24)
    if type_ == "repeated string":
        return st.lists(_text, min_size=1, max_size=3)
    if type_ == "map<string, string>":
        return st.dictionaries(_text, _text, min_size=1, max_size=3)
    if depth >= 3:
        return None
    if type_.startswith("repeated "):
        inner = message(type_.removeprefix("repeated "), depth + 1)
        return st.lists(inner, min_size=1, max_size=2)
    if type_.startswith("map<string, "):
        inner = message(type_.removeprefix("map<string, ").removesuffix(">"), depth + 1)
        return st.dictionaries(_text, inner, min_size=1, max_size=2)
    return message(type_, depth + 1)


#: Every message type of the schema.
MESSAGE_NAMES = sorted(SCHEMA_SOURCE)
