"""What the GRPC API tests share.

Server handle, call bounds, config overrides, a held dispatch, a blocking unary caller
and a port probe.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from harness import Server
from twisted.internet.defer import Deferred

from rtserver.grpcapi.api import Reply

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


class Held:
    """A dispatch whose calls wait until the test fires them; ``started`` fires on the first."""

    methods = ["Info", "Publish", "History"]

    def __init__(self) -> None:
        self.pending: list[Deferred[Reply]] = []
        self.started: Deferred[None] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def authorized(self, metadata: Any) -> bool:
        return True

    def call(self, method: str, request: bytes, metadata: Any) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        self.pending.append(d)
        if not self.started.called:
            self.started.callback(None)
        due = [w for w in self._waiting if w[0] <= len(self.pending)]
        for waiter in due:
            self._waiting.remove(waiter)
            waiter[1].callback(None)
        return d

    def calls(self, count: int) -> Deferred[None]:
        """Fires once ``count`` calls have come in."""
        d: Deferred[None] = Deferred()
        if len(self.pending) >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
        return d


def unary_caller(port: int, path: str) -> Callable[[bytes], bytes]:
    """A blocking call of the unary method ``path`` on loopback ``port`` (run it in a thread)."""

    def call(request: bytes) -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary(path)
            reply: bytes = method(request, timeout=CALL_TIMEOUT)
            return reply

    return call


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on loopback ``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
