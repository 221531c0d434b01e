"""The GRPC adapter against a grpcio backend: in-process calls, then twistd end to end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import pytest_twisted
from centrifuge import Client, ReplyError
from grpc_backend import GRPCBackend
from harness import Server, free_port, run_server
from pysdk import Recorder, bounded, name, run_scenario, subscribe
from twisted.internet import reactor

from rtserver.config import ProxyConfig
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
from rtserver.proxy.grpc import GRPCProxy

pytestmark = pytest.mark.timeout(60)

COMMON: dict[str, Any] = {"client": "c1", "transport": "websocket", "protocol": "json"}


@pytest.fixture
def grpc_backend() -> Iterator[GRPCBackend]:
    b = GRPCBackend(free_port())
    yield b
    b.stop()


@pytest.fixture
def proxy(grpc_backend: GRPCBackend) -> Iterator[GRPCProxy]:
    config = ProxyConfig(endpoint=f"grpc://127.0.0.1:{grpc_backend.port}",
                         http_headers=["Cookie"], emulated_headers=["X-Token"])
    p = GRPCProxy("g", config, reactor=reactor)
    yield p
    p.close()


async def call(proxy: GRPCProxy, method: str, request: Any, timeout: float = 2.0) -> Any:
    entry = ProxyEntry("g", proxy, timeout)
    return await Proxies().call(entry, getattr(proxy, method)(request), reactor)


@pytest_twisted.ensureDeferred
async def test_connect_result_and_metadata(proxy: GRPCProxy, grpc_backend: GRPCBackend) -> None:
    request = ConnectProxyRequest(
        **COMMON, headers={"cookie": "session=zoe", "authorization": "no"},
        emulated_headers={"x-token": "t1", "x-other": "no"}, name="js", data=b'{"a":1}',
    )
    result = await call(proxy, "connect", request)
    assert (result.user, result.info, result.data, result.meta) == (
        "zoe", b'{"name": "Zoe"}', b'{"welcome":"grpc"}', b'{"m":1}'
    )
    assert result.subs["proxied:allowed-home"].info == b'{"home":true}'
    ((method, msg, md),) = grpc_backend.calls
    assert (method, msg.client, msg.name, msg.data) == ("Connect", "c1", "js", b'{"a":1}')
    assert md["cookie"] == "session=zoe" and md["x-token"] == "t1"
    assert "authorization" not in md and "x-other" not in md


@pytest_twisted.ensureDeferred
async def test_disconnect_error_and_overrides(proxy: GRPCProxy) -> None:
    with pytest.raises(Disconnect) as disconnect:
        await call(proxy, "connect", ConnectProxyRequest(**COMMON))
    assert disconnect.value == Disconnect(4501, "unauthorized")
    with pytest.raises(Error) as error:
        await call(proxy, "subscribe", SubscribeProxyRequest(**COMMON, channel="proxied:x"))
    assert error.value == Error(1403, "not a member")
    allowed = await call(
        proxy, "subscribe", SubscribeProxyRequest(**COMMON, user="u", channel="proxied:allowed")
    )
    assert allowed.override.join_leave is True and allowed.override.presence is None
    published = await call(
        proxy, "publish", PublishProxyRequest(**COMMON, user="u", channel="c", data=b'{"text":"a"}')
    )
    assert orjson.loads(published.data) == {"text": "A", "by": "u"} and published.skip_history


@pytest_twisted.ensureDeferred
async def test_publish_result_fields_of_centrifugo_v6(proxy: GRPCProxy) -> None:
    ask = {"tags": {"kind": "a"}, "idempotency_key": "k-1", "delta": True,
           "skip_history": False, "version": 2**64 - 1, "version_epoch": "e1"}
    data = orjson.dumps({"text": "a", "ask": ask})
    result = await call(proxy, "publish", PublishProxyRequest(**COMMON, channel="c", data=data))
    assert orjson.loads(result.data)["text"] == "A"
    assert (result.tags, result.idempotency_key, result.delta, result.skip_history) == (
        {"kind": "a"}, "k-1", True, False
    )
    assert (result.version, result.version_epoch) == (2**64 - 1, "e1")


@pytest_twisted.ensureDeferred
async def test_timeout_cancels_the_rpc(proxy: GRPCProxy, grpc_backend: GRPCBackend) -> None:
    with pytest.raises(ProxyFailure, match=r"no answer within 0\.3s"):
        await call(proxy, "rpc", RPCProxyRequest(**COMMON, method="sleep"), timeout=0.3)
    from twisted.internet.task import deferLater

    for _ in range(100):  # the backend notices the cancellation on its own thread
        if grpc_backend.cancelled:
            break
        await deferLater(reactor, 0.02)
    assert grpc_backend.cancelled == 1


@pytest_twisted.ensureDeferred
async def test_a_stopped_backend_is_a_failure(proxy: GRPCProxy, grpc_backend: GRPCBackend) -> None:
    grpc_backend.stop()
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(proxy, "rpc", RPCProxyRequest(**COMMON, method="whoami"))


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, GRPCBackend]]:
    backend = GRPCBackend(free_port())
    endpoint = f"grpc://127.0.0.1:{backend.port}"
    config = {
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": endpoint,
                                         "http_headers": ["Cookie"]}}},
        "proxies": [{"name": "g", "endpoint": endpoint, "http_headers": ["Cookie"]}],
        "channel": {"namespaces": [{
            "name": "proxied", "presence": True, "allow_presence_for_subscriber": True,
            "subscribe_proxy_enabled": True, "subscribe_proxy_name": "g",
            "publish_proxy_enabled": True, "publish_proxy_name": "g",
        }]},
        "rpc": {"without_namespace": {"proxy_enabled": True, "proxy_name": "g"}},
    }
    try:
        with run_server(tmp_path_factory.mktemp("rtserver-grpc"), config) as server:
            yield server, backend
    finally:
        backend.stop()


@pytest.mark.interop
def test_python_sdk_through_the_grpc_proxies(grpc_server: tuple[Server, GRPCBackend]) -> None:
    server, backend = grpc_server
    channel, forbidden = name("proxied:allowed-"), name("proxied:nope-")

    async def scenario() -> None:
        rec = Recorder()
        client = Client(server.ws_url, headers={"Cookie": "session=kim"}, proxy=None)
        peer = Client(server.ws_url, headers={"Cookie": "session=lee"}, proxy=None)
        sub, nope = subscribe(client, channel, rec), subscribe(client, forbidden, rec)
        peer_sub = subscribe(peer, channel, rec, label="peer")
        try:
            await client.connect()
            await peer.connect()
            for s in (sub, nope, peer_sub):
                await s.subscribe()
            await bounded(sub.ready())
            await bounded(peer_sub.ready())
            (refused,) = await rec.wait("unsubscribed", channel=forbidden)
            assert refused["code"] == 1403
            presence = await bounded(sub.presence())
            assert {c.chan_info["seat"] for c in presence.clients.values()} == {"kim", "lee"}
            await sub.publish({"text": "via grpc"})
            (pub,) = await rec.wait("publication", client="peer")
            assert pub["data"] == {"text": "VIA GRPC", "by": "kim"}
            seen = (await bounded(client.rpc("whoami", {}))).data
            assert (seen["user"], seen["cookie"], seen["transport"]) == (
                "kim", "session=kim", "websocket"
            )
            with pytest.raises(ReplyError) as err:
                await bounded(client.rpc("fail", {}))
            assert err.value.code == 1404
        finally:
            await client.disconnect()
            await peer.disconnect()

    run_scenario(scenario())
    assert {md["cookie"] for m, _, md in backend.calls if m == "Connect"} >= {
        "session=kim", "session=lee"
    }
