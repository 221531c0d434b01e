"""The reactor bridge and the grpcio server service, in-process on the running reactor.

A test servicer's handler waits (through the bridge) on a Deferred the test fires, so the
tests control exactly when a call in flight ends; GRPC clients run in reactor threadpool
threads (``deferToThread``) because their calls block.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import grpc
import pytest
import pytest_twisted
from grpc_support import CALL_TIMEOUT, accepts, unary_caller
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from rtserver.grpcapi.bridge import BridgeClosed, ReactorBridge, to_loop
from rtserver.grpcapi.server import AioGRPCServerService, GRPCServerService, bind_address
from rtserver.grpcapi.unistream import UniStreamServicer
from rtserver.testing import make_node


class Boom(Exception):
    pass


# --- the bridge -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_call_runs_in_the_reactor_thread_and_returns_the_result() -> None:
    bridge = ReactorBridge(reactor)
    ran_in: list[threading.Thread] = []

    def fn() -> Deferred[str]:
        ran_in.append(threading.current_thread())
        return succeed("done")

    result = await deferToThread(bridge.call, fn)
    assert result == "done"
    assert ran_in == [threading.current_thread()]  # the test runs in the reactor thread


@pytest_twisted.ensureDeferred
async def test_a_failure_reaches_the_calling_thread() -> None:
    bridge = ReactorBridge(reactor)

    def fn() -> Deferred[str]:
        d: Deferred[str] = Deferred()
        reactor.callLater(0, d.errback, Boom("no"))
        return d

    with pytest.raises(Boom, match="no"):
        await deferToThread(bridge.call, fn)
    assert bridge.pending == 0


@pytest_twisted.ensureDeferred
async def test_close_releases_a_waiting_thread_and_refuses_later_calls() -> None:
    bridge = ReactorBridge(reactor)
    started: Deferred[None] = Deferred()
    never: Deferred[str] = Deferred()

    def fn() -> Deferred[str]:
        started.callback(None)
        return never

    waiting = deferToThread(bridge.call, fn)
    await started
    assert bridge.pending == 1
    bridge.close()
    with pytest.raises(BridgeClosed):
        await waiting
    assert bridge.pending == 0
    never.callback("late")  # an outcome after close goes nowhere, raises nothing
    with pytest.raises(BridgeClosed):
        await deferToThread(bridge.call, lambda: succeed("x"))


# --- the server service -----------------------------------------------------------------


class Gated:
    """A GRPC service ``test.Gated/Wait`` whose calls end when the test says so."""

    def __init__(self, bridge: ReactorBridge) -> None:
        self.bridge = bridge
        self.started: Deferred[None] = Deferred()
        self.gate: Deferred[bytes] = Deferred()

    def handler(self) -> grpc.GenericRpcHandler:
        def wait(request: bytes, context: grpc.ServicerContext) -> bytes:
            def in_reactor() -> Deferred[bytes]:
                if not self.started.called:
                    self.started.callback(None)
                return self.gate

            try:
                return b"reply to " + request + b": " + self.bridge.call(in_reactor)
            except BridgeClosed:
                context.abort(grpc.StatusCode.UNAVAILABLE, "stopping")
                raise

        return grpc.method_handlers_generic_handler(
            "test.Gated", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
        )


def _service(grace: float = 5.0, **kwargs: Any) -> tuple[GRPCServerService, Gated]:
    bridge = ReactorBridge(reactor)
    gated = Gated(bridge)
    service = GRPCServerService("test GRPC", [gated.handler()], bridge, reactor,
                                address="127.0.0.1", port=0, grace=grace, **kwargs)
    return service, gated


@pytest_twisted.ensureDeferred
async def test_stop_drains_a_call_in_flight_then_closes_the_port() -> None:
    service, gated = _service()
    service.startService()
    port = service.port
    assert port and accepts(port)
    in_flight = deferToThread(unary_caller(port, "/test.Gated/Wait"), b"first")
    await gated.started
    stopped = service.stopService()
    assert not stopped.called, "stopService must wait for the call in flight"
    with pytest.raises(grpc.RpcError) as refused:
        await deferToThread(unary_caller(port, "/test.Gated/Wait"), b"second")
    # grpcio refuses a call that races its shutdown with either status.
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    gated.gate.callback(b"ok")
    assert await in_flight == b"reply to first: ok"
    await stopped
    assert not accepts(port)


@pytest_twisted.ensureDeferred
async def test_stop_cancels_what_the_grace_period_did_not_drain() -> None:
    service, gated = _service(grace=0.2)
    service.startService()
    in_flight = deferToThread(unary_caller(service.port, "/test.Gated/Wait"), b"stuck")
    await gated.started
    await service.stopService()
    with pytest.raises(grpc.RpcError) as cancelled:
        await in_flight
    assert cancelled.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert gated.bridge.pending == 0
    assert not accepts(service.port)


def test_a_port_in_use_fails_start_loudly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = ReactorBridge(reactor)
        service = GRPCServerService("test GRPC", [], bridge, reactor, address="127.0.0.1",
                                    port=port)
        with pytest.raises(RuntimeError, match=f"test GRPC: cannot listen on 127.0.0.1:{port}"):
            service.startService()
        assert not service.running


def test_bind_address() -> None:
    assert bind_address("", 10000) == "[::]:10000"
    assert bind_address("127.0.0.1", 10000) == "127.0.0.1:10000"
    assert bind_address("::1", 10000) == "[::1]:10000"
    assert bind_address("[::1]", 10000) == "[::1]:10000"


# --- the grpc.aio server service (uni_grpc's) -------------------------------------------


class AioGated:
    """``test.Gated/Wait`` on the aio server: the coroutine awaits the test's gate."""

    def __init__(self, bridge: ReactorBridge) -> None:
        self.bridge = bridge
        self.started: Deferred[None] = Deferred()
        self.gate: Deferred[bytes] = Deferred()

    def handler(self) -> grpc.GenericRpcHandler:
        async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            loop = asyncio.get_running_loop()
            outcome: asyncio.Future[object] = loop.create_future()

            def in_reactor() -> Deferred[bytes]:
                if not self.started.called:
                    self.started.callback(None)
                return self.gate

            self.bridge.submit(in_reactor, lambda o: loop.call_soon_threadsafe(
                outcome.set_result, o))
            result = await outcome
            if isinstance(result, Failure):
                result.trap(BridgeClosed)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "stopping")
            assert isinstance(result, bytes)
            return b"reply to " + request + b": " + result

        return grpc.method_handlers_generic_handler(
            "test.Gated", {"Wait": grpc.unary_unary_rpc_method_handler(wait)})


def _aio_service(grace: float = 5.0) -> tuple[AioGRPCServerService, AioGated]:
    bridge = ReactorBridge(reactor)
    gated = AioGated(bridge)
    service = AioGRPCServerService("test aio GRPC", [gated.handler()], bridge, reactor,
                                   address="127.0.0.1", port=0, grace=grace)
    return service, gated


@pytest_twisted.ensureDeferred
async def test_aio_stop_drains_a_call_in_flight_then_closes_the_port() -> None:
    service, gated = _aio_service()
    service.startService()
    port = service.port
    assert port and accepts(port)
    in_flight = deferToThread(unary_caller(port, "/test.Gated/Wait"), b"first")
    await gated.started
    stopped = service.stopService()
    assert not stopped.called, "stopService must wait for the call in flight"
    # The stop runs on the service's loop: one turn of it later, the shutdown has begun.
    loop = service.loop
    assert loop is not None
    await deferToThread(lambda: asyncio.run_coroutine_threadsafe(
        asyncio.sleep(0), loop).result(CALL_TIMEOUT))
    with pytest.raises(grpc.RpcError) as refused:
        await deferToThread(unary_caller(port, "/test.Gated/Wait"), b"second")
    # grpc.aio refuses a call that races its shutdown with either status.
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    gated.gate.callback(b"ok")
    assert await in_flight == b"reply to first: ok"
    await stopped
    assert not accepts(port)
    assert gated.bridge.closed


@pytest_twisted.ensureDeferred
async def test_aio_stop_cancels_what_the_grace_period_did_not_drain() -> None:
    service, gated = _aio_service(grace=0.2)
    service.startService()
    in_flight = deferToThread(unary_caller(service.port, "/test.Gated/Wait"), b"stuck")
    await gated.started
    await service.stopService()
    with pytest.raises(grpc.RpcError) as cancelled:
        await in_flight
    assert cancelled.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert gated.bridge.pending == 0
    assert not accepts(service.port)


@pytest_twisted.ensureDeferred
async def test_aio_stop_before_start_and_submit_after_close() -> None:
    service, gated = _aio_service()
    await service.stopService()
    outcomes: list[object] = []
    gated.bridge.submit(lambda: succeed(b"x"), outcomes.append)
    assert len(outcomes) == 1 and isinstance(outcomes[0], Failure)
    assert outcomes[0].check(BridgeClosed)


def test_aio_port_in_use_fails_start_loudly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = AioGRPCServerService("test aio GRPC", [], ReactorBridge(reactor), reactor,
                                       address="127.0.0.1", port=port)
        with pytest.raises(RuntimeError,
                           match=f"test aio GRPC: cannot listen on 127.0.0.1:{port}"):
            service.startService()
        assert not service.running


def test_to_loop_runs_on_the_loop_and_ignores_a_closed_one() -> None:
    """A late notification after the service stopped does nothing and raises nothing."""
    loop = asyncio.new_event_loop()
    seen: list[str] = []
    to_loop(loop, seen.append, "first")
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    to_loop(loop, seen.append, "late")
    assert seen == ["first"]


@pytest_twisted.ensureDeferred
async def test_a_consume_on_a_stopping_server_is_unavailable() -> None:
    """uni_grpc's connect hand-off refused (the bridge closed): UNAVAILABLE, no client."""
    node, _clock = make_node()
    bridge = ReactorBridge(reactor)
    service = AioGRPCServerService("test uni_grpc", [UniStreamServicer(node, bridge).handler()],
                                   bridge, reactor, address="127.0.0.1", port=0)
    service.startService()
    try:
        bridge.close()

        def consume() -> list[bytes]:
            with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                method = channel.unary_stream(
                    "/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume")
                return list(method(b"", timeout=CALL_TIMEOUT))

        with pytest.raises(grpc.RpcError) as refused:
            await deferToThread(consume)
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        assert node.open_clients == 0
    finally:
        await service.stopService()
