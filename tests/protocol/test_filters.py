"""Tag filter validation: malformed ``tf`` trees are refused with error 107 and a reason."""

from __future__ import annotations

from typing import Any

import pytest

from rtserver.protocol import filters
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import ProtocolError, SubscribeRequest

BAD: list[tuple[Any, str]] = [
    ([], "must be an object"),
    ({"op": "xor", "nodes": [{"key": "a", "cmp": "ex"}]}, "op must be one of"),
    ({"op": "and"}, "at least one child"),
    ({"op": "or", "nodes": []}, "at least one child"),
    ({"op": "not", "nodes": [{"cmp": "ex"}, {"cmp": "ex"}]}, "exactly one child"),
    ({"op": "and", "nodes": "x"}, "nodes must be a list"),
    ({"op": "and", "nodes": [1]}, "must be an object"),
    ({"key": "a"}, "must have cmp"),
    ({"key": "a", "cmp": "like", "val": "x"}, "not a known comparison"),
    ({"key": "a", "cmp": "eq"}, "needs val"),
    ({"key": "a", "cmp": "eq", "val": "x", "vals": ["y"]}, "needs val and no vals"),
    ({"key": "a", "cmp": "in", "vals": []}, "non-empty vals"),
    ({"key": "a", "cmp": "in", "val": "x", "vals": ["y"]}, "non-empty vals and no val"),
    ({"key": "a", "cmp": "ex", "val": "x"}, "neither val nor vals"),
    ({"cmp": "eq", "val": "x"}, "needs key"),
    ({"key": 1, "cmp": "eq", "val": "x"}, "key must be a string"),
    ({"key": "a", "cmp": "in", "vals": ["x", 2]}, "list of strings"),
    ({"key": "a", "cmp": "eq", "val": "x", "nodes": [{"cmp": "ex"}]}, "must not have nodes"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD, ids=[r for _, r in BAD])
def test_malformed_filters_are_refused(raw: Any, reason: str) -> None:
    """Each malformed tree raises FilterError naming the problem; its reply is error 107."""
    with pytest.raises(filters.FilterError) as caught:
        filters.parse(raw)
    assert reason in caught.value.detail
    error = caught.value.to_error()
    assert error == Error(107, f"bad request: {caught.value.detail}")
    assert error is not caught.value.to_error()


def nested(depth: int) -> dict[str, Any]:
    """A ``not`` chain ``depth`` levels deep (the leaf included)."""
    node: dict[str, Any] = {"key": "k", "cmp": "ex"}
    for _ in range(depth - 1):
        node = {"op": "not", "nodes": [node]}
    return node


def test_depth_bound() -> None:
    """Trees up to MAX_DEPTH levels parse; one level more is refused (no recursion blow-up)."""
    assert filters.parse(nested(filters.MAX_DEPTH)).matches({}) is (filters.MAX_DEPTH % 2 == 0)
    with pytest.raises(filters.FilterError, match="deeper than"):
        filters.parse(nested(filters.MAX_DEPTH + 1))
    with pytest.raises(filters.FilterError, match="deeper than"):
        filters.parse(nested(5000))


def test_node_count_bound() -> None:
    """A flat ``or`` with more than MAX_NODES nodes in all is refused."""
    leaf = {"key": "k", "cmp": "eq", "val": "v"}
    filters.parse({"op": "or", "nodes": [leaf] * (filters.MAX_NODES - 1)})
    with pytest.raises(filters.FilterError, match="more than"):
        filters.parse({"op": "or", "nodes": [leaf] * filters.MAX_NODES})


def test_equal_filters_are_one_value() -> None:
    """Subscribers sending the same tree get equal, hashable filters (evaluated once)."""
    raw = {"op": "and", "nodes": [{"key": "a", "cmp": "in", "vals": ["1", "2"]}]}
    first, second = filters.parse(raw), filters.parse(dict(raw))
    assert first == second
    assert len({first, second}) == 1
    assert filters.parse(first.to_wire()) == first


def test_subscribe_request_fields() -> None:
    """``delta`` and ``tf`` are kept by the subscribe parser; a non-object ``tf`` is 3501."""
    request = SubscribeRequest.parse(
        {"channel": "c", "delta": "fossil", "tf": {"key": "a", "cmp": "ex"}}
    )
    assert (request.delta, request.tf) == ("fossil", {"key": "a", "cmp": "ex"})
    assert SubscribeRequest.parse({"channel": "c"}).tf is None
    with pytest.raises(ProtocolError):
        SubscribeRequest.parse({"channel": "c", "tf": "ticker == AAPL"})
    with pytest.raises(ProtocolError):
        SubscribeRequest.parse({"channel": "c", "delta": "zstd"})


def test_subscription_filter_rules() -> None:
    """Not allowed, combined with delta, or malformed: 107 with the reason; absent: None."""
    leaf = {"key": "a", "cmp": "ex"}
    assert filters.subscription_filter(None, delta="fossil", allowed=False) is None
    assert filters.subscription_filter(leaf, delta="", allowed=True) == filters.parse(leaf)
    for tf, delta, allowed, reason in [
        (leaf, "", False, "not allowed"),
        (leaf, "fossil", True, "cannot be combined with delta"),
        ({"cmp": "eq"}, "", True, "needs val"),
    ]:
        with pytest.raises(filters.FilterError) as caught:
            filters.subscription_filter(tf, delta=delta, allowed=allowed)
        assert caught.value.to_error().code == 107
        assert reason in caught.value.to_error().message
