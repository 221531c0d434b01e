"""Out-of-range integer claims are invalid tokens, end to end through a real Client.

``exp``/``nbf``/``iat`` must be numbers of seconds within int64 and ``expire_at`` an
integer in [0, 2^63-1], as in Centrifugo. Before these bounds, a correctly signed token
with ``exp`` >= 2^64 made the connect reply unencodable: error 100, a traceback in the
log, and a connection left connected (and able to subscribe and publish) without a reply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest
from twisted.internet.task import Clock

from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.testing import RecordingSink, make_node

SECRET = "bounds-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
SETTINGS: dict[str, Any] = {
    "client": {"token": {"hmac_secret_key": SECRET}},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
        }
    },
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes) -> str:
    """An HS256 token over a raw JSON payload (integers of any size, as written)."""
    head = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(payload)
    sig = hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest()
    return f"{head}.{_b64url(sig)}"


class Conn:
    def __init__(self) -> None:
        self.node: Node
        self.clock: Clock
        self.node, self.clock = make_node(SETTINGS)
        self.clock.advance(time.time())
        self.sink = RecordingSink()
        self.client: Client = self.node.make_client(self.sink)

    def send(self, command: dict[str, Any]) -> None:
        self.client.receive(orjson.dumps(command))
        self.clock.advance(0)

    def close(self) -> None:
        self.node.stop()
        self.clock.advance(0)


@pytest.fixture
def conn() -> Any:
    c = Conn()
    yield c
    c.close()


OUT_OF_RANGE = [
    b'{"sub":"u","exp":18446744073709551616}',  # 2^64: orjson reads it as a float
    b'{"sub":"u","exp":9223372036854775808}',  # 2^63
    b'{"sub":"u","exp":1e300}',
    b'{"sub":"u","exp":-1e300}',
    b'{"sub":"u","nbf":18446744073709551616}',
    b'{"sub":"u","iat":18446744073709551616}',
    b'{"sub":"u","expire_at":18446744073709551616}',
    b'{"sub":"u","expire_at":9223372036854775808}',
    b'{"sub":"u","exp":4102444800,"expire_at":18446744073709551615}',
]


@pytest.mark.parametrize("payload", OUT_OF_RANGE)
def test_connect_with_out_of_range_claim_is_disconnected_3500(conn: Conn, payload: bytes) -> None:
    conn.send({"id": 1, "connect": {"token": signed(payload)}})
    assert conn.sink.closed_with is not None and conn.sink.closed_with.code == 3500
    assert conn.sink.replies() == []
    assert not conn.client.connected
    assert conn.node.hub.clients() == []


def test_connect_at_the_int64_bound_is_accepted(conn: Conn) -> None:
    """The largest accepted ``exp`` connects and gets a ``ttl`` that is a JSON integer."""
    conn.send({"id": 1, "connect": {"token": signed(b'{"sub":"u","exp":9223372036854775807}')}})
    [reply] = conn.sink.replies()
    assert reply["connect"]["expires"] is True
    # exp - now in float seconds (the core's arithmetic): within float precision of it.
    expected = 2**63 - 1 - int(conn.clock.seconds())
    assert abs(reply["connect"]["ttl"] - expected) <= 2**11
    assert conn.client.connected and conn.sink.closed_with is None


def _connected(conn: Conn) -> None:
    conn.send({"id": 1, "connect": {"token": signed(b'{"sub":"u"}')}})
    assert conn.client.connected


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"u","channel":"c","exp":18446744073709551616}',
        b'{"sub":"u","channel":"c","expire_at":18446744073709551616}',
        b'{"sub":"u","channel":"c","nbf":1e300}',
    ],
)
def test_subscription_token_out_of_range_is_permission_denied(conn: Conn, payload: bytes) -> None:
    """Subscribe with an invalid token: error 103 (as Centrifugo), not subscribed."""
    _connected(conn)
    conn.send({"id": 2, "subscribe": {"channel": "c", "token": signed(payload)}})
    errors = [r["error"]["code"] for r in conn.sink.replies() if "error" in r]
    assert errors == [103]
    assert conn.client.channels() == []
    # The connection is in a defined state: it still works.
    conn.send({"id": 3, "subscribe": {"channel": "c"}})
    assert conn.sink.replies()[-1] == {"id": 3, "subscribe": {}}


def test_sub_refresh_with_out_of_range_token_disconnects_3500(conn: Conn) -> None:
    _connected(conn)
    conn.send({"id": 2, "subscribe": {"channel": "c"}})
    bad = signed(b'{"sub":"u","channel":"c","exp":18446744073709551616}')
    conn.send({"id": 3, "sub_refresh": {"channel": "c", "token": bad}})
    assert conn.sink.closed_with is not None and conn.sink.closed_with.code == 3500


def test_refresh_with_out_of_range_token_disconnects_3500(conn: Conn) -> None:
    _connected(conn)
    bad = signed(b'{"sub":"u","exp":18446744073709551616}')
    conn.send({"id": 2, "refresh": {"token": bad}})
    assert conn.sink.closed_with is not None and conn.sink.closed_with.code == 3500
    assert [r for r in conn.sink.replies() if r["id"] == 2] == []


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"u","channels":["ok","a\\u0000b"]}',
        b'{"sub":"u","subs":{"a\\nb":{}}}',
    ],
)
def test_connection_token_channels_with_control_characters_are_invalid(
    conn: Conn, payload: bytes
) -> None:
    conn.send({"id": 1, "connect": {"token": signed(payload)}})
    assert conn.sink.closed_with is not None and conn.sink.closed_with.code == 3500
