"""GRPC proxies over TLS, with per-call credentials and gzip compression.

The adapter against grpcio backends (server CA, mutual TLS, ``server_name``), the
configuration keys, then twistd end to end with the Python SDK.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from centrifuge import Client, ReplyError
from grpc_backend import GRPCBackend
from harness import Server, free_port, make_certificate, run_server
from pysdk import bounded, run_scenario
from redisserver import TLSFiles, make_tls
from twisted.internet import reactor

from rtserver import config
from rtserver.config import ClientTLSConfig, ProxyConfig, ProxyGRPCConfig
from rtserver.core.proxy import (
    ConnectProxyRequest,
    Proxies,
    ProxyEntry,
    ProxyFailure,
    PublishProxyRequest,
    RPCProxyRequest,
)
from rtserver.proxy.grpc import GRPCProxy

pytestmark = pytest.mark.timeout(60)

COMMON: dict[str, Any] = {"client": "c1", "transport": "websocket", "protocol": "json"}
SECRET = "s3cr3t-credential-value-7f1c"


@dataclass(frozen=True)
class Certs:
    good: TLSFiles  # the backend's CA, server and client certificates
    other: TLSFiles  # another CA of the same name (a client certificate it signed)
    stranger: Path  # a self-signed certificate: not the backend's CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    stranger, _, _ = make_certificate(tmp_path_factory.mktemp("stranger"))
    return Certs(make_tls(tmp_path_factory.mktemp("good")),
                 make_tls(tmp_path_factory.mktemp("other")), stranger)


def tls_backend(certs: Certs, *, mutual: bool = False, **kw: Any) -> GRPCBackend:
    good = certs.good
    return GRPCBackend(
        free_port(), tls=(good.cert.read_bytes(), good.key.read_bytes()),
        client_ca=good.ca_cert.read_bytes() if mutual else None, **kw,
    )


def proxy_to(backend: GRPCBackend, **grpc: Any) -> GRPCProxy:
    tls = grpc.pop("tls", None)
    settings = ProxyGRPCConfig(tls=ClientTLSConfig(**tls) if tls else ClientTLSConfig(), **grpc)
    cfg = ProxyConfig(endpoint=f"grpc://127.0.0.1:{backend.port}", http_headers=["Cookie"],
                      grpc=settings)
    return GRPCProxy("g", cfg, reactor=reactor)


async def call(proxy: GRPCProxy, method: str, request: Any) -> Any:
    try:
        entry = ProxyEntry("g", proxy, 5.0)
        return await Proxies().call(entry, getattr(proxy, method)(request), reactor)
    finally:
        await proxy.close()


def connect(cookie: str = "session=zoe") -> ConnectProxyRequest:
    return ConnectProxyRequest(**COMMON, headers={"cookie": cookie})


@pytest.fixture
def backend(certs: Certs) -> Iterator[GRPCBackend]:
    b = tls_backend(certs)
    yield b
    b.stop()


@pytest.fixture
def mutual_backend(certs: Certs) -> Iterator[GRPCBackend]:
    b = tls_backend(certs, mutual=True)
    yield b
    b.stop()


# --- the adapter ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tls_verified_with_the_backend_ca(certs: Certs, backend: GRPCBackend) -> None:
    proxy = proxy_to(backend, tls={"enabled": True, "server_ca_pem": str(certs.good.ca_cert)})
    result = await call(proxy, "connect", connect())
    assert result.user == "zoe"
    assert backend.peers == [""]  # no client certificate was asked for


@pytest_twisted.ensureDeferred
async def test_pem_text_works_like_a_file(certs: Certs, backend: GRPCBackend) -> None:
    ca = certs.good.ca_cert.read_text()
    result = await call(proxy_to(backend, tls={"enabled": True, "server_ca_pem": ca}),
                        "connect", connect())
    assert result.user == "zoe"


@pytest_twisted.ensureDeferred
async def test_wrong_ca_fails_like_an_unreachable_backend(
    certs: Certs, backend: GRPCBackend
) -> None:
    reasons = []
    for ca in (certs.stranger, certs.other.ca_cert):  # unknown issuer; same name, other key
        proxy = proxy_to(backend, tls={"enabled": True, "server_ca_pem": str(ca)})
        with pytest.raises(ProxyFailure, match=r"GRPC UNAVAILABLE: .* Tls handshake failed") as e:
            await call(proxy, "connect", connect())
        reasons.append(str(e.value))
    assert "CERTIFICATE_VERIFY_FAILED" in reasons[0] and "BAD_SIGNATURE" in reasons[1]
    assert backend.calls == []


@pytest_twisted.ensureDeferred
async def test_plaintext_to_a_tls_backend_fails(backend: GRPCBackend) -> None:
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(proxy_to(backend), "connect", connect())
    assert backend.calls == []


@pytest_twisted.ensureDeferred
async def test_server_name_is_the_name_checked(certs: Certs, backend: GRPCBackend) -> None:
    """The certificate names localhost and 127.0.0.1; the endpoint is 127.0.0.1."""
    ca = str(certs.good.ca_cert)
    named = proxy_to(backend, tls={"enabled": True, "server_ca_pem": ca, "server_name": "localhost"})
    assert (await call(named, "connect", connect())).user == "zoe"
    other = proxy_to(backend, tls={"enabled": True, "server_ca_pem": ca,
                                   "server_name": "billing.example"})
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(other, "connect", connect())
    assert len(backend.calls) == 1


@pytest_twisted.ensureDeferred
async def test_mutual_tls(certs: Certs, mutual_backend: GRPCBackend) -> None:
    good = certs.good
    anonymous = proxy_to(mutual_backend, tls={"enabled": True, "server_ca_pem": str(good.ca_cert)})
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(anonymous, "connect", connect())
    assert mutual_backend.calls == []
    wrong = certs.other  # a client certificate of a CA the backend does not trust
    stranger = proxy_to(mutual_backend, tls={
        "enabled": True, "server_ca_pem": str(good.ca_cert),
        "cert_pem": str(wrong.client_cert), "key_pem": str(wrong.client_key),
    })
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(stranger, "connect", connect())
    assert mutual_backend.calls == []
    known = proxy_to(mutual_backend, tls={
        "enabled": True, "server_ca_pem": str(good.ca_cert),
        "cert_pem": str(good.client_cert), "key_pem": str(good.client_key),
    })
    assert (await call(known, "connect", connect())).user == "zoe"
    assert mutual_backend.peers == ["rtserver test client"]


@pytest_twisted.ensureDeferred
async def test_credentials_travel_with_every_call(certs: Certs, backend: GRPCBackend) -> None:
    proxy = proxy_to(backend, tls={"enabled": True, "server_ca_pem": str(certs.good.ca_cert)},
                     credentials_key="X-Backend-Key", credentials_value=SECRET)
    entry = ProxyEntry("g", proxy, 5.0)
    try:
        await Proxies().call(entry, proxy.connect(connect()), reactor)
        await Proxies().call(entry, proxy.rpc(RPCProxyRequest(**COMMON, method="whoami")), reactor)
    finally:
        await proxy.close()
    assert [(m, md["x-backend-key"]) for m, _, md in backend.calls] == [
        ("Connect", SECRET), ("RPC", SECRET)
    ]


@pytest_twisted.ensureDeferred
async def test_credentials_without_tls_and_not_spoofable() -> None:
    """Centrifugo sends them over plaintext too; a forwarded header of that name loses."""
    plain = GRPCBackend(free_port())
    try:
        proxy = proxy_to(plain, credentials_key="cookie", credentials_value="session=backend")
        result = await call(proxy, "connect", connect("session=mallory"))
    finally:
        plain.stop()
    assert result.user == "backend"
    ((_, _, md),) = plain.calls
    assert md["cookie"] == "session=backend"


@pytest_twisted.ensureDeferred
async def test_compression_is_seen_by_the_backend(certs: Certs) -> None:
    """A backend with gzip switched off refuses gzip-encoded requests, and only those."""
    identity_only = tls_backend(certs, options=(("grpc.compression_enabled_algorithms_bitset", 1),))
    tls = {"enabled": True, "server_ca_pem": str(certs.good.ca_cert)}
    try:
        with pytest.raises(ProxyFailure, match="GRPC UNIMPLEMENTED: Compression algorithm 'gzip'"):
            await call(proxy_to(identity_only, tls=tls, compression=True), "connect", connect())
        assert identity_only.calls == []
        result = await call(proxy_to(identity_only, tls=tls), "connect", connect())
    finally:
        identity_only.stop()
    assert result.user == "zoe"


# --- insecure_skip_verify: the TLS relay ---------------------------------------------------


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """Warnings logged by rtserver's modules during the test, formatted."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_skip_verify_accepts_any_certificate(
    certs: Certs, backend: GRPCBackend
) -> None:
    """No CA given (the system's roots do not know the test CA): verification is off."""
    proxy = proxy_to(backend, tls={"enabled": True, "insecure_skip_verify": True},
                     credentials_key="x-backend-key", credentials_value=SECRET, compression=True)
    directory = Path(proxy._relay.path).parent if proxy._relay else None
    assert directory is not None and directory.stat().st_mode & 0o777 == 0o700
    assert Path(proxy._relay.path).stat().st_mode & 0o777 == 0o600  # type: ignore[union-attr]
    result = await call(proxy, "connect", connect())
    assert result.user == "zoe"
    ((_, _, md),) = backend.calls
    assert md["x-backend-key"] == SECRET
    assert not directory.exists()  # closed with the proxy


@pytest_twisted.ensureDeferred
async def test_skip_verify_relays_concurrent_large_calls(backend: GRPCBackend) -> None:
    """30 concurrent 1 MiB publishes in and out through the relay, intact."""
    from twisted.internet.defer import gatherResults

    proxy = proxy_to(backend, tls={"enabled": True, "insecure_skip_verify": True})
    entry = ProxyEntry("g", proxy, 20.0)
    texts = [f"{i:02d}" + "x" * (1 << 20) for i in range(30)]
    try:
        results = await gatherResults([
            Proxies().call(entry, proxy.publish(PublishProxyRequest(
                **COMMON, user="u", channel="c", data=orjson.dumps({"text": text}),
            )), reactor)
            for text in texts
        ])
    finally:
        await proxy.close()
    assert [orjson.loads(r.data)["text"] for r in results] == [t.upper() for t in texts]


@pytest_twisted.ensureDeferred
async def test_skip_verify_with_mutual_tls(
    certs: Certs, mutual_backend: GRPCBackend, warnings_logged: list[str]
) -> None:
    anonymous = proxy_to(mutual_backend, tls={"enabled": True, "insecure_skip_verify": True})
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(anonymous, "connect", connect())
    assert mutual_backend.calls == []
    assert any(line.startswith(f"proxy g: TLS to 127.0.0.1:{mutual_backend.port} failed: ")
               for line in warnings_logged), warnings_logged
    good = certs.good
    known = proxy_to(mutual_backend, tls={
        "enabled": True, "insecure_skip_verify": True,
        "cert_pem": str(good.client_cert), "key_pem": str(good.client_key),
    })
    assert (await call(known, "connect", connect())).user == "zoe"
    assert mutual_backend.peers == ["rtserver test client"]


@pytest_twisted.ensureDeferred
async def test_skip_verify_to_a_plaintext_backend_fails(warnings_logged: list[str]) -> None:
    plain = GRPCBackend(free_port())
    try:
        proxy = proxy_to(plain, tls={"enabled": True, "insecure_skip_verify": True})
        with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
            await call(proxy, "connect", connect())
    finally:
        plain.stop()
    assert plain.calls == []
    assert any("TLS to 127.0.0.1" in line for line in warnings_logged), warnings_logged


@pytest_twisted.ensureDeferred
async def test_skip_verify_to_a_closed_port_fails(warnings_logged: list[str]) -> None:
    closed = GRPCBackend(free_port())
    closed.stop()
    proxy = proxy_to(closed, tls={"enabled": True, "insecure_skip_verify": True})
    with pytest.raises(ProxyFailure, match="GRPC UNAVAILABLE"):
        await call(proxy, "connect", connect())
    assert any(line.startswith(f"proxy g: cannot connect to 127.0.0.1:{closed.port}: ")
               for line in warnings_logged), warnings_logged


# --- configuration -------------------------------------------------------------------------


def grpc_proxy(grpc: dict[str, Any]) -> dict[str, Any]:
    return {"proxies": [{"name": "g", "endpoint": "grpc://backend:9000", "grpc": grpc}]}


def test_centrifugo_keys_load(certs: Certs) -> None:
    tls = {"enabled": True, "server_ca_pem": str(certs.good.ca_cert), "server_name": "b",
           "cert_pem": str(certs.good.client_cert), "key_pem": str(certs.good.client_key)}
    cfg = config.from_mapping(grpc_proxy({"tls": tls, "credentials_key": "authorization",
                                          "credentials_value": SECRET, "compression": True}))
    (proxy,) = cfg.proxies
    assert proxy.grpc.tls == ClientTLSConfig(**tls)
    assert (proxy.grpc.credentials_key, proxy.grpc.credentials_value) == ("authorization", SECRET)
    assert proxy.grpc.compression
    assert SECRET not in repr(cfg)


def test_environment_sets_the_grpc_keys() -> None:
    env = {"RTSERVER_CLIENT_PROXY_CONNECT_ENABLED": "true",
           "RTSERVER_CLIENT_PROXY_CONNECT_ENDPOINT": "grpc://app:9000",
           "RTSERVER_CLIENT_PROXY_CONNECT_GRPC_CREDENTIALS_KEY": "x-key",
           "RTSERVER_CLIENT_PROXY_CONNECT_GRPC_CREDENTIALS_VALUE": SECRET,
           "RTSERVER_CLIENT_PROXY_CONNECT_GRPC_COMPRESSION": "true"}
    cfg, _ = config.load(environ=env)
    grpc = cfg.client.proxy.connect.grpc
    assert (grpc.credentials_key, grpc.credentials_value, grpc.compression) == (
        "x-key", SECRET, True
    )


@pytest.mark.parametrize(
    ("grpc", "message"),
    [
        ({"tls": {"enabled": True, "cert_pem": "/nonexistent.pem"}},
         "proxies[0].grpc.tls: cert_pem and key_pem go together"),
        ({"tls": {"enabled": True, "server_ca_pem": "/nonexistent.pem"}},
         "proxies[0].grpc.tls.server_ca_pem: neither PEM text"),
        ({"credentials_key": "x key", "credentials_value": SECRET},
         "proxies[0].grpc.credentials_key: 'x key' is not a GRPC metadata key"),
        ({"credentials_key": "grpc-timeout", "credentials_value": SECRET},
         "is not a GRPC metadata key"),
        ({"credentials_key": "x-bin", "credentials_value": SECRET}, "'-bin') keys"),
        ({"credentials_key": "x", "credentials_value": SECRET + "\n"}, "only printable ASCII"),
        ({"credentials_value": SECRET}, "credentials_value: set without credentials_key"),
        ({"credentials_key": "x", "credentials_value": 123456789},
         "credentials_value: expected a string, got a value of type int"),
    ],
)
def test_invalid_grpc_settings_name_the_key_never_the_secret(
    grpc: dict[str, Any], message: str
) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping(grpc_proxy(grpc))
    assert message in str(err.value)
    assert SECRET not in str(err.value) and "123456789" not in str(err.value)


def test_tls_of_an_http_proxy_endpoint_is_not_checked() -> None:
    """``grpc`` applies to grpc:// endpoints only, as in Centrifugo."""
    data = {"proxies": [{"name": "h", "endpoint": "http://b/",
                         "grpc": {"tls": {"enabled": True, "cert_pem": "/nonexistent.pem"}}}]}
    assert config.from_mapping(data).proxies[0].grpc.tls.cert_pem == "/nonexistent.pem"


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: Certs
) -> Iterator[tuple[Server, GRPCBackend]]:
    backend = tls_backend(certs, mutual=True)
    endpoint = f"grpc://127.0.0.1:{backend.port}"
    good = certs.good
    grpc = {
        "tls": {"enabled": True, "server_ca_pem": str(good.ca_cert),
                "cert_pem": str(good.client_cert), "key_pem": str(good.client_key)},
        "credentials_key": "x-backend-key", "credentials_value": SECRET, "compression": True,
    }
    wrong_ca = {**grpc, "tls": {**grpc["tls"], "server_ca_pem": str(certs.stranger)}}
    unverified = {**grpc, "tls": {"enabled": True, "insecure_skip_verify": True,
                                  "cert_pem": str(good.client_cert),
                                  "key_pem": str(good.client_key)}}
    overrides = {
        "log": {"level": "debug"},
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": endpoint,
                                         "http_headers": ["Cookie"], "grpc": grpc}}},
        "proxies": [
            {"name": "good", "endpoint": endpoint, "grpc": grpc},
            {"name": "wrongca", "endpoint": endpoint, "grpc": wrong_ca},
            {"name": "unverified", "endpoint": endpoint, "grpc": unverified},
        ],
        "channel": {"namespaces": [{"name": "proxied"}]},  # the backend's connect subs
        "rpc": {"without_namespace": {"proxy_enabled": True, "proxy_name": "good"},
                "namespaces": [
                    {"name": "wrong", "proxy_enabled": True, "proxy_name": "wrongca"},
                    {"name": "skip", "proxy_enabled": True, "proxy_name": "unverified"},
                ]},
    }
    try:
        with run_server(tmp_path_factory.mktemp("rtserver-grpc-tls"), overrides) as server:
            yield server, backend
    finally:
        backend.stop()
    log = server.log_path.read_text()  # the whole log, shutdown included, at debug level
    assert "GRPC UNAVAILABLE" in log and SECRET not in log
    (relay,) = re.findall(r"starting on '(/[^']*/relay\.sock)'", log)
    assert not Path(relay).parent.exists()  # the relay's directory went with the server


@pytest.mark.interop
def test_python_sdk_through_tls_proxies(tls_server: tuple[Server, GRPCBackend]) -> None:
    server, backend = tls_server

    async def scenario() -> None:
        client = Client(server.ws_url, headers={"Cookie": "session=kim"}, proxy=None)
        try:
            await client.connect()
            seen = (await bounded(client.rpc("whoami", {}))).data
            assert (seen["user"], seen["transport"]) == ("kim", "websocket")
            unverified = (await bounded(client.rpc("skip:whoami", {}))).data
            assert unverified["user"] == "kim"
            with pytest.raises(ReplyError) as err:
                await bounded(client.rpc("wrong:whoami", {}))
            assert (err.value.code, err.value.message) == (100, "internal server error")
        finally:
            await client.disconnect()

    run_scenario(scenario())
    assert [(m, md.get("x-backend-key"), md.get("cookie")) for m, _, md in backend.calls] == [
        ("Connect", SECRET, "session=kim"), ("RPC", SECRET, None), ("RPC", SECRET, None)
    ]
    assert set(backend.peers) == {"rtserver test client"}
    failed = [line for line in server.log(tail=10**9).splitlines() if "wrong:whoami" in line
              or "proxy wrongca" in line]
    assert any("GRPC UNAVAILABLE" in line and "CERTIFICATE_VERIFY_FAILED" in line
               for line in failed), failed
