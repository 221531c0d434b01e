"""GRPC API fixtures: a real ``twistd -n rtserver`` serving the GRPC API, and stubs for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_support import GRPCServer, grpc_overrides
from harness import free_port, run_server

from rtserver.grpcapi.proto import api_pb2_grpc

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start a server process are ``interop`` tests."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if HERE in Path(str(item.path)).resolve().parents and "grpc_server" in fixtures:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="module", params=["grpcio", "h2"])
def grpc_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GRPCServer]:
    """``twistd -n rtserver`` with ``grpc_api`` on a free loopback port.

    Served by each ``grpc_api.server`` in turn: grpcio's, then the HTTP/2 server on the
    reactor.
    """
    port, key = free_port(), "grpc-" + uuid.uuid4().hex
    overrides = grpc_overrides(port, key, server=request.param)
    with run_server(tmp_path_factory.mktemp("grpc"), overrides) as server:
        yield GRPCServer(server, f"127.0.0.1:{port}", key)


@pytest.fixture
def stub(grpc_server: GRPCServer) -> Iterator[api_pb2_grpc.CentrifugoApiStub]:
    """A ``CentrifugoApi`` stub generated from the schema, on a fresh channel."""
    with grpc_server.channel() as channel:
        yield api_pb2_grpc.CentrifugoApiStub(channel)
