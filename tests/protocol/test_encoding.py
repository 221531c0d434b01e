"""Choosing the encoding at the handshake, and the codec for it."""

from __future__ import annotations

import pytest

from rtserver.protocol import codec, protobuf
from rtserver.protocol.encoding import (
    JSON,
    PROTOBUF,
    codec_for,
    http_encoding,
    websocket_encoding,
)


@pytest.mark.parametrize(
    ("subprotocols", "query", "expected"),
    [
        ([], {}, (JSON, None)),
        (["centrifuge-json"], {}, (JSON, "centrifuge-json")),
        (["centrifuge-protobuf"], {}, (PROTOBUF, "centrifuge-protobuf")),
        (["mqtt", "centrifuge-protobuf"], {}, (PROTOBUF, "centrifuge-protobuf")),
        (["centrifuge-json", "centrifuge-protobuf"], {}, (JSON, "centrifuge-json")),
        (["centrifuge-protobuf", "centrifuge-json"], {}, (PROTOBUF, "centrifuge-protobuf")),
        ([], {"format": ["protobuf"]}, (PROTOBUF, None)),
        ([], {"cf_protocol": ["protobuf"]}, (PROTOBUF, None)),
        (["centrifuge-json"], {"cf_protocol": ["protobuf"]}, (PROTOBUF, "centrifuge-json")),
        ([], {"format": ["json"]}, (JSON, None)),
        ([], {"format": ["PROTOBUF"]}, (JSON, None)),
    ],
)
def test_websocket_negotiation(
    subprotocols: list[str], query: dict[str, list[str]], expected: tuple[str, str | None]
) -> None:
    """Subprotocol first (client order), then the query parameters, else JSON."""
    assert websocket_encoding(subprotocols, query) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, JSON),
        ("application/json", JSON),
        ("text/plain", JSON),
        ("application/octet-stream", PROTOBUF),
        ("Application/Octet-Stream; charset=binary", PROTOBUF),
    ],
)
def test_http_negotiation(content_type: str | None, expected: str) -> None:
    """HTTP-streaming and /emulation bodies are Protobuf when sent as octet-stream."""
    assert http_encoding(content_type) == expected


def test_codec_for() -> None:
    """Each encoding has its codec module; an unknown name is an error."""
    assert codec_for(JSON) is codec
    assert codec_for(PROTOBUF) is protobuf
    assert codec_for(PROTOBUF).decode_commands(protobuf.PING)[0].method is None
    with pytest.raises(ValueError):
        codec_for("xml")
