"""``grpc.static_metadata`` of GRPC proxies (Centrifugo v6.5.2+) and what a backend sees.

The adapter against a grpcio backend (every call carries the pairs; a forwarded header,
then the credentials, replace a key), the configuration keys, then twistd end to end with
the Python SDK over JSON and Protobuf (the ``protocol`` field is the client's encoding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import pytest_twisted
from centrifuge import Client
from grpc_backend import GRPCBackend
from harness import Server, free_port, run_server
from pysdk import bounded, run_scenario
from twisted.internet import reactor

from rtserver import config
from rtserver.config import ProxyConfig, ProxyGRPCConfig
from rtserver.core.proxy import ConnectProxyRequest, Proxies, ProxyEntry, RPCProxyRequest
from rtserver.proxy.grpc import GRPCProxy

pytestmark = pytest.mark.timeout(60)

COMMON: dict[str, Any] = {"client": "c1", "transport": "websocket", "protocol": "json"}
SECRET = "static-secret-value-91d2"


@pytest.fixture
def backend() -> Iterator[GRPCBackend]:
    b = GRPCBackend(free_port())
    yield b
    b.stop()


async def calls(backend: GRPCBackend, requests: list[tuple[str, Any]], **grpc: Any) -> list[Any]:
    """Make ``(method, request)`` calls through one proxy with ``grpc`` settings."""
    cfg = ProxyConfig(endpoint=f"grpc://127.0.0.1:{backend.port}", http_headers=["Cookie"],
                      emulated_headers=["X-Token"], grpc=ProxyGRPCConfig(**grpc))
    proxy = GRPCProxy("g", cfg, reactor=reactor)
    entry = ProxyEntry("g", proxy, 5.0)
    try:
        return [await Proxies().call(entry, getattr(proxy, method)(request), reactor)
                for method, request in requests]
    finally:
        await proxy.close()


@pytest_twisted.ensureDeferred
async def test_static_metadata_travels_with_every_call(backend: GRPCBackend) -> None:
    """Keys are lower-cased as Centrifugo sends them; a '-bin' key carries the bytes."""
    static = {"X-Tenant": "acme", "authorization": f"Bearer {SECRET}", "x-trace-bin": "\x00é"}
    connect = ConnectProxyRequest(**COMMON, headers={"cookie": "session=zoe"})
    rpc = RPCProxyRequest(**COMMON, method="whoami")
    await calls(backend, [("connect", connect), ("rpc", rpc)], static_metadata=static)
    assert [(m, md["x-tenant"], md["authorization"], md["x-trace-bin"])
            for m, _, md in backend.calls] == [
        ("Connect", "acme", f"Bearer {SECRET}", "\x00é".encode()),
        ("RPC", "acme", f"Bearer {SECRET}", "\x00é".encode()),
    ]
    assert "X-Tenant" not in backend.calls[0][2]


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_then_credentials_replace_a_static_key(
    backend: GRPCBackend,
) -> None:
    """Centrifugo's order: static first, emulated and transport headers over it.

    The credentials (a fixed per-call pair) come last: neither a client nor the table
    hides them.
    """
    static = {"cookie": "session=guest", "x-token": "static", "x-key": "static"}
    requests = [
        ("connect", ConnectProxyRequest(**COMMON)),
        ("connect", ConnectProxyRequest(**COMMON, headers={"cookie": "session=zoe"},
                                        emulated_headers={"x-token": "client"})),
        ("connect", ConnectProxyRequest(**COMMON, headers={"x-key": "client"})),
    ]
    results = await calls(backend, requests, static_metadata=static,
                          credentials_key="x-key", credentials_value=SECRET)
    assert [r.user for r in results] == ["guest", "zoe", "guest"]
    assert [(md["cookie"], md["x-token"], md["x-key"]) for _, _, md in backend.calls] == [
        ("session=guest", "static", SECRET),
        ("session=zoe", "client", SECRET),
        ("session=guest", "static", SECRET),
    ]


# --- configuration ---------------------------------------------------------------------------


def grpc_proxy(grpc: dict[str, Any], endpoint: str = "grpc://backend:9000") -> dict[str, Any]:
    return {"proxies": [{"name": "g", "endpoint": endpoint, "grpc": grpc}]}


def test_centrifugo_key_loads_without_warnings(tmp_path: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(orjson.dumps({
        "http_api": {"key": "k"},
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": "grpc://app:9000",
                                         "grpc": {"static_metadata": {"X-Tenant": "acme"}}}}},
    }).decode())
    cfg, warnings = config.load(path, environ={})
    assert warnings == []
    assert cfg.client.proxy.connect.grpc.static_metadata == {"X-Tenant": "acme"}


def test_environment_sets_static_metadata_as_json() -> None:
    env = {"CENTRIFUGO_RPC_PROXY_ENDPOINT": "grpc://app:9000",
           "CENTRIFUGO_RPC_PROXY_GRPC_STATIC_METADATA": '{"x-tenant": "acme"}'}
    cfg, _ = config.load(environ=env)
    assert cfg.rpc.proxy.grpc.static_metadata == {"x-tenant": "acme"}


def test_values_stay_out_of_repr() -> None:
    cfg = config.from_mapping(grpc_proxy({"static_metadata": {"authorization": SECRET}}))
    assert cfg.proxies[0].grpc.static_metadata == {"authorization": SECRET}
    assert SECRET not in repr(cfg)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"x key": SECRET}, "proxies[0].grpc.static_metadata: 'x key' is not a GRPC metadata key"),
        ({"grpc-timeout": SECRET}, "'grpc-timeout' is not a GRPC metadata key"),
        ({"User-Agent": SECRET}, "'User-Agent' is reserved (GRPC or HTTP/2 sets it)"),
        ({"te": SECRET}, "'te' is reserved"),
        ({"connection": SECRET}, "'connection' is reserved"),
        ({"X-A": SECRET, "x-a": SECRET}, "'X-A' and 'x-a' are the same key"),
        ({"x-a": SECRET + "\n"},
         "proxies[0].grpc.static_metadata.x-a: only printable ASCII characters (or a '-bin' key)"),
        ({"x-a": SECRET + "é"}, "only printable ASCII"),
        ({"x-a": 123456789}, "proxies[0].grpc.static_metadata: expected an object of strings"),
        (["x-a"], "expected an object of strings"),
    ],
)
def test_invalid_static_metadata_names_the_key_never_the_value(
    metadata: Any, message: str
) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping(grpc_proxy({"static_metadata": metadata}))
    assert message in str(err.value)
    assert SECRET not in str(err.value) and "123456789" not in str(err.value)


def test_reserved_credentials_key_is_refused_too() -> None:
    """GRPC (grpcio, grpc-go) drops such a key silently: the backend would never see it."""
    with pytest.raises(config.ConfigError, match=r"credentials_key: 'user-agent' is reserved"):
        config.from_mapping(grpc_proxy({"credentials_key": "user-agent",
                                        "credentials_value": SECRET}))


def test_static_metadata_of_an_http_endpoint_is_not_checked() -> None:
    """``grpc`` applies to grpc:// endpoints only, as in Centrifugo."""
    cfg = config.from_mapping(grpc_proxy({"static_metadata": {"x y": "é"}}, "http://b/"))
    assert cfg.proxies[0].grpc.static_metadata == {"x y": "é"}


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, GRPCBackend]]:
    backend = GRPCBackend(free_port())
    endpoint = f"grpc://127.0.0.1:{backend.port}"
    grpc = {"static_metadata": {"Cookie": "session=guest", "X-Tenant": "acme"}}
    overrides = {
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": endpoint,
                                         "http_headers": ["Cookie"], "grpc": grpc}}},
        "proxies": [{"name": "g", "endpoint": endpoint, "grpc": grpc}],
        "channel": {"namespaces": [{"name": "proxied"}]},  # the backend's connect subs
        "rpc": {"without_namespace": {"proxy_enabled": True, "proxy_name": "g"}},
    }
    try:
        with run_server(tmp_path_factory.mktemp("rtserver-grpc-static"), overrides) as server:
            yield server, backend
    finally:
        backend.stop()


@pytest.mark.interop
def test_python_sdk_with_static_metadata(static_server: tuple[Server, GRPCBackend]) -> None:
    """A client without a cookie is the static cookie's user; a client's own cookie wins.

    The RPC proxy (no ``http_headers``) sees the static pairs only; ``protocol`` is the
    client's encoding.
    """
    server, backend = static_server

    async def scenario() -> dict[str, Any]:
        guest = Client(server.ws_url, proxy=None)
        kim = Client(server.ws_url, headers={"Cookie": "session=kim"}, proxy=None,
                     use_protobuf=True)
        seen: dict[str, Any] = {}
        try:
            await guest.connect()
            await kim.connect()
            seen["guest"] = (await bounded(guest.rpc("whoami", {}))).data
            seen["kim"] = orjson.loads((await bounded(kim.rpc("whoami", b"{}"))).data)
        finally:
            await guest.disconnect()
            await kim.disconnect()
        return seen

    seen = run_scenario(scenario())
    assert [(s["user"], s["protocol"], s["cookie"]) for s in (seen["guest"], seen["kim"])] == [
        ("guest", "json", "session=guest"), ("kim", "protobuf", "session=guest")
    ]
    assert sorted((m, md["cookie"], md["x-tenant"]) for m, _, md in backend.calls) == [
        ("Connect", "session=guest", "acme"), ("Connect", "session=kim", "acme"),
        ("RPC", "session=guest", "acme"), ("RPC", "session=guest", "acme"),
    ]
