"""Server API input limits: integer ranges, JSON depth and channel names answer 107.

Requests go through the API resource (JSON body in, response body out) on a
Clock-driven node with the memory engine.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred

from rtserver.api.executor import APIExecutor
from rtserver.config import HTTPAPIConfig
from rtserver.protocol.fields import MAX_JSON_DEPTH
from rtserver.testing import make_node
from rtserver.web.api import APIResource

SETTINGS: dict[str, Any] = {
    "channel": {"namespaces": [{"name": "hist", "history_size": 10, "history_ttl": "300s"}]},
}


class API:
    def __init__(self) -> None:
        self.node, self.clock = make_node(SETTINGS)
        self.resource = APIResource(APIExecutor(self.node), HTTPAPIConfig(insecure=True))

    def call(self, method: str, body: bytes) -> tuple[int, bytes]:
        d = Deferred.fromCoroutine(self.resource.run_method(method, body, False))
        self.clock.advance(0)
        response = d.result
        return response.code, response.body


@pytest.fixture
def api() -> Any:
    a = API()
    yield a
    a.node.stop()
    a.clock.advance(0)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [255, 600, MAX_JSON_DEPTH - 1])
def test_deep_data_is_published_and_read_back_unchanged(api: API, depth: int) -> None:
    data = nested(depth)  # the body {"channel":..,"data":D} adds one level
    code, body = api.call("publish", b'{"channel":"hist:a","data":%s}' % data)
    assert code == 200 and orjson.loads(body)["result"]["offset"] == 1
    code, body = api.call("history", b'{"channel":"hist:a","limit":-1}')
    assert code == 200
    assert body.startswith(b'{"result":{"publications":[{"data":%s,"offset":1}]' % data)


def test_body_deeper_than_the_parser_limit_is_400(api: API) -> None:
    code, body = api.call("publish", b'{"channel":"hist:a","data":%s}' % nested(MAX_JSON_DEPTH))
    assert (code, body) == (400, b"bad request")


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "a\nb", "x\x1f", "\x7f"])
@pytest.mark.parametrize(
    "method, extra",
    [
        ("publish", {"data": {}}),
        ("subscribe", {"user": "u"}),
        ("unsubscribe", {"user": "u"}),
        ("presence", {}),
        ("presence_stats", {}),
        ("history", {}),
        ("history_remove", {}),
    ],
)
def test_channel_with_control_characters_is_107(
    api: API, name: str, method: str, extra: dict[str, Any]
) -> None:
    code, body = api.call(method, orjson.dumps({"channel": name, **extra}))
    assert code == 200
    assert orjson.loads(body) == {
        "error": {"code": 107, "message": "bad request: channel must not contain control characters"}
    }


def test_broadcast_refuses_each_bad_channel(api: API) -> None:
    code, body = api.call("broadcast", b'{"channels":["ok","a\\u0000b"],"data":1}')
    assert code == 200
    responses = orjson.loads(body)["result"]["responses"]
    assert responses[0] == {"result": {}}
    assert responses[1]["error"]["code"] == 107


@pytest.mark.parametrize(
    "method, body",
    [
        ("publish", b'{"channel":"a","data":1,"version":18446744073709551616}'),
        ("publish", b'{"channel":"a","data":1,"version":-1}'),
        ("subscribe", b'{"user":"u","channel":"a","expire_at":9223372036854775808}'),
        ("subscribe", b'{"user":"u","channel":"a","expire_at":-1}'),
        ("subscribe", b'{"user":"u","channel":"a","recover_since":{"offset":18446744073709551616}}'),
        ("refresh", b'{"user":"u","expire_at":18446744073709551616}'),
        ("refresh", b'{"user":"u","expire_at":1e300}'),
        ("history", b'{"channel":"hist:a","limit":2147483648}'),
        ("history", b'{"channel":"hist:a","since":{"offset":-1}}'),
        ("disconnect", b'{"user":"u","disconnect":{"code":5000,"reason":""}}'),
        ("disconnect", b'{"user":"u","disconnect":{"code":18446744073709551616}}'),
    ],
)
def test_out_of_range_integer_fields_are_107(api: API, method: str, body: bytes) -> None:
    code, response = api.call(method, body)
    assert code == 200
    error = orjson.loads(response)["error"]
    assert error["code"] == 107
    assert "must be an integer in" in error["message"]


def test_integer_fields_at_their_bounds_are_accepted(api: API) -> None:
    top64 = b"9223372036854775807"
    assert api.call("subscribe", b'{"user":"u","channel":"a","expire_at":%s}' % top64) == (
        200,
        b'{"result":{}}',
    )
    assert api.call("refresh", b'{"user":"u","expire_at":%s}' % top64)[1] == b'{"result":{}}'
    code, body = api.call("publish", b'{"channel":"a","data":1,"version":18446744073709551615}')
    assert (code, body) == (200, b'{"result":{}}')
    code, body = api.call("history", b'{"channel":"hist:a","limit":2147483647}')
    assert code == 200
    assert orjson.loads(body)["result"]["publications"] == []
