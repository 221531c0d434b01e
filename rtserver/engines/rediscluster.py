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

PUB/SUB uses classic (not sharded) Redis PUB/SUB: a message published on any node
reaches subscribers on every node, so :class:`ClusterPubSubLink` is one connection to
any live node of the cluster, moving to the next known node when it is lost.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Iterable
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

    def links(self) -> list[CommandLink]:
        """The command link of each master of the current slot map."""
        return list(self._masters.values())

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
        d = self._refreshing = Deferred.fromCoroutine(self._refresh())
        d.addErrback(self._refresh_failed)
        return d

    def _refresh_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # stop() cancels a refresh under way
            _log.failure(
                "redis cluster {address}: refresh failed", failure, address=str(self.address)
            )

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
                    reply = await self._asker.ask(
                        host,
                        port,
                        [*self._asker._auth_args(), ("CLUSTER", "SLOTS")],
                        self.address.tls,
                        "engine.redis.tls",
                    )
                except CancelledError:
                    raise
                except Exception as e:  # this node cannot answer: ask the next one
                    problems.append(f"{host}:{port}: {str(e) or type(e).__name__}")
                    continue
                if self._apply(reply, host):
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
        if tries >= self.max_redirects or not text.startswith(
            ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
        ):
            return failure
        if text.startswith("MOVED "):
            moved_slot, where = _redirect_target(text, target[0])
            self._slots[moved_slot] = where
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
