"""Redis Cluster for the Redis engine: hash slots, the slot map, MOVED and ASK.

A Redis Cluster splits the key space into 16384 hash slots, each served by one master.
The slot of a key is CRC16 (XMODEM) of the key modulo 16384, or of its hash tag: the
part between the first ``{`` and the next ``}`` when that part is not empty. The Redis
engine puts every key of one channel in one slot by wrapping the channel in a hash tag
(``P.stream.{ch}``, ``P.stream.meta.{ch}``...), so each Lua script touches one slot.

:class:`ClusterCommandLink` stands where a :class:`CommandLink` stands for a standalone
Redis: it asks a seed node ``CLUSTER SLOTS`` for the slot map, keeps one command link
per master and sends each command to the master of its first key's slot. A ``MOVED``
reply (the slot moved: resharding, failover) updates the map, schedules a full refresh
and sends the command again to the named master; an ``ASK`` reply (the slot is being
migrated) sends ``ASKING`` and the command to the named node once, without changing the
map; ``TRYAGAIN`` and ``CLUSTERDOWN`` are retried a few times with a short backoff. When
a master link goes down the map is refreshed (a replica may have been promoted), again
until it works.

PUB/SUB: on Redis 7+ (``COMMAND INFO SSUBSCRIBE`` answers) client channels use sharded
PUB/SUB: :class:`ShardedSubscriber` keeps one :class:`ShardedPubSubLink` per master and
SSUBSCRIBEs each channel on the master of its slot, moving it when the slot map changes
or Redis drops it after a slot move; the engine publishes with SPUBLISH. Node-to-node
channels (and every channel on older clusters) use classic PUB/SUB, where a message
published on any node reaches subscribers on every node: :class:`ClusterPubSubLink` is
one connection to any live node, moving to the next known node when it is lost.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from rtserver.config import RedisAddress
from rtserver.engines.redis_scripts import Script
from rtserver.engines.redisconn import (
    CommandLink,
    PubSubLink,
    RedisUnavailable,
    evalsha,
)
from rtserver.logs import Logger

__all__ = ["SLOTS", "ClusterCommandLink", "ClusterPubSubLink", "crc16", "key_slot"]

_log = Logger()

#: Hash slots of a Redis Cluster.
SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), as Redis Cluster uses it."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


@lru_cache(maxsize=65536)
def key_slot(key: bytes | str) -> int:
    """The hash slot of ``key`` (its hash tag's when it has a non-empty one)."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


_SCRIPT_COMMANDS = frozenset(
    name for word in ("EVALSHA", "EVAL") for name in (word, word.lower(), word.encode())
)


def _first_key(args: tuple[Any, ...]) -> Any:
    """The key a command is routed by: the first key of EVAL/EVALSHA, else argument 1.

    The engine's commands (PUBLISH, DEL, EVALSHA, EVAL) all name their key (or channel)
    there; a command without one goes to any master.
    """
    if args[0] in _SCRIPT_COMMANDS:
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    return args[1] if len(args) > 1 else None


def _redirect_target(text: str, default_host: str) -> tuple[int, tuple[str, int]]:
    """(slot, (host, port)) of ``MOVED <slot> <host>:<port>`` / ``ASK ...``."""
    _, slot, where = text.split()[:3]
    host, _, port = where.rpartition(":")
    return int(slot), (host or default_host, int(port))


class ClusterCommandLink:
    """The command side of one Redis Cluster (see the module docstring).

    Offers what the engine uses of a :class:`CommandLink`: ``start``, ``stop``,
    ``execute``, ``evalsha``, ``ready``, ``ever_tried`` and ``address``.
    """

    kind = "cluster"
    #: Redirections and retries one command may take (a multi-key script on a slot in
    #: migration goes ASK, TRYAGAIN, ASK... until the keys have moved).
    max_redirects = 16
    retry_delay = 0.02
    retry_delay_max = 0.5
    refresh_min = 0.05
    refresh_max = 2.0
    #: Scheduled refreshes (MOVED, a master link down) start at most this often.
    refresh_interval = 0.5

    def __init__(
        self,
        address: RedisAddress,
        clock: IReactorTime,
        reactor: Any,
        *,
        scripts: Iterable[Script] = (),
        connect_timeout: float,
        io_timeout: float,
        on_change: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self._clock = clock
        self._reactor = reactor
        self._scripts = tuple(scripts)
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._on_change = on_change
        self._rng = rng or random.Random()
        #: asks CLUSTER SLOTS on short-lived connections; never started itself
        self._asker = CommandLink(
            address,
            clock,
            reactor,
            on_change=lambda: None,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
        )
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._masters: dict[tuple[str, int], CommandLink] = {}
        self._mapped = False
        self._tried = False
        self._refreshing: Deferred[None] | None = None
        self._refresh_again = False
        self._refresh_timer: IDelayedCall | None = None
        self._refresh_failures = 0
        self._last_refresh = float("-inf")
        #: retries waiting for their turn (TRYAGAIN backoff, a new master's link)
        self._waits: set[Deferred[Any]] = set()
        #: Whether the cluster has sharded PUB/SUB (Redis 7+: SSUBSCRIBE, SPUBLISH); known
        #: from the first slot map on.
        self.sharded = False
        #: Called after each change of the slot map.
        self.map_listeners: list[Callable[[], None]] = []
        self.stopped = True
        self.ready = False

    def __repr__(self) -> str:
        return f"<ClusterCommandLink {self.address}>"

    # --- lifecycle -------------------------------------------------------------------

    @property
    def ever_tried(self) -> bool:
        """True once the slot map was asked for and every master link tried to connect."""
        return self._tried and all(link.ever_tried for link in self._masters.values())

    def start(self) -> None:
        """Ask for the slot map and connect to every master (again until :meth:`stop`)."""
        if self.stopped:
            self.stopped = False
            self.refresh()

    def stop(self) -> Deferred[None]:
        """Close every master link and cancel every timer."""
        self.stopped = True
        if self._refresh_timer is not None and self._refresh_timer.active():
            self._refresh_timer.cancel()
        self._refresh_timer = None
        if self._refreshing is not None:
            self._refreshing.cancel()
        for waiting in list(self._waits):
            waiting.cancel()
        links = list(self._masters.values())
        self._update()
        d = gatherResults([link.stop() for link in links], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _map_changed(self) -> None:
        for listener in list(self.map_listeners):
            listener()

    def owner(self, key: bytes) -> tuple[str, int] | None:
        """The master serving ``key``'s slot in the current map (None: none known)."""
        return self._slots[key_slot(key)]

    def links(self) -> list[CommandLink]:
        """The command link of each master of the current slot map."""
        return list(self._masters.values())

    def masters(self) -> list[tuple[str, int]]:
        """(host, port) of each master of the current slot map."""
        return list(self._masters)

    def nodes(self) -> list[tuple[str, int]]:
        """Every node worth trying, masters of the current map first, then the seeds."""
        known = [target for target, link in self._masters.items() if link.ready]
        known += [t for t in self._masters if t not in known]
        known += [s for s in self.address.cluster_seeds if s not in known]
        return known

    def _update(self) -> None:
        ready = (
            not self.stopped
            and self._mapped
            and bool(self._masters)
            and all(link.ready for link in self._masters.values())
        )
        if ready != self.ready:
            self.ready = ready
        self._on_change()

    def _link_changed(self, target: tuple[str, int]) -> None:
        link = self._masters.get(target)
        if link is None:
            return
        if not self.stopped and not link.ready and link.ever_tried and self._mapped:
            # a master is unreachable: a replica may be taking over its slots
            self._schedule_refresh()
        self._update()

    # --- the slot map ----------------------------------------------------------------

    def refresh(self) -> Deferred[None]:
        """Ask the cluster for its slot map now (joins a refresh under way)."""
        if self.stopped:
            return succeed(None)
        if self._refreshing is not None:
            self._refresh_again = True
            return self._refreshing
        d = Deferred.fromCoroutine(self._refresh())
        if not d.called:
            # still under way; a refresh that finished at once (every node refused
            # synchronously) cleared its own record and must not stay "under way"
            self._refreshing = d
        d.addErrback(self._refresh_failed)
        return d

    def _refresh_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # stop() cancels a refresh under way
            _log.failure(
                "redis cluster {address}: refresh failed", failure, address=str(self.address)
            )

    def refresh_soon(self) -> None:
        """Ask for the slot map again after a short, rate-limited delay."""
        self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        if self.stopped or self._refresh_timer is not None:
            return
        if self._refreshing is not None:
            self._refresh_again = True
            return
        delay = min(self.refresh_max, self.refresh_min * 2**self._refresh_failures)
        delay *= 0.5 + self._rng.random() / 2
        # a master that stays down must not make every reconnect attempt ask for the map
        delay = max(delay, self._last_refresh + self.refresh_interval - self._clock.seconds())

        def fire() -> None:
            self._refresh_timer = None
            self.refresh()

        self._refresh_timer = self._clock.callLater(delay, fire)

    async def _refresh(self) -> None:
        self._last_refresh = self._clock.seconds()
        try:
            reply, problems = None, []
            for host, port in self.nodes():
                try:
                    replies = await self._asker.ask(
                        host,
                        port,
                        [
                            *self._asker._auth_args(),
                            ("COMMAND", "INFO", "SSUBSCRIBE"),
                            ("CLUSTER", "SLOTS"),
                        ],
                        self.address.tls,
                        "engine.redis.tls",
                    )
                    sharded, reply = replies[-2] != [None], replies[-1]
                except CancelledError:
                    raise
                except Exception as e:  # this node cannot answer: ask the next one
                    problems.append(f"{host}:{port}: {str(e) or type(e).__name__}")
                    continue
                if self._apply(reply, host):
                    self.sharded = sharded
                    break
                problems.append(f"{host}:{port}: no usable slot map")
                reply = None
        finally:
            self._refreshing = None
            self._tried = True
        if self.stopped:
            return
        if reply is None:
            self._refresh_failures += 1
            level = _log.warn if self._refresh_failures == 1 else _log.debug
            level(
                "redis cluster {address}: no node gave a slot map: {problems}",
                address=str(self.address),
                problems="; ".join(problems)[:500],
            )
            self._update()
            self._schedule_refresh()
            return
        self._refresh_failures = 0
        self._update()
        self._map_changed()
        if self._refresh_again:
            self._refresh_again = False
            self._schedule_refresh()

    def _apply(self, reply: Any, answered_by: str) -> bool:
        """Adopt a ``CLUSTER SLOTS`` reply; False when it is malformed or names no master.

        Slots it leaves out (``cluster-require-full-coverage no``, a cluster being set
        up) have no server: their commands fail until a later map covers them.
        """
        slots: list[tuple[str, int] | None] = [None] * SLOTS
        try:
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                host = master[0].decode() if master[0] else answered_by
                target = (host, int(master[1]))
                for slot in range(start, end + 1):
                    slots[slot] = target
        except (TypeError, ValueError, IndexError, UnicodeDecodeError):
            return False
        wanted = {target for target in slots if target is not None}
        if not wanted:
            return False
        self._slots = slots
        for target in wanted:
            self._link(target)
        for target in [t for t in self._masters if t not in wanted]:
            link = self._masters.pop(target)
            link.stop().addErrback(lambda f: _log.failure("redis cluster: link stop", f))
        if not self._mapped:
            _log.info(
                "redis cluster {address}: {n} masters serve the 16384 slots",
                address=str(self.address),
                n=len(wanted),
            )
        self._mapped = True
        return True

    def _link(self, target: tuple[str, int]) -> CommandLink:
        link = self._masters.get(target)
        if link is None:
            host, port = target
            address = dataclasses.replace(self.address, host=host, port=port, cluster_seeds=())
            link = CommandLink(
                address,
                self._clock,
                self._reactor,
                scripts=self._scripts,
                in_cluster=True,
                on_change=functools.partial(self._link_changed, target),
                rng=self._rng,
                connect_timeout=self._connect_timeout,
                io_timeout=self._io_timeout,
            )
            self._masters[target] = link
            if not self.stopped:
                link.start()
        return link

    # --- commands --------------------------------------------------------------------

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command on the master of its key's slot, following redirections."""
        key = _first_key(args)
        slot = key_slot(key) if key is not None else 0
        return self._run(slot, args, None, 0)

    def evalsha(self, script: Script, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        """EVALSHA (EVAL on NOSCRIPT) on the master of the keys' slot."""
        return evalsha(self.execute, script, keys, args)

    def _run(
        self, slot: int, args: tuple[Any, ...], ask: tuple[str, int] | None, tries: int
    ) -> Deferred[Any]:
        if self.stopped or not self._mapped:
            return fail(RedisUnavailable(f"redis cluster {self.address} is unavailable"))
        target = ask or self._slots[slot]
        if target is None:
            self._schedule_refresh()
            return fail(
                RedisUnavailable(f"redis cluster {self.address}: slot {slot} has no master")
            )
        link = self._link(target)
        if not link.ready:
            self._schedule_refresh()  # a replica may be taking over
            return fail(RedisUnavailable(f"redis cluster node {target[0]}:{target[1]} is down"))
        if ask is not None:
            link.execute("ASKING").addErrback(lambda f: None)  # the next reply tells
        d = link.execute(*args)
        return d.addErrback(self._redirected, slot, args, target, tries)

    def _redirected(
        self,
        failure: Failure,
        slot: int,
        args: tuple[Any, ...],
        target: tuple[str, int],
        tries: int,
    ) -> Any:
        text = str(failure.value)
        if not text.startswith(("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")):
            return failure
        if tries >= self.max_redirects:
            # the nodes disagree on the slot's owner, or a migration never ends
            self._schedule_refresh()
            return Failure(
                RedisUnavailable(
                    f"redis cluster {self.address}: slot {slot} redirected {tries + 1} "
                    f"times, last: {text[:80]}"
                )
            )
        if text.startswith("MOVED "):
            moved_slot, where = _redirect_target(text, target[0])
            if self._slots[moved_slot] != where:
                self._slots[moved_slot] = where
                self._map_changed()
            self._schedule_refresh()
            return self._when_up(where, lambda: self._run(slot, args, None, tries + 1))
        if text.startswith("ASK "):
            _, where = _redirect_target(text, target[0])
            return self._when_up(where, lambda: self._run(slot, args, where, tries + 1))
        # TRYAGAIN (keys of a slot in migration), CLUSTERDOWN (failover under way)
        delay = min(self.retry_delay_max, self.retry_delay * 2**tries)
        return self._pause(delay).addCallback(lambda _: self._run(slot, args, None, tries + 1))

    def _pause(self, delay: float) -> Deferred[None]:
        """Fire after ``delay``; fails with RedisUnavailable when :meth:`stop` comes first."""
        d: Deferred[None] = deferLater(self._clock, delay, lambda: None)
        self._waits.add(d)

        def done(result: Any) -> Any:
            self._waits.discard(d)
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(RedisUnavailable(f"redis cluster {self.address} stopped"))
            return result

        return d.addBoth(done)

    def _when_up(self, target: tuple[str, int], then: Callable[[], Deferred[Any]]) -> Any:
        """``then()`` once the link to ``target`` is up (a new master: it is connecting)."""
        link = self._link(target)
        if link.ready:
            return then()

        async def wait() -> Any:
            waited = 0.0
            delay = self.retry_delay
            while not link.ready and not self.stopped and waited < link.io_timeout:
                await self._pause(delay)
                waited += delay
                delay = min(delay * 2, self.retry_delay_max)
            return await then()

        return Deferred.fromCoroutine(wait())


class ClusterPubSubLink(PubSubLink):
    """Classic PUB/SUB on one node of a Redis Cluster, any node (see the module docs).

    Each (re)connect tries the next node ``nodes()`` lists (the cluster's masters, then
    its seeds), so losing the node it used moves the link to another one.
    """

    def __init__(self, *args: Any, nodes: Callable[[], list[tuple[str, int]]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._nodes = nodes
        self._turn = 0

    def _resolve(self) -> Deferred[tuple[str, int]]:
        nodes = self._nodes() or [(self.address.host, self.address.port)]
        target = nodes[self._turn % len(nodes)]
        self._turn += 1
        return succeed(target)


class ShardedPubSubLink(PubSubLink):
    """Sharded PUB/SUB (SSUBSCRIBE) on one master of a Redis Cluster (Redis 7+).

    One SSUBSCRIBE carries channels of one hash slot only. When the cluster moves a slot
    away, Redis unsubscribes its shard channels itself (an ``sunsubscribe`` this link did
    not ask for): ``on_lost(channel)`` is called so the channel is subscribed again at
    the slot's new master.
    """

    kind = "sharded pubsub"
    subscribe_command = "SSUBSCRIBE"
    unsubscribe_command = "SUNSUBSCRIBE"
    message_kind = b"smessage"

    def __init__(self, *args: Any, on_lost: Callable[[bytes], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost
        self._leaving: set[bytes] = set()

    def _batches(self, names: list[bytes]) -> Iterator[list[bytes]]:
        by_slot: dict[int, list[bytes]] = {}
        for name in names:
            by_slot.setdefault(key_slot(name), []).append(name)
        for group in by_slot.values():
            yield from super()._batches(group)

    def unsubscribe(self, names: list[bytes]) -> Deferred[Any]:
        """SUNSUBSCRIBE if connected (expected: not reported as lost)."""
        if self._proto is not None and self._proto.transport is not None:
            self._leaving.update(names)
        return super().unsubscribe(names)

    def _reply(self, proto: Any, reply: Any) -> None:
        if (
            proto is self._proto
            and isinstance(reply, list)
            and len(reply) == 3
            and reply[0] == b"sunsubscribe"
        ):
            if reply[1] in self._leaving:
                self._leaving.discard(reply[1])
            else:  # the slot moved: Redis dropped the subscription by itself
                self._last_received = self._clock.seconds()
                self._on_lost(reply[1])
                return
        super()._reply(proto, reply)

    def _lost(self, proto: Any, why: Failure) -> None:
        if proto is self._proto:
            self._leaving.clear()
        super()._lost(proto, why)


class ShardedSubscriber:
    """The client channels of one Redis Cluster, each SSUBSCRIBEd on its slot's master.

    Keeps one :class:`ShardedPubSubLink` per master the channels need, moves channels
    when the slot map changes, and offers the link interface the engine's health uses
    (``links()``).
    """

    def __init__(
        self,
        command: ClusterCommandLink,
        clock: IReactorTime,
        reactor: Any,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_change: Callable[[], None],
        connect_timeout: float,
        io_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        self._command = command
        self._clock = clock
        self._reactor = reactor
        self._on_message = on_message
        self._on_change = on_change
        self._timeouts = (connect_timeout, io_timeout)
        self._rng = rng
        self.channels: set[bytes] = set()
        #: where each channel is subscribed (or being subscribed) now
        self._where: dict[bytes, tuple[str, int]] = {}
        self._links: dict[tuple[str, int], ShardedPubSubLink] = {}
        #: subscribe calls waiting for a new link's first connection
        self._waiters: dict[tuple[str, int], list[Deferred[Any]]] = {}
        self.stopped = True
        command.map_listeners.append(self._place_all)

    def links(self) -> list[ShardedPubSubLink]:
        """The PUB/SUB link of each master some channel lives on."""
        return list(self._links.values())

    def start(self) -> None:
        """Subscribe what is wanted as soon as the slot map is known."""
        self.stopped = False
        self._place_all()

    def stop(self) -> Deferred[None]:
        """Close every link."""
        self.stopped = True
        links, self._links = list(self._links.values()), {}
        self._where.clear()
        for target in list(self._waiters):
            self._release(target, RedisUnavailable("redis cluster PUB/SUB stopped"))
        d = gatherResults([link.stop() for link in links], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _link(self, target: tuple[str, int]) -> ShardedPubSubLink:
        link = self._links.get(target)
        if link is None:
            host, port = target
            address = dataclasses.replace(
                self._command.address, host=host, port=port, cluster_seeds=()
            )
            link = ShardedPubSubLink(
                address,
                self._clock,
                self._reactor,
                channels=functools.partial(self._channels_at, target),
                on_message=self._on_message,
                on_probe=lambda link: None,
                probe_interval=0,
                on_lost=self._lost,
                connect_timeout=self._timeouts[0],
                io_timeout=self._timeouts[1],
                on_change=functools.partial(self._link_changed, target),
                rng=self._rng,
            )
            self._links[target] = link
            link.start()
        return link

    def _link_changed(self, target: tuple[str, int]) -> None:
        link = self._links.get(target)
        if link is not None and link.ready:
            self._release(target, None)  # its set-up subscribed every channel placed there
        elif link is not None and link.ever_tried:
            self._release(target, RedisUnavailable(f"redis {link.address} PUB/SUB is down"))
        self._on_change()

    def _release(self, target: tuple[str, int], error: Exception | None) -> None:
        for waiting in self._waiters.pop(target, []):
            if error is None:
                waiting.callback(None)
            else:
                waiting.errback(error)

    def _channels_at(self, target: tuple[str, int]) -> list[bytes]:
        return [name for name, where in self._where.items() if where == target]

    def subscribe(self, name: bytes) -> Deferred[Any]:
        """SSUBSCRIBE ``name`` on its master (and again after every move or reconnect)."""
        self.channels.add(name)
        target = self._command.owner(name)
        if self.stopped or target is None:
            return fail(RedisUnavailable(f"redis cluster {self._command.address}: no slot map"))
        self._where[name] = target
        d = self._subscribe_at(name, target)

        def failed(failure: Failure) -> Failure:
            if self._where.get(name) == target:
                self._lost(name)
            return failure

        return d.addErrback(failed)

    def _subscribe_at(self, name: bytes, target: tuple[str, int]) -> Deferred[Any]:
        link = self._link(target)
        if link.ready:
            return link.subscribe([name])
        # connecting: its set-up subscribes every channel placed there
        d: Deferred[Any] = Deferred()
        self._waiters.setdefault(target, []).append(d)
        return d

    def unsubscribe(self, name: bytes) -> Deferred[Any]:
        """SUNSUBSCRIBE ``name``."""
        self.channels.discard(name)
        target = self._where.pop(name, None)
        link = self._links.get(target) if target is not None else None
        if link is None:
            return succeed(None)
        return link.unsubscribe([name])

    def _place_all(self) -> None:
        """Move every channel whose slot changed master; drop links no channel needs."""
        if self.stopped:
            return
        for name in list(self.channels):
            target = self._command.owner(name)
            where = self._where.get(name)
            if target is None or target == where:
                continue
            old = self._links.get(where) if where is not None else None
            self._where[name] = target
            if old is not None:
                old.unsubscribe([name]).addErrback(self._unsubscribe_failed, name)
            self._subscribe_at(name, target).addErrback(self._subscribe_failed, name, target)
        masters = set(self._command.masters())
        for target in masters:  # a link per master, ready before channels need it
            self._link(target)
        for target in [t for t in self._links if t not in masters]:
            self._release(target, RedisUnavailable("redis cluster: the master left"))
            self._links.pop(target).stop().addErrback(self._unsubscribe_failed, b"")
        self._on_change()

    def _lost(self, name: bytes) -> None:
        """Redis dropped ``name`` (its slot moved): find its master again."""
        if name in self.channels:
            self._where.pop(name, None)
            self._command.refresh_soon()  # the next slot map places it

    def _subscribe_failed(self, failure: Failure, name: bytes, target: tuple[str, int]) -> None:
        # e.g. MOVED (the map was stale): the next slot map places the channel again
        if self._where.get(name) == target:
            self._lost(name)
        _log.debug(
            "redis cluster: subscribe of {name!r} failed: {error}",
            name=name,
            error=str(failure.value),
        )

    def _unsubscribe_failed(self, failure: Failure, name: bytes) -> None:
        _log.debug(
            "redis cluster: unsubscribe of {name!r} failed: {error}",
            name=name,
            error=str(failure.value),
        )
