"""The server API over GRPC: ``centrifugal.centrifugo.api.CentrifugoApi``.

A thin adapter over :class:`~rtserver.api.executor.APIExecutor`, like the HTTP API
(:mod:`rtserver.web.api`). :class:`APIDispatch` is the one implementation of every
method, in the reactor: request bytes and metadata in, a :class:`Reply` (GRPC status,
message, response bytes) out. Two front doors use it: the HTTP/2 server on the reactor
(:mod:`rtserver.grpcapi.h2server`, the default) and grpcio's server
(:class:`APIServicer`, which hands each call to the reactor through the
:class:`~rtserver.grpcapi.bridge.ReactorBridge`; used with ``grpc_api.server: grpcio``,
and for reflection).

API errors come back in the response's ``error`` field with a GRPC status OK, as in
Centrifugo; ``grpc_api.error_mode: transport`` (or the call's
``x-centrifugo-error-mode: transport`` metadata) turns them into GRPC statuses.

Authentication: with ``grpc_api.key`` set, every call must carry the metadata
``authorization: apikey <key>``; otherwise the call fails with status UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from rtserver.api.executor import APIExecutor, PublishCommand
from rtserver.config import GRPCAPIConfig
from rtserver.grpcapi import convert
from rtserver.grpcapi.bridge import BridgeClosed, ReactorBridge
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.logs import Logger
from rtserver.protocol.codes import Error

__all__ = ["SERVICE_NAME", "APIDispatch", "APIServicer", "Reply", "status_code"]

_log = Logger()

#: The fully-qualified GRPC service name of the server API.
SERVICE_NAME = "centrifugal.centrifugo.api.CentrifugoApi"

#: GRPC status codes (the numbers of the GRPC wire protocol).
OK = 0
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

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

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(code: int) -> grpc.StatusCode:
    """The GRPC status of an API error code in transport error mode."""
    return _STATUS.get(code, grpc.StatusCode.INTERNAL)


class Reply(NamedTuple):
    """A call's outcome: GRPC ``status`` (0: OK, with ``body``) and its ``message``."""

    status: int
    message: str
    body: bytes


def _failed(status: int, message: str) -> Reply:
    return Reply(status, message, b"")


#: Metadata of a call: the first value of each (lower-case) key.
Metadata = Mapping[str, str]


def _identity(raw: bytes) -> bytes:
    return raw


class APIDispatch:
    """Every ``CentrifugoApi`` method on the executor; runs in the reactor thread.

    Args:
        executor: the same executor the HTTP API uses.
        config: the ``grpc_api`` section (key, error_mode).
    """

    def __init__(self, executor: APIExecutor, config: GRPCAPIConfig) -> None:
        self._executor = executor
        self._key = ("apikey " + config.key).encode("utf-8") if config.key else b""
        self._transport_mode = config.error_mode == "transport"
        self._methods: dict[str, Callable[[bytes, Metadata], Deferred[Reply]]] = {
            m.rpc: self._generic(m) for m in convert.METHODS.values()
        }
        self._methods["Publish"] = self._publish
        self._methods["Batch"] = self._batch

    @property
    def methods(self) -> list[str]:
        """The method names served (``Publish``, ``PresenceStats``...)."""
        return list(self._methods)

    def authorized(self, metadata: Metadata) -> bool:
        """Whether the call presents the key (always, when no key is set)."""
        if not self._key:
            return True
        given = metadata.get("authorization")
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self._key)

    def call(self, method: str, request: bytes, metadata: Metadata) -> Deferred[Reply]:
        """Run ``method`` (``Publish``) on the serialized ``request``; never fails."""
        run = self._methods.get(method)
        if run is None:
            return succeed(_failed(UNIMPLEMENTED, f"unknown method {method}"))
        if not self.authorized(metadata):
            return succeed(_failed(UNAUTHENTICATED, "unauthenticated"))
        return run(request, metadata)

    # --- helpers -------------------------------------------------------------------------

    def _wants_transport_errors(self, metadata: Metadata) -> bool:
        return self._transport_mode or metadata.get("x-centrifugo-error-mode") == "transport"

    def _error_reply(self, error: Error, metadata: Metadata) -> Reply | None:
        """The status reply for an API error in transport error mode; None otherwise."""
        if self._wants_transport_errors(metadata):
            return _failed(status_code(error.code).value[0], error.message)
        return None

    def _execute(self, name: str, params: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """One executor command; an unexpected failure is logged and answers 100."""

        def failed(failure: Failure) -> dict[str, Any]:
            _log.failure("GRPC API {method} failed", failure=failure, method=name)
            return {"error": Error.INTERNAL.to_wire()}

        try:
            d = Deferred.fromCoroutine(self._executor.call(name, params))
        except Exception:
            d = fail()
        return d.addErrback(failed)

    def _run_publishes(
        self, commands: list[PublishCommand], parallel: bool, method: str
    ) -> Deferred[list[dict[str, Any] | Error]]:
        """Typed publishes; an unexpected failure is logged and answers 100 for each."""

        def failed(failure: Failure) -> list[dict[str, Any] | Error]:
            _log.failure("GRPC API {method} failed", failure=failure, method=method)
            return [Error.INTERNAL for _ in commands]

        try:
            d = Deferred.fromCoroutine(
                self._executor.publish_commands(commands, parallel=parallel, method=method)
            )
        except Exception:
            d = fail()
        return d.addErrback(failed)

    # --- methods -------------------------------------------------------------------------

    def _generic(self, method: convert.Method) -> Callable[[bytes, Metadata], Deferred[Reply]]:
        def run(raw: bytes, metadata: Metadata) -> Deferred[Reply]:
            try:
                request = method.request.FromString(raw)
            except DecodeError:
                return succeed(_bad_request())
            try:
                params = method.params(request)
            except Error as e:
                return succeed(self._respond(method, {"error": e.to_wire()}, metadata))
            return self._execute(method.name, params).addCallback(
                lambda body: self._respond(method, body, metadata)
            )

        return run

    def _respond(self, method: convert.Method, body: dict[str, Any], metadata: Metadata) -> Reply:
        error = body.get("error")
        if error is not None:
            failed = self._error_reply(Error(error["code"], error["message"]), metadata)
            if failed is not None:
                return failed
        return Reply(OK, "", method.respond(body).SerializeToString())

    def _publish(self, raw: bytes, metadata: Metadata) -> Deferred[Reply]:
        """``Publish``: the typed path (no JSON-shaped params), response encoded by hand."""
        try:
            request = pb.PublishRequest.FromString(raw)
        except DecodeError:
            return succeed(_bad_request())

        def respond(outcome: dict[str, Any] | Error) -> Reply:
            if isinstance(outcome, Error):
                failed = self._error_reply(outcome, metadata)
                if failed is not None:
                    return failed
            return Reply(OK, "", convert.encode_publish_response(outcome))

        try:
            command = convert.publish_command(request)
        except Error as e:
            return succeed(respond(e))
        return self._run_publishes([command], False, "publish").addCallback(
            lambda outcomes: respond(outcomes[0])
        )

    def _batch(self, raw: bytes, metadata: Metadata) -> Deferred[Reply]:
        try:
            request = pb.BatchRequest.FromString(raw)
        except DecodeError:
            return succeed(_bad_request())
        total = len(request.commands)
        publishes = convert.batch_publishes(request)
        if publishes is not None:  # only publish commands: the typed path
            typed, failed_typed = publishes

            def encode(outcomes: list[dict[str, Any] | Error]) -> Reply:
                return Reply(
                    OK, "", convert.encode_batch_publish_response(outcomes, failed_typed, total)
                )

            if not typed:
                return succeed(encode([]))
            return self._run_publishes(typed, request.parallel, "batch").addCallback(encode)
        commands, failed = convert.batch_commands(request)
        if not commands:
            return succeed(
                Reply(OK, "", convert.batch_response([], failed, total).SerializeToString())
            )

        def replies(body: dict[str, Any]) -> Reply:
            if "error" in body:
                # The whole batch failed (not one command): every reply carries it.
                error = Error(body["error"]["code"], body["error"]["message"])
                return Reply(
                    OK,
                    "",
                    convert.batch_response(
                        [], {i: error for i in range(total)}, total
                    ).SerializeToString(),
                )
            return Reply(
                OK, "", convert.batch_response(body["replies"], failed, total).SerializeToString()
            )

        return self._execute(
            "batch", {"commands": commands, "parallel": request.parallel}
        ).addCallback(replies)


def _bad_request() -> Reply:
    # grpcio's own answer to a request its deserializer refuses.
    return _failed(INTERNAL, "Exception deserializing request!")


class APIServicer:
    """grpcio's front door: every method through :class:`APIDispatch`, over the bridge.

    grpcio calls a method in one of its worker threads; the call runs in the reactor
    (:meth:`ReactorBridge.call`) and its reply is returned, or aborts the call with its
    status.

    Args:
        executor: the same executor the HTTP API uses.
        bridge: hands executor calls to the reactor.
        config: the ``grpc_api`` section (key, error_mode).
    """

    def __init__(self, executor: APIExecutor, bridge: ReactorBridge, config: GRPCAPIConfig) -> None:
        self._dispatch = APIDispatch(executor, config)
        self._bridge = bridge

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering every method of the service."""
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._behaviour(name), request_deserializer=_identity, response_serializer=_identity
            )
            for name in self._dispatch.methods
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _behaviour(self, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        dispatch, bridge = self._dispatch, self._bridge

        def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata: dict[str, str] = {}
            for key, value in context.invocation_metadata():
                if key not in metadata and isinstance(value, str):
                    metadata[key] = value
            try:
                reply = bridge.call(lambda: dispatch.call(name, request, metadata))
            except BridgeClosed:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            if reply.status != OK:
                context.abort(_BY_NUMBER.get(reply.status, grpc.StatusCode.INTERNAL), reply.message)
            return reply.body

        return behaviour
