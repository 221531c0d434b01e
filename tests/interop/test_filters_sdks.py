"""Tag filters as the official SDKs build and send them, evaluated by rtserver's filters module.

centrifuge-python has builders (``centrifuge.filter.Filter``); centrifuge-js takes plain
``FilterNode`` objects (its ``FilterComparisonOperator`` type lists ``eq neq in nin ex
nex sw ew ct lt lte gt gte``, ``FilterLogicalOperator`` ``and or not``), written here as
the dicts the JS SDK serialises. Each filter also crosses the Protobuf wire: encoded by
the Python SDK's own ``client_pb2`` inside a ``SubscribeRequest``, decoded by rtserver.
"""

from __future__ import annotations

from typing import Any

import pytest
from centrifuge.filter import Filter as F  # noqa: N817 - the table reads as the SDK docs
from centrifuge.protocol.client_pb2 import SubscribeRequest as PbSubscribe
from google.protobuf.json_format import ParseDict

from rtserver.protocol import filters, protobuf
from rtserver.protocol.frames import SubscribeRequest

TAGS = {"ticker": "AAPL", "price": "101.50", "source": "NASDAQ", "note": "", "qty": "7"}

#: (filter as the SDK sends it, whether a publication with TAGS passes).
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("eq", F.eq("ticker", "AAPL").node, True),
    ("eq other", F.eq("ticker", "MSFT").node, False),
    ("eq missing", F.eq("sector", "tech").node, False),
    ("neq", F.neq("ticker", "MSFT").node, True),
    ("neq same", F.neq("ticker", "AAPL").node, False),
    ("neq missing", F.neq("sector", "tech").node, True),
    ("in", F.is_in("source", ["NYSE", "NASDAQ"]).node, True),
    ("in miss", F.is_in("source", ["NYSE", "LSE"]).node, False),
    ("nin", F.not_in("source", ["NYSE", "LSE"]).node, True),
    ("nin hit", F.not_in("source", ["NASDAQ"]).node, False),
    ("in missing tag", F.is_in("sector", ["tech"]).node, False),
    ("nin missing tag", F.not_in("sector", ["tech"]).node, True),
    ("ex", F.exists("note").node, True),
    ("ex missing", F.exists("sector").node, False),
    ("nex", F.not_exists("sector").node, True),
    ("nex present", F.not_exists("note").node, False),
    ("sw", F.starts_with("ticker", "AA").node, True),
    ("sw no", F.starts_with("ticker", "PL").node, False),
    ("ew", F.ends_with("source", "DAQ").node, True),
    ("ew no", F.ends_with("source", "NAS").node, False),
    ("ct", F.contains("source", "SDA").node, True),
    ("ct no", F.contains("source", "XX").node, False),
    ("sw missing", F.starts_with("sector", "t").node, False),
    ("gt", F.gt("price", "100").node, True),
    ("gt equal", F.gt("price", "101.5").node, False),
    ("gte equal", F.gte("price", "101.5").node, True),
    ("lt", F.lt("price", "101.51").node, True),
    ("lt no", F.lt("price", "99").node, False),
    ("lte equal", F.lte("qty", "7.0").node, True),
    ("gt numeric not lexical", F.gt("qty", "10").node, False),
    ("gt negative", F.gt("qty", "-3").node, True),
    ("gt not a number tag", F.gt("ticker", "1").node, False),
    ("gt not a number val", F.gt("price", "abc").node, False),
    ("gt missing", F.gt("sector", "1").node, False),
    ("and", F.all(F.eq("ticker", "AAPL"), F.gte("price", "100")).node, True),
    ("and one false", F.all(F.eq("ticker", "AAPL"), F.gte("price", "200")).node, False),
    ("or", F.any(F.eq("ticker", "MSFT"), F.eq("source", "NASDAQ")).node, True),
    ("or none", F.any(F.eq("ticker", "MSFT"), F.eq("source", "NYSE")).node, False),
    ("not", F.negate(F.eq("source", "NYSE")).node, True),
    ("not true", F.negate(F.exists("ticker")).node, False),
    (
        "nested",
        F.all(
            F.any(F.eq("ticker", "MSFT"), F.starts_with("ticker", "AA")),
            F.negate(F.is_in("source", ["NYSE"])),
            F.lt("qty", "10"),
        ).node,
        True,
    ),
    # The same shapes as centrifuge-js sends them (plain FilterNode objects).
    ("js eq", {"key": "ticker", "cmp": "eq", "val": "AAPL"}, True),
    ("js in", {"key": "ticker", "cmp": "in", "vals": ["BTC", "AAPL"]}, True),
    (
        "js and",
        {
            "op": "and",
            "nodes": [
                {"key": "ticker", "cmp": "eq", "val": "AAPL"},
                {"key": "price", "cmp": "gt", "val": "50000"},
            ],
        },
        False,
    ),
]


@pytest.mark.parametrize(("what", "node", "expected"), CASES, ids=[c[0] for c in CASES])
def test_sdk_filters_match_as_documented(what: str, node: dict[str, Any], expected: bool) -> None:
    """Each filter the SDKs build matches the publication tags as the table says."""
    assert filters.parse(node).matches(TAGS) is expected


@pytest.mark.parametrize(("what", "node", "expected"), CASES, ids=[c[0] for c in CASES])
def test_sdk_filters_over_protobuf(what: str, node: dict[str, Any], expected: bool) -> None:
    """The filter survives the Protobuf wire: SDK-encoded, rtserver-decoded, same verdict."""
    wire = ParseDict({"channel": "quotes", "tf": node}, PbSubscribe()).SerializeToString()
    request = SubscribeRequest.parse(protobuf.decode_message("SubscribeRequest", wire))
    assert request.tf is not None
    parsed = filters.parse(request.tf)
    assert parsed == filters.parse(node)
    assert parsed.matches(TAGS) is expected


def test_untagged_publication() -> None:
    """A publication without tags passes only filters that accept missing tags."""
    assert filters.parse(F.not_exists("ticker").node).matches(None)
    assert filters.parse(F.neq("ticker", "AAPL").node).matches({})
    assert not filters.parse(F.eq("ticker", "AAPL").node).matches(None)
