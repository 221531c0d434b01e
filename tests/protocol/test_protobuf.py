"""The Protobuf codec: the same command values as the JSON codec, strict on malformed input."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbvalues import MESSAGE_NAMES, message

from rtserver.protocol import codec, protobuf
from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import (
    ClientInfo,
    ConnectRequest,
    HistoryRequest,
    ProtocolError,
    Publication,
    PublishRequest,
    RefreshRequest,
    RPCRequest,
    SubRefreshRequest,
    SubscribeRequest,
    channel_of,
)


def frame(*messages: bytes) -> bytes:
    """Length-prefix and concatenate encoded Command bodies."""
    return b"".join(protobuf._uvarint(len(m)) + m for m in messages)


def command(obj: dict[str, Any]) -> bytes:
    """One framed Command from its JSON shape (bytes fields as bytes)."""
    return frame(protobuf.encode_message("Command", obj))


def refused(data: bytes) -> ProtocolError:
    """The error decoding ``data`` raises; it must be a 3501 bad request."""
    with pytest.raises(ProtocolError) as info:
        protobuf.decode_commands(data)
    assert info.value == Disconnect.BAD_REQUEST
    return info.value


# --- same values as the JSON codec ----------------------------------------------------

json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

PARSERS = {
    "connect": ConnectRequest.parse,
    "subscribe": SubscribeRequest.parse,
    "publish": PublishRequest.parse,
    "history": HistoryRequest.parse,
    "rpc": RPCRequest.parse,
    "refresh": RefreshRequest.parse,
    "sub_refresh": SubRefreshRequest.parse,
    "unsubscribe": channel_of,
    "presence": channel_of,
    "presence_stats": channel_of,
}


def _to_pb(obj: Any, key: str = "") -> Any:
    """A JSON-protocol command as the Protobuf message it stands for (data as bytes)."""
    if key == "data":
        return orjson.dumps(obj)
    if isinstance(obj, dict):
        return {k: _to_pb(v, k) for k, v in obj.items()}
    return obj


@given(
    cmd_id=st.integers(1, 2**32 - 1),
    method=st.sampled_from(sorted(PARSERS)),
    channel=st.text(min_size=1, max_size=10),
    token=st.text(max_size=10),
    data=json_data,
    offset=st.integers(0, 2**64 - 1),
    limit=st.integers(-(2**31), 2**31 - 1),
    flags=st.booleans(),
)
def test_commands_decode_to_the_json_codecs_values(
    cmd_id: int,
    method: str,
    channel: str,
    token: str,
    data: Any,
    offset: int,
    limit: int,
    flags: bool,
) -> None:
    """A command sent as Protobuf parses into the same request value as the JSON one."""
    params: dict[str, Any] = {
        "connect": {
            "token": token,
            "data": data,
            "name": "python",
            "subs": {channel: {"recover": flags, "offset": offset, "epoch": token}},
            "headers": {"h": token},
        },
        "subscribe": {
            "channel": channel,
            "token": token,
            "recover": flags,
            "offset": offset,
            "epoch": token,
            "data": data,
            "positioned": flags,
            "recoverable": flags,
            "join_leave": flags,
            "flag": 3 if flags else 1,
        },
        "publish": {"channel": channel, "data": data},
        "history": {
            "channel": channel,
            "limit": limit,
            "since": {"offset": offset, "epoch": token},
            "reverse": flags,
        },
        "rpc": {"method": token, "data": data},
        "refresh": {"token": token},
        "sub_refresh": {"channel": channel, "token": token},
    }.get(method, {"channel": channel})
    json_cmd = codec.decode_commands(orjson.dumps({"id": cmd_id, method: params}))[0]
    pb_cmd = protobuf.decode_commands(command({"id": cmd_id, method: _to_pb(params)}))[0]
    assert (pb_cmd.id, pb_cmd.method) == (json_cmd.id, json_cmd.method) == (cmd_id, method)
    parse = PARSERS[method]
    assert parse(pb_cmd.params) == parse(json_cmd.params)


def test_batch_is_split_in_order_and_an_empty_command_is_a_pong() -> None:
    """Several delimited commands in one frame come out in order; ``{}`` is the pong."""
    data = frame(
        protobuf.encode_message("Command", {"id": 1, "connect": {"name": "js"}}),
        protobuf.encode_message("Command", {"id": 2, "subscribe": {"channel": "a", "flag": 1}}),
        b"",
    )
    commands = protobuf.decode_commands(data)
    assert [(c.id, c.method) for c in commands] == [(1, "connect"), (2, "subscribe"), (0, None)]
    assert commands[1].params == {"channel": "a", "flag": 1}
    assert protobuf.decode_commands(protobuf.PING)[0].method is None


def test_an_empty_request_still_names_its_method() -> None:
    """A present but empty request message selects its method, as ``{"ping":{}}`` does."""
    [cmd] = protobuf.decode_commands(command({"id": 5, "ping": {}}))
    assert (cmd.id, cmd.method, cmd.params) == (5, "ping", {})


def test_raw_bytes_pass_through_unchanged() -> None:
    """Publish data from a Protobuf client is kept byte for byte, even when not JSON."""
    payload = b"\x00\xff binary \n"
    [cmd] = protobuf.decode_commands(
        command({"id": 1, "publish": {"channel": "c", "data": payload}})
    )
    assert PublishRequest.parse(cmd.params) == PublishRequest("c", payload)


def test_unknown_fields_are_skipped_like_unknown_json_keys() -> None:
    """Fields of newer SDKs (any valid wire type) are skipped; the known ones still decode."""
    sub = protobuf.encode_message("SubscribeRequest", {"channel": "news"})
    unknown = (
        b"\xf8\x01\x05"  # field 31 varint
        + b"\x81\x02"
        + b"\x00" * 8  # field 32 fixed64
        + b"\x8a\x02\x03abc"  # field 33 bytes
        + b"\x95\x02\x00\x00\x00\x00"  # field 34 fixed32
    )
    body = b"\x08\x07" + b"\x2a" + protobuf._uvarint(len(sub + unknown)) + sub + unknown
    [cmd] = protobuf.decode_commands(frame(body + b"\x10\x01"))  # reserved field 2 too
    assert (cmd.id, cmd.method, cmd.params) == (7, "subscribe", {"channel": "news"})


def test_a_repeated_message_field_merges() -> None:
    """Two occurrences of one request field merge, as every Protobuf parser does."""
    first = protobuf.encode_message("Command", {"id": 1, "subscribe": {"channel": "a"}})
    second = protobuf.encode_message("Command", {"subscribe": {"token": "t", "channel": "b"}})
    [cmd] = protobuf.decode_commands(frame(first + second))
    assert cmd.params == {"channel": "b", "token": "t"}


# --- strictness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty frame"),
        (b"\x80", "truncated varint"),
        (b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\xff" * 9 + b"\x7f", "varint overflows 64 bits"),
        (b"\x80\x80\x80\x08", "a 16 MB length claim"),
        (b"\x05\x08\x01\x22\x10\x0a", "nested length beyond its message"),
        (b"\x02\x0a\x00", "id sent as bytes"),
        (b"\x02\x20\x01", "connect sent as a varint"),
        (b"\x01\x0b", "group start wire type"),
        (b"\x01\x0f", "wire type 7"),
        (b"\x02\x00\x00", "field number 0"),
        (b"\x06\x08\x80\x80\x80\x80\x10", "id beyond uint32"),
        (b"\x02\x08\x05", "unknown command with an id"),
        (b"\x05\x2a\x03\x0a\x01\xff", "invalid UTF-8 channel"),
        (b"\x03\xa0\x01\x80", "unknown field with a truncated value"),
    ],
)
def test_malformed_input_is_a_bad_request(data: bytes, why: str) -> None:
    """Each malformed frame is refused with 3501, never another exception."""
    assert refused(data).detail, why


def test_history_limit_must_fit_int32() -> None:
    """A sign-extended varint beyond int32 in an int32 field is refused."""
    history = b"\x38" + protobuf._uvarint(2**40)
    refused(frame(b"\x08\x01\x52" + protobuf._uvarint(len(history)) + history))


def test_text_frames_are_refused() -> None:
    """A text message on a Protobuf connection is a bad request."""
    with pytest.raises(ProtocolError):
        protobuf.decode_commands("{}")


def test_nesting_is_bounded() -> None:
    """A filter tree nested beyond MAX_DEPTH is refused; a shallow one decodes."""

    def tree(depth: int) -> bytes:
        node = protobuf.encode_message("FilterNode", {"key": "k"})
        for _ in range(depth):
            node = b"\x0a\x03and\x32" + protobuf._uvarint(len(node)) + node
        return node

    def subscribe(depth: int) -> bytes:
        sub = b"\x0a\x01c\x6a" + protobuf._uvarint(len(tree(depth))) + tree(depth)
        return frame(b"\x08\x01\x2a" + protobuf._uvarint(len(sub)) + sub)

    ok = protobuf.decode_commands(subscribe(8))
    assert ok[0].params["tf"]["nodes"][0]["op"] == "and"
    refused(subscribe(protobuf.MAX_DEPTH))
    refused(subscribe(5000))


def test_each_refusal_is_a_fresh_exception() -> None:
    """Errors are never a shared instance."""
    assert refused(b"\x80") is not refused(b"\x80")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    """Any byte string decodes or raises ProtocolError: nothing else escapes."""
    try:
        protobuf.decode_commands(data)
    except ProtocolError:
        pass
    for name in ("Command", "Reply", "EmulationRequest"):
        try:
            protobuf.decode_message(name, data)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(message("Command"), st.data())
def test_mutated_commands_raise_only_protocol_errors(
    cmd: dict[str, Any], data: st.DataObject
) -> None:
    """Valid commands with a byte flipped or cut short decode or raise ProtocolError."""
    raw = bytearray(command(cmd))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            protobuf.decode_commands(candidate)
        except ProtocolError:
            pass


# --- round trips ----------------------------------------------------------------------------


any_message = st.sampled_from(MESSAGE_NAMES).flatmap(lambda n: st.tuples(st.just(n), message(n)))


@settings(max_examples=300, deadline=None)
@given(any_message)
def test_every_message_type_round_trips(named: tuple[str, dict[str, Any]]) -> None:
    """encode_message then decode_message gives back every present field, for every type."""
    name, value = named
    assert protobuf.decode_message(name, protobuf.encode_message(name, value)) == value


publications = st.builds(
    Publication,
    data=st.binary(max_size=40),
    info=st.none()
    | st.builds(
        ClientInfo,
        user=st.text(max_size=8),
        client=st.text(max_size=8),
        conn_info=st.none() | st.binary(max_size=8),
        chan_info=st.none() | st.binary(max_size=8),
    ),
    offset=st.integers(0, 2**64 - 1),
    tags=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@given(channel=st.text(max_size=20), pub=publications, uni=st.booleans())
def test_publication_fast_path_matches_the_generic_encoder(
    channel: str, pub: Publication, uni: bool
) -> None:
    """The hot-path publication encoder writes exactly what the generic one does."""
    fast = protobuf.encode_publication_push(channel, pub, uni=uni)
    assert fast == protobuf.encode_push(channel, "pub", pub.to_wire(), uni=uni)


@given(
    channel=st.text(max_size=20),
    kind=st.sampled_from(["join", "leave"]),
    info=st.builds(
        ClientInfo,
        user=st.text(max_size=8),
        client=st.text(max_size=8),
        conn_info=st.none() | st.binary(max_size=8),
        chan_info=st.none() | st.binary(max_size=8),
    ),
    uni=st.booleans(),
)
def test_join_leave_fast_path_matches_the_generic_encoder(
    channel: str, kind: str, info: ClientInfo, uni: bool
) -> None:
    """The join/leave fan-out encoder writes exactly what the generic one does."""
    fast = protobuf.encode_join_leave_push(channel, kind, info, uni=uni)
    assert fast == protobuf.encode_push(channel, kind, {"info": info.to_wire()}, uni=uni)


def _replies(data: bytes) -> list[dict[str, Any]]:
    out, pos = [], 0
    while pos < len(data):
        length, pos = protobuf._varint(data, pos, len(data))
        out.append(protobuf.decode_message("Reply", data[pos : pos + length]))
        pos += length
    return out


def test_replies_and_pushes_carry_the_json_codecs_values() -> None:
    """Each encoder takes the JSON codec's arguments and keeps every field."""
    pub = Publication(b'{"x":1}', ClientInfo("u", "c", b'{"a":1}'), offset=4, tags={"t": "1"})
    batch = protobuf.join(
        [
            protobuf.encode_reply(1, "connect", {"client": "id", "ping": 25, "pong": True}),
            protobuf.encode_reply(2, "subscribe", {"publications": [pub.to_wire()], "epoch": "e"}),
            protobuf.encode_reply(3, "publish", {}),
            protobuf.encode_error(4, Error.PERMISSION_DENIED),
            protobuf.encode_error(5, Error.INTERNAL),
            protobuf.encode_publication_push("ch", pub),
            protobuf.encode_unsubscribe("ch", Unsubscribe.INSUFFICIENT_STATE),
            protobuf.encode_disconnect(Disconnect.SHUTDOWN),
            protobuf.PING,
        ]
    )
    wire_pub = {"data": b'{"x":1}', "info": {"user": "u", "client": "c", "conn_info": b'{"a":1}'}}
    wire_pub |= {"offset": 4, "tags": {"t": "1"}}
    assert _replies(batch) == [
        {"id": 1, "connect": {"client": "id", "ping": 25, "pong": True}},
        {"id": 2, "subscribe": {"publications": [wire_pub], "epoch": "e"}},
        {"id": 3, "publish": {}},
        {"id": 4, "error": {"code": 103, "message": "permission denied"}},
        {"id": 5, "error": {"code": 100, "message": "internal server error", "temporary": True}},
        {"push": {"channel": "ch", "pub": wire_pub}},
        {"push": {"channel": "ch", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}},
        {"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}},
        {},
    ]


def test_unidirectional_pushes_are_bare() -> None:
    """With ``uni`` the Push is sent without the Reply around it."""
    data = protobuf.encode_push("", "refresh", {"expires": True, "ttl": 60}, uni=True)
    assert protobuf.decode_message("Push", data[1:]) == {"refresh": {"expires": True, "ttl": 60}}


def test_emulation_request() -> None:
    """The Protobuf ``/emulation`` body gives node, session and the delimited commands."""
    inner = command({"id": 2, "subscribe": {"channel": "a"}})
    body = protobuf.encode_message("EmulationRequest", {"node": "n", "session": "s", "data": inner})
    node, session, data = protobuf.decode_emulation_request(body)
    assert (node, session) == ("n", "s")
    assert protobuf.decode_commands(data)[0].params == {"channel": "a"}


# --- bytes on the way to JSON clients -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": [1, 2]}', b'{"a": [1, 2]}'),
        (b'{\n  "a": 1\n}\n', b'{  "a": 1}'),
        (b"42", b"42"),
        (b"\x00\x01binary", None),
        (b"", None),
        (b'{"a":', None),
    ],
)
def test_json_payload(data: bytes, expected: bytes | None) -> None:
    """Raw newlines are dropped; anything that is not then JSON cannot go to JSON clients."""
    assert protobuf.json_payload(data) == expected


def test_encoding_a_field_the_schema_lacks_is_a_programming_error() -> None:
    """A result key with no Protobuf field fails loudly in tests instead of vanishing."""
    with pytest.raises(ValueError, match="bogus"):
        protobuf.encode_reply(1, "publish", {"bogus": 1})


def _peak(data: bytes) -> int:
    tracemalloc.start()
    try:
        protobuf.decode_commands(data)
    except ProtocolError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_memory_stays_proportional_to_the_frame() -> None:
    """Length claims are not trusted, and dense frames cost a bounded factor of their size."""
    claim = b"\xff\xff\xff\x07" + b"\x08\x01"  # a 16 MB message announced, 2 bytes sent
    assert _peak(claim) < 64 * 1024
    size = 60000
    nodes = b"\x6a" + protobuf._uvarint(size) + b"\x32\x00" * (size // 2)
    dense = [
        frame(b"\x08\x01\x2a" + protobuf._uvarint(len(nodes)) + nodes),  # 30k empty filter nodes
        b"\x00" * size,  # 60k pongs: one Command each, as "{}\n" * 20k is in JSON
    ]
    for data in dense:
        assert _peak(data) < 200 * len(data)
