"""The server API over GRPC: ``centrifugal.centrifugo.api.CentrifugoApi``.

A thin adapter over :class:`~rtserver.api.executor.APIExecutor`, like the HTTP API
(:mod:`rtserver.web.api`): it authenticates the call, converts the request message
(:mod:`rtserver.grpcapi.convert`, in the grpcio worker thread), runs the command in the
reactor through the :class:`~rtserver.grpcapi.bridge.ReactorBridge` and converts the
response body back. API errors come back in the response's ``error`` field with a GRPC
status OK, as in Centrifugo; ``grpc_api.error_mode: transport`` (or the call's
``x-centrifugo-error-mode: transport`` metadata) turns them into GRPC statuses.

Authentication: with ``grpc_api.key`` set, every call must carry the metadata
``authorization: apikey <key>``; otherwise the call fails with status UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from twisted.internet.defer import Deferred

from rtserver.api.executor import APIExecutor, PublishCommand
from rtserver.config import GRPCAPIConfig
from rtserver.grpcapi import convert
from rtserver.grpcapi.bridge import BridgeClosed, ReactorBridge
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.logs import Logger
from rtserver.protocol.codes import Error

__all__ = ["SERVICE_NAME", "APIServicer", "status_code"]

_log = Logger()

#: The fully-qualified GRPC service name of the server API.
SERVICE_NAME = "centrifugal.centrifugo.api.CentrifugoApi"

#: GRPC status per API error code in transport error mode (Centrifugo's mapping).
_STATUS = {
    100: grpc.StatusCode.INTERNAL,
    102: grpc.StatusCode.NOT_FOUND,
    104: grpc.StatusCode.NOT_FOUND,
    107: grpc.StatusCode.INVALID_ARGUMENT,
    108: grpc.StatusCode.INVALID_ARGUMENT,
    112: grpc.StatusCode.OUT_OF_RANGE,
    113: grpc.StatusCode.ALREADY_EXISTS,
}


def status_code(code: int) -> grpc.StatusCode:
    """The GRPC status of an API error code in transport error mode."""
    return _STATUS.get(code, grpc.StatusCode.INTERNAL)


Behaviour = Callable[[Any, grpc.ServicerContext], Message]


def _serialize(response: Message | bytes) -> bytes:
    """A response message, or the bytes a fast path encoded by hand."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


class APIServicer:
    """Serves every ``CentrifugoApi`` method with the server API executor.

    Args:
        executor: the same executor the HTTP API uses.
        bridge: hands executor calls to the reactor.
        config: the ``grpc_api`` section (key, error_mode).
    """

    def __init__(self, executor: APIExecutor, bridge: ReactorBridge,
                 config: GRPCAPIConfig) -> None:
        self._executor = executor
        self._bridge = bridge
        self._key = ("apikey " + config.key).encode("utf-8") if config.key else b""
        self._transport_mode = config.error_mode == "transport"

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering every method of the service."""
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in convert.METHODS.values():
            handlers[method.rpc] = grpc.unary_unary_rpc_method_handler(
                self._unary(method),
                request_deserializer=method.request.FromString,
                response_serializer=method.response.SerializeToString,
            )
        handlers["Publish"] = grpc.unary_unary_rpc_method_handler(
            self._publish,
            request_deserializer=pb.PublishRequest.FromString,
            response_serializer=_serialize,
        )
        handlers["Batch"] = grpc.unary_unary_rpc_method_handler(
            self._batch,
            request_deserializer=pb.BatchRequest.FromString,
            response_serializer=_serialize,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    # --- authentication ------------------------------------------------------------------

    def _authorize(self, context: grpc.ServicerContext) -> None:
        """Abort with UNAUTHENTICATED unless the call presents the key (when one is set)."""
        if not self._key:
            return
        for key, value in context.invocation_metadata():
            if key == "authorization":
                given = value.encode("utf-8") if isinstance(value, str) else value
                if hmac.compare_digest(given, self._key):
                    return
                break  # only the first authorization value counts, as in Centrifugo
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")

    def _wants_transport_errors(self, context: grpc.ServicerContext) -> bool:
        if self._transport_mode:
            return True
        for key, value in context.invocation_metadata():
            if key == "x-centrifugo-error-mode":
                return value == "transport"
        return False

    # --- calls ---------------------------------------------------------------------------

    def _execute(self, name: str, params: dict[str, Any],
                 context: grpc.ServicerContext) -> dict[str, Any]:
        """Run one executor command in the reactor; UNAVAILABLE while stopping."""

        def run() -> Deferred[dict[str, Any]]:
            return Deferred.fromCoroutine(self._executor.call(name, params))

        try:
            return self._bridge.call(run)
        except BridgeClosed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        except Exception:
            _log.failure("GRPC API {method} failed", method=name)
            return {"error": Error.INTERNAL.to_wire()}
        raise AssertionError("unreachable")  # context.abort always raises

    def _unary(self, method: convert.Method) -> Behaviour:
        def behaviour(request: Any, context: grpc.ServicerContext) -> Message:
            self._authorize(context)
            try:
                params = method.params(request)
            except Error as e:
                body: dict[str, Any] = {"error": e.to_wire()}
            else:
                body = self._execute(method.name, params, context)
            error = body.get("error")
            if error is not None and self._wants_transport_errors(context):
                context.abort(status_code(error["code"]), error["message"])
            return method.respond(body)

        return behaviour

    def _run_publishes(self, commands: list[PublishCommand], parallel: bool, method: str,
                       context: grpc.ServicerContext) -> list[dict[str, Any] | Error]:
        """Run typed publishes in the reactor; UNAVAILABLE while stopping."""

        def run() -> Deferred[list[dict[str, Any] | Error]]:
            return Deferred.fromCoroutine(
                self._executor.publish_commands(commands, parallel=parallel, method=method))

        try:
            return self._bridge.call(run)
        except BridgeClosed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        except Exception:
            _log.failure("GRPC API {method} failed", method=method)
            return [Error.INTERNAL for _ in commands]
        raise AssertionError("unreachable")  # context.abort always raises

    def _publish(self, request: pb.PublishRequest, context: grpc.ServicerContext) -> bytes:
        """``Publish``: the typed path (no JSON-shaped params), response encoded by hand."""
        self._authorize(context)
        try:
            command = convert.publish_command(request)
        except Error as e:
            outcome: dict[str, Any] | Error = e
        else:
            [outcome] = self._run_publishes([command], False, "publish", context)
        if isinstance(outcome, Error) and self._wants_transport_errors(context):
            context.abort(status_code(outcome.code), outcome.message)
        return convert.encode_publish_response(outcome)

    def _batch(self, request: pb.BatchRequest, context: grpc.ServicerContext) -> Message | bytes:
        self._authorize(context)
        publishes = convert.batch_publishes(request)
        if publishes is not None:  # only publish commands: the typed path
            typed, failed_typed = publishes
            outcomes = (self._run_publishes(typed, request.parallel, "batch", context)
                        if typed else [])
            return convert.encode_batch_publish_response(outcomes, failed_typed,
                                                         len(request.commands))
        commands, failed = convert.batch_commands(request)
        replies: list[dict[str, Any]] = []
        if commands:
            body = self._execute("batch", {"commands": commands,
                                           "parallel": request.parallel}, context)
            if "error" in body:
                # The whole batch failed (not one command): every reply carries it.
                error = Error(body["error"]["code"], body["error"]["message"])
                failed = {i: error for i in range(len(request.commands))}
            else:
                replies = body["replies"]
        return convert.batch_response(replies, failed, len(request.commands))
