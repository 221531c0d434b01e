"""The server API executor: one method per command, independent of any transport.

Every command method takes the decoded request object and returns the ``result``
object, or raises :class:`~rtserver.protocol.codes.Error`. :meth:`APIExecutor.call`
wraps that into the response body an adapter encodes (with orjson: results may hold
``orjson.Fragment`` values). Semantics follow Centrifugo v6 (docs/server-api.rst).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from rtserver.api import schema
from rtserver.config import ChannelOptions
from rtserver.core.types import (
    DisconnectControl,
    HistoryFilter,
    RefreshControl,
    SubscribeControl,
    UnsubscribeControl,
)
from rtserver.logs import Logger, log_failure
from rtserver.protocol.codes import Disconnect, Error
from rtserver.protocol.frames import Publication, StreamPosition
from rtserver.protocol.protobuf import json_payload

if TYPE_CHECKING:
    from rtserver.core.node import Node

__all__ = ["METHODS", "APIExecutor", "PublishCommand"]

_log = Logger()

#: Every command the executor answers, ``batch`` included.
METHODS = (
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "rpc",
    "batch",
)

_DEFAULT_DISCONNECT = (Disconnect.FORCE_NO_RECONNECT.code, Disconnect.FORCE_NO_RECONNECT.reason)

Result = dict[str, Any]
Handler = Callable[[dict[str, Any]], Coroutine[Any, Any, Result]]


@dataclass(frozen=True, slots=True)
class _Publication:
    """The channel-independent part of a ``publish`` / ``broadcast`` request."""

    data: bytes
    tags: dict[str, str]
    skip_history: bool
    idempotency_key: str
    delta: bool
    version: int
    version_epoch: str

    @classmethod
    def parse(cls, params: dict[str, Any]) -> _Publication:
        data = schema.raw_json(params, "data", "b64data")
        if data is None:
            raise schema.bad_request("data is required")
        return cls(
            data=data,
            tags=schema.string_map(params, "tags"),
            skip_history=schema.boolean(params, "skip_history"),
            idempotency_key=schema.string(params, "idempotency_key"),
            delta=schema.boolean(params, "delta"),
            version=schema.integer(params, "version", 0, schema.MAX_UINT64),
            version_epoch=schema.string(params, "version_epoch"),
        )


@dataclass(slots=True)
class PublishCommand:
    """A ``publish`` whose fields an adapter's schema already typed (the GRPC API).

    ``data`` is compact JSON (no newline); the channel is checked by the executor.
    """

    channel: str
    data: bytes
    tags: dict[str, str]
    skip_history: bool = False
    idempotency_key: str = ""
    delta: bool = False
    version: int = 0
    version_epoch: str = ""


class CommandStats:
    """Per-method call counts, total seconds and errors (exported by ``/metrics``)."""

    __slots__ = ("calls", "errors")

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}  # method -> [count, seconds]
        self.errors: dict[tuple[str, int], int] = {}  # (method, code) -> count

    def record(self, method: str, seconds: float, error: Any) -> None:
        """One finished call; ``error`` is the reply's error object or None."""
        name = method if method in METHODS else "unknown"
        entry = self.calls.get(name)
        if entry is None:
            entry = self.calls[name] = [0.0, 0.0]
        entry[0] += 1
        entry[1] += seconds
        if isinstance(error, dict):
            key = (name, int(error.get("code", 0)))
            self.errors[key] = self.errors.get(key, 0) + 1


class APIExecutor:
    """Runs server API commands against a :class:`~rtserver.core.node.Node`.

    Args:
        node: the node whose channels, engine and connections the commands act on.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self.stats = CommandStats()

    # --- entry point ---------------------------------------------------------------------

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        """Run ``method`` and return the full response body.

        Returns:
            ``{"result": {...}}`` or ``{"error": {"code": N, "message": M}}``; for
            ``batch``, the top-level ``{"replies": [...]}`` instead of a result.
        """
        started = time.perf_counter()
        outcome = await self._outcome(method, params)
        self.stats.record(method, time.perf_counter() - started, outcome.get("error"))
        if method == "batch" and "result" in outcome:
            result: dict[str, Any] = outcome["result"]
            return result
        return outcome

    def _handler(self, method: str) -> Handler | None:
        if method not in METHODS:
            return None
        handler: Handler = getattr(self, method)
        return handler

    async def _outcome(self, method: str, params: Any) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": ...}``; never raises."""
        handler = self._handler(method)
        if handler is None:
            return {"error": Error.METHOD_NOT_FOUND.to_wire()}
        try:
            result = await handler(schema.object_params(params))
        except Error as e:
            return {"error": e.to_wire()}
        except Exception:
            log_failure(_log, Failure(), "server API {method} failed", method=method)
            return {"error": Error.INTERNAL.to_wire()}
        return {"result": result}

    # --- publications --------------------------------------------------------------------

    async def publish(self, params: dict[str, Any]) -> Result:
        """Publish ``data`` into ``channel``; ``{offset, epoch}`` when history is kept."""
        channel = schema.channel(params)
        if len(params) == 2 and "data" in params:
            # The plain request, ``channel`` and ``data`` only: no optional field to read.
            data = schema.raw_json(params, "data")
            assert data is not None  # present (JSON null is the bytes ``null``)
            position = await self._node.publish(channel, data)
            return {"offset": position.offset, "epoch": position.epoch} if position.epoch else {}
        return await self._publish(channel, _Publication.parse(params))

    async def broadcast(self, params: dict[str, Any]) -> Result:
        """Publish the same data into each of ``channels``; one response per channel."""
        channels = schema.string_list(params, "channels")
        if not channels:
            raise schema.bad_request("channels is required")
        pub = _Publication.parse(params)
        responses = await gatherResults(
            [Deferred.fromCoroutine(self._broadcast_one(ch, pub)) for ch in channels],
            consumeErrors=True,
        )
        return {"responses": responses}

    async def _broadcast_one(self, channel: str, pub: _Publication) -> dict[str, Any]:
        try:
            schema.check_channel(channel)
            return {"result": await self._publish(channel, pub)}
        except Error as e:
            return {"error": e.to_wire()}
        except Exception:
            log_failure(
                _log, Failure(), "server API broadcast to {channel} failed", channel=channel
            )
            return {"error": Error.INTERNAL.to_wire()}

    async def _publish(self, channel: str, pub: _Publication) -> Result:
        position = await self._node.publish(
            channel,
            pub.data,
            tags=pub.tags,
            skip_history=pub.skip_history,
            idempotency_key=pub.idempotency_key,
            delta=pub.delta,
            version=pub.version,
            version_epoch=pub.version_epoch,
        )
        return _position_result(position)

    # --- connection control --------------------------------------------------------------

    async def subscribe(self, params: dict[str, Any]) -> Result:
        """Subscribe a user's connections to ``channel`` server-side."""
        user = schema.required_string(params, "user")
        channel = schema.channel(params)
        self._node.resolver.options(channel)
        message = SubscribeControl(
            user=user,
            channel=channel,
            client=schema.string(params, "client"),
            session=schema.string(params, "session"),
            info=schema.raw_json(params, "info", "b64info"),
            data=schema.raw_json(params, "data", "b64data"),
            recover_since=schema.position(params, "recover_since"),
            expire_at=schema.integer(params, "expire_at", 0, schema.MAX_INT64),
            overrides=schema.overrides(params, "override"),
        )
        await self._node.control(message)
        return {}

    async def unsubscribe(self, params: dict[str, Any]) -> Result:
        """Unsubscribe a user's connections from ``channel`` (clients get push 2000)."""
        user = schema.required_string(params, "user")
        channel = schema.channel(params)
        self._node.resolver.options(channel)
        message = UnsubscribeControl(
            user=user,
            channel=channel,
            client=schema.string(params, "client"),
            session=schema.string(params, "session"),
        )
        await self._node.control(message)
        return {}

    async def disconnect(self, params: dict[str, Any]) -> Result:
        """Disconnect a user's connections (default 3503 "force disconnect")."""
        user = schema.required_string(params, "user")
        code, reason = schema.disconnect(params, "disconnect", _DEFAULT_DISCONNECT)
        message = DisconnectControl(
            user=user,
            code=code,
            reason=reason,
            client=schema.string(params, "client"),
            session=schema.string(params, "session"),
            whitelist=tuple(schema.string_list(params, "whitelist")),
        )
        await self._node.control(message)
        return {}

    async def refresh(self, params: dict[str, Any]) -> Result:
        """Extend (``expire_at``, ``info``) or end (``expired``) a user's connections."""
        message = RefreshControl(
            user=schema.required_string(params, "user"),
            client=schema.string(params, "client"),
            session=schema.string(params, "session"),
            expired=schema.boolean(params, "expired"),
            expire_at=schema.integer(params, "expire_at", 0, schema.MAX_INT64),
            info=schema.raw_json(params, "info", "b64info"),
        )
        await self._node.control(message)
        return {}

    # --- channel state -------------------------------------------------------------------

    async def presence(self, params: dict[str, Any]) -> Result:
        """Who is in ``channel``: ``{"presence": {client_id: ClientInfo}}``."""
        channel = self._presence_channel(params)
        clients = await self._node.presence(channel)
        return {"presence": {cid: info.to_wire() for cid, info in clients.items()}}

    async def presence_stats(self, params: dict[str, Any]) -> Result:
        """How many connections and distinct users are in ``channel``."""
        channel = self._presence_channel(params)
        stats = await self._node.presence_stats(channel)
        return {"num_clients": stats.num_clients, "num_users": stats.num_users}

    def _presence_channel(self, params: dict[str, Any]) -> str:
        channel = schema.channel(params)
        if not self._options(channel).presence:
            raise Error.NOT_AVAILABLE
        return channel

    async def history(self, params: dict[str, Any]) -> Result:
        """Read ``channel``'s stream; ``limit`` 0 = position only, negative = all."""
        channel = schema.channel(params)
        limit = schema.integer(params, "limit", -schema.MAX_INT32 - 1, schema.MAX_INT32)
        flt = HistoryFilter(
            since=schema.position(params, "since"),
            limit=-1 if limit < 0 else limit,
            reverse=schema.boolean(params, "reverse"),
        )
        result = await self._node.history(channel, flt, self._options(channel))
        return {
            "publications": [_api_publication(p) for p in result.publications],
            "offset": result.position.offset,
            "epoch": result.position.epoch,
        }

    async def history_remove(self, params: dict[str, Any]) -> Result:
        """Drop ``channel``'s publications, keeping its epoch and top offset."""
        channel = schema.channel(params)
        if not self._options(channel).history_enabled:
            raise Error.NOT_AVAILABLE
        await self._node.remove_history(channel)
        return {}

    async def channels(self, params: dict[str, Any]) -> Result:
        """Active channels matching the glob ``pattern``, with subscriber counts."""
        pattern = schema.string(params, "pattern")
        found = await self._node.channels(pattern)
        return {"channels": {name: {"num_clients": n} for name, n in found.items()}}

    async def info(self, params: dict[str, Any]) -> Result:
        """Statistics of the nodes (this one)."""
        return {"nodes": self._node.info()}

    def _options(self, channel: str) -> ChannelOptions:
        return self._node.resolver.options(channel)

    async def publish_commands(
        self,
        commands: Sequence[PublishCommand],
        *,
        parallel: bool = False,
        method: str = "batch",
    ) -> list[Result | Error]:
        """Run typed publishes: what ``batch`` of ``publish`` commands does, less parsing.

        For adapters whose schema typed the request already (GRPC): no JSON-shaped
        params to build and check, no coroutine per command. The same checks and
        :meth:`Node.publish` as :meth:`publish`; in order unless ``parallel``.

        Returns:
            Per command, its result (``{}`` or ``{"offset", "epoch"}``) or its error.
            The call counts in the stats as one ``method`` call.
        """
        started = time.perf_counter()
        outcomes: list[Result | Error]
        if parallel:
            outcomes = await gatherResults(
                [self._publish_outcome(c) for c in commands], consumeErrors=True
            )
        else:
            outcomes = await self._publish_sequence(commands)
        error = None
        if method != "batch" and len(outcomes) == 1 and isinstance(outcomes[0], Error):
            error = outcomes[0].to_wire()
        self.stats.record(method, time.perf_counter() - started, error)
        return outcomes

    async def _publish_sequence(
        self, commands: Sequence[PublishCommand]
    ) -> list[Result | Error]:
        """Typed publishes in order, a run on one ordered lane pipelined (see ``batch``)."""
        outcomes: list[Any] = []  # Result | Error, or Deferred[Result | Error] in flight
        inflight: list[int] = []
        lane: Hashable | None = None
        for command in commands:
            if inflight:
                key = self._node.publish_order(command.channel)
                if key is None or key != lane:
                    await _settle(outcomes, inflight)
            d = self._publish_command(command)
            if isinstance(d, Error):
                outcomes.append(d)
            elif d.called and not d.paused and isinstance(d.result, StreamPosition):
                # Already published (the memory engine answers at once): no callback
                # chain, no suspension; this loop is the whole cost of a batch here.
                outcomes.append(_position_result(d.result))
            else:
                if not inflight:
                    lane = self._node.publish_order(command.channel)
                if lane is None:
                    outcomes.append(await self._publish_outcome(command, d))
                else:
                    # Applied in call order on this lane: the next one goes out now.
                    inflight.append(len(outcomes))
                    outcomes.append(self._publish_outcome(command, d))
        if inflight:
            await _settle(outcomes, inflight)
        return outcomes

    def _publish_command(self, cmd: PublishCommand) -> Deferred[StreamPosition] | Error:
        """Start one typed publish, or the error that stops it before it starts."""
        try:
            schema.check_channel(cmd.channel)
        except Error as e:
            return e
        return self._node.publish(
            cmd.channel,
            cmd.data,
            tags=cmd.tags,
            skip_history=cmd.skip_history,
            idempotency_key=cmd.idempotency_key,
            delta=cmd.delta,
            version=cmd.version,
            version_epoch=cmd.version_epoch,
        )

    def _publish_outcome(
        self, cmd: PublishCommand, started: Deferred[StreamPosition] | Error | None = None
    ) -> Deferred[Result | Error]:
        """One typed publish's result or error (never a failure)."""
        d = self._publish_command(cmd) if started is None else started
        if isinstance(d, Error):
            return succeed(d)
        return d.addCallbacks(_position_result, _publish_failed, errbackArgs=(cmd.channel,))

    # --- rpc and batch -------------------------------------------------------------------

    async def rpc(self, params: dict[str, Any]) -> Result:
        """Server-side RPC extensions: none are registered, so always 104."""
        schema.string(params, "method")
        raise Error.METHOD_NOT_FOUND

    async def batch(self, params: dict[str, Any]) -> Result:
        """Run ``commands`` (``[{"publish": {...}}, ...]``), in order or ``parallel``."""
        commands = params.get("commands")
        if commands is None:
            commands = []
        if not isinstance(commands, list):
            raise schema.bad_request("commands must be a list")
        if schema.boolean(params, "parallel"):
            replies = await gatherResults(
                [Deferred.fromCoroutine(self._batch_one(c)) for c in commands],
                consumeErrors=True,
            )
        else:
            replies = await self._batch_sequence(commands)
        return {"replies": replies}

    async def _batch_sequence(self, commands: list[Any]) -> list[dict[str, Any]]:
        """The commands one after another, as seen from outside.

        A run of consecutive ``publish``/``broadcast`` commands whose channels the engine
        puts on one ordered lane (:meth:`Node.publish_order`) is issued without waiting
        for each answer: the engine applies them in this order anyway, and their
        publications reach the subscribers together. Any other command, or a publish on
        another lane or on none, first waits for every earlier command to finish.
        """
        replies: list[Any] = []  # replies, or Deferreds of replies in flight
        inflight: list[int] = []
        lane: Hashable | None = None
        for command in commands:
            if inflight:
                key = self._publish_lane(command)
                if key is None or key != lane:
                    await _settle(replies, inflight)
            d = Deferred.fromCoroutine(self._batch_one(command))
            if d.called and not d.paused:  # answered at once (an error, the memory engine)
                replies.append(d.result)
                continue
            if not inflight:
                lane = self._publish_lane(command)
            if lane is None:
                replies.append(await d)
            else:
                inflight.append(len(replies))
                replies.append(d)
        if inflight:
            await _settle(replies, inflight)
        return replies

    def _publish_lane(self, command: Any) -> Hashable | None:
        """The ordered lane of a ``publish``/``broadcast`` command; None: any other."""
        if not isinstance(command, dict) or len(command) != 1:
            return None
        params = command.get("publish")
        if isinstance(params, dict):
            channel = params.get("channel")
            return self._node.publish_order(channel) if isinstance(channel, str) else None
        params = command.get("broadcast")
        if isinstance(params, dict):
            channels = params.get("channels")
            if isinstance(channels, list) and channels:
                lanes = {
                    self._node.publish_order(c) if isinstance(c, str) else None
                    for c in channels
                }
                if len(lanes) == 1:
                    return lanes.pop()
        return None

    async def _batch_one(self, command: Any) -> dict[str, Any]:
        """One batch reply: ``{method: result}`` or ``{"error": ...}``."""
        if not isinstance(command, dict) or len(command) != 1:
            error = schema.bad_request("each batch command must be an object with one method")
            return {"error": error.to_wire()}
        [(method, params)] = command.items()
        if method == "batch":
            return {"error": Error.METHOD_NOT_FOUND.to_wire()}
        outcome = await self._outcome(method, params)
        if "result" in outcome:
            return {method: outcome["result"]}
        return outcome


async def _settle(out: list[Any], inflight: list[int]) -> None:
    """Wait for the Deferreds at ``out[i]`` (i in ``inflight``; none fails), put results."""
    results = await gatherResults([out[i] for i in inflight], consumeErrors=True)
    for i, result in zip(inflight, results, strict=True):
        out[i] = result
    inflight.clear()


def _position_result(position: StreamPosition) -> Result:
    if not position.epoch:
        return {}
    return {"offset": position.offset, "epoch": position.epoch}


def _publish_failed(failure: Failure, channel: str) -> Error:
    if isinstance(failure.value, Error):
        return failure.value
    _log.failure("server API publish to {channel} failed", failure, channel=channel)
    return Error.INTERNAL


def _api_publication(pub: Publication) -> dict[str, Any]:
    """A history publication for the JSON API.

    Data a Protobuf client published may be bytes that are not JSON: those come back
    base64-encoded as ``b64data`` instead of ``data`` (docs/server-api.rst, "Methods"),
    never spliced raw into the response.
    """
    body = pub.to_wire()
    data = json_payload(pub.data)
    if data is None:
        del body["data"]
        body["b64data"] = base64.b64encode(pub.data).decode("ascii")
    elif data is not pub.data:
        body["data"] = orjson.Fragment(data)
    return body
