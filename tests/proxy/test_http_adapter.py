"""The HTTP adapter in-process against the real backend process: bodies, headers, faults.

The calls run on the real reactor (pytest-twisted) through ``Proxies.call`` exactly as a
client makes them; after every test the pool is closed and no socket or timer is left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import pytest_twisted
from proxy_support import Backend
from twisted.internet import reactor

from rtserver.config import ProxyConfig, ProxyHTTPConfig
from rtserver.core.proxy import (
    ConnectProxyRequest,
    Proxies,
    ProxyEntry,
    ProxyFailure,
    PublishProxyRequest,
    RPCProxyRequest,
    SubscribeProxyRequest,
)
from rtserver.protocol.codes import Disconnect, Error
from rtserver.proxy.http import HTTPProxy, make_pool

pytestmark = pytest.mark.timeout(30)

COMMON: dict[str, Any] = {"client": "c1", "transport": "websocket", "protocol": "json"}


class Calls:
    """HTTP proxies of one test on one pool, called like the client calls them."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.pool = make_pool(reactor)
        self.proxies = Proxies()

    def entry(self, kind: str, timeout: float = 0.5, **config: Any) -> ProxyEntry:
        cfg = ProxyConfig(endpoint=f"{self.backend.url}/{kind}", timeout=timeout, **config)
        return ProxyEntry(kind, HTTPProxy(kind, cfg, reactor=reactor, pool=self.pool), timeout)

    async def call(self, entry: ProxyEntry, method: str, request: Any) -> Any:
        d = getattr(entry.backend, method)(request)
        return await self.proxies.call(entry, d, reactor)


def _open_sockets() -> int:
    """TCP connections the reactor watches (wakers and listening ports excluded)."""
    from twisted.internet.tcp import Connection

    watched = {*reactor.getReaders(), *reactor.getWriters()}
    return sum(isinstance(w, Connection) for w in watched)


@pytest.fixture
def sockets_before() -> Iterator[int]:
    yield _open_sockets()


@pytest_twisted.async_yield_fixture
async def calls(fresh_backend: Backend, sockets_before: int) -> AsyncIterator[Calls]:
    c = Calls(fresh_backend)
    yield c
    await c.pool.closeCachedConnections()
    # closing is asynchronous for the transports: give the reactor a turn or two
    from twisted.internet.task import deferLater

    for _ in range(20):
        if _open_sockets() <= sockets_before:
            break
        await deferLater(reactor, 0.01)
    assert _open_sockets() <= sockets_before, "a proxy connection was left open"


@pytest_twisted.ensureDeferred
async def test_connect_body_headers_and_result(calls: Calls) -> None:
    entry = calls.entry(
        "connect",
        http_headers=["cookie"],
        emulated_headers=["X-Session"],
        http=ProxyHTTPConfig(static_headers={"X-Static": "s", "Cookie": "overridden"}),
    )
    request = ConnectProxyRequest(
        **COMMON,
        headers={"Cookie": "session=alice", "Authorization": "secret"},
        emulated_headers={"X-Session": "ignored-when-cookie", "X-Other": "no"},
        name="js",
        data=b'{"hello":1}',
    )
    result = await calls.call(entry, "connect", request)
    assert (result.user, result.info, result.data) == (
        "alice", b'{"name":"Alice"}', b'{"welcome":"alice"}'
    )
    assert result.meta == b'{"session":"alice"}'
    (seen,) = calls.backend.requests("connect")
    assert seen["body"] == {
        "client": "c1", "transport": "websocket", "protocol": "json", "encoding": "json",
        "name": "js", "data": {"hello": 1},
    }
    headers = seen["headers"]
    assert headers["cookie"] == "session=alice"  # the transport header wins over static
    assert headers["x-static"] == "s" and headers["x-session"] == "ignored-when-cookie"
    assert "authorization" not in headers and "x-other" not in headers
    assert headers["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_backend_disconnect_and_error_become_protocol_values(calls: Calls) -> None:
    with pytest.raises(Disconnect) as disconnect:
        await calls.call(calls.entry("connect"), "connect", ConnectProxyRequest(**COMMON))
    assert disconnect.value == Disconnect(4501, "unauthorized")
    sub = SubscribeProxyRequest(**COMMON, user="u", channel="proxied:other")
    with pytest.raises(Error) as error:
        await calls.call(calls.entry("subscribe"), "subscribe", sub)
    assert error.value == Error(1403, "not a member")


@pytest_twisted.ensureDeferred
async def test_binary_mode_sends_b64data(calls: Calls) -> None:
    entry = calls.entry("rpc", binary_encoding=True)
    entry = ProxyEntry("rpc", entry.backend, 0.5, binary=True)
    request = RPCProxyRequest(**COMMON, encoding=entry.encoding, method="whoami", data=b"\x00\xff")
    result = await calls.call(entry, "rpc", request)
    (seen,) = calls.backend.requests("rpc")
    assert seen["body"]["b64data"] == "AP8=" and seen["body"]["encoding"] == "binary"
    assert orjson.loads(result.data)["encoding"] == "binary"


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_one_connection(calls: Calls) -> None:
    entry = calls.entry("publish")
    for i in range(5):
        request = PublishProxyRequest(**COMMON, user="u", channel="c", data=b'{"text":"a"}')
        result = await calls.call(entry, "publish", request)
        assert orjson.loads(result.data) == {"text": "A", "by": "u"}, i
    ports = {r["port"] for r in calls.backend.requests("publish")}
    assert len(calls.backend.requests("publish")) == 5 and len(ports) == 1


ALL_FIELDS: dict[str, Any] = {
    "tags": {"kind": "a", "by": "u"},
    "idempotency_key": "k-1",
    "delta": True,
    "skip_history": True,
    "version": 2**64 - 1,
    "version_epoch": "e1",
}


@pytest_twisted.ensureDeferred
async def test_publish_result_fields_of_centrifugo_v6(calls: Calls) -> None:
    entry = calls.entry("publish")
    data = orjson.dumps({"text": "a", "ask": ALL_FIELDS})
    result = await calls.call(
        entry, "publish", PublishProxyRequest(**COMMON, user="u", channel="c", data=data)
    )
    assert orjson.loads(result.data) == {"text": "A", "by": "u"}
    assert (result.tags, result.idempotency_key, result.delta, result.skip_history) == (
        {"kind": "a", "by": "u"}, "k-1", True, True
    )
    assert (result.version, result.version_epoch) == (2**64 - 1, "e1")
    nulls = {key: None for key in ALL_FIELDS}
    data = orjson.dumps({"text": "a", "ask": nulls})
    cleared = await calls.call(
        entry, "publish", PublishProxyRequest(**COMMON, user="u", channel="c", data=data)
    )
    assert (cleared.tags, cleared.idempotency_key, cleared.version) == ({}, "", 0)
    plain = await calls.call(
        entry, "publish", PublishProxyRequest(**COMMON, user="u", channel="c", data=b'{"text":"b"}')
    )
    assert (plain.tags, plain.idempotency_key, plain.delta, plain.version) == ({}, "", False, 0)


@pytest.mark.parametrize(
    ("ask", "reason"),
    [
        ({"tags": ["kind", "a"]}, "tags must be an object"),
        ({"tags": {"n": 1}}, "tags must map strings to strings"),
        ({"idempotency_key": 7}, "idempotency_key must be a string"),
        ({"delta": "yes"}, "delta must be true or false"),
        ({"version": -1}, r"version must be an integer in \[0, 18446744073709551615\]"),
        ({"version": 1.5}, "version must be an integer"),
        ({"version_epoch": {}}, "version_epoch must be a string"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_publish_result_fields_of_the_wrong_type_fail_the_call(
    calls: Calls, ask: dict[str, Any], reason: str
) -> None:
    request = PublishProxyRequest(
        **COMMON, user="u", channel="c", data=orjson.dumps({"text": "a", "ask": ask})
    )
    with pytest.raises(ProxyFailure, match=reason):
        await calls.call(calls.entry("publish"), "publish", request)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("sleep", "no answer within 0.3s"),
        ("garbage", "invalid JSON in response"),
        ("status", "unexpected HTTP status 503"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_faults_fail_the_call_with_a_reason(calls: Calls, mode: str, reason: str) -> None:
    calls.backend.mode(mode)
    entry = calls.entry("rpc", timeout=0.3)
    with pytest.raises(ProxyFailure, match=reason):
        await calls.call(entry, "rpc", RPCProxyRequest(**COMMON, method="whoami"))
    calls.backend.mode("ok")
    result = await calls.call(entry, "rpc", RPCProxyRequest(**COMMON, method="whoami"))
    assert orjson.loads(result.data)["client"] == "c1"  # the pool recovers


@pytest_twisted.ensureDeferred
async def test_a_stopped_backend_fails_fast_and_a_restarted_one_answers(calls: Calls) -> None:
    entry = calls.entry("rpc")
    await calls.call(entry, "rpc", RPCProxyRequest(**COMMON, method="whoami"))
    calls.backend.stop()
    with pytest.raises(ProxyFailure, match="request failed: Connection"):
        await calls.call(entry, "rpc", RPCProxyRequest(**COMMON, method="whoami"))
    calls.backend.start()
    result = await calls.call(entry, "rpc", RPCProxyRequest(**COMMON, method="whoami"))
    assert orjson.loads(result.data)["client"] == "c1"


@pytest_twisted.ensureDeferred
async def test_an_oversized_answer_fails_and_closes_its_connection(calls: Calls) -> None:
    proxy = HTTPProxy(
        "rpc",
        ProxyConfig(endpoint=f"{calls.backend.url}/rpc"),
        reactor=reactor,
        pool=calls.pool,
        max_response_bytes=10,
    )
    entry = ProxyEntry("rpc", proxy, 0.5)
    with pytest.raises(ProxyFailure, match="too large"):
        await calls.call(entry, "rpc", RPCProxyRequest(**COMMON, method="whoami"))
