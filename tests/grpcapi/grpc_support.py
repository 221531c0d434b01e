"""What the GRPC API tests share: the server handle, call bounds and config overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from harness import Server

#: Bound of one GRPC call in the tests.
CALL_TIMEOUT = 10.0


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
