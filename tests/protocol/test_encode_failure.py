"""A reply that cannot be encoded closes the connection with 3004, cleanly.

The JWT verifier bounds every integer claim, but the token port (``ITokenVerifier``) is
pluggable: a verifier that returns an ``expire_at`` beyond 64 bits makes the ``ttl`` of
the reply unencodable. Before, the client got error 100 (or nothing), a traceback went
to the log, and the connection stayed connected (or subscribed) without its reply.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from zope.interface import implementer

from rtserver.core.ports import ITokenVerifier
from rtserver.core.types import ConnectionToken, SubscriptionToken
from rtserver.protocol import codec
from rtserver.protocol.codes import Disconnect, Error
from rtserver.testing import RecordingSink, make_node

HUGE = 2**70


@implementer(ITokenVerifier)
class HugeExpiry:
    """Tokens named ``huge`` expire beyond 64 bits; any other token is plain user ``u``."""

    def verify_connection_token(self, token: str, now: float) -> ConnectionToken:
        return ConnectionToken(user="u", expire_at=HUGE if token == "huge" else 0)

    def verify_subscription_token(self, token: str, now: float) -> SubscriptionToken:
        return SubscriptionToken(user="u", channel="c", expire_at=HUGE if token == "huge" else 0)


SETTINGS = {"channel": {"without_namespace": {"allow_subscribe_for_client": True}}}


class Conn:
    def __init__(self) -> None:
        self.node, self.clock = make_node(SETTINGS, verifier=HugeExpiry())
        self.clock.advance(1_700_000_000)
        self.sink = RecordingSink()
        self.client = self.node.make_client(self.sink)

    def send(self, command: dict[str, Any]) -> None:
        self.client.receive(orjson.dumps(command))
        self.clock.advance(0)

    def assert_closed_3004(self) -> None:
        assert self.sink.closed_with == Disconnect.SERVER_ERROR
        assert self.client.closed
        assert self.client.channels() == []
        assert self.node.hub.clients() == []


@pytest.fixture
def conn() -> Any:
    c = Conn()
    yield c
    c.node.stop()
    c.clock.advance(0)


def test_unencodable_connect_reply_closes_3004(conn: Conn) -> None:
    conn.send({"id": 1, "connect": {"token": "huge"}})
    assert conn.sink.replies() == []
    conn.assert_closed_3004()


def test_unencodable_subscribe_reply_closes_3004(conn: Conn) -> None:
    conn.send({"id": 1, "connect": {"token": "ok"}})
    conn.send({"id": 2, "subscribe": {"channel": "c", "token": "huge"}})
    assert [r["id"] for r in conn.sink.replies()] == [1]
    conn.assert_closed_3004()


def test_unencodable_refresh_reply_closes_3004(conn: Conn) -> None:
    conn.send({"id": 1, "connect": {"token": "ok"}})
    conn.send({"id": 2, "refresh": {"token": "huge"}})
    assert [r["id"] for r in conn.sink.replies()] == [1]
    conn.assert_closed_3004()


def test_unencodable_unidirectional_connect_closes_3004() -> None:
    node, clock = make_node(SETTINGS, verifier=HugeExpiry())
    sink = RecordingSink(unidirectional=True)
    client = node.make_client(sink)
    client.start_unidirectional(b'{"token":"huge"}')
    clock.advance(0)
    assert sink.batches == []
    assert sink.closed_with == Disconnect.SERVER_ERROR
    assert node.hub.clients() == []
    node.stop()
    clock.advance(0)


@pytest.mark.parametrize(
    "encode",
    [
        lambda: codec.encode_reply(1, "connect", {"ttl": HUGE}),
        lambda: codec.encode_push("c", "pub", {"offset": HUGE}),
        lambda: codec.encode_error(1, Error(HUGE, "x")),
    ],
)
def test_encoders_raise_a_3004_disconnect(encode: Any) -> None:
    with pytest.raises(codec.EncodeError) as caught:
        encode()
    assert caught.value == Disconnect.SERVER_ERROR
    assert "64-bit" in caught.value.detail
