"""The HTTP/2 GRPC API service on the running reactor, with grpcio clients in threads.

The dispatch holds each call until the test fires it, so the tests control when a call
in flight ends; the GRPC clients run in reactor threadpool threads (``deferToThread``)
because their calls block.
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest
import pytest_twisted
from grpc_support import CALL_TIMEOUT, Held, accepts, unary_caller
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from rtserver.grpcapi.api import SERVICE_NAME, Reply
from rtserver.grpcapi.h2server import GRPCH2Factory, H2GRPCService
from rtserver.grpcapi.server import bind_address


def _service(grace: float = 5.0, max_concurrent_streams: int = 100,
             **kwargs: Any) -> tuple[H2GRPCService, Held]:
    held = Held()
    factory = GRPCH2Factory(held, reactor,  # type: ignore[arg-type]
                            max_concurrent_streams=max_concurrent_streams)
    return H2GRPCService("test GRPC", factory, reactor, address="127.0.0.1", grace=grace,
                         **kwargs), held


@pytest_twisted.ensureDeferred
async def test_stop_drains_a_call_in_flight_then_closes_the_port() -> None:
    service, held = _service()
    service.startService()
    port = service.port
    assert port and accepts(port)
    in_flight = deferToThread(unary_caller(port, f"/{SERVICE_NAME}/Info"), b"")
    await held.started
    stopped = service.stopService()
    assert not stopped.called, "stopService must wait for the call in flight"
    held.pending[0].callback(Reply(0, "", b"answer"))
    assert await in_flight == b"answer"
    await stopped
    assert not accepts(port)


@pytest_twisted.ensureDeferred
async def test_stop_closes_what_the_grace_period_did_not_drain() -> None:
    service, held = _service(grace=0.2)
    service.startService()
    in_flight = deferToThread(unary_caller(service.port, f"/{SERVICE_NAME}/Info"), b"")
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
    call = deferToThread(unary_caller(first.port, f"/{SERVICE_NAME}/Info"), b"")
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


def _dispatched(held: Held, count: int, call: Deferred[Any]) -> Deferred[None]:
    """Fires once ``count`` calls reached the dispatch; fails as ``call`` if it fails first."""
    arrived = held.calls(count)

    def failed(failure: Failure) -> Failure:
        if not arrived.called:
            arrived.errback(failure)
        return failure

    call.addErrback(failed)
    return arrived


@pytest_twisted.ensureDeferred
async def test_a_client_cancel_releases_its_stream_and_the_connection_goes_on() -> None:
    """A grpcio client cancels a call the server holds: RST_STREAM CANCEL.

    With one stream allowed per connection, the next call on the same connection is
    served while the cancelled call is still in the dispatch; its late answer is
    dropped, nothing is dispatched twice and nothing is logged.
    """
    service, held = _service(max_concurrent_streams=1)
    service.startService()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        info = channel.unary_unary(f"/{SERVICE_NAME}/Info")
        cancelled = info.future(b"", timeout=CALL_TIMEOUT)
        await held.started
        [connection] = list(service.factory.connections)
        assert len(connection._streams) == 1
        assert cancelled.cancel()
        second = deferToThread(info, b"", timeout=CALL_TIMEOUT)
        await _dispatched(held, 2, second)  # (the cancel went first on the connection)
        assert list(service.factory.connections) == [connection]
        assert len(connection._streams) == 1  # the second call only
        held.pending[1].callback(Reply(0, "", b"second"))
        assert await second == b"second"
        assert not connection._streams
        held.pending[0].callback(Reply(0, "", b"too late"))  # dropped
        third = deferToThread(info, b"", timeout=CALL_TIMEOUT)
        await _dispatched(held, 3, third)
        held.pending[2].callback(Reply(0, "", b"third"))
        assert await third == b"third"
        assert list(service.factory.connections) == [connection]
        assert len(held.pending) == 3
        with pytest.raises(grpc.FutureCancelledError):
            cancelled.result()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await deferToThread(channel.close)
        await service.stopService()
    problems = [formatEvent(e) for e in events
                if "log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert not problems
