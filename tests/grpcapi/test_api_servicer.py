"""The GRPC API servicer in process: its fast paths, a stopping server, unexpected failures.

The servicer's methods are called as grpcio calls them, with a context that records an
abort; the bridge's "reactor" runs each hand-off at once (the memory engine answers
synchronously), so no threads are involved.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import grpc
import pytest

from rtserver.api.executor import APIExecutor
from rtserver.config import GRPCAPIConfig
from rtserver.grpcapi.api import SERVICE_NAME, APIServicer
from rtserver.grpcapi.bridge import ReactorBridge
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.testing import make_node


class Immediate:
    """A ``callFromThread`` that runs the call at once, in the caller's thread."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class Aborted(Exception):
    """What ``context.abort`` raised."""


class Context:
    """The part of ``grpc.ServicerContext`` the servicer uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


class Servicer:
    """An APIServicer over a memory-engine node with a ``hist`` namespace."""

    def __init__(self, error_mode: str = "") -> None:
        self.node, _clock = make_node({"channel": {"namespaces": [
            {"name": "hist", "history_size": 10, "history_ttl": "60s"}]}})
        self.executor = APIExecutor(self.node)
        self.bridge = ReactorBridge(Immediate())
        config = GRPCAPIConfig(error_mode=error_mode) if error_mode else GRPCAPIConfig()
        self.api = APIServicer(self.executor, self.bridge, config)
        self._service = self.api.handler()

    def call(self, method: str, request: Any, context: Context | None = None) -> Any:
        """Serialize, run the method as grpcio would, parse the response."""
        details = SimpleNamespace(method=f"/{SERVICE_NAME}/{method}", invocation_metadata=())
        handler = cast("Any", self._service.service(cast("grpc.HandlerCallDetails", details)))
        raw = handler.request_deserializer(request.SerializeToString())
        response = handler.unary_unary(raw, context or Context())
        out = handler.response_serializer(response)
        return type(_RESPONSES[method])().FromString(out)


_RESPONSES = {"Publish": pb.PublishResponse(), "Batch": pb.BatchResponse(),
              "Info": pb.InfoResponse()}


def test_publish_answers_positions_and_errors_in_the_response() -> None:
    api = Servicer()
    first = api.call("Publish", pb.PublishRequest(channel="hist:a", data=b"1"))
    second = api.call("Publish", pb.PublishRequest(channel="hist:a", data=b"2"))
    assert (first.result.offset, second.result.offset) == (1, 2)
    assert first.result.epoch == second.result.epoch != ""
    plain = api.call("Publish", pb.PublishRequest(channel="news", data=b"{}"))
    assert plain == pb.PublishResponse(result=pb.PublishResult())
    unknown = api.call("Publish", pb.PublishRequest(channel="nope:a", data=b"1"))
    assert unknown == pb.PublishResponse(error=pb.Error(code=102, message="unknown channel"))


def test_publish_errors_as_statuses_in_transport_mode() -> None:
    api = Servicer(error_mode="transport")
    with pytest.raises(Aborted) as e:
        api.call("Publish", pb.PublishRequest(channel="nope:a", data=b"1"))
    assert e.value.args == (grpc.StatusCode.NOT_FOUND, "unknown channel")
    with pytest.raises(Aborted) as e:
        api.call("Publish", pb.PublishRequest(channel="c", data=b"{"))
    assert e.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("method", "request_"), [
    ("Publish", pb.PublishRequest(channel="a", data=b"1")),
    ("Batch", pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel="a", data=b"1"))])),
    ("Batch", pb.BatchRequest(commands=[pb.Command(info=pb.InfoRequest())])),
    ("Info", pb.InfoRequest()),
])
def test_a_stopping_server_refuses_with_unavailable(method: str, request_: Any) -> None:
    api = Servicer()
    api.bridge.close()
    with pytest.raises(Aborted) as e:
        api.call(method, request_)
    assert e.value.args == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")


def _explode(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError("executor exploded")


def test_unexpected_failures_answer_100_and_are_logged(
    monkeypatch: pytest.MonkeyPatch, expect_logged_failure: Callable[..., None]
) -> None:
    """Every command of the call gets error 100; the failure is logged with its traceback."""
    api = Servicer()
    monkeypatch.setattr(api.executor, "publish_commands", _explode)
    monkeypatch.setattr(api.executor, "call", _explode)
    expect_logged_failure(RuntimeError, count=3)
    internal = pb.Error(code=100, message="internal server error")
    assert api.call("Publish", pb.PublishRequest(channel="a", data=b"1")).error == internal
    publishes = api.call("Batch", pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel="a", data=b"1")),
        pb.Command(publish=pb.PublishRequest(channel="a", data=b"{"))]))
    assert [r.error.code for r in publishes.replies] == [100, 107]
    mixed = api.call("Batch", pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel="a", data=b"1")),
        pb.Command(info=pb.InfoRequest())]))
    assert [r.error for r in mixed.replies] == [internal, internal]


# --- the dispatch both front doors share -----------------------------------------------


def _dispatch(key: str = "") -> tuple[Any, Any]:
    from rtserver.grpcapi.api import APIDispatch

    node, _clock = make_node()
    return APIDispatch(APIExecutor(node), GRPCAPIConfig(key=key)), node


def _reply(d: Any) -> Any:
    out: list[Any] = []
    d.addCallback(out.append)
    assert out, "the memory engine answers at once"
    return out[0]


def test_dispatch_refuses_unknown_methods_and_missing_keys() -> None:
    dispatch, _ = _dispatch(key="k")
    assert _reply(dispatch.call("Nope", b"", {})) == (12, "unknown method Nope", b"")
    assert _reply(dispatch.call("Info", b"", {})) == (16, "unauthenticated", b"")
    assert _reply(dispatch.call("Info", b"", {"authorization": "apikey x"})).status == 16
    ok = _reply(dispatch.call("Info", b"", {"authorization": "apikey k"}))
    assert ok.status == 0 and len(pb.InfoResponse.FromString(ok.body).result.nodes) == 1


@pytest.mark.parametrize("method", ["Publish", "Batch", "Info"])
def test_dispatch_answers_undecodable_requests_internal(method: str) -> None:
    dispatch, _ = _dispatch()
    assert _reply(dispatch.call(method, b"\xff\xff", {})) == (
        13, "Exception deserializing request!", b"")


def test_dispatch_batches_without_runnable_commands() -> None:
    dispatch, _ = _dispatch()
    bad = pb.Command(publish=pb.PublishRequest(channel="a"))  # no data: 107
    only_bad = _reply(dispatch.call("Batch", pb.BatchRequest(commands=[bad]).SerializeToString(),
                                    {}))
    assert [r.error.code for r in pb.BatchResponse.FromString(only_bad.body).replies] == [107]
    empty = pb.Command()  # no command set: 104, general path with nothing to run
    mixed = _reply(dispatch.call("Batch", pb.BatchRequest(
        commands=[empty, empty]).SerializeToString(), {}))
    assert [r.error.code for r in pb.BatchResponse.FromString(mixed.body).replies] == [104, 104]


def test_dispatch_transport_errors_for_generic_methods() -> None:
    dispatch, _ = _dispatch()
    request = pb.HistoryRequest(channel="").SerializeToString()
    reply = _reply(dispatch.call("History", request, {"x-centrifugo-error-mode": "transport"}))
    assert reply.status == 3 and reply.body == b""
    in_body = _reply(dispatch.call("History", request, {}))
    assert in_body.status == 0
    assert pb.HistoryResponse.FromString(in_body.body).error.code == 107
