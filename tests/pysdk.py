"""centrifuge-python helpers shared by the interop and cluster suites.

:class:`Recorder` keeps every SDK event of a scenario in order with bounded waits;
:class:`ClientEvents` / :class:`SubEvents` feed it; :func:`run_scenario` runs one
asyncio scenario under a bound; :func:`subscribed` gives a connected client with one ready
subscription.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, is_dataclass
from typing import Any, TypeVar

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionEventHandler,
    UnsubscribedContext,
)
from harness import EVENT_TIMEOUT, Server

T = TypeVar("T")
#: Bound of one whole scenario.
SCENARIO_TIMEOUT = 25.0


def name(prefix: str) -> str:
    """A unique channel or user name."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def run_scenario(scenario: Coroutine[Any, Any, T]) -> T:
    """Run one asyncio scenario to its end, bounded by SCENARIO_TIMEOUT."""

    async def bounded_scenario() -> T:
        try:
            return await asyncio.wait_for(scenario, SCENARIO_TIMEOUT)
        finally:
            # Let the SDK finish closing its sockets (close handshakes run in background
            # tasks) instead of having asyncio.run cancel them half-way.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=3)

    return asyncio.run(bounded_scenario())


async def bounded(awaitable: Awaitable[T], timeout: float = EVENT_TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


def plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


class Recorder:
    """Every SDK event of a scenario, in order, with waits on them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, kind: str, **data: Any) -> None:
        self.events.append({"event": kind, **{k: plain(v) for k, v in data.items()}})
        self._changed.set()

    def find(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait(
        self, kind: str, count: int = 1, timeout: float = EVENT_TIMEOUT, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events of ``kind`` matching ``match`` were recorded."""

        async def until() -> list[dict[str, Any]]:
            while True:
                found = self.find(kind, **match)
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {count}x {kind} {match} within {timeout:g}s; events: {self.events}"
            ) from None


class ClientEvents(ClientEventHandler):
    """Client-level events (including server-side subscriptions) into a Recorder."""

    def __init__(self, rec: Recorder, label: str = "main") -> None:
        self.rec = rec
        self.label = label
        #: Awaited by on_connecting for "transport closed": holds the reconnect back.
        self.hold_reconnect: asyncio.Event | None = None

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.rec.add("connecting", client=self.label, code=ctx.code, reason=ctx.reason)
        if ctx.code == 1 and self.hold_reconnect is not None:
            await self.hold_reconnect.wait()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.rec.add("connected", client=self.label, id=ctx.client)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.rec.add("disconnected", client=self.label, code=ctx.code, reason=ctx.reason)

    async def on_error(self, ctx: ErrorContext) -> None:
        err = ctx.error
        self.rec.add(
            "error",
            client=self.label,
            type=ctx.code,
            code=getattr(err, "code", None),
            message=getattr(err, "message", str(err)),
        )

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.rec.add(
            "server_subscribed",
            channel=ctx.channel,
            recoverable=ctx.recoverable,
            was_recovering=ctx.was_recovering,
            recovered=ctx.recovered,
        )

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.rec.add("server_unsubscribed", channel=ctx.channel)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.rec.add(
            "server_publication", channel=ctx.channel, data=ctx.pub.data, offset=ctx.pub.offset
        )


class SubEvents(SubscriptionEventHandler):
    """Subscription events into a Recorder."""

    def __init__(self, rec: Recorder, channel: str, label: str = "main") -> None:
        self.rec = rec
        self.channel = channel
        self.label = label

    def _add(self, kind: str, **data: Any) -> None:
        self.rec.add(kind, client=self.label, channel=self.channel, **data)

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self._add("subscribing", code=ctx.code, reason=ctx.reason)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self._add(
            "subscribed",
            recoverable=ctx.recoverable,
            positioned=ctx.positioned,
            was_recovering=ctx.was_recovering,
            recovered=ctx.recovered,
            stream_position=ctx.stream_position,
        )

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self._add("unsubscribed", code=ctx.code, reason=ctx.reason)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self._add("publication", data=ctx.pub.data, offset=ctx.pub.offset, info=ctx.pub.info)

    async def on_join(self, ctx: JoinContext) -> None:
        self._add("join", info=ctx.info)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self._add("leave", info=ctx.info)


def sdk_client(
    server: Server,
    rec: Recorder,
    token: str = "",
    get_token: Callable[[], Awaitable[str]] | None = None,
    label: str = "main",
    use_protobuf: bool = False,
) -> tuple[Client, ClientEvents]:
    events = ClientEvents(rec, label)
    client = Client(
        server.ws_url,
        events=events,
        token=token,
        get_token=get_token,
        use_protobuf=use_protobuf,
        max_reconnect_delay=1.0,
        proxy=None,
    )
    return client, events


def subscribe(
    client: Client, channel: str, rec: Recorder, label: str = "main", **options: Any
) -> Subscription:
    return client.new_subscription(channel, events=SubEvents(rec, channel, label), **options)


@asynccontextmanager
async def subscribed(
    server: Server,
    channel: str,
    rec: Recorder,
    token: str = "",
    get_token: Callable[[], Awaitable[str]] | None = None,
    use_protobuf: bool = False,
) -> AsyncIterator[tuple[Client, Subscription]]:
    """A client of ``server`` connected, subscribed to ``channel`` and ready.

    Its events go to ``rec``; it is disconnected on exit, also when the body raises.
    """
    client, _ = sdk_client(server, rec, token, get_token, use_protobuf=use_protobuf)
    sub = subscribe(client, channel, rec)
    try:
        await client.connect()
        await sub.subscribe()
        await bounded(sub.ready())
        yield client, sub
    finally:
        await client.disconnect()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


class WireTap:
    """Wraps a centrifuge-python client's codec to read its wire.

    Records the bytes of each frame read and whether its publications in ``channel``
    were deltas.
    """

    def __init__(self, codec: Any, channel: str) -> None:
        self._codec = codec
        self._channel = channel
        self.frames: list[tuple[int, list[bool]]] = []

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._codec, attr)

    def decode_replies(self, data: Any) -> Any:
        replies = self._codec.decode_replies(data)
        flags = [
            bool(r["push"]["pub"].get("delta"))
            for r in replies
            if "push" in r and "pub" in r["push"] and r["push"].get("channel") == self._channel
        ]
        if flags:
            size = len(data.encode() if isinstance(data, str) else data)
            self.frames.append((size, flags))
        return replies
