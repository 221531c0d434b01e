"""The node: connects clients, the hub and the engine; the core's one entry point.

Transports create clients through :meth:`Node.make_client`; the server API calls the
publish/history/presence/control methods; the engine calls back through the
:class:`~rtserver.core.ports.IEngineHandler` methods.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import socket
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver import __version__
from rtserver.config import ChannelOptions, Config
from rtserver.core.channels import ChannelResolver
from rtserver.core.client import Client
from rtserver.core.cluster import Cluster, SurveyCode
from rtserver.core.hub import Hub
from rtserver.core.loops import run_every
from rtserver.core.ports import (
    IEngine,
    IEngineHandler,
    IPresenceManager,
    ISink,
    ITokenVerifier,
    Subscriber,
)
from rtserver.core.positions import PositionCheck
from rtserver.core.proxy import Proxies
from rtserver.core.stats import NodeStats
from rtserver.core.subscription import Subscription
from rtserver.core.types import (
    ControlMessage,
    DisconnectControl,
    HistoryFilter,
    HistoryResult,
    NodeInfo,
    PresenceStats,
    PublishOptions,
    RefreshControl,
    SubscribeControl,
    SurveyReply,
    SurveyRequest,
    UnsubscribeControl,
    UserControl,
)
from rtserver.core.writer import FlushScheduler
from rtserver.logs import Logger, log_failure
from rtserver.protocol.codes import Disconnect, Error
from rtserver.protocol.encoding import JSON
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition

__all__ = ["Node"]

_log = Logger()


#: Publish options remembered per namespace (beyond, the cache starts over).
_PLAIN_OPTIONS_CACHED = 256


@implementer(IEngineHandler)
class Node:
    """One rtserver process: its clients, channels and engine.

    Implements :class:`~rtserver.core.ports.ClientNode` for its clients: they reach the
    broker, history and presence only through the facade methods below.

    Args:
        engine: broker, history and (unless ``presence_manager`` is given) presence.
        config: the server configuration.
        clock: every timer of the node and its clients.
        verifier: JWT verification; None refuses every token.
        name: shown in ``info``; defaults to ``node.name`` or ``<host>_<port>``.
        presence_manager: presence kept elsewhere than in ``engine``; its lifecycle
            belongs to whoever made it.
    """

    def __init__(
        self,
        engine: IEngine,
        config: Config,
        *,
        clock: IReactorTime,
        verifier: ITokenVerifier | None = None,
        name: str = "",
        presence_manager: IPresenceManager | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self.engine = engine
        self.proxies = proxies if proxies is not None else Proxies()
        self.presence_manager: IPresenceManager = (
            engine if presence_manager is None else presence_manager
        )
        self.config = config
        self.clock = clock
        self.verifier = verifier
        self.uid = str(uuid.uuid4())
        self.name = name or config.node.name or f"{socket.gethostname()}_{config.http_server.port}"
        self.version = __version__
        self.resolver = ChannelResolver(config.channel)
        self.hub: Hub[Client] = Hub()
        self.stats = NodeStats(clock)
        self.scheduler = FlushScheduler(clock, config.client.write_delay)
        self._started_at = clock.seconds()
        self._subscribing: dict[str, list[Deferred[None]]] = {}
        #: (id of the channel options, history kept) -> (those options, the config they
        #: were read with, the PublishOptions of a publish without idempotency key or version)
        self._plain_options: dict[
            tuple[int, bool], tuple[ChannelOptions, Config, PublishOptions]
        ] = {}
        self._running = False
        #: ``starting`` until the engine has started, then ``ready``; ``draining`` once
        #: shutdown began, ``stopped`` after (see :meth:`readiness`).
        self.phase = "starting"
        self.open_clients = 0  # made and not yet closed (connected or not)
        self._rate_second = -1
        self._rate_count = 0
        self.cluster = Cluster(self.uid, clock, self._publish_control, self.node_info)
        self._presence_loop: LoopingCall | None = None
        self.position_check = PositionCheck(self.hub, self.stream_top, clock)
        # Survey arguments are decoded JSON of any shape; each op validates its own.
        self._survey_ops: dict[str, Callable[[Any], tuple[int, bytes]]] = {
            "channels": self._channels_op,
            "emulation": self._emulation_op,
        }

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def shared_engine(self) -> bool:
        """True when other nodes share the engine (Redis): heartbeats, presence refresh."""
        return bool(self.engine.shared)

    def start(self) -> Deferred[None]:
        """Start the engine and begin serving; join the cluster on a shared engine."""
        self._running = True
        self.phase = "starting"
        self._started_at = self.clock.seconds()
        d = self.engine.start(self)
        d.addCallback(self._serving)
        if self.shared_engine:
            d.addBoth(self._join_cluster)
        return d

    def _serving(self, result: None) -> None:
        if self.phase == "starting":
            self.phase = "ready"
        return result

    def drain(self) -> None:
        """Shutdown began: report not ready (clients are still served until :meth:`stop`)."""
        if self.phase in ("starting", "ready"):
            self.phase = "draining"

    def readiness(self) -> str:
        """``ready``, or why not.

        ``starting``, ``draining``, ``stopped`` or ``engine unavailable``.
        """
        if self.phase != "ready":
            return self.phase
        if not self.engine.healthy:
            return "engine unavailable"
        return "ready"

    def _join_cluster(self, result: Failure | None) -> Failure | None:
        """Once the engine tried its links: start the cluster's periodic work.

        Node announcements, presence refresh and the stream-position check.
        """
        if not self._running or self.cluster.running:
            return result
        self.position_check.start()
        self.cluster.start()
        interval = self.config.client.presence_update_interval
        if interval > 0:
            self._presence_loop = run_every(
                self.clock, interval, self._refresh_presence, "presence refresh loop", now=False
            )
        return result

    def stop(self, disconnect: Disconnect = Disconnect.SHUTDOWN) -> Deferred[None]:
        """Disconnect every client (reconnect code 3001), leave the cluster, stop the engine."""
        self._running = False
        self.phase = "stopped"
        for client in self.hub.clients():
            client.close(disconnect)
        self.scheduler.stop()
        if self._presence_loop is not None and self._presence_loop.running:
            self._presence_loop.stop()
        self.position_check.stop()
        d = self.cluster.stop()
        d.addErrback(self._log_failure, "cluster shutdown announcement")
        d.addCallback(lambda _: self.engine.stop())
        return d

    def _refresh_presence(self) -> None:
        for client in self.hub.clients():
            client.refresh_presence()

    def _publish_control(self, message: ControlMessage, node: str) -> Deferred[None]:
        return self.engine.publish_control(message, node)

    def admit(self) -> bool:
        """Whether a new connection may start; transports answer HTTP 503 when not.

        Checks ``client.connection_limit`` (open connections on this node) and
        ``client.connection_rate_limit`` (new connections per second).
        """
        config = self.config.client
        if config.connection_limit and self.open_clients >= config.connection_limit:
            return False
        if config.connection_rate_limit:
            second = int(self.clock.seconds())
            if second != self._rate_second:
                self._rate_second, self._rate_count = second, 0
            if self._rate_count >= config.connection_rate_limit:
                return False
            self._rate_count += 1
        return True

    def make_client(
        self,
        sink: ISink,
        headers: dict[str, str] | None = None,
        encoding: str = JSON,
        *,
        grpc_metadata: Mapping[str, str | bytes] | None = None,
    ) -> Client:
        """A new client connection for ``sink`` speaking ``encoding`` (``json``/``protobuf``).

        ``headers``: the HTTP headers of its connection request; ``grpc_metadata``: the
        metadata of a ``uni_grpc`` call (proxies forward what they list of either).
        """
        self.open_clients += 1
        return Client(self, sink, headers=headers, grpc_metadata=grpc_metadata, encoding=encoding)

    # Any: a detached operation's result is dropped, whatever its type.
    def background(self, d: Deferred[Any], what: str = "background operation") -> None:
        """Run ``d`` detached: its failure is logged, never lost."""
        d.addErrback(self._log_failure, what)

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        log_failure(_log, failure, "{what} failed", what=what)

    def meta_ttl(self, opts: ChannelOptions) -> float:
        """How long a channel's stream epoch and top offset survive without traffic."""
        return opts.history_meta_ttl or self.config.channel.history_meta_ttl

    # --- clients ---------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        """Register a client whose connect succeeded."""
        self.hub.add_client(client)

    def remove_client(self, client: Client) -> None:
        """Forget a closed client (called once per client, connected or not)."""
        self.open_clients -= 1
        self.hub.remove_client(client)

    def user_connections(self, user: str) -> int:
        """How many connected clients ``user`` has on this node."""
        return len(self.hub.user_clients(user))

    def add_subscription(
        self, channel: str, client: Subscriber, sub: Subscription
    ) -> Deferred[None]:
        """Add a local subscriber; fires once the engine delivers ``channel`` here.

        ``client`` is a connection, or an observer that is no connection (the admin UI's
        channel inspector): it receives the channel's traffic without being a user.
        """
        waiter: Deferred[None] = Deferred()
        if self.hub.add_subscriber(channel, client, sub):
            # The waiter is registered first: an engine that refuses at once (a channel
            # its backend cannot carry, a link that is down) fires before returning.
            self._subscribing[channel] = [waiter]
            self.stats.time_engine("subscribe", self.engine.subscribe(channel)).addBoth(
                self._subscribed, channel
            )
            return waiter
        waiters = self._subscribing.get(channel)
        if waiters is None:
            return succeed(None)
        waiters.append(waiter)
        return waiter

    def _subscribed(self, result: object, channel: str) -> None:
        for waiter in self._subscribing.pop(channel, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)
        if isinstance(result, Failure) and not self.hub.has_subscribers(channel):
            if isinstance(result.value, Error):  # the engine refused the channel
                _log.debug("engine refused {channel}: {error}", channel=channel, error=result.value)
            else:
                log_failure(_log, result, "engine subscribe to {channel} failed", channel=channel)

    def seed_delta_base(self, channel: str, pub: Publication) -> None:
        """A delta subscriber recovered up to ``pub`` (see :meth:`Hub.seed_delta_base`)."""
        self.hub.seed_delta_base(channel, pub)

    def remove_subscription(self, channel: str, client: Subscriber) -> None:
        """Remove a local subscriber; the engine stops delivering when none are left."""
        if self.hub.remove_subscriber(channel, client):
            d = self.stats.time_engine("unsubscribe", self.engine.unsubscribe(channel))
            self.background(d, f"unsubscribe {channel}")

    # --- IEngineHandler ------------------------------------------------------------------

    def handle_publication(self, channel: str, publication: Publication) -> None:
        """Fan a publication out to local subscribers."""
        self.hub.broadcast_publication(channel, publication)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        """Fan a join out to local subscribers that asked for joins."""
        self.hub.broadcast_join_leave(channel, "join", info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        """Fan a leave out to local subscribers that asked for leaves."""
        self.hub.broadcast_join_leave(channel, "leave", info)

    def handle_control(self, message: ControlMessage) -> None:
        """Apply a cluster-wide command to matching local connections."""
        if self.cluster.handle(message):
            return
        if isinstance(message, SurveyRequest):
            self._answer(message)
            return
        if not isinstance(message, UserControl):
            return  # membership and survey replies are the cluster's (handled above)
        for client in self._targets(message.user, message.client, message.session):
            if isinstance(message, SubscribeControl):
                d = Deferred.fromCoroutine(client.server_subscribe(message))
                self.background(d, f"server-side subscribe to {message.channel}")
            elif isinstance(message, UnsubscribeControl):
                client.unsubscribe(message.channel)
            elif isinstance(message, DisconnectControl):
                if client.id not in message.whitelist:
                    client.close(Disconnect(message.code, message.reason))
            elif isinstance(message, RefreshControl):
                client.refresh(
                    expired=message.expired, expire_at=message.expire_at, info=message.info
                )

    def _answer(self, request: SurveyRequest) -> None:
        op = self._survey_ops.get(request.op)
        code, data = SurveyCode.UNKNOWN_OP, b"null"
        if op is not None:
            try:
                code, data = op(orjson.loads(request.data))
            except Exception:
                _log.failure("survey {op} from {node} failed", op=request.op, node=request.sender)
                code = SurveyCode.BAD_REQUEST
        reply = SurveyReply(id=request.id, sender=self.uid, code=code, data=data)
        self.background(self._publish_control(reply, request.sender), "survey reply")

    # Any: decoded JSON arguments of a survey, validated here.
    def _channels_op(self, args: Any) -> tuple[int, bytes]:
        pattern = args.get("pattern", "") if isinstance(args, dict) else ""
        return SurveyCode.OK, orjson.dumps(self.local_channels(str(pattern)))

    # Any: as in _channels_op.
    def _emulation_op(self, args: Any) -> tuple[int, bytes]:
        if not isinstance(args, dict):
            return SurveyCode.BAD_REQUEST, b"null"
        session, encoded = args.get("session"), args.get("b64")
        if not isinstance(session, str) or not isinstance(encoded, str):
            return SurveyCode.BAD_REQUEST, b"null"
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return SurveyCode.BAD_REQUEST, b"null"
        found = self._emulate_here(session, data)
        return (SurveyCode.OK if found else SurveyCode.NOT_FOUND), b"null"

    def _targets(self, user: str, client_id: str, session: str) -> list[Client]:
        clients = self.hub.user_clients(user)
        if client_id:
            clients = [c for c in clients if c.id == client_id]
        if session:
            clients = [c for c in clients if c.session == session]
        return clients

    # --- operations used by clients and the server API --------------------------------

    def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        idempotency_key: str = "",
        delta: bool = False,
        version: int = 0,
        version_epoch: str = "",
        opts: ChannelOptions | None = None,
    ) -> Deferred[StreamPosition]:
        """Publish ``data`` (raw JSON) into ``channel`` on every node.

        ``delta`` (or the namespace's ``delta_publish``) lets subscribers that negotiated
        delta compression receive it as a fossil delta (docs/client-protocol.rst).
        ``version``/``version_epoch``: a channel with history drops an outdated
        publication and fires with its current position (``PublishOptions``). A dropped
        publication (outdated version, repeated idempotency key) fires with a
        :class:`~rtserver.core.types.Suppressed` position and is counted in
        ``stats.suppressed``.
        """
        if opts is None:
            try:
                opts = self.resolver.options(channel)
            except Error as e:
                return fail(e)
        if opts.publication_data_format == "json_object" and not data.startswith(b"{"):
            return fail(Error.BAD_REQUEST.with_message("data must be a JSON object here"))
        keep = opts.history_enabled and not skip_history
        if idempotency_key or version:
            options = self._publish_options(opts, keep, idempotency_key, version, version_epoch)
        else:
            # The common publish: its options depend on the channel's options alone, so
            # they are built once per namespace (a frozen dataclass costs ~1 µs to make).
            key = (id(opts), keep)
            known = self._plain_options.get(key)
            if known is not None and known[0] is opts and known[1] is self.config:
                options = known[2]
            else:
                options = self._publish_options(opts, keep, "", 0, "")
                if len(self._plain_options) >= _PLAIN_OPTIONS_CACHED:
                    self._plain_options.clear()
                self._plain_options[key] = (opts, self.config, options)
        pub = Publication(
            data=data, info=info, tags=tags or None, delta=delta or opts.delta_publish
        )
        return self.stats.time_publish(self.engine.publish(channel, pub, options), opts)

    def publish_order(self, channel: str) -> Hashable | None:
        """The engine's ordered lane for publishes into ``channel`` (None: unknown).

        Publishes with the same key may be issued without waiting for each other's
        result and still apply in call order (``IBroker.publish_order``).
        """
        return self.engine.publish_order(channel)

    def _publish_options(
        self,
        opts: ChannelOptions,
        keep: bool,
        idempotency_key: str,
        version: int,
        version_epoch: str,
    ) -> PublishOptions:
        return PublishOptions(
            history_size=opts.history_size if keep else 0,
            history_ttl=opts.history_ttl if keep else 0.0,
            history_meta_ttl=self.meta_ttl(opts),
            idempotency_key=idempotency_key,
            version=version,
            version_epoch=version_epoch,
        )

    def history(
        self, channel: str, flt: HistoryFilter, opts: ChannelOptions | None = None
    ) -> Deferred[HistoryResult]:
        """Read history; a ``since`` with a stale epoch fails with error 112."""
        try:
            if opts is None:
                opts = self.resolver.options(channel)
            if not opts.history_enabled:
                raise Error.NOT_AVAILABLE
            if flt.reverse and flt.since is not None and flt.since.offset == 0:
                raise Error.BAD_REQUEST.with_message("reverse history needs since.offset > 0")
        except Error as e:
            return fail(e)
        d = self.read_stream(channel, flt, opts)
        since = flt.since
        if since is not None and since.epoch:
            d.addCallback(_check_epoch, since.epoch)
        return d

    def read_stream(
        self, channel: str, flt: HistoryFilter, opts: ChannelOptions
    ) -> Deferred[HistoryResult]:
        """Read a stream as it is, with no permission or epoch check (recovery)."""
        d = self.engine.history(channel, flt, self.meta_ttl(opts))
        return self.stats.time_engine("history", d)

    def stream_top(self, channel: str, opts: ChannelOptions) -> Deferred[StreamPosition]:
        """A stream's current epoch and top offset (creating the epoch if none yet)."""
        return self.read_stream(channel, HistoryFilter(limit=0), opts).addCallback(_top)

    def remove_history(self, channel: str) -> Deferred[None]:
        """Drop a stream's publications; its epoch and top offset stay."""
        return self.stats.time_engine("remove_history", self.engine.remove_history(channel))

    def publish_join(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Announce a join to every node."""
        return self.stats.time_engine("publish_join", self.engine.publish_join(channel, info))

    def publish_leave(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Announce a leave to every node."""
        return self.stats.time_engine("publish_leave", self.engine.publish_leave(channel, info))

    def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> Deferred[None]:
        """Add or refresh a connection's presence."""
        d = self.presence_manager.add_presence(channel, client_id, info)
        return self.stats.time_engine("add_presence", d)

    def remove_presence(self, channel: str, client_id: str, user: str) -> Deferred[None]:
        """Remove a connection's presence."""
        d = self.presence_manager.remove_presence(channel, client_id, user)
        return self.stats.time_engine("remove_presence", d)

    def presence(self, channel: str) -> Deferred[dict[str, ClientInfo]]:
        """``{client_id: ClientInfo}`` of a channel, across nodes."""
        return self.stats.time_engine("presence", self.presence_manager.presence(channel))

    def presence_stats(self, channel: str) -> Deferred[PresenceStats]:
        """A channel's connection and distinct-user counts, across nodes."""
        d = self.presence_manager.presence_stats(channel)
        return self.stats.time_engine("presence_stats", d)

    def control(self, message: ControlMessage) -> Deferred[None]:
        """Send a control command to every node (this one included)."""
        return self.engine.publish_control(message)

    def local_channels(self, pattern: str = "") -> dict[str, int]:
        """Channels with subscribers on this node, filtered by a glob ``pattern``."""
        return {
            ch: n
            for ch, n in self.hub.channels()
            if not pattern or fnmatch.fnmatchcase(ch, pattern)
        }

    def channels(self, pattern: str = "") -> Deferred[dict[str, int]]:
        """Channels with subscribers on any node, with cluster-wide subscriber counts."""
        if not self.shared_engine:
            return succeed(self.local_channels(pattern))
        d = self.cluster.survey("channels", orjson.dumps({"pattern": pattern}))
        return d.addCallback(_merge_channel_counts)

    def emulate(self, session: str, node: str, data: bytes) -> Deferred[bool]:
        """Feed emulation commands to ``session`` on ``node``; fires False if not found.

        ``data`` is a frame in the session's encoding (JSON or Protobuf). A session on
        another node is reached through a survey of that node, the frame base64-encoded
        in the survey's JSON (``b64``).
        """
        if not node or node == self.uid:
            return succeed(self._emulate_here(session, data))
        if not self.cluster.knows(node):
            return succeed(False)
        _log.debug(
            "emulation session {session}: commands forwarded to node {node}",
            session=session,
            node=node,
        )
        args = {"session": session, "b64": base64.b64encode(data).decode("ascii")}
        d = self.cluster.survey("emulation", orjson.dumps(args), node)
        return d.addCallback(_any_ok)

    def _emulate_here(self, session: str, data: bytes) -> bool:
        client = self.hub.by_session(session)
        if client is None or not client.emulation:
            return False
        client.receive(data)
        return True

    def node_info(self) -> NodeInfo:
        """This node's current statistics."""
        hub = self.hub
        return NodeInfo(
            uid=self.uid,
            name=self.name,
            version=self.version,
            num_clients=hub.num_clients,
            num_users=hub.num_users,
            num_channels=hub.num_channels,
            num_subs=hub.num_subscriptions,
            uptime=int(self.clock.seconds() - self._started_at),
        )

    # Any: JSON values of the API response (str and int here).
    def info(self) -> list[dict[str, Any]]:
        """The server API ``info`` result's ``nodes``: this node and every live peer.

        NodeInfo's fields are the API's keys, in the API's order.
        """
        return [dataclasses.asdict(n) for n in self.cluster.nodes()]


def _merge_channel_counts(replies: list[SurveyReply]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for reply in replies:
        if reply.code != SurveyCode.OK:
            continue
        counts = orjson.loads(reply.data)
        if isinstance(counts, dict):
            for channel, n in counts.items():
                if isinstance(n, int):
                    merged[channel] = merged.get(channel, 0) + n
    return merged


def _any_ok(replies: list[SurveyReply]) -> bool:
    return any(r.code == SurveyCode.OK for r in replies)


def _top(result: HistoryResult) -> StreamPosition:
    return result.position


def _check_epoch(result: HistoryResult, epoch: str) -> HistoryResult:
    if result.position.epoch != epoch:
        raise Error.UNRECOVERABLE_POSITION
    return result
