"""The HTTP/2 GRPC API service on the running reactor, with grpcio clients in threads.

The dispatch holds each call until the test fires it, so the tests control when a call
in flight ends; the GRPC clients run in reactor threadpool threads (``deferToThread``)
because their calls block.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from rtserver.grpcapi.api import SERVICE_NAME, Reply
from rtserver.grpcapi.h2server import GRPCH2Factory, H2GRPCService
from rtserver.grpcapi.server import bind_address

CALL_TIMEOUT = 10.0


class Held:
    """A dispatch whose ``Info`` calls wait for the test; ``started`` fires on the first."""

    methods = ["Info"]

    def __init__(self) -> None:
        self.pending: list[Deferred[Reply]] = []
        self.started: Deferred[None] = Deferred()

    def authorized(self, metadata: Any) -> bool:
        return True

    def call(self, method: str, request: bytes, metadata: Any) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        self.pending.append(d)
        if not self.started.called:
            self.started.callback(None)
        return d


def _service(grace: float = 5.0, **kwargs: Any) -> tuple[H2GRPCService, Held]:
    held = Held()
    factory = GRPCH2Factory(held, reactor)  # type: ignore[arg-type]
    return H2GRPCService("test GRPC", factory, reactor, address="127.0.0.1", grace=grace,
                         **kwargs), held


def _caller(port: int) -> Callable[[bytes], bytes]:
    def call(request: bytes) -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary(f"/{SERVICE_NAME}/Info")
            reply: bytes = method(request, timeout=CALL_TIMEOUT)
            return reply

    return call


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest_twisted.ensureDeferred
async def test_stop_drains_a_call_in_flight_then_closes_the_port() -> None:
    service, held = _service()
    service.startService()
    port = service.port
    assert port and _accepts(port)
    in_flight = deferToThread(_caller(port), b"")
    await held.started
    stopped = service.stopService()
    assert not stopped.called, "stopService must wait for the call in flight"
    held.pending[0].callback(Reply(0, "", b"answer"))
    assert await in_flight == b"answer"
    await stopped
    assert not _accepts(port)


@pytest_twisted.ensureDeferred
async def test_stop_closes_what_the_grace_period_did_not_drain() -> None:
    service, held = _service(grace=0.2)
    service.startService()
    in_flight = deferToThread(_caller(service.port), b"")
    await held.started
    await service.stopService()
    with pytest.raises(grpc.RpcError) as cut:
        await in_flight
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(service.factory.connections) == 0


@pytest_twisted.ensureDeferred
async def test_workers_share_the_port_with_reuse_port() -> None:
    first, held = _service(reuse_port=True)
    first.startService()
    second, _ = _service(port=first.port, reuse_port=True)
    second.startService()
    assert second.port == first.port
    await second.stopService()
    call = deferToThread(_caller(first.port), b"")
    await held.started
    held.pending[0].callback(Reply(12, "unknown method Info", b""))
    with pytest.raises(grpc.RpcError) as e:
        await call
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                                   "unknown method Info")
    await first.stopService()


def test_a_port_in_use_fails_start_loudly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for reuse in (False, True):
            service, _ = _service(port=port, reuse_port=reuse)
            with pytest.raises(RuntimeError,
                               match=f"test GRPC: cannot listen on 127.0.0.1:{port}"):
                service.startService()
            assert not service.running


@pytest_twisted.ensureDeferred
async def test_stop_before_start() -> None:
    service, _ = _service()
    await service.stopService()


@pytest.mark.parametrize(("address", "shown"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
@pytest_twisted.ensureDeferred
async def test_startup_line_names_the_bound_address_as_grpcio_services_do(
    address: str, shown: str
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    service = H2GRPCService("test GRPC", GRPCH2Factory(Held(), reactor),  # type: ignore[arg-type]
                            reactor, address=address)
    try:
        service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    await service.stopService()
    assert service.port
    lines = [formatEvent(e) for e in events]
    assert f"test GRPC listening on {shown}:{service.port} (plaintext, HTTP/2 on the reactor)" \
        in lines
    assert bind_address(address, service.port) == f"{shown}:{service.port}"
