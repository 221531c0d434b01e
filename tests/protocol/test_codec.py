"""The JSON codec: frames in, commands out; values in, single-line JSON out."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtserver.protocol import codec
from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import (
    ClientInfo,
    ConnectRequest,
    HistoryRequest,
    ProtocolError,
    Publication,
    PublishRequest,
    SubscribeRequest,
)
from rtserver.protocol.wsframe import text_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def test_batch_is_split_in_order() -> None:
    """Several newline-joined commands in one frame come out in frame order."""
    frame = b'{"connect":{"name":"js"},"id":1}\n{"subscribe":{"channel":"a","flag":1},"id":2}\n'
    commands = codec.decode_commands(frame)
    assert [(c.id, c.method) for c in commands] == [(1, "connect"), (2, "subscribe")]
    assert commands[1].params == {"channel": "a", "flag": 1}


def test_empty_object_is_a_pong() -> None:
    """``{}`` (and any id-less command without a method) is the client's pong."""
    (cmd,) = codec.decode_commands(b"{}")
    assert cmd.method is None and cmd.id == 0


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\n\n",
        b"not json",
        b"[1,2]",
        b'{"id":-1,"connect":{}}',
        b'{"id":"1","connect":{}}',
        b'{"id":4294967296,"connect":{}}',
        b'{"id":1,"connect":[]}',
        b'{"id":5,"frobnicate":{}}',
        b'{"id":1,"connect":{}}\n{broken',
    ],
)
def test_malformed_frames_are_bad_request(frame: bytes) -> None:
    """Malformed input raises a 3501 disconnect, never another exception."""
    with pytest.raises(ProtocolError) as info:
        codec.decode_commands(frame)
    assert info.value == Disconnect.BAD_REQUEST


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    """Any byte string either decodes or is a 3501, nothing else."""
    try:
        codec.decode_commands(data)
    except ProtocolError:
        pass


@given(json_values)
def test_publish_data_roundtrips_without_newlines(value: object) -> None:
    """Pass-through payloads come back equal and as a single line."""
    req = PublishRequest.parse({"channel": "c", "data": value})
    assert b"\n" not in req.data
    assert orjson.loads(req.data) == value


def test_unknown_fields_are_tolerated() -> None:
    """Fields newer SDKs send (flag, tf, type, headers) do not break parsing."""
    req = SubscribeRequest.parse({"channel": "c", "flag": 3, "tf": {"op": 1}, "type": 0})
    assert req.reject_unrecovered
    conn = ConnectRequest.parse({"name": "js", "flag": 1, "headers": {"a": "b"}, "dict": "x"})
    assert conn.headers == {"a": "b"}


@pytest.mark.parametrize(
    ("params", "parser"),
    [
        ({"channel": 1}, SubscribeRequest.parse),
        ({"channel": "c", "offset": -1}, SubscribeRequest.parse),
        ({"channel": "c", "recover": "yes"}, SubscribeRequest.parse),
        ({"channel": "c", "delta": "zstd"}, SubscribeRequest.parse),
        ({"channel": "c"}, PublishRequest.parse),
        ({"channel": "c", "since": {"offset": "1"}}, HistoryRequest.parse),
        ({"subs": {"a": 1}}, ConnectRequest.parse),
        ({"headers": {"a": 1}}, ConnectRequest.parse),
    ],
)
def test_wrong_field_types_are_bad_request(params: dict, parser: object) -> None:
    """A field of the wrong type is a protocol violation (3501)."""
    with pytest.raises(ProtocolError):
        parser(params)  # type: ignore[operator]


def test_reply_always_carries_its_result_key() -> None:
    """``{"id":3,"publish":{}}``: an empty result still has its key."""
    assert orjson.loads(codec.encode_reply(3, "publish", {})) == {"id": 3, "publish": {}}


def test_error_reply_shape() -> None:
    """Errors carry code and message, and temporary only when set."""
    assert orjson.loads(codec.encode_error(7, Error.PERMISSION_DENIED)) == {
        "id": 7,
        "error": {"code": 103, "message": "permission denied"},
    }
    assert orjson.loads(codec.encode_error(8, Error.INTERNAL))["error"]["temporary"] is True


def test_push_shapes_for_bidirectional_and_unidirectional() -> None:
    """Bidirectional pushes are wrapped in ``push``; unidirectional ones are bare."""
    pub = Publication(data=b'{"t":1}', info=ClientInfo("42", "c1", conn_info=b'{"n":1}'), offset=4)
    bidi = orjson.loads(codec.encode_push("chat", "pub", pub.to_wire()))
    assert bidi == {
        "push": {
            "channel": "chat",
            "pub": {
                "data": {"t": 1},
                "info": {"user": "42", "client": "c1", "conn_info": {"n": 1}},
                "offset": 4,
            },
        }
    }
    uni = orjson.loads(codec.encode_push("chat", "pub", pub.to_wire(), uni=True))
    assert uni == bidi["push"]


def test_unsubscribe_and_disconnect_pushes_have_code_and_reason() -> None:
    """Python SDK indexes both code and reason of these pushes."""
    unsub = orjson.loads(codec.encode_unsubscribe("c", Unsubscribe.SERVER))
    assert unsub == {
        "push": {"channel": "c", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    }
    disc = orjson.loads(codec.encode_disconnect(Disconnect.SLOW))
    assert disc == {"push": {"disconnect": {"code": 3008, "reason": "slow"}}}


def test_disconnect_reconnect_ranges() -> None:
    """3500-3999 and 4500-4999 are terminal; the rest reconnect."""
    assert Disconnect.SLOW.reconnect and Disconnect(4100, "x").reconnect
    assert not Disconnect.INVALID_TOKEN.reconnect and not Disconnect(4600, "x").reconnect


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    """Frames use the 7-bit, 16-bit and 64-bit length forms at their boundaries."""
    payload = b"x" * size
    frame = text_frame(payload)
    assert frame[0] == 0x81
    assert frame.endswith(payload)
    header = len(frame) - size
    assert header == (2 if size < 126 else 4 if size < 65536 else 10)
    # Decode the length back as a client would.
    n = frame[1] & 0x7F
    if n == 126:
        n = int.from_bytes(frame[2:4], "big")
    elif n == 127:
        n = int.from_bytes(frame[2:10], "big")
    assert n == size
