"""The Redis engine: the broker, history and presence shared by every node of a cluster.

Key layout as Go Centrifugo (prefix ``P`` = ``engine.redis.prefix``):

* PUB/SUB channel ``P.client.<ch>``, subscribed while this node has local subscribers;
  messages ``__p1:<offset>:<epoch>__`` + publication (with history), the bare publication
  (without), ``__j__`` + ClientInfo (join), ``__l__`` + ClientInfo (leave).
* History: stream ``P.stream.<ch>`` (entry id ``<offset>-0``, field ``d``) and meta hash
  ``P.stream.meta.<ch>`` (``e`` epoch, ``s`` top offset, ``v``/``ve`` the last
  publication version and version epoch), changed by one Lua script
  together with the PUBLISH; idempotent results in ``P.result.<ch>.<key>``.
* Presence: hash ``P.presence.data.<ch>`` plus zset ``P.presence.expire.<ch>`` scored by
  expire-at (ms); entries expire ``presence_ttl`` after their last ``add_presence``.
* Control: broadcast channel ``P.control``, per-node channel ``P.node.<uid>``.

Payloads are JSON (:mod:`rtserver.engines.wire`), not the Protobuf of Go Centrifugo, so
rtserver and Centrifugo nodes must not share a prefix.

Several addresses shard channels with jump consistent hash of the channel name; the
control channels live on the first shard. Each address is a standalone Redis (plain or
TLS) or a Sentinel-monitored master (:mod:`rtserver.engines.redisconn`). Links reconnect
by themselves and resubscribe; while one is down ``healthy`` is False and calls that
need it fail at once.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Hashable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.config import RedisAddress, RedisEngineConfig, redis_shards
from rtserver.core.ports import IEngine, IEngineHandler
from rtserver.core.types import (
    SUPPRESS_IDEMPOTENCY,
    SUPPRESS_VERSION,
    ControlMessage,
    HistoryFilter,
    HistoryResult,
    PresenceStats,
    PublishOptions,
    Suppressed,
)
from rtserver.engines import redis_scripts as scripts
from rtserver.engines.memory import new_epoch
from rtserver.engines.rediscluster import (
    ClusterCommandLink,
    ClusterPubSubLink,
    ShardedSubscriber,
)
from rtserver.engines.redisconn import (
    CommandLink,
    PubSubLink,
    RedisTimeout,
    RedisUnavailable,
    SentinelWatch,
    shard_index,
)
from rtserver.engines.wire import (
    JOIN_PREFIX,
    LEAVE_PREFIX,
    PROBE,
    WireError,
    decode_client_info,
    decode_control,
    decode_publication,
    deliver,
    encode_client_info,
    encode_control,
    encode_publication,
)
from rtserver.logs import Logger
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

__all__ = ["RedisEngine", "RedisTimeout", "RedisUnavailable"]

_log = Logger()

#: What :meth:`RedisEngine.sync` publishes on a Redis Cluster, numbered.
_SYNC_PREFIX = b"__sync__:"


def _appended(reply: list[Any]) -> StreamPosition:
    """The PUBLISH script's ``{offset, epoch, from_cache, suppressed}``.

    A :class:`Suppressed` position when nothing was appended or published.
    """
    if reply[2]:
        return Suppressed(int(reply[0]), reply[1].decode(), SUPPRESS_IDEMPOTENCY)
    if reply[3]:
        return Suppressed(int(reply[0]), reply[1].decode(), SUPPRESS_VERSION)
    return StreamPosition(int(reply[0]), reply[1].decode())


def _ms(seconds: float) -> int:
    """Seconds as a positive millisecond TTL; 0 stays 0 (no expiry)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


class _Shard:
    """One Redis address: its links and the client channels subscribed there."""

    def __init__(self, index: int, address: RedisAddress) -> None:
        self.index = index
        self.address = address
        self.channels: set[bytes] = set()
        self.command: CommandLink | ClusterCommandLink
        self.pubsub: PubSubLink
        #: Redis Cluster: every key of a channel carries the channel as a hash tag.
        self.cluster = address.is_cluster
        #: Redis Cluster with sharded PUB/SUB: the client channels' SSUBSCRIBE links.
        self.sharded: ShardedSubscriber | None = None
        #: Sentinel shards: the ``+switch-master`` listener (not part of health).
        self.watch: SentinelWatch | None = None

    @property
    def uses_sharded(self) -> bool:
        """Whether client channels use sharded PUB/SUB now (Redis Cluster, Redis 7+)."""
        command = self.command
        return isinstance(command, ClusterCommandLink) and command.sharded


@implementer(IEngine)
class RedisEngine:
    """IEngine over one or more Redis servers (see the module docstring).

    Args:
        clock: timers (reconnect backoff, timeouts, probes) and "now" for presence.
        config: ``engine.redis``.
        reactor: connects TCP; the global reactor when None.
        rng: epochs and backoff jitter.
    """

    #: Several nodes share this engine: the node runs heartbeats and presence refresh.
    shared = True

    def __init__(
        self,
        clock: IReactorTime,
        config: RedisEngineConfig,
        *,
        # Any: HostnameEndpoint needs a reactor providing IReactorTCP, IReactorTime and
        # IReactorPluggableNameResolver at once; Twisted has no type for that.
        reactor: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        addresses = redis_shards(config)  # ConfigError (a ValueError) when unusable
        if not addresses:
            raise ValueError("engine.redis.address: at least one Redis address is required")
        self._clock = clock
        self._config = config
        # Epochs (one candidate per history publish) and jitter need no secrecy: a
        # Mersenne Twister seeded from os.urandom is ~10x cheaper than SystemRandom.
        self._rng = rng or random.Random()
        self._handler: IEngineHandler | None = None
        self._started = False
        self._stopped = False
        self._healthy = False
        self._ready: Deferred[None] | None = None
        p = config.prefix
        self._prefix = p
        self._client_prefix = f"{p}.client.".encode()
        self._control = f"{p}.control".encode()
        self._node = b""
        self._sync_serial = 0
        self._sync_waits: dict[bytes, Deferred[None]] = {}
        self.shards: list[_Shard] = []
        # Any: keyword arguments shared by every link class
        timeouts: dict[str, Any] = {
            "connect_timeout": config.connect_timeout,
            "io_timeout": config.io_timeout,
            "on_change": self._links_changed,
            "rng": self._rng,
        }
        for i, address in enumerate(addresses):
            shard = _Shard(i, address)
            pubsub_options: dict[str, Any] = {
                "channels": functools.partial(self._channels_of, shard),
                "on_message": self._on_message,
                "on_probe": functools.partial(self._probe_link, shard),
                "probe_interval": config.pubsub_probe_interval,
                **timeouts,
            }
            if address.is_cluster:
                command = ClusterCommandLink(
                    address, clock, reactor, scripts=scripts.ALL, **timeouts
                )
                shard.command = command
                pubsub_options["on_message"] = self._on_cluster_message
                shard.pubsub = ClusterPubSubLink(
                    address, clock, reactor, nodes=command.nodes, **pubsub_options
                )
                shard.sharded = ShardedSubscriber(
                    command,
                    clock,
                    reactor,
                    on_message=self._on_cluster_message,
                    on_change=self._links_changed,
                    connect_timeout=config.connect_timeout,
                    io_timeout=config.io_timeout,
                    rng=self._rng,
                )
                command.map_listeners.append(functools.partial(self._mode_known, shard))
            else:
                shard.command = CommandLink(
                    address, clock, reactor, scripts=scripts.ALL, **timeouts
                )
                shard.pubsub = PubSubLink(address, clock, reactor, **pubsub_options)
            if address.is_sentinel:
                shard.watch = SentinelWatch(
                    address,
                    clock,
                    reactor,
                    on_switch=functools.partial(self._master_switched, shard),
                    connect_timeout=config.connect_timeout,
                    io_timeout=config.io_timeout,
                    rng=self._rng,
                )
            self.shards.append(shard)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The key prefix (``engine.redis.prefix``) every key and channel starts with."""
        return self._prefix

    @property
    def healthy(self) -> bool:
        """True while every command and PUB/SUB link is up (and resubscribed)."""
        return self._healthy

    def start(self, handler: IEngineHandler) -> Deferred[None]:
        """Connect every link; fires once all are up or each has tried once.

        The engine keeps reconnecting in the background either way.
        """
        self._handler = handler
        self._node = f"{self._prefix}.node.{handler.uid}".encode()
        self._started = True
        self._ready = Deferred()
        for link in self._links():
            link.start()
        for watch in self._watches():
            watch.start()
        for shard in self.shards:
            if shard.sharded is not None:
                shard.sharded.start()
        self._links_changed()
        return self._ready

    def stop(self) -> Deferred[None]:
        """Close every connection and cancel every timer."""
        self._stopped = True
        stops = [link.stop() for link in self._links(sharded=False)]
        stops += [watch.stop() for watch in self._watches()]
        stops += [s.sharded.stop() for s in self.shards if s.sharded is not None]
        d = gatherResults(stops, consumeErrors=True)
        self._links_changed()
        return d.addCallback(lambda _: None)

    def sync(self) -> Deferred[None]:
        """Fire once everything Redis sent this node before the call is handled.

        A PING round trip on every PUB/SUB link (tests and two-node checks use it). On a
        Redis Cluster, messages published on another master travel over the cluster bus
        first: each master publishes a marker on this node's channel, after whatever it
        published before, and the call waits for every marker.
        """
        waits: list[Deferred[Any]] = []
        for shard in self.shards:
            command = shard.command
            if shard.sharded is not None:
                waits.extend(link.ping() for link in shard.sharded.links())
            if isinstance(command, ClusterCommandLink):
                for link in command.links():
                    self._sync_serial += 1
                    marker = _SYNC_PREFIX + b"%d" % self._sync_serial
                    arrived: Deferred[None] = Deferred()
                    self._sync_waits[marker] = arrived
                    sent = link.execute("PUBLISH", self._node, marker)
                    sent.addErrback(self._sync_failed, marker)
                    waits.append(arrived)
            else:
                waits.append(shard.pubsub.ping())
        d = gatherResults(waits, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _sync_failed(self, failure: Failure, marker: bytes) -> None:
        waiting = self._sync_waits.pop(marker, None)
        if waiting is not None:
            waiting.errback(failure)

    def _links(
        self, sharded: bool = True
    ) -> Iterator[CommandLink | ClusterCommandLink | PubSubLink]:
        for shard in self.shards:
            yield shard.command
            yield shard.pubsub
            if sharded and shard.sharded is not None:
                yield from shard.sharded.links()

    def _watches(self) -> Iterator[SentinelWatch]:
        for shard in self.shards:
            if shard.watch is not None:
                yield shard.watch

    def _master_switched(self, shard: _Shard, host: str, port: int) -> None:
        watch = shard.watch
        if watch is not None and not self._stopped:
            assert isinstance(shard.command, CommandLink)  # a Sentinel shard's
            watch.follow(shard.command, host, port)
            watch.follow(shard.pubsub, host, port)

    def _links_changed(self) -> None:
        links = list(self._links())
        healthy = self._started and not self._stopped and all(link.ready for link in links)
        if healthy != self._healthy:
            self._healthy = healthy
            if not self._stopped:
                if healthy:
                    _log.info("redis engine is healthy")
                else:
                    _log.warn("redis engine is unhealthy: a Redis link is down")
        ready = self._ready
        if ready is not None and (
            self._stopped or all(link.ready or link.ever_tried for link in links)
        ):
            self._ready = None
            ready.callback(None)

    # --- keys ----------------------------------------------------------------------------

    def _shard(self, channel: str) -> _Shard:
        return self.shards[shard_index(channel, len(self.shards))]

    def _key(self, kind: str, channel: str) -> str:
        """The key ``P.<kind>.<channel>``; ``P.<kind>.{<channel>}`` on a Redis Cluster.

        The hash tag puts every key of one channel in one hash slot.
        """
        if self._shard(channel).cluster:
            return f"{self._prefix}.{kind}.{{{channel}}}"
        return f"{self._prefix}.{kind}.{channel}"

    def _client_channel(self, channel: str) -> bytes:
        if self._shard(channel).cluster:  # the slot of the channel's keys
            return self._client_prefix + b"{" + channel.encode() + b"}"
        return self._client_prefix + channel.encode()

    def _channels_of(self, shard: _Shard) -> list[bytes]:
        names = [self._node]
        if shard.index == 0:
            names.append(self._control)
        if not shard.uses_sharded:
            names.extend(shard.channels)
        return names

    # --- inbound -------------------------------------------------------------------------

    def _mode_known(self, shard: _Shard) -> None:
        """Channels subscribed before the first slot map said "sharded" move there."""
        sharded = shard.sharded
        if sharded is None or not shard.uses_sharded or self._stopped:
            return
        early = [name for name in shard.channels if name not in sharded.channels]
        if not early:
            return
        shard.pubsub.unsubscribe(early).addErrback(lambda f: None)  # reconnects drop them too
        for name in early:
            sharded.subscribe(name).addErrback(lambda f: None)  # placed by the next map

    def _on_cluster_message(self, channel: bytes, data: bytes) -> None:
        # a client channel is P.client.{<channel>} on a Redis Cluster
        prefix = self._client_prefix
        if (
            channel.startswith(prefix)
            and channel.endswith(b"}")
            and channel[len(prefix) :][:1] == b"{"
        ):
            channel = prefix + channel[len(prefix) + 1 : -1]
        self._on_message(channel, data)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        handler = self._handler
        if handler is None or self._stopped:
            return
        try:
            if channel.startswith(self._client_prefix):
                deliver(handler, channel[len(self._client_prefix) :].decode(), data)
            elif channel == self._node and data.startswith(_SYNC_PREFIX):
                waiting = self._sync_waits.pop(data, None)
                if waiting is not None:
                    waiting.callback(None)
            elif channel == self._control or channel == self._node:
                message = decode_control(data)
                if message is not None:
                    handler.handle_control(message)
            else:
                _log.debug(
                    "redis engine: message on unexpected channel {channel!r}", channel=channel
                )
        except (WireError, UnicodeDecodeError, ValueError) as e:
            _log.warn(
                "redis engine: dropped a malformed message on {channel!r}: {error}",
                channel=channel[:200],
                error=str(e)[:200],
            )
        except Exception:
            _log.failure(
                "redis engine: handler failed for a message on {channel!r}", channel=channel[:200]
            )

    def _probe_link(self, shard: _Shard, link: PubSubLink) -> None:
        self._probe(shard)

    def _probe(self, shard: _Shard) -> None:
        if not shard.command.ready:  # cannot probe now; do not call the PUB/SUB link deaf
            shard.pubsub.probe_sent = False
            return
        d = shard.command.execute("PUBLISH", self._node, PROBE)

        def not_sent(failure: Failure) -> None:
            # No probe went out, so the silence that follows proves nothing about the
            # PUB/SUB link: do not let the watchdog call it deaf for the command link's fault.
            shard.pubsub.probe_sent = False
            _log.debug(
                "redis probe on {address} not sent: {error}",
                address=str(shard.address),
                error=str(failure.value),
            )

        d.addErrback(not_sent)

    # --- broker --------------------------------------------------------------------------

    def subscribe(self, channel: str) -> Deferred[None]:
        """SUBSCRIBE ``P.client.<channel>`` (kept across reconnects until unsubscribe)."""
        shard = self._shard(channel)
        name = self._client_channel(channel)
        shard.channels.add(name)
        if shard.sharded is not None and shard.uses_sharded:
            return shard.sharded.subscribe(name).addCallback(lambda _: None)
        return shard.pubsub.subscribe([name]).addCallback(lambda _: None)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        """UNSUBSCRIBE ``P.client.<channel>``."""
        shard = self._shard(channel)
        name = self._client_channel(channel)
        shard.channels.discard(name)
        if shard.sharded is not None and shard.uses_sharded:
            return shard.sharded.unsubscribe(name).addCallback(lambda _: None)
        return shard.pubsub.unsubscribe([name]).addCallback(lambda _: None)

    def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """Append to the stream (when history is on) and PUBLISH, atomically."""
        shard = self._shard(channel)
        payload = encode_publication(publication)
        history = options.history_size > 0 and options.history_ttl > 0
        if not history and not options.idempotency_key:
            publish = "SPUBLISH" if shard.uses_sharded else "PUBLISH"
            d = shard.command.execute(publish, self._client_channel(channel), payload)
            return d.addCallback(lambda _: StreamPosition(0, ""))
        return self._append(channel, payload, options, history, self._client_channel(channel))

    def publish_order(self, channel: str) -> Hashable | None:
        """The shard's index: one command connection runs its commands in order.

        PUBLISH and the publish script of one shard go out on that connection in call
        order and Redis runs them (and pushes the messages) in that order; a Sentinel
        shard too (one master at a time). None on a Redis Cluster shard, whose commands
        are spread over the masters and may be redirected (MOVED/ASK) and retried.
        (One exception: after a ``SCRIPT FLUSH`` the publish script's EVALSHA is retried
        as EVAL once its NOSCRIPT answer is back, so a PUBLISH sent meanwhile, a publish
        without history or idempotency key, can be delivered before it.)
        """
        shard = self._shard(channel)
        return None if shard.cluster else shard.index

    def append(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """Append to the stream and keep the idempotent result, without PUBLISH.

        For a broker whose PUB/SUB runs elsewhere (NATS) while history stays here.
        Fires with the position, :class:`Suppressed` when nothing was appended, so
        nothing should be delivered: a repeated idempotency key (its first result) or an
        outdated ``version`` (the current position).
        """
        history = options.history_size > 0 and options.history_ttl > 0
        return self._append(channel, encode_publication(publication), options, history, b"")

    def _append(
        self,
        channel: str,
        payload: bytes,
        options: PublishOptions,
        history: bool,
        pubsub_channel: bytes,
    ) -> Deferred[StreamPosition]:
        shard = self._shard(channel)
        keys = [self._key("stream", channel), self._key("stream.meta", channel)]
        if options.idempotency_key:
            keys.append(f"{self._key('result', channel)}.{options.idempotency_key}")
        idempotency_ttl = options.idempotency_ttl or self._config.idempotent_result_ttl
        d = shard.command.evalsha(
            scripts.PUBLISH,
            keys,
            [
                payload,
                options.history_size if history else 0,
                _ms(options.history_ttl),
                pubsub_channel,
                _ms(options.history_meta_ttl),
                new_epoch(self._rng),
                _ms(idempotency_ttl),
                1 if shard.uses_sharded else 0,
                options.version if history else 0,
                options.version_epoch,
            ],
        )
        return d.addCallback(_appended)

    def publish_join(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """PUBLISH a join."""
        return self._publish_raw(channel, JOIN_PREFIX + encode_client_info(info))

    def publish_leave(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """PUBLISH a leave."""
        return self._publish_raw(channel, LEAVE_PREFIX + encode_client_info(info))

    def _publish_raw(self, channel: str, payload: bytes) -> Deferred[None]:
        shard = self._shard(channel)
        publish = "SPUBLISH" if shard.uses_sharded else "PUBLISH"
        d = shard.command.execute(publish, self._client_channel(channel), payload)
        return d.addCallback(lambda _: None)

    def publish_control(self, message: ControlMessage, node: str = "") -> Deferred[None]:
        """PUBLISH on ``P.control`` (every node) or ``P.node.<node>`` (one node)."""
        target = f"{self._prefix}.node.{node}".encode() if node else self._control
        d = self.shards[0].command.execute("PUBLISH", target, encode_control(message))
        return d.addCallback(lambda _: None)

    # --- history -------------------------------------------------------------------------

    def history(
        self, channel: str, filter: HistoryFilter, meta_ttl: float
    ) -> Deferred[HistoryResult]:
        """Read the stream; creates its epoch if the channel has none yet."""
        d = self._shard(channel).command.evalsha(
            scripts.HISTORY,
            [self._key("stream", channel), self._key("stream.meta", channel)],
            [
                0 if filter.limit == 0 else 1,
                "" if filter.since is None else filter.since.offset,
                filter.limit if filter.limit > 0 else -1,
                1 if filter.reverse else 0,
                _ms(meta_ttl),
                new_epoch(self._rng),
            ],
        )
        return d.addCallback(self._history_result, channel)

    # Any: a raw Redis reply (top offset, epoch bytes, [entry id, [field, value...]]...).
    def _history_result(self, reply: list[Any], channel: str) -> HistoryResult:
        top, epoch_bytes, entries = reply
        epoch = epoch_bytes.decode()
        pubs: list[Publication] = []
        for entry_id, fields in entries:
            try:
                offset = int(entry_id.partition(b"-")[0])
                payload = dict(zip(fields[::2], fields[1::2], strict=True))[b"d"]
                pubs.append(decode_publication(payload, offset, epoch))
            except (WireError, ValueError, KeyError) as e:
                _log.warn(
                    "redis engine: skipped a malformed history entry of {channel}: {error}",
                    channel=channel,
                    error=str(e)[:200],
                )
        return HistoryResult(pubs, StreamPosition(int(top), epoch))

    def remove_history(self, channel: str) -> Deferred[None]:
        """Delete the stream; the meta hash (epoch, top offset) stays."""
        d = self._shard(channel).command.execute("DEL", self._key("stream", channel))
        return d.addCallback(lambda _: None)

    # --- presence ------------------------------------------------------------------------

    def _presence_keys(self, channel: str) -> list[str]:
        return [self._key("presence.data", channel), self._key("presence.expire", channel)]

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> Deferred[None]:
        """Add or refresh a connection's presence for ``presence_ttl``."""
        ttl = _ms(self._config.presence_ttl) or 1
        d = self._shard(channel).command.evalsha(
            scripts.ADD_PRESENCE,
            self._presence_keys(channel),
            [client_id, encode_client_info(info), self._now_ms() + ttl, ttl],
        )
        return d.addCallback(lambda _: None)

    def remove_presence(self, channel: str, client_id: str, user: str) -> Deferred[None]:
        """Remove a connection's presence."""
        d = self._shard(channel).command.evalsha(
            scripts.REMOVE_PRESENCE, self._presence_keys(channel), [client_id]
        )
        return d.addCallback(lambda _: None)

    def _presence_raw(self, channel: str) -> Deferred[list[bytes]]:
        return self._shard(channel).command.evalsha(
            scripts.PRESENCE, self._presence_keys(channel), [self._now_ms()]
        )

    def _decode_presence(self, channel: str, flat: list[bytes]) -> dict[str, ClientInfo]:
        clients: dict[str, ClientInfo] = {}
        for client_id, payload in zip(flat[::2], flat[1::2], strict=True):
            try:
                clients[client_id.decode()] = decode_client_info(payload)
            except (WireError, UnicodeDecodeError) as e:
                _log.warn(
                    "redis engine: skipped a malformed presence entry of {channel}: {error}",
                    channel=channel,
                    error=str(e)[:200],
                )
        return clients

    def presence(self, channel: str) -> Deferred[dict[str, ClientInfo]]:
        """``{client_id: ClientInfo}`` of unexpired entries."""
        return self._presence_raw(channel).addCallback(
            lambda flat: self._decode_presence(channel, flat)
        )

    def presence_stats(self, channel: str) -> Deferred[PresenceStats]:
        """Connection and distinct-user counts of unexpired entries."""

        def stats(flat: list[bytes]) -> PresenceStats:
            clients = self._decode_presence(channel, flat)
            users = {info.user for info in clients.values()}
            return PresenceStats(num_clients=len(clients), num_users=len(users))

        return self._presence_raw(channel).addCallback(stats)
