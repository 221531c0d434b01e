"""Publication tag filters: the ``tf`` expression tree of a subscribe request.

A subscriber that sends ``tf`` only receives the publications whose ``tags`` match it
(docs/client-protocol.rst, "Delta compression and tag filters"). A node is either a
comparison (``op`` empty) of the tag ``key`` with ``val``/``vals``, or ``and``/``or``
over ``nodes``, or ``not`` over exactly one node. The comparisons are those the official
SDKs send: ``eq``, ``neq``, ``in``, ``nin``, ``ex``, ``nex``, ``sw`` (starts with),
``ew`` (ends with), ``ct`` (contains), and the numeric ``gt``, ``gte``, ``lt``, ``lte``.

Matching follows Centrifugo: a missing tag reads as ``""`` for ``in``/``nin``, never
equals for ``eq`` (so ``neq`` matches it) and fails ``sw``/``ew``/``ct`` and the numeric
comparisons; a numeric comparison whose tag or ``val`` is not a plain decimal number
(``-12``, ``3.50``) is false, not an error.

:func:`parse` validates a decoded ``tf`` object (the JSON object, or the dict the
Protobuf decoder makes of a ``FilterNode``) into a frozen, hashable :class:`Filter`;
anything malformed raises :class:`FilterError`, which the subscribe handler answers with
error 107 "bad request" (Centrifugo's code). Equal filters are equal values, so the
fan-out can evaluate each distinct filter once per publication.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from rtserver.protocol.codes import Error

__all__ = [
    "COMPARISONS",
    "MAX_DEPTH",
    "MAX_NODES",
    "Filter",
    "FilterError",
    "parse",
    "subscription_filter",
]

#: Leaf comparisons and whether each takes ``val`` ("val"), ``vals`` ("vals") or neither.
COMPARISONS: Final[Mapping[str, str]] = {
    "eq": "val",
    "neq": "val",
    "sw": "val",
    "ew": "val",
    "ct": "val",
    "gt": "val",
    "gte": "val",
    "lt": "val",
    "lte": "val",
    "in": "vals",
    "nin": "vals",
    "ex": "",
    "nex": "",
}
_LOGICAL: Final = ("and", "or", "not")
_NUMERIC: Final = frozenset({"gt", "gte", "lt", "lte"})

#: Deepest nesting of logical nodes accepted (an rtserver bound; the leaf is level 1).
MAX_DEPTH: Final = 16
#: Most nodes (logical and leaf) in one filter (an rtserver bound).
MAX_NODES: Final = 256

_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?\Z")


class FilterError(ValueError):
    """A malformed ``tf`` filter; ``detail`` says what is wrong."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_error(self) -> Error:
        """The reply error: 107 "bad request: <detail>" (a new value on every call)."""
        return Error.BAD_REQUEST.with_message(f"bad request: {self.detail}")


def _number(text: str) -> Decimal | None:
    if len(text) > 64 or not _DECIMAL.match(text):
        return None
    return Decimal(text)


@dataclass(frozen=True, slots=True)
class Filter:
    """One validated node of a tag filter (hashable; equal trees compare equal)."""

    op: str = ""
    key: str = ""
    cmp: str = ""
    val: str = ""
    vals: tuple[str, ...] = ()
    nodes: tuple[Filter, ...] = ()

    def matches(self, tags: Mapping[str, str] | None) -> bool:
        """Whether a publication with ``tags`` passes this filter."""
        op = self.op
        if op == "and":
            return all(node.matches(tags) for node in self.nodes)
        if op == "or":
            return any(node.matches(tags) for node in self.nodes)
        if op == "not":
            return not self.nodes[0].matches(tags)
        value = tags.get(self.key) if tags else None
        cmp = self.cmp
        if cmp == "eq":
            return value == self.val
        if cmp == "neq":
            return value != self.val
        if cmp == "in":
            return (value or "") in self.vals
        if cmp == "nin":
            return (value or "") not in self.vals
        if cmp == "ex":
            return value is not None
        if cmp == "nex":
            return value is None
        if value is None:
            return False
        if cmp == "sw":
            return value.startswith(self.val)
        if cmp == "ew":
            return value.endswith(self.val)
        if cmp == "ct":
            return self.val in value
        left = _number(value)
        right = _number(self.val)
        if left is None or right is None:
            return False
        if cmp == "gt":
            return left > right
        if cmp == "gte":
            return left >= right
        if cmp == "lt":
            return left < right
        return left <= right

    def to_wire(self) -> dict[str, object]:
        """The ``FilterNode`` object (omit-empty), as the SDKs send it."""
        body: dict[str, object] = {}
        if self.op:
            body["op"] = self.op
            body["nodes"] = [node.to_wire() for node in self.nodes]
            return body
        if self.key:
            body["key"] = self.key
        body["cmp"] = self.cmp
        if self.val:
            body["val"] = self.val
        if self.vals:
            body["vals"] = list(self.vals)
        return body


def parse(raw: object) -> Filter:
    """Validate a decoded ``tf`` object into a :class:`Filter`.

    Raises:
        FilterError: ``raw`` is not a well-formed filter (wrong types, unknown ``op`` or
            ``cmp``, ``val``/``vals`` missing or where they do not belong, ``not`` without
            exactly one node, deeper than :data:`MAX_DEPTH` or more than
            :data:`MAX_NODES` nodes).
    """
    budget = [MAX_NODES]
    return _node(raw, 1, budget)


def _text(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FilterError(f"tf {key} must be a string")
    return value


def _list(obj: Mapping[str, object], key: str) -> list[object]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FilterError(f"tf {key} must be a list")
    return value


def _node(raw: object, depth: int, budget: list[int]) -> Filter:
    if not isinstance(raw, dict):
        raise FilterError("tf node must be an object")
    if depth > MAX_DEPTH:
        raise FilterError(f"tf nested deeper than {MAX_DEPTH} levels")
    budget[0] -= 1
    if budget[0] < 0:
        raise FilterError(f"tf has more than {MAX_NODES} nodes")
    op = _text(raw, "op")
    if op:
        if op not in _LOGICAL:
            raise FilterError(f"tf op must be one of and, or, not (got {op!r})")
        children = _list(raw, "nodes")
        if op == "not" and len(children) != 1:
            raise FilterError("tf not node must have exactly one child")
        if not children:
            raise FilterError(f"tf {op} node must have at least one child")
        nodes = tuple(_node(child, depth + 1, budget) for child in children)
        return Filter(op=op, nodes=nodes)
    if _list(raw, "nodes"):
        raise FilterError("tf comparison node must not have nodes")
    cmp = _text(raw, "cmp")
    if not cmp:
        raise FilterError("tf comparison node must have cmp")
    takes = COMPARISONS.get(cmp)
    if takes is None:
        raise FilterError(f"tf cmp {cmp!r} is not a known comparison")
    key = _text(raw, "key")
    val = _text(raw, "val")
    vals = _list(raw, "vals")
    if not all(isinstance(v, str) for v in vals):
        raise FilterError("tf vals must be a list of strings")
    if takes == "val" and (not val or vals):
        raise FilterError(f"tf {cmp} comparison needs val and no vals")
    if takes == "vals" and (not vals or val):
        raise FilterError(f"tf {cmp} comparison needs non-empty vals and no val")
    if not takes and (val or vals):
        raise FilterError(f"tf {cmp} comparison takes neither val nor vals")
    if not key and takes:
        raise FilterError(f"tf {cmp} comparison needs key")
    return Filter(key=key, cmp=cmp, val=val, vals=tuple(str(v) for v in vals))


def subscription_filter(tf: object, *, delta: str, allowed: bool) -> Filter | None:
    """The filter of a subscribe request, or None without ``tf``; what the handler calls.

    Args:
        tf: The request's decoded ``tf`` (``SubscribeRequest.tf``), None when absent.
        delta: The request's ``delta`` (a filter cannot be combined with delta: the
            subscriber would get deltas against publications it never received).
        allowed: The namespace's ``allow_tags_filter``.

    Raises:
        FilterError: ``tf`` is set but not allowed, combined with delta, or malformed;
            ``to_error()`` is the 107 reply.
    """
    if tf is None:
        return None
    if not allowed:
        raise FilterError("tags filter is not allowed in this namespace")
    if delta:
        raise FilterError("tags filter cannot be combined with delta")
    return parse(tf)
