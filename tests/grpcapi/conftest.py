"""GRPC API fixtures: a real ``twistd -n rtserver`` serving the GRPC API, and stubs for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import Server, free_port, run_server

from rtserver.grpcapi.proto import api_pb2_grpc

HERE = Path(__file__).resolve().parent
#: Bound of one GRPC call in the tests.
CALL_TIMEOUT = 10.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start a server process are ``interop`` tests."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and "grpc_server" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.interop)


@dataclass
class GRPCServer:
    """A running rtserver with its GRPC API address and key."""

    server: Server
    target: str
    key: str

    def channel(self) -> grpc.Channel:
        """A new plaintext channel to the GRPC API."""
        return grpc.insecure_channel(self.target)

    def metadata(self, key: str | None = None) -> list[tuple[str, str]]:
        """Call metadata carrying ``key`` (default: the right one)."""
        return [("authorization", f"apikey {self.key if key is None else key}")]


def grpc_overrides(port: int, key: str, **extra: Any) -> dict[str, Any]:
    """Config enabling the GRPC API on loopback ``port`` with ``key``."""
    return {"grpc_api": {"enabled": True, "address": "127.0.0.1", "port": port, "key": key,
                         **extra}}


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GRPCServer]:
    """``twistd -n rtserver`` with ``grpc_api`` on a free loopback port."""
    port, key = free_port(), "grpc-" + uuid.uuid4().hex
    with run_server(tmp_path_factory.mktemp("grpc"), grpc_overrides(port, key)) as server:
        yield GRPCServer(server, f"127.0.0.1:{port}", key)


@pytest.fixture
def stub(grpc_server: GRPCServer) -> Iterator[api_pb2_grpc.CentrifugoApiStub]:
    """A ``CentrifugoApi`` stub generated from the schema, on a fresh channel."""
    with grpc_server.channel() as channel:
        yield api_pb2_grpc.CentrifugoApiStub(channel)
