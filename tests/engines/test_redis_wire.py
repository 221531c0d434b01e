"""Redis engine pieces that need no server: payload encoding, addresses, sharding."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from rtserver.config import RedisAddress, parse_address
from rtserver.core.types import (
    CONTROL_TYPES,
    DisconnectControl,
    NodeInfo,
    NodeShutdown,
    Overrides,
    RefreshControl,
    SubscribeControl,
    SurveyReply,
    SurveyRequest,
    UnsubscribeControl,
)
from rtserver.engines.redisconn import _fnv1a64, shard_index
from rtserver.engines.wire import (
    PROBE,
    WireError,
    decode_client_info,
    decode_control,
    decode_publication,
    encode_client_info,
    encode_control,
    encode_publication,
)
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

CONTROL_SAMPLES = [
    SubscribeControl(
        user="u",
        channel="ch",
        client="c",
        session="s",
        info=b'{"a":[1,2]}',
        data=b"null",
        recover_since=StreamPosition(7, "epoch"),
        expire_at=123,
        overrides=Overrides(presence=True, join_leave=False),
    ),
    SubscribeControl(user="u", channel="ch"),
    UnsubscribeControl(user="u", channel="ch", client="c"),
    DisconnectControl(user="u", code=3503, reason="x", whitelist=("c1", "c2")),
    RefreshControl(user="u", expired=True, expire_at=5, info=b'"s"'),
    NodeInfo(uid="n", name="a", version="1.0", num_clients=1, num_users=2, uptime=9),
    NodeShutdown(uid="n"),
    SurveyRequest(id="1", op="channels", sender="n", data=b'{"pattern":"*"}'),
    SurveyReply(id="1", sender="m", code=1, data=b"[]"),
]


def test_every_control_type_has_a_sample() -> None:
    assert {type(m).__name__ for m in CONTROL_SAMPLES} == set(CONTROL_TYPES)


@pytest.mark.parametrize("message", CONTROL_SAMPLES, ids=lambda m: type(m).__name__)
def test_control_round_trip(message: object) -> None:
    """Every control type survives encoding; raw JSON bytes stay raw JSON."""
    payload = encode_control(message)  # type: ignore[arg-type]
    assert b"\n" not in payload
    assert decode_control(payload) == message


def test_control_none_and_literal_null_differ() -> None:
    """A None field is absent; raw JSON ``null`` in a bytes field stays ``b"null"``."""
    none = RefreshControl(user="u", info=None)
    null = RefreshControl(user="u", info=b"null")
    assert decode_control(encode_control(none)) == none
    assert decode_control(encode_control(null)) == null


def test_control_rejects_foreign_types_and_garbage() -> None:
    @dataclasses.dataclass(frozen=True)
    class NotControl:
        x: int = 1

    with pytest.raises(TypeError):
        encode_control(NotControl())  # type: ignore[arg-type]
    assert decode_control(PROBE) is None
    for bad in (
        b"nope",
        b"[]",
        b'{"type":"Nope","data":{}}',
        b'{"type":"NodeShutdown","data":{}}',
        b'{"type":"NodeShutdown","data":{"uid":5}}',
        b'{"type":"DisconnectControl","data":{"user":"u","code":true,"reason":""}}',
        b'{"type":"DisconnectControl","data":{"user":"u","code":1,"reason":"","whitelist":"x"}}',
        b'{"type":"SubscribeControl","data":{"user":"u","channel":"c","recover_since":[]}}',
    ):
        with pytest.raises(WireError):
            decode_control(bad)


def test_publication_round_trip_keeps_data_bytes() -> None:
    pub = Publication(
        data=b'{"b":1.5e300,"a":"\\u2028"}',
        info=ClientInfo("u", "c", conn_info=b'{"x":null}', chan_info=b"[1]"),
        tags={"k": "v"},
        time=1700000000000,
        delta=True,  # the publisher's delta flag reaches every node's subscribers
    )
    payload = encode_publication(pub)
    decoded = decode_publication(payload, 5, "ep")
    assert decoded == dataclasses.replace(pub, offset=5, epoch="ep")
    plain = Publication(data=b"1")
    assert decode_publication(encode_publication(plain)) == plain


def test_client_info_round_trip() -> None:
    for info in (ClientInfo("u", "c"), ClientInfo("", "c", conn_info=b"null", chan_info=b"{}")):
        assert decode_client_info(encode_client_info(info)) == info


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{}",
        b"{}\n",
        b"[]\n1",
        b"x\n1",
        b'{"tags":{"a":1}}\n1',
        b'{"time":"1"}\n1',
        b'{"delta":1}\n1',
        b'{"info":{"user":1}}\n1',
    ],
)
def test_garbled_publications_raise(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_publication(payload)


def test_parse_address_forms() -> None:
    assert parse_address("127.0.0.1:6380") == RedisAddress("127.0.0.1", 6380)
    assert parse_address("redis://h") == RedisAddress("h", 6379)
    assert parse_address("redis://u:p%40ss@h:1/2", db=5) == RedisAddress("h", 1, 2, "u", "p@ss")
    assert parse_address("redis://:pw@h:1") == RedisAddress("h", 1, 0, "", "pw")
    assert parse_address("h:1", db=4, user="d", password="q") == RedisAddress("h", 1, 4, "d", "q")
    addr = parse_address("redis://user:topsecret@h:1/0")
    assert "topsecret" not in str(addr) and "topsecret" not in repr(addr)
    for bad in ("redis+cluster://h:1/2", "redis://h:x", "redis://h:1/db", "redis://:1"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_fnv1a64_vectors() -> None:
    assert _fnv1a64(b"") == 0xCBF29CE484222325
    assert _fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert _fnv1a64(b"foobar") == 0x85944171F73967E8


def test_shard_index_is_stable_balanced_and_consistent() -> None:
    """Jump hash: in range, balanced, and growing N moves keys only to the new shard."""
    channels = [f"chan:{i}" for i in range(3000)]
    assert all(shard_index(ch, 1) == 0 for ch in channels[:10])
    counts = Counter(shard_index(ch, 3) for ch in channels)
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 850
    for ch in channels:
        before, after = shard_index(ch, 3), shard_index(ch, 4)
        assert after == before or after == 3
