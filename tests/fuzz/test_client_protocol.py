"""Property-based fuzz of the JSON client protocol (a Client on a Clock, memory engine).

Whatever a connection sends (arbitrary bytes, arbitrary JSON, or well-formed commands
whose fields have random types and values, tokens included), the properties hold:

* no exception escapes ``Client.receive`` or the reactor turn that follows;
* nothing is logged at error level or above, and no traceback is logged;
* every command with an id gets exactly one reply, unless the connection closed, and
  then with a documented disconnect code (the ``Disconnect`` table of
  docs/client-protocol.rst);
* the node stays consistent: the client's subscriptions are exactly the hub's, none is
  left half-open, and once the connection is gone the hub, presence and the node's
  client registry are empty again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from fuzzkit import FUZZ, watch_log
from hypothesis import given
from hypothesis import strategies as st

from rtserver.core.subscription import SubState
from rtserver.protocol.codes import Disconnect
from rtserver.protocol.frames import METHODS
from rtserver.testing import RecordingSink, make_node

# hypothesis' failure report imports a deprecated mypy_extensions name
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions:DeprecationWarning")

SECRET = "fuzz-secret-" + "x" * 32
HISTORY = {"history_size": 5, "history_ttl": "60s"}
SETTINGS: dict[str, Any] = {
    "client": {
        "token": {"hmac_secret_key": SECRET},
        "subscription_token": {"enabled": True, "hmac_secret_key": SECRET},
        "allow_anonymous_connect_without_token": True,
        "channel_limit": 4,
    },
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "allow_publish_for_client": True,
            "presence": True,
            "join_leave": True,
            "allow_presence_for_subscriber": True,
            "allow_history_for_subscriber": True,
            **HISTORY,
        },
        "namespaces": [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
                "allow_history_for_client": True,
                "allow_presence_for_client": True,
                "presence": True,
                "force_recovery": True,
                "allow_positioning": True,
                **HISTORY,
            },
            {"name": "dm", "allow_user_limited_channels": True},
            {"name": "ro"},
        ],
    },
}

#: Every code the server may close a client connection with.
DOCUMENTED_CLOSE = {
    getattr(Disconnect, name).code
    for name in dir(Disconnect)
    if name.isupper() and isinstance(getattr(Disconnect, name), Disconnect)
}
assert {3000, 3500, 3501, 3504} <= DOCUMENTED_CLOSE

# --- strategies -------------------------------------------------------------------------

#: Integers at and past every bound a field or claim may have (int32, uint32, 2^53,
#: int64, uint64 and beyond), half of the time, else any integer up to 2^70.
EDGES = [
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
    -(2**63),
    -(2**63) - 1,
    -(10**30),
]
big_ints = st.one_of(st.sampled_from(EDGES), st.integers(min_value=-(2**70), max_value=2**70))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
channels = st.one_of(
    st.sampled_from(
        [
            "a",
            "b",
            "chat:1",
            "chat:2",
            "dm:x#u1",
            "dm:x#u1,u2",
            "ro:1",
            "$private",
            "nope:1",
            "",
            "a" * 300,
            "a\x00b",
            "chat:",
            ":a",
            "#",
            "a#b",
        ]
    ),
    st.text(max_size=10),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(claims: dict[str, Any]) -> str:
    """An HS256 JWT of ``claims`` as given (PyJWT's encoder refuses odd claim types)."""
    signing = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(claims).encode())
    mac = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + _b64(mac)


@st.composite
def tokens(draw: st.DrawFn, subscription: bool = False) -> Any:
    """A token value: garbage, anonymous, valid, expired, or signed random claims."""
    kind = draw(st.sampled_from(["valid", "expired", "claims", "claims", "garbage", "empty"]))
    now = 1_000_000_000  # the Clock is advanced to this time before each example
    if kind == "empty":
        return ""
    if kind == "garbage":
        return draw(st.one_of(st.text(max_size=20), json_values))
    claims: dict[str, Any] = {"sub": draw(st.sampled_from(["u1", "u2", ""]))}
    if subscription:
        claims["channel"] = draw(channels)
    if kind == "expired":
        claims["exp"] = 1
    elif kind == "claims":
        for name in draw(
            st.lists(
                st.sampled_from(
                    [
                        "sub",
                        "exp",
                        "iat",
                        "nbf",
                        "info",
                        "b64info",
                        "channels",
                        "subs",
                        "meta",
                        "expire_at",
                        "channel",
                        "override",
                        "client",
                        "aud",
                        "iss",
                    ]
                ),
                max_size=5,
                unique=True,
            )
        ):
            numeric = name in ("exp", "iat", "nbf", "expire_at")
            claims[name] = draw(st.one_of(big_ints, json_values) if numeric else json_values)
    else:
        claims["exp"] = now * 3
    return token(claims)


def field_value(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes anything."""
    return st.one_of(right, right, json_values)


FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "connect": {
        "token": tokens(),
        "data": json_values,
        "name": st.text(max_size=8),
        "version": st.text(max_size=8),
        "headers": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        "subs": st.dictionaries(
            channels,
            st.fixed_dictionaries(
                {},
                optional={
                    "recover": st.booleans(),
                    "offset": big_ints,
                    "epoch": st.text(max_size=4),
                },
            ),
            max_size=2,
        ),
    },
    "subscribe": {
        "channel": channels,
        "token": tokens(subscription=True),
        "recover": st.booleans(),
        "epoch": st.text(max_size=6),
        "offset": big_ints,
        "data": json_values,
        "positioned": st.booleans(),
        "recoverable": st.booleans(),
        "join_leave": st.booleans(),
        "flag": big_ints,
        "delta": st.sampled_from(["", "fossil", "zstd"]),
    },
    "unsubscribe": {"channel": channels},
    "publish": {"channel": channels, "data": json_values},
    "presence": {"channel": channels},
    "presence_stats": {"channel": channels},
    "history": {
        "channel": channels,
        "limit": big_ints,
        "since": st.fixed_dictionaries(
            {}, optional={"offset": big_ints, "epoch": st.text(max_size=6)}
        ),
        "reverse": st.booleans(),
    },
    "ping": {},
    "send": {"data": json_values},
    "rpc": {"method": st.text(max_size=6), "data": json_values},
    "refresh": {"token": tokens()},
    "sub_refresh": {"channel": channels, "token": tokens(subscription=True)},
}


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    """One structurally valid command whose fields have random types and values."""
    method = draw(st.sampled_from(METHODS))
    fields = FIELDS[method]
    names = draw(st.lists(st.sampled_from(sorted(fields) or ["x"]), unique=True, max_size=6))
    params = {name: draw(field_value(fields[name])) for name in names if name in fields}
    cmd_id = draw(st.one_of(st.integers(1, 50), st.integers(1, 50), st.just(0), big_ints))
    cmd: dict[str, Any] = {method: params}
    if cmd_id != 0 or draw(st.booleans()):
        cmd["id"] = cmd_id
    return cmd


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """Frames of a connection: usually a connect first, then commands in frames."""
    cmds = draw(st.lists(commands(), min_size=1, max_size=12))
    if draw(st.integers(0, 3)):
        connect = {"token": draw(tokens())} if draw(st.booleans()) else {}
        cmds.insert(0, {"id": 1, "connect": connect})
    frames: list[bytes] = []
    while cmds:
        n = draw(st.integers(1, 4))
        chunk, cmds = cmds[:n], cmds[n:]
        frames.append(b"\n".join(json.dumps(c).encode() for c in chunk))
    return frames


# --- the properties ---------------------------------------------------------------------


def command_ids(frame: bytes) -> list[int]:
    """Ids of the commands of a frame that a server must answer (as far as decodable)."""
    ids = []
    for line in frame.split(b"\n"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            cmd_id = obj.get("id")
            if type(cmd_id) is int and cmd_id > 0 and any(m in obj for m in METHODS):
                ids.append(cmd_id)
    return ids


def run(frames: list[bytes]) -> None:
    node, clock = make_node(SETTINGS)
    clock.advance(1_000_000_000)  # tokens carry real-world times
    sink = RecordingSink()
    with watch_log() as log:
        client = node.make_client(sink)
        for frame in frames:
            client.receive(frame)
            for _ in range(3):
                clock.advance(0)
        clock.advance(0.001)
        assert log.bad == [], log.lines()

        replies: dict[int, int] = {}
        for message in sink.messages():
            if isinstance(message, dict) and message.get("id"):
                replies[message["id"]] = replies.get(message["id"], 0) + 1
        if sink.closed:
            closed = sink.closed_with
            assert closed is not None and closed.code in DOCUMENTED_CLOSE, closed
            assert client.closed
        else:
            expected: dict[int, int] = {}
            for frame in frames:
                for cmd_id in command_ids(frame):
                    expected[cmd_id] = expected.get(cmd_id, 0) + 1
            assert replies == expected, (replies, expected, sink.messages())

        # the client's subscriptions are the hub's, each one fully established
        mine = set(client.channels())
        hub = {ch for ch, _ in node.hub.channels()}
        assert mine == hub, (mine, hub)
        for channel in mine:
            subs = node.hub.subscribers(channel)
            assert [c for c, _ in subs] == [client]
            assert all(s.state is SubState.LIVE for _, s in subs)
        if client.closed:
            assert mine == set()

        client.transport_lost()
        clock.advance(0)
        assert node.hub.num_clients == 0
        assert node.hub.num_channels == 0 and node.hub.num_subscriptions == 0
        for channel in hub:
            assert node.engine.presence(channel).result == {}
        assert log.bad == [], log.lines()


numeric_claim = st.one_of(
    big_ints, big_ints, st.sampled_from([1e300, -1e300, 1.9e19, 2.5e9]), st.floats(), scalars
)
OTHER_CLAIMS: dict[str, st.SearchStrategy[Any]] = {
    "sub": scalars,
    "info": json_values,
    "b64info": st.one_of(st.text(max_size=8), json_values),
    "channels": st.one_of(st.lists(channels, max_size=3), json_values),
    "subs": st.one_of(
        st.dictionaries(
            channels,
            st.dictionaries(
                st.sampled_from(["info", "b64info", "data", "b64data", "override"]),
                json_values,
                max_size=3,
            ),
            max_size=2,
        ),
        json_values,
    ),
    "meta": json_values,
    "aud": json_values,
    "iss": json_values,
}


@st.composite
def claim_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A valid user, one numeric claim of any value, and up to two other random claims."""
    claims: dict[str, Any] = {"sub": "u1"}
    claims[draw(st.sampled_from(["exp", "nbf", "iat", "expire_at"]))] = draw(numeric_claim)
    for name in draw(st.lists(st.sampled_from(sorted(OTHER_CLAIMS)), max_size=2, unique=True)):
        claims[name] = draw(OTHER_CLAIMS[name])
    return claims


AFTER_CONNECT = [
    b'{"id":2,"subscribe":{"channel":"chat:1"}}',
    b'{"id":3,"publish":{"channel":"chat:1","data":{"x":1}}}\n{"id":4,"presence":{"channel":"chat:1"}}',
    b'{"id":5,"refresh":{"token":"x"}}',
]


@FUZZ
@given(claim_sets())
def test_connection_token_claims(claims: dict[str, Any]) -> None:
    """A correctly signed connection token with random claims, then ordinary commands."""
    run([json.dumps({"id": 1, "connect": {"token": token(claims)}}).encode(), *AFTER_CONNECT])


@FUZZ
@given(claim_sets(), channels)
def test_subscription_token_claims(claims: dict[str, Any], channel: str) -> None:
    """A connected client subscribes with a signed subscription token of random claims."""
    claims.setdefault("channel", channel)
    sub = {"id": 2, "subscribe": {"channel": channel, "token": token(claims)}}
    run([b'{"id":1,"connect":{}}', json.dumps(sub).encode(), *AFTER_CONNECT[1:]])


@FUZZ
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_arbitrary_bytes(frames: list[bytes]) -> None:
    """Random bytes: closed with a documented code or answered; never a traceback."""
    run(frames)


@FUZZ
@given(st.lists(json_values.map(lambda v: json.dumps(v).encode()), min_size=1, max_size=4))
def test_arbitrary_json(frames: list[bytes]) -> None:
    """Random JSON values as frames."""
    run(frames)


@FUZZ
@given(sessions())
def test_commands_with_random_fields(frames: list[bytes]) -> None:
    """Well-formed commands with fields of random types and values, tokens included."""
    run(frames)


# --- regressions found by the fuzz ------------------------------------------------------


@pytest.mark.parametrize("exp", [2**64, 10**30, 1e300])
def test_connection_token_exp_out_of_range_is_invalid_token(exp: float) -> None:
    """A signed token whose exp does not fit 64 bits: disconnect 3500, nothing logged.

    It used to pass verification, then fail to encode the connect reply (error 100 and
    a critical traceback) and leave the connection connected.
    """
    node, clock = make_node(SETTINGS)
    clock.advance(1_000_000_000)
    sink = RecordingSink()
    with watch_log() as log:
        client = node.make_client(sink)
        client.receive(json.dumps({"id": 1, "connect": {"token": token({"sub": "u", "exp": exp})}}))
        clock.advance(0)
    assert sink.closed_with == Disconnect.INVALID_TOKEN
    assert not client.connected and node.hub.num_clients == 0
    assert log.bad == [], log.lines()
