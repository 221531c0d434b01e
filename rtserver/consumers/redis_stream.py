"""The ``redis_stream`` consumer: server API commands from Redis Streams, as Centrifugo reads them.

Per stream, in a consumer group (``consumer_group``, created at ``$`` with ``MKSTREAM``
when missing), under this node's id as the consumer name:

* ``XREADGROUP ... BLOCK 5000 ... >`` reads new entries, at most ``num_workers`` in hand
  at a time; each entry is handed to a worker slot;
* an entry whose command ran (or can never run: logged and skipped) is ``XACK``-ed; an
  internal error leaves it pending;
* every 5 s, ``XAUTOCLAIM`` takes over entries pending longer than ``visibility_timeout``
  (this node's own failures, or those of a node that died) and runs them again.

Connections: the blocking reads of each stream have a command link of their own (a
blocking command holds its connection; its io timeout is the block time plus
``io_timeout``), acknowledgements and claims share one more. The links are
:mod:`rtserver.engines.redisconn`'s: they reconnect with backoff by themselves, and the
loops here wait for a link to be up again instead of polling it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from rtserver.config import RedisStreamConsumerConfig, redis_shards
from rtserver.consumers.dispatch import DONE, Call, dispatch_command, dispatch_publication
from rtserver.core.stats import NodeStats
from rtserver.engines.redisconn import CommandLink, RedisUnavailable
from rtserver.logs import Logger

__all__ = ["RedisStreamConsumer"]

_log = Logger()

#: Centrifugo's fixed timings: XREADGROUP's BLOCK and the XAUTOCLAIM period.
BLOCK = 5.0
RECLAIM_INTERVAL = 5.0
#: Waits after a failed read that was not an outage (a wrong key type, say).
_BACKOFF_MIN = 0.2
_BACKOFF_MAX = 5.0
#: How long stopping waits for the commands in hand before closing the links.
_STOP_GRACE = 5.0
#: Tries of an XACK across reconnections of the link before leaving the entry pending.
_ACK_ATTEMPTS = 3

Entry = tuple[bytes, "list[bytes] | None"]


class _Waiter:
    """A Deferred to wait on, fired (or cancelled) by whoever holds it."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def fire(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def cancel(self) -> None:
        for d in list(self._waiting):
            d.cancel()


class RedisStreamConsumer(Service):
    """One ``consumers`` entry of type ``redis_stream``: a loop per stream.

    Args:
        name: the consumer's ``name`` (in log lines).
        config: its ``redis_stream`` section.
        call: runs a server API command (``APIExecutor.call``).
        consumer_id: the consumer name in the group (this node's id, as Centrifugo).
        clock: the injected clock.
        reactor: connects the links.
        max_payload_size: a larger payload is logged and skipped.
        stats: where the processed and failed messages are counted (``/metrics``).
        block, reclaim_interval: Centrifugo's 5 s each (tests shorten them).
    """

    def __init__(
        self,
        name: str,
        config: RedisStreamConsumerConfig,
        call: Call,
        consumer_id: str,
        clock: IReactorTime,
        reactor: Any,
        *,
        max_payload_size: int,
        stats: NodeStats,
        block: float = BLOCK,
        reclaim_interval: float = RECLAIM_INTERVAL,
    ) -> None:
        self.setName(f"consumer {name}")
        self.consumer = name
        self.config = config
        self.call = call
        self.consumer_id = consumer_id
        self.clock = clock
        self.reactor = reactor
        self.max_payload_size = max_payload_size
        self.stats = stats
        stats.consumer_processed.setdefault(name, 0)
        stats.consumer_errors.setdefault(name, 0)
        self.block = block
        self.reclaim_interval = reclaim_interval
        (self._address,) = redis_shards(config)
        self.command, self.command_ready = self.link()
        self.streams = [_StreamLoop(self, stream) for stream in config.streams]

    def link(self, *, blocking: bool = False) -> tuple[CommandLink, _Waiter]:
        """A command link to the consumer's Redis and what fires when it is (back) up.

        A blocking link waits ``block`` longer for a reply.
        """
        io_timeout = self.config.io_timeout
        if blocking:
            io_timeout += self.block
        ready = _Waiter()
        links: list[CommandLink] = []

        def changed() -> None:
            if links and links[0].ready:
                ready.fire()

        link = CommandLink(
            self._address,
            self.clock,
            self.reactor,
            connect_timeout=self.config.connect_timeout,
            io_timeout=io_timeout,
            on_change=changed,
        )
        links.append(link)
        return link, ready

    def startService(self) -> None:  # noqa: N802 - Twisted API
        """Connect and start reading every stream."""
        super().startService()
        _log.info(
            "consumer {consumer}: reading redis streams {streams} as {group}/{id}",
            consumer=self.consumer,
            streams=",".join(self.config.streams),
            group=self.config.consumer_group,
            id=self.consumer_id,
        )
        self.command.start()
        for loop in self.streams:
            loop.start()

    def stopService(self) -> Deferred[Any]:  # noqa: N802 - Twisted API
        """Stop reading, let the commands in hand finish (5 s at most), close the links."""
        super().stopService()
        for loop in self.streams:
            loop.stop_reading()
        self.command_ready.cancel()
        busy = [d for loop in self.streams for d in loop.in_hand()]
        waited: Deferred[Any] = DeferredList(busy, consumeErrors=True) if busy else succeed(None)
        waited.addTimeout(_STOP_GRACE, self.clock).addErrback(lambda _: None)

        def close(_: Any) -> Deferred[Any]:
            links = [self.command.stop()] + [loop.link.stop() for loop in self.streams]
            return DeferredList(links, consumeErrors=True)

        return waited.addCallback(close)


class _StreamLoop:
    """Reads, runs, acknowledges and reclaims the entries of one stream."""

    def __init__(self, owner: RedisStreamConsumer, stream: str) -> None:
        self.owner = owner
        self.stream = stream
        self.link, self.link_ready = owner.link(blocking=True)
        self.workers = owner.config.num_workers
        self.queue: deque[Entry] = deque()
        self.held: set[bytes] = set()  # ids queued, running or being acknowledged
        self.running: dict[bytes, Deferred[Any]] = {}
        self.acking: dict[bytes, Deferred[Any]] = {}
        self.slot = _Waiter()
        self.reading = False
        self._pause: Deferred[None] | None = None
        self._reclaimer: LoopingCall | None = None
        self._reclaiming = False

    # lifecycle

    def start(self) -> None:
        self.reading = True
        self.link.start()
        _guard(Deferred.fromCoroutine(self._poll()), "read loop of {stream} stopped", self)
        if self.owner.config.visibility_timeout > 0:
            self._reclaimer = LoopingCall(self._reclaim_tick)
            self._reclaimer.clock = self.owner.clock
            _guard(
                self._reclaimer.start(self.owner.reclaim_interval, now=False),
                "reclaim loop of {stream} stopped",
                self,
            )

    def stop_reading(self) -> None:
        self.reading = False
        if self._reclaimer is not None and self._reclaimer.running:
            self._reclaimer.stop()
        self.queue.clear()
        self.slot.cancel()
        self.link_ready.cancel()
        if self._pause is not None:
            self._pause.cancel()

    def in_hand(self) -> list[Deferred[Any]]:
        return [*self.running.values(), *self.acking.values()]

    # reading

    async def _poll(self) -> None:
        config = self.owner.config
        group_ready = False
        backoff = _BACKOFF_MIN
        while self.reading:
            try:
                if not self.link.ready:
                    await self.link_ready.wait()
                    continue
                if not group_ready:
                    await self._create_group()
                    group_ready = True
                free = self.workers - len(self.running) - len(self.queue)
                if free <= 0:
                    await self.slot.wait()
                    continue
                reply = await self.link.execute(
                    "XREADGROUP", "GROUP", config.consumer_group, self.owner.consumer_id,
                    "COUNT", free, "BLOCK", int(self.owner.block * 1000),
                    "STREAMS", self.stream, ">",
                )  # fmt: skip
            except CancelledError:
                continue  # stopping (or a wait ended): the loop condition decides
            except RedisUnavailable as e:
                if self.link.ready:
                    # refused by a link that stays up (a Redis Cluster node): no busy loop
                    self._read_failed(e)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                continue  # otherwise the link reconnects: wait for it above
            except Exception as e:
                if "NOGROUP" in str(e):
                    group_ready = False  # the stream or the group was deleted
                    continue
                self._read_failed(e)
                await self._sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_MIN
            for _stream, entries in reply or ():
                self._enqueue(entries)

    def _read_failed(self, error: Exception) -> None:
        _log.error(
            "consumer {consumer}: error reading redis stream {stream}: {error}",
            consumer=self.owner.consumer,
            stream=self.stream,
            error=str(error)[:200],
        )

    async def _create_group(self) -> None:
        try:
            await self.link.execute(
                "XGROUP", "CREATE", self.stream, self.owner.config.consumer_group, "$", "MKSTREAM"
            )
        except RedisUnavailable:
            raise
        except Exception as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _sleep(self, seconds: float) -> None:
        d: Deferred[None] = Deferred()
        call: IDelayedCall = self.owner.clock.callLater(seconds, d.callback, None)
        d.addErrback(lambda f: call.cancel() if call.active() else None)
        self._pause = d
        try:
            await d
        except CancelledError:
            pass
        finally:
            self._pause = None

    # reclaiming

    def _reclaim_tick(self) -> None:
        if self._reclaiming or not self.reading:
            return
        self._reclaiming = True
        d = Deferred.fromCoroutine(self._reclaim())
        _guard(d, "reclaiming entries of {stream} failed", self)
        d.addCallback(self._reclaimed)

    def _reclaimed(self, _: object) -> None:
        self._reclaiming = False

    async def _reclaim(self) -> None:
        owner = self.owner
        config = owner.config
        start: bytes | str = "0-0"
        while self.reading:
            free = self.workers - len(self.running) - len(self.queue)
            if free <= 0:
                return  # the next tick claims what is still idle then
            try:
                reply = await owner.command.execute(
                    "XAUTOCLAIM", self.stream, config.consumer_group, owner.consumer_id,
                    int(config.visibility_timeout * 1000), start, "COUNT", free,
                )  # fmt: skip
            except RedisUnavailable:
                return
            except Exception as e:
                if "NOGROUP" not in str(e):
                    _log.error(
                        "consumer {consumer}: error claiming pending entries of {stream}: "
                        "{error}",
                        consumer=owner.consumer,
                        stream=self.stream,
                        error=str(e)[:200],
                    )
                return
            cursor, entries = reply[0], reply[1]
            if entries:
                _log.info(
                    "consumer {consumer}: claimed {count} pending entries of {stream}",
                    consumer=owner.consumer,
                    count=len(entries),
                    stream=self.stream,
                )
                self._enqueue(entries)
            if not entries or cursor == b"0-0":
                return
            start = cursor

    # running

    def _enqueue(self, entries: list[Any]) -> None:
        for entry in entries:
            if entry is None:
                continue
            entry_id, fields = entry[0], entry[1]
            if entry_id in self.held:
                continue  # already in hand here (claimed back while it runs)
            self.held.add(entry_id)
            self.queue.append((entry_id, fields))
        self._drain()

    def _drain(self) -> None:
        while self.queue and len(self.running) < self.workers and self.reading:
            entry_id, fields = self.queue.popleft()
            d = Deferred.fromCoroutine(self._process(entry_id, fields))
            self.running[entry_id] = d
            d.addErrback(self._crashed)
            _guard(d, "processing an entry of {stream} failed", self)
            d.addBoth(self._finished, entry_id)

    def _crashed(self, failure: Failure) -> Failure:
        self.owner.stats.count(self.owner.stats.consumer_errors, self.owner.consumer)
        return failure

    def _finished(self, result: Any, entry_id: bytes) -> Any:
        # the slot is free once the command ran; its XACK may still be on the way (as in
        # Centrifugo), which lets the next read overlap it
        self.running.pop(entry_id, None)
        if entry_id not in self.acking:
            self.held.discard(entry_id)
        self._drain()
        self.slot.fire()
        return result

    async def _process(self, entry_id: bytes, fields: list[bytes] | None) -> None:
        owner = self.owner
        config = owner.config
        if fields is None:
            self._start_ack(entry_id)  # deleted from the stream while pending
            return
        values = {
            fields[i].decode("utf-8", "replace"): fields[i + 1]
            for i in range(0, len(fields) - 1, 2)
        }
        payload = values.get(config.payload_value)
        if payload is None:
            self._bad(entry_id, f"payload value {config.payload_value!r} not found")
            self._start_ack(entry_id)
            return
        if len(payload) > owner.max_payload_size:
            self._bad(
                entry_id,
                f"payload of {len(payload)} bytes exceeds {owner.max_payload_size} "
                "(http_api.max_request_body_size)",
            )
            self._start_ack(entry_id)
            return
        mode = config.publication_data_mode

        def text(key: str) -> str:
            value = values.get(key) if key else None
            return "" if value is None else value.decode("utf-8", "replace")

        if mode.enabled:
            prefix = mode.tags_value_prefix
            tags = (
                {k[len(prefix) :]: v.decode("utf-8", "replace") for k, v in values.items()
                 if k.startswith(prefix)}
                if prefix
                else {}
            )  # fmt: skip
            outcome = await dispatch_publication(
                owner.call,
                owner.consumer,
                payload,
                text(mode.channels_value).split(","),
                idempotency_key=text(mode.idempotency_key_value),
                delta=text(mode.delta_value),
                tags=tags,
            )
        else:
            outcome = await dispatch_command(
                owner.call, owner.consumer, text(config.method_value), payload
            )
        stats = owner.stats
        if outcome == DONE:
            stats.count(stats.consumer_processed, owner.consumer)
            self._start_ack(entry_id)
        else:
            stats.count(stats.consumer_errors, owner.consumer)

    def _bad(self, entry_id: bytes, reason: str) -> None:
        """Log an entry that can never run (it is acknowledged: processed, for /metrics)."""
        self.owner.stats.count(self.owner.stats.consumer_processed, self.owner.consumer)
        _log.error(
            "consumer {consumer}: skip entry {id} of redis stream {stream}: {reason}",
            consumer=self.owner.consumer,
            id=entry_id.decode("ascii", "replace"),
            stream=self.stream,
            reason=reason,
        )

    def _start_ack(self, entry_id: bytes) -> None:
        d = Deferred.fromCoroutine(self._ack(entry_id))
        self.acking[entry_id] = d
        _guard(d, "acknowledging an entry of {stream} failed", self)
        d.addCallback(self._acked, entry_id)

    def _acked(self, _: object, entry_id: bytes) -> None:
        self.acking.pop(entry_id, None)
        if entry_id not in self.running:
            self.held.discard(entry_id)

    async def _ack(self, entry_id: bytes) -> None:
        """XACK; while the link is down, wait for it (a few times) instead of failing."""
        owner = self.owner
        error: Exception | None = None
        for _attempt in range(_ACK_ATTEMPTS):
            try:
                if not owner.command.ready:
                    await owner.command_ready.wait()
                await owner.command.execute(
                    "XACK", self.stream, owner.config.consumer_group, entry_id
                )
                return
            except CancelledError:
                return  # stopping: still pending, claimed again later
            except RedisUnavailable as e:
                error = e
            except Exception as e:
                error = e
                break
        # still pending: claimed and run again after visibility_timeout
        _log.warn(
            "consumer {consumer}: error acknowledging entry {id} of {stream}: {error}",
            consumer=owner.consumer,
            id=entry_id.decode("ascii", "replace"),
            stream=self.stream,
            error=str(error)[:200],
        )


def _guard(d: Deferred[Any], what: str, loop: _StreamLoop) -> None:
    """Log a Deferred's unexpected failure (a bug) with its traceback; never raise."""

    def failed(failure: Failure) -> None:
        if failure.check(CancelledError):
            return None
        _log.failure(
            "consumer {consumer}: " + what,
            failure,
            consumer=loop.owner.consumer,
            stream=loop.stream,
        )
        return None

    d.addErrback(failed)

