"""``grpc_metadata``: a uni_grpc client's call metadata reaches the proxies that list it.

As in Centrifugo, a proxy forwards the keys of a GRPC client's metadata listed in its
``grpc_metadata`` (HTTP proxies as headers, GRPC proxies as metadata); ``http_headers``
forward nothing of it (a uni_grpc client has no HTTP headers). First the adapters' pure
header and metadata builders, then ``twistd -n rtserver`` with uni_grpc, a connect proxy
to the HTTP backend process and a refresh proxy to a grpcio backend, and a grpcio
consumer sending metadata.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_backend import GRPCBackend
from harness import Server, free_port, run_server
from proxy_support import Backend

from rtserver.config import ProxyConfig, ProxyGRPCConfig, ProxyHTTPConfig
from rtserver.core.proxy import ConnectProxyRequest
from rtserver.grpcapi.proto import unistream_pb2 as pb
from rtserver.grpcapi.proto import unistream_pb2_grpc
from rtserver.grpcapi.unistream import call_metadata
from rtserver.proxy.grpc import metadata
from rtserver.proxy.http import request_headers

pytestmark = pytest.mark.timeout(60)

COMMON: dict[str, Any] = {"client": "c1", "transport": "uni_grpc", "protocol": "protobuf"}
TRACE = b"\x00\xfftrace\r\n"  # a binary value: bytes no header could hold as they are


def uni_request(**grpc_metadata: str | bytes) -> ConnectProxyRequest:
    """A connect request of a uni_grpc client whose call carried ``grpc_metadata``."""
    return ConnectProxyRequest(**COMMON, grpc_metadata=grpc_metadata,
                               emulated_headers={"x-token": "emulated"})


# --- the adapters ----------------------------------------------------------------------


def test_call_metadata_lower_cases_joins_repeats_and_drops_pseudo_headers() -> None:
    got = call_metadata([("X-Token", "a"), ("x-token", "b"), (":authority", "h"),
                         ("x-trace-bin", b"\x01"), ("x-trace-bin", TRACE)])
    assert got == {"x-token": "a, b", "x-trace-bin": TRACE}


def test_http_proxy_gets_listed_keys_as_headers_only() -> None:
    """Listed keys (any case in the config) become headers; ``-bin`` values base64.

    The metadata value wins over the emulated one and the static one; ``http_headers``
    do not pick up metadata.
    """
    cfg = ProxyConfig(grpc_metadata=["X-Token", "x-trace-bin"], http_headers=["x-other"],
                      emulated_headers=["x-token"],
                      http=ProxyHTTPConfig(static_headers={"X-Token": "static"}))
    request = uni_request(**{"x-token": "meta", "x-trace-bin": TRACE, "x-other": "no",
                             "x-unlisted": "no"})
    headers = dict(request_headers(cfg, request).getAllRawHeaders())
    assert headers == {
        b"X-Token": [b"meta"],
        b"X-Trace-Bin": [base64.b64encode(TRACE)],
        b"Content-Type": [b"application/json"],
    }


def test_grpc_proxy_gets_listed_keys_as_metadata_before_the_credentials() -> None:
    cfg = ProxyConfig(endpoint="grpc://b:1", grpc_metadata=["x-token", "x-trace-bin", "x-key"],
                      http_headers=["x-other"],
                      grpc=ProxyGRPCConfig(static_metadata={"x-token": "static"},
                                           credentials_key="x-key", credentials_value="secret"))
    request = uni_request(**{"x-token": "meta", "x-trace-bin": TRACE, "x-key": "forged",
                             "x-other": "no", "x-unlisted": "no"})
    assert dict(metadata(cfg, request)) == {
        "x-token": "meta", "x-trace-bin": TRACE, "x-key": "secret",
    }


def test_without_grpc_metadata_nothing_is_forwarded() -> None:
    """The default (``[]``), as in Centrifugo: no key of the call leaves rtserver."""
    request = uni_request(**{"x-token": "meta", "cookie": "session=x"})
    assert dict(metadata(ProxyConfig(http_headers=["cookie"]), request)) == {}
    headers = request_headers(ProxyConfig(http_headers=["cookie"]), request)
    assert dict(headers.getAllRawHeaders()) == {b"Content-Type": [b"application/json"]}


# --- end to end ------------------------------------------------------------------------


class UniProxied:
    """A server with uni_grpc, its HTTP connect backend and its grpcio refresh backend."""

    def __init__(self, server: Server, target: str, http: Backend, grpc: GRPCBackend) -> None:
        self.server = server
        self.target = target
        self.http = http
        self.grpc = grpc


@pytest.fixture(scope="module")
def uni(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UniProxied]:
    grpc_backend = GRPCBackend(free_port())
    port = free_port()
    listed = ["X-Session", "x-trace-bin", "cookie"]
    overrides = {
        "uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": port},
        "client": {"proxy": {
            "connect": {"enabled": True, "endpoint": f"{backend.url}/connect",
                        "timeout": "2s", "grpc_metadata": listed,
                        "http_headers": ["x-forwarded-for"]},
            "refresh": {"enabled": True, "endpoint": f"grpc://127.0.0.1:{grpc_backend.port}",
                        "timeout": "2s", "grpc_metadata": listed,
                        "http_headers": ["x-forwarded-for"]},
        }},
    }
    try:
        with run_server(tmp_path_factory.mktemp("uni-grpc-metadata"), overrides) as server:
            yield UniProxied(server, f"127.0.0.1:{port}", backend, grpc_backend)
    finally:
        grpc_backend.stop()


def wait_for(found: Callable[[], list[Any]], seconds: float = 10.0) -> list[Any]:
    """``found()`` once it is not empty, polled for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (got := found()):
        assert time.monotonic() < deadline, "nothing arrived"
        time.sleep(0.05)
    return got


@pytest.mark.interop
def test_listed_metadata_reaches_http_and_grpc_proxies(uni: UniProxied) -> None:
    """The connect (HTTP) and refresh (GRPC) proxies see the listed keys only.

    The HTTP backend's session comes from ``x-session`` metadata (a user ``short*``
    expires in 2 s, so the refresh proxy is called while the stream is open);
    ``x-forwarded-for`` is in ``http_headers`` but not in ``grpc_metadata``, so it
    stays behind, as does the unlisted ``x-private``.
    """
    uni.http.reset()
    sent = (("x-session", "short-ann"), ("x-trace-bin", TRACE),
            ("x-forwarded-for", "10.0.0.9"), ("x-private", "hidden"))
    with grpc.insecure_channel(uni.target) as channel:
        stub = unistream_pb2_grpc.CentrifugoUniStreamStub(channel)
        call = stub.Consume(pb.ConnectRequest(), metadata=sent, timeout=20)
        try:
            first = next(iter(call))
            assert first.HasField("connect"), first
            refreshes = wait_for(
                lambda: [md for method, _, md in uni.grpc.calls if method == "Refresh"])
        finally:
            call.cancel()
    (connect,) = uni.http.requests("connect")
    assert connect["body"]["transport"] == "uni_grpc"
    assert connect["headers"]["x-session"] == "short-ann"
    assert connect["headers"]["x-trace-bin"] == base64.b64encode(TRACE).decode()
    assert not {"x-forwarded-for", "x-private", "cookie"} & set(connect["headers"])
    md = refreshes[0]
    assert (md["x-session"], md["x-trace-bin"]) == ("short-ann", TRACE)
    assert not {"x-forwarded-for", "x-private", "cookie"} & set(md)
    (_, request, _) = next(c for c in uni.grpc.calls if c[0] == "Refresh")
    assert (request.user, request.transport) == ("short-ann", "uni_grpc")


@pytest.mark.interop
def test_a_client_without_the_listed_key_is_refused_by_the_backend(uni: UniProxied) -> None:
    """Without ``x-session`` the backend sees no session: its 4501 disconnect ends the stream."""
    uni.http.reset()
    with grpc.insecure_channel(uni.target) as channel:
        stub = unistream_pb2_grpc.CentrifugoUniStreamStub(channel)
        call = stub.Consume(pb.ConnectRequest(), metadata=(("x-other", "short-ann"),),
                            timeout=20)
        pushes = list(call)
    assert [p.disconnect.code for p in pushes] == [4501]
    (connect,) = uni.http.requests("connect")
    assert "x-other" not in connect["headers"]
