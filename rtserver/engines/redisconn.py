"""Redis connections for the Redis engine: sharding and self-healing links.

Each Redis address gets one :class:`CommandLink` (every command; replies are matched in
order, so commands issued in one reactor turn go out in one write: pipelining without
waiting for round trips) and one :class:`PubSubLink` (SUBSCRIBE/UNSUBSCRIBE and the
messages). Both reconnect by themselves with capped, jittered exponential backoff on
the injected clock. While a link is down its callers fail at once with
:class:`RedisUnavailable`; a command that gets no answer within ``io_timeout`` fails with
a timeout and the connection is dropped and re-established (the command link checks
its oldest command every quarter of ``io_timeout``: one timer per link, not per command).
The command link matches replies to commands itself, in order; txredisapi only parses.

Topologies (docs/cluster.rst): a link connects over TLS when its address says so
(``rediss://`` or ``engine.redis.tls``). A Sentinel address is resolved on every
(re)connect: the sentinels are asked ``SENTINEL get-master-addr-by-name`` in turn (the
one that answered is asked first next time), the link connects there and checks with
``ROLE`` that it reached a master; a ``READONLY`` reply (the master was demoted) drops
the link, so it resolves again. Sentinel itself closes client connections of an
instance it reconfigures, which does the same; and :class:`SentinelWatch` listens for
Sentinel's ``+switch-master`` so the links leave a replaced master at once.

txredisapi supplies the RESP parser (hiredis when installed) and command encoding
(through :mod:`rtserver._compat`); it is imported lazily because importing it installs
the default reactor.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from rtserver._compat import encode_redis_command, redis_protocol_base, use_clock
from rtserver.config import ClientTLSConfig, RedisAddress
from rtserver.engines.redis_scripts import Script
from rtserver.logs import Logger
from rtserver.tlsclient import load_tls_material, tls_connection_creator

__all__ = [
    "CommandLink",
    "PubSubLink",
    "RedisNotMaster",
    "RedisTimeout",
    "RedisUnavailable",
    "SentinelWatch",
    "shard_index",
]

_log = Logger()

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 2**64 - 1


class RedisUnavailable(ConnectionError):
    """The Redis link a request needs is down (the core answers error 100)."""


class RedisTimeout(RedisUnavailable):
    """Redis did not answer within ``io_timeout``."""


class RedisNotMaster(RedisUnavailable):
    """The server a Sentinel named is not (or no longer) a master."""


# --- TLS (rtserver/tlsclient.py builds the options) ------------------------------


def _endpoint(
    reactor: Any, host: str, port: int, timeout: float, tls: ClientTLSConfig | None, key: str
) -> Any:
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls is None:
        return endpoint
    return wrapClientTLS(tls_connection_creator(tls, host, key), endpoint)


# --- addresses and sharding ------------------------------------------------------------


def _fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def _jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@lru_cache(maxsize=65536)
def shard_index(channel: str, shards: int) -> int:
    """The shard of ``channel``: jump consistent hash of its FNV-1a 64 hash.

    Go Centrifuge does the same, so a channel maps to the same index of the address list.
    """
    if shards <= 1:
        return 0
    return _jump_hash(_fnv1a64(channel.encode()), shards)


# --- protocols -------------------------------------------------------------------------


@cache
def _protocols() -> tuple[type, type]:
    base: Any = redis_protocol_base()

    class CommandProtocol(base):
        """Every reply goes to the link, which matches replies to commands in order."""

        link: Any = None

        def replyReceived(self, reply: Any) -> None:  # noqa: N802 - txredisapi API
            if self.link is not None:
                self.link._reply(self, reply)

        def connectionLost(self, why: Failure) -> None:  # noqa: N802 - Twisted API
            base.connectionLost(self, why)
            if self.link is not None:
                self.link._lost(self, why)

    class PubSubProtocol(base):
        """Every reply goes to the link (messages and acknowledgements)."""

        link: Any = None

        def replyReceived(self, reply: Any) -> None:  # noqa: N802 - txredisapi API
            if self.link is not None:
                self.link._reply(self, reply)

        def connectionLost(self, why: Failure) -> None:  # noqa: N802 - Twisted API
            base.connectionLost(self, why)
            if self.link is not None:
                self.link._lost(self, why)

    return CommandProtocol, PubSubProtocol


class _OneProtocol(Factory):
    """Hands out one prepared protocol; quiet (no "Starting factory" per reconnect)."""

    noisy = False

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted API
        return self._proto


def _is_error(reply: Any) -> bool:
    return isinstance(reply, Exception)


def _is_cluster_error(error: object) -> bool:
    """An error only a Redis Cluster node gives (keys of another slot, no slot served)."""
    return isinstance(error, Exception) and str(error).startswith(
        ("MOVED ", "ASK ", "CROSSSLOT ", "CLUSTERDOWN ")
    )


def _is_readonly(error: object) -> bool:
    """A ``-READONLY`` error reply, also when a Lua script's write hit a replica."""
    return isinstance(error, Exception) and "READONLY " in str(error)[:120]


# --- links -----------------------------------------------------------------------------


class _Link:
    """One connection that keeps itself up; subclasses add a handshake."""

    kind = "link"
    backoff_min = 0.05
    backoff_max = 3.0

    def __init__(
        self,
        address: RedisAddress,
        clock: IReactorTime,
        reactor: Any,
        *,
        connect_timeout: float,
        io_timeout: float,
        on_change: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self._clock = clock
        self._reactor = reactor
        if address.connect_timeout is not None:
            connect_timeout = address.connect_timeout
        if address.io_timeout is not None:
            io_timeout = address.io_timeout
        self._connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        #: Where the link connects now: the address itself, or the master a Sentinel named.
        self.target: tuple[str, int] = (address.host, address.port)
        self._sentinels = list(address.sentinels)
        self._hint: tuple[str, int] | None = None
        if address.tls is not None:  # load the certificates now: a bad file fails at start
            load_tls_material(address.tls, "engine.redis.tls")
        if address.sentinel_tls is not None:
            load_tls_material(address.sentinel_tls, "engine.redis.sentinel_tls")
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._proto: Any = None
        self._connecting: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._attempts = 0
        self._closed: list[Deferred[None]] = []
        self.ready = False
        self.stopped = True
        self.ever_tried = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"

    # lifecycle

    def start(self) -> None:
        """Connect (and keep reconnecting until :meth:`stop`)."""
        if self.stopped:
            self.stopped = False
            self._connect()

    def stop(self) -> Deferred[None]:
        """Close the connection and cancel every timer; fires once it is closed."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        self._set_ready(False)
        proto = self._proto
        if proto is None or proto.transport is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        proto.transport.loseConnection()
        return d

    def drop(self, reason: str) -> None:
        """Abort the current connection (it is re-established with backoff)."""
        proto = self._proto
        if proto is not None and proto.transport is not None:
            self._set_ready(False)
            _log.warn(
                "redis {kind} link to {address}: {reason}; reconnecting",
                kind=self.kind,
                address=str(self.address),
                reason=reason,
            )
            proto.transport.abortConnection()

    def redirect(self, target: tuple[str, int], reason: str) -> None:
        """Connect to ``target`` next (a master Sentinel announced), now.

        A link connected elsewhere is dropped; a link waiting to reconnect skips what
        is left of its backoff. The next connection goes to ``target`` without asking
        the sentinels (some may not know the new master yet); the ROLE check still
        applies, and later reconnects ask the sentinels again.
        """
        if self.stopped or (self.ready and self.target == target):
            return
        self._hint = target
        if self.ready:
            self.drop(reason)
            return
        retry = self._retry
        if retry is not None and retry.active():
            retry.cancel()
            self._connect()

    # connecting

    def _protocol_class(self) -> type:
        raise NotImplementedError

    def _new_protocol(self, cls: type) -> Any:
        proto = cls(charset=None, convertNumbers=False, replyTimeout=self.io_timeout)
        use_clock(proto, self._clock.callLater)
        return proto

    def _connect(self) -> None:
        self._retry = None
        self._attempts += 1
        d = self._connecting = self._resolve()
        d.addCallback(self._dial)
        d.addCallback(self._connected)
        d.addErrback(self._connect_failed)
        d.addErrback(
            lambda f: _log.failure("redis {kind} link: unexpected error", f, kind=self.kind)
        )

    def _dial(self, target: tuple[str, int]) -> Deferred[Any]:
        self.target = target
        proto = self._new_protocol(self._protocol_class())
        proto.link = self
        host, port = target
        endpoint = _endpoint(
            self._reactor,
            host,
            port,
            self._connect_timeout,
            self.address.tls,
            "engine.redis.tls",
        )
        d: Deferred[Any] = endpoint.connect(_OneProtocol(proto))
        return d.addTimeout(self._connect_timeout + self.io_timeout, self._clock)

    # Sentinel

    def _resolve(self) -> Deferred[tuple[str, int]]:
        """Where to connect: the address, or the master the sentinels name now."""
        if not self.address.is_sentinel:
            return succeed((self.address.host, self.address.port))
        hint, self._hint = self._hint, None
        if hint is not None:
            return succeed(hint)
        return Deferred.fromCoroutine(self._ask_sentinels())

    async def _ask_sentinels(self) -> tuple[str, int]:
        a = self.address
        problems: list[str] = []
        for sentinel in list(self._sentinels):
            try:
                reply = await self._ask_sentinel(*sentinel)
            except CancelledError:
                raise
            except Exception as e:  # any failure of one sentinel: ask the next one
                problems.append(f"{sentinel[0]}:{sentinel[1]}: {_describe(Failure(e))}")
                continue
            if not isinstance(reply, list) or len(reply) != 2:
                problems.append(f"{sentinel[0]}:{sentinel[1]}: no master {a.master_name!r}")
                continue
            # the sentinel that answered is asked first next time (Sentinel client rules)
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            return reply[0].decode(), int(reply[1])
        raise RedisUnavailable(
            f"no Sentinel named the master {a.master_name!r}: " + "; ".join(problems)
        )

    def _ask_sentinel(self, host: str, port: int) -> Deferred[Any]:
        """``SENTINEL get-master-addr-by-name`` on a short-lived connection."""
        a = self.address
        commands: list[tuple[Any, ...]] = []
        if a.sentinel_password:
            auth = (a.sentinel_user,) if a.sentinel_user else ()
            commands.append(("AUTH", *auth, a.sentinel_password))
        if a.sentinel_client_name:
            commands.append(("CLIENT", "SETNAME", a.sentinel_client_name))
        commands.append(("SENTINEL", "get-master-addr-by-name", a.master_name))
        d = self.ask(host, port, commands, a.sentinel_tls, "engine.redis.sentinel_tls")
        return d.addCallback(lambda replies: replies[-1])

    def ask(
        self,
        host: str,
        port: int,
        commands: list[tuple[Any, ...]],
        tls: ClientTLSConfig | None,
        tls_key: str,
    ) -> Deferred[Any]:
        """Run ``commands`` on a short-lived connection to ``host``; every reply."""
        proto = self._new_protocol(redis_protocol_base())
        endpoint = _endpoint(self._reactor, host, port, self._connect_timeout, tls, tls_key)
        d: Deferred[Any] = endpoint.connect(_OneProtocol(proto))

        def query(proto: Any) -> Deferred[Any]:
            replies = gatherResults(
                [proto.execute_command(*c) for c in commands], consumeErrors=True
            ).addErrback(_first_error)

            def done(result: Any) -> Any:
                if proto.transport is not None:
                    proto.transport.loseConnection()
                return result

            return replies.addBoth(done)

        d.addCallback(query)
        return d.addTimeout(self._connect_timeout + self.io_timeout, self._clock)

    def _role_check(self, reply: Any) -> None:
        """Fail the set-up unless ``ROLE`` says master (Sentinel addresses only)."""
        if not (isinstance(reply, list) and reply and reply[0] == b"master"):
            role = reply[0].decode(errors="replace") if isinstance(reply, list) and reply else "?"
            raise RedisNotMaster(
                f"{self.target[0]}:{self.target[1]} is a {role}, not the master "
                f"{self.address.master_name!r} (yet)"
            )

    def _setup_commands(self) -> list[tuple[Any, ...]]:
        """AUTH, then ROLE (Sentinel) and CLIENT SETNAME when configured."""
        commands = self._auth_args()
        if self.address.is_sentinel:
            commands.append(("ROLE",))
        if self.address.client_name:
            commands.append(("CLIENT", "SETNAME", self.address.client_name))
        return commands

    def _connected(self, proto: Any) -> Deferred[None]:
        self._connecting = None
        self._proto = proto
        if self.stopped:
            proto.transport.loseConnection()
            return succeed(None)
        d = self._handshake(proto)
        d.addCallback(lambda _: self._up(proto))
        d.addErrback(self._handshake_failed, proto)
        return d

    def _handshake(self, proto: Any) -> Deferred[Any]:
        raise NotImplementedError

    def _handshake_failed(self, failure: Failure, proto: Any) -> None:
        if self.stopped:
            return
        self.ever_tried = True
        level = _log.warn if self._attempts == 1 else _log.debug
        level(
            "redis {kind} link to {address}: set-up failed: {error}",
            kind=self.kind,
            address=str(self.address),
            error=_describe(failure),
        )
        if proto.transport is not None:
            proto.transport.abortConnection()
        self._on_change()

    def _up(self, proto: Any) -> None:
        if proto is not self._proto or self.stopped:
            return
        if self.address.is_sentinel:
            _log.info(
                "redis {kind} link to {address} is up (master at {host}:{port})",
                kind=self.kind,
                address=str(self.address),
                host=self.target[0],
                port=self.target[1],
            )
        else:
            _log.info(
                "redis {kind} link to {address} is up", kind=self.kind, address=str(self.address)
            )
        self._attempts = 0
        self.ever_tried = True
        self._set_ready(True)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.stopped:
            return
        level = _log.warn if self._attempts == 1 else _log.debug
        level(
            "redis {kind} link to {address}: connect failed: {error}",
            kind=self.kind,
            address=str(self.address),
            error=_describe(failure),
        )
        self.ever_tried = True
        self._on_change()
        self._schedule_reconnect()

    def _lost(self, proto: Any, why: Failure) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        was_ready = self.ready
        self._set_ready(False)
        for d in self._closed:
            d.callback(None)
        self._closed.clear()
        if self.stopped:
            return
        if was_ready:
            _log.warn(
                "redis {kind} link to {address} lost: {error}",
                kind=self.kind,
                address=str(self.address),
                error=_describe(why),
            )
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self.stopped or self._retry is not None:
            return
        delay = min(self.backoff_max, self.backoff_min * 2 ** max(0, self._attempts - 1))
        delay *= 0.5 + self._rng.random() / 2
        self._retry = self._clock.callLater(delay, self._connect)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._on_change()

    def _auth_args(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        a = self.address
        if a.password:
            commands.append(("AUTH", a.user, a.password) if a.user else ("AUTH", a.password))
        return commands


def _first_error(failure: Failure) -> Failure:
    """The failure inside gatherResults' FirstError (callers see RedisUnavailable)."""
    sub = getattr(failure.value, "subFailure", None)
    return sub if isinstance(sub, Failure) else failure


def _describe(failure: Failure) -> str:
    value = failure.value
    text = str(value) or type(value).__name__
    return f"{type(value).__name__}: {text}" if text != type(value).__name__ else text


class CommandLink(_Link):
    """The command connection of one shard."""

    kind = "command"

    def __init__(
        self,
        *args: Any,
        scripts: Iterable[Script] = (),
        in_cluster: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._scripts = tuple(scripts)
        #: A master of a Redis Cluster: MOVED/ASK replies go to the caller as they are
        #: (the cluster router follows them), not turned into "not supported".
        self.in_cluster = in_cluster
        self._cluster_reported = False
        #: (reply Deferred, when the command was written), oldest first
        self._waiting: deque[tuple[Deferred[Any], float]] = deque()
        self._watchdog: LoopingCall | None = None

    def _protocol_class(self) -> type:
        return _protocols()[0]

    def start(self) -> None:
        """Connect (and keep reconnecting until :meth:`stop`); watch for late replies."""
        super().start()
        if self._watchdog is None and self.io_timeout > 0:
            # one timer per link instead of one per command: a reply later than
            # io_timeout is noticed within a quarter of io_timeout after it
            self._watchdog = LoopingCall(self._check_replies)
            self._watchdog.clock = self._clock
            self._watchdog.start(self.io_timeout / 4, now=False).addErrback(
                lambda f: _log.failure("redis command watchdog stopped", f)
            )

    def stop(self) -> Deferred[None]:
        """Close the connection and cancel every timer; fires once it is closed."""
        if self._watchdog is not None:
            if self._watchdog.running:
                self._watchdog.stop()
            self._watchdog = None
        return super().stop()

    def _handshake(self, proto: Any) -> Deferred[Any]:
        commands = self._setup_commands()
        if self.address.db:
            commands.append(("SELECT", self.address.db))
        commands.extend(("SCRIPT", "LOAD", s.body) for s in self._scripts)
        ds = [self._write(proto, c) for c in commands]
        if self.address.is_sentinel:
            ds[commands.index(("ROLE",))].addCallback(self._role_check)
        return gatherResults(ds, consumeErrors=True).addErrback(_first_error)

    def _write(self, proto: Any, args: tuple[Any, ...]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append((d, self._clock.seconds()))
        proto.transport.write(encode_redis_command(proto, *args))
        return d

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command; fails at once with RedisUnavailable while the link is down."""
        proto = self._proto
        if not self.ready or proto is None or proto.transport is None:
            return fail(RedisUnavailable(f"redis {self.address} is unavailable"))
        return self._write(proto, args).addErrback(self._translate, proto)

    def _reply(self, proto: Any, reply: Any) -> None:
        if proto is not self._proto or not self._waiting:
            return
        d = self._waiting.popleft()[0]
        if isinstance(reply, Exception):
            d.errback(reply)
        else:
            d.callback(reply)

    def _check_replies(self) -> None:
        proto = self._proto
        if not self._waiting or proto is None:
            return
        if self._waiting[0][1] + self.io_timeout > self._clock.seconds():
            return
        self._set_ready(False)
        self._fail_waiting(RedisTimeout, f"no reply within {self.io_timeout:g}s")
        self.drop(f"no reply within {self.io_timeout:g}s")

    def _fail_waiting(self, error: type[RedisUnavailable], reason: str) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d, _ in waiting:
            d.errback(error(f"redis {self.address}: {reason}"))

    def _lost(self, proto: Any, why: Failure) -> None:
        if proto is not self._proto:
            return
        # forget the connection first: callers reacting to the failures must not queue
        # commands on it
        super()._lost(proto, why)
        self._fail_waiting(RedisUnavailable, "connection lost")

    def _translate(self, failure: Failure, proto: Any) -> Failure:
        if _is_readonly(failure.value):
            # a replica now (failover): find the master again
            if proto is self._proto:
                self.drop("the server became a read-only replica")
            return Failure(RedisNotMaster(f"redis {self.address}: {failure.value}"))
        if _is_cluster_error(failure.value) and not self.in_cluster:
            if not self._cluster_reported:
                self._cluster_reported = True
                _log.error(
                    "redis {address} is a Redis Cluster node ({error}); configure it as "
                    "redis+cluster://{host}:{port} (docs/cluster.rst)",
                    address=str(self.address),
                    error=str(failure.value)[:80],
                    host=self.address.host,
                    port=self.address.port,
                )
            return Failure(
                RedisUnavailable(
                    f"redis {self.address} is a Redis Cluster node: "
                    "configure it as redis+cluster://"
                )
            )
        return failure

    def evalsha(self, script: Script, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        """EVALSHA, falling back to EVAL when Redis lost the script (NOSCRIPT)."""
        return evalsha(self.execute, script, keys, args)


def evalsha(
    execute: Callable[..., Deferred[Any]], script: Script, keys: list[Any], args: list[Any]
) -> Deferred[Any]:
    """EVALSHA through ``execute``, falling back to EVAL on NOSCRIPT."""
    d = execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def noscript(failure: Failure) -> Any:
        if str(failure.value).startswith("NOSCRIPT"):
            return execute("EVAL", script.body, len(keys), *keys, *args)
        return failure

    return d.addErrback(noscript)


@dataclass
class _Pending:
    """Replies a pub/sub command still waits for."""

    remaining: int
    deferred: Deferred[Any]
    timer: IDelayedCall | None


class PubSubLink(_Link):
    """The PUB/SUB connection of one shard.

    ``channels()`` gives every channel this link must be subscribed to; after each
    (re)connect all of them are subscribed again and the link is ready once Redis has
    confirmed them all. The deaf-link probe: when nothing arrived for ``probe_interval``
    ``on_probe(link)`` is called (the engine publishes a probe the link must receive);
    when another interval passes with nothing, the link is re-established. Consecutive
    stale restarts wait longer before the next probe (doubling, at most 10 intervals).
    """

    kind = "pubsub"
    batch = 512

    def __init__(
        self,
        *args: Any,
        channels: Callable[[], Iterable[bytes]],
        on_message: Callable[[bytes, bytes], None],
        on_probe: Callable[[PubSubLink], None],
        probe_interval: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._channels = channels
        self._on_message = on_message
        self._on_probe = on_probe
        self._probe_interval = probe_interval
        self._pending: deque[_Pending] = deque()
        self._watchdog: LoopingCall | None = None
        self._last_received = 0.0
        self._stale_restarts = 0
        self.probe_sent = False

    def _protocol_class(self) -> type:
        return _protocols()[1]

    # commands

    def _send(self, proto: Any, *args: Any, replies: int = 1) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        # io_timeout 0 = no timeout, as on the command link (txredisapi's replyTimeout)
        timer = (
            self._clock.callLater(self.io_timeout, self._timed_out, proto)
            if self.io_timeout > 0
            else None
        )
        self._pending.append(_Pending(replies, d, timer))
        proto.transport.write(encode_redis_command(proto, *args))
        return d

    def _timed_out(self, proto: Any) -> None:
        if self._pending:
            self._pending[0].timer = None
        if proto is self._proto:
            self.drop(f"no reply within {self.io_timeout:g}s")

    #: The commands and the message kind: classic PUB/SUB here, sharded in a subclass.
    subscribe_command = "SUBSCRIBE"
    unsubscribe_command = "UNSUBSCRIBE"
    message_kind = b"message"

    def _batches(self, names: list[bytes]) -> Iterator[list[bytes]]:
        """``names`` in the groups one (UN)SUBSCRIBE command may carry."""
        for i in range(0, len(names), self.batch):
            yield names[i : i + self.batch]

    def _subscribe_all(self, proto: Any, names: list[bytes]) -> Deferred[Any]:
        ds = [
            self._send(proto, self.subscribe_command, *group, replies=len(group))
            for group in self._batches(names)
        ]
        return gatherResults(ds, consumeErrors=True).addErrback(_first_error)

    def subscribe(self, names: list[bytes]) -> Deferred[Any]:
        """SUBSCRIBE now if connected (the caller already added ``names`` to its set)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return fail(RedisUnavailable(f"redis {self.address} PUB/SUB is unavailable"))
        return self._subscribe_all(proto, names)

    def unsubscribe(self, names: list[bytes]) -> Deferred[Any]:
        """UNSUBSCRIBE if connected; nothing to do otherwise (nor once stopping)."""
        proto = self._proto
        if proto is None or proto.transport is None or self.stopped:
            return succeed(None)
        ds = [
            self._send(proto, self.unsubscribe_command, *group, replies=len(group))
            for group in self._batches(names)
        ]
        return gatherResults(ds, consumeErrors=True).addErrback(_first_error)

    def ping(self) -> Deferred[Any]:
        """A PING round trip: everything Redis sent this link before it has arrived."""
        proto = self._proto
        if not self.ready or proto is None:
            return fail(RedisUnavailable(f"redis {self.address} PUB/SUB is unavailable"))
        return self._send(proto, "PING")

    # connection

    def _handshake(self, proto: Any) -> Deferred[Any]:
        self._last_received = self._clock.seconds()
        commands = self._setup_commands()
        ds = [self._send(proto, *c) for c in commands]
        if self.address.is_sentinel:
            ds[commands.index(("ROLE",))].addCallback(self._role_check)
        names = list(self._channels())
        ds.append(self._subscribe_all(proto, names))
        d = gatherResults(ds, consumeErrors=True)
        d.addErrback(_first_error)

        def done(result: Any) -> Any:
            _log.debug(
                "redis pubsub link to {address}: subscribed {n} channels",
                address=str(self.address),
                n=len(names),
            )
            return result

        return d.addCallback(done)

    def _up(self, proto: Any) -> None:
        # Arm the watchdog before announcing readiness: what waits for the link (the
        # engine's start, a resubscribe) runs inside super()._up and may rely on probes.
        if (
            proto is self._proto
            and not self.stopped
            and self._probe_interval > 0
            and self._watchdog is None
        ):
            self.probe_sent = False
            self._watchdog = LoopingCall(self._check)
            self._watchdog.clock = self._clock
            self._watchdog.start(self._probe_interval, now=False).addErrback(
                lambda f: _log.failure("redis pubsub watchdog stopped", f)
            )
        super()._up(proto)

    def _set_ready(self, ready: bool) -> None:
        if not ready and self._watchdog is not None:
            if self._watchdog.running:
                self._watchdog.stop()
            self._watchdog = None
        super()._set_ready(ready)

    def _lost(self, proto: Any, why: Failure) -> None:
        if proto is not self._proto:
            return
        pending, self._pending = self._pending, deque()
        # timers first: super()._lost fires stop()'s Deferred, and what waits for it must
        # find no timer of this link left
        for p in pending:
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
        # forget the connection before the errbacks: what they do (e.g. unsubscribe the
        # channel whose subscribe failed) must not be queued on it, or its stale entry
        # would take the next connection's first reply
        super()._lost(proto, why)
        for p in pending:
            p.deferred.errback(RedisUnavailable(f"redis {self.address}: connection lost"))

    def _reply(self, proto: Any, reply: Any) -> None:
        if proto is not self._proto:
            return
        self._last_received = self._clock.seconds()
        if self.probe_sent:  # something came back after a probe: the link hears
            self.probe_sent = False
            self._stale_restarts = 0
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == self.message_kind:
            self._on_message(reply[1], reply[2])
            return
        if not self._pending:
            return  # e.g. a confirmation nobody waits for
        head = self._pending[0]
        head.remaining -= 1
        if head.remaining > 0 and not _is_error(reply):
            return
        self._pending.popleft()
        if head.timer is not None and head.timer.active():
            head.timer.cancel()
        if _is_error(reply):
            head.deferred.errback(reply)
        else:
            head.deferred.callback(reply)

    def _check(self) -> None:
        if self._proto is None:
            return
        idle = self._clock.seconds() - self._last_received
        # repeated stale restarts back off: doubling, capped at 10 intervals
        quiet = self._probe_interval * min(10, 2**self._stale_restarts)
        if idle < quiet * 0.99:
            return
        if self.probe_sent:
            self._stale_restarts += 1
            self.drop(f"nothing received for {idle:.1f}s, probe lost (deaf link)")
            return
        self.probe_sent = True
        self._on_probe(self)


class SentinelWatch(PubSubLink):
    """Sentinel's ``+switch-master`` events for one Sentinel shard.

    Subscribed on one sentinel at a time (the next one after each failed or lost
    connection). When the sentinels switch the watched master, ``on_switch(host, port)``
    is called at once, so the shard's links can leave a master that Sentinel has given
    up before Sentinel gets round to demoting it. Not part of the engine's health: with
    every sentinel down, the links still work and still find the master on reconnect.
    """

    kind = "sentinel"
    _CHANNEL = b"+switch-master"

    def __init__(
        self,
        watched: RedisAddress,
        clock: IReactorTime,
        reactor: Any,
        *,
        on_switch: Callable[[str, int], None],
        connect_timeout: float,
        io_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        sentinel = RedisAddress(
            watched.host,
            watched.port,
            user=watched.sentinel_user,
            password=watched.sentinel_password,
            tls=watched.sentinel_tls,
            client_name=watched.sentinel_client_name,
            connect_timeout=watched.connect_timeout,
            io_timeout=watched.io_timeout,
        )
        super().__init__(
            sentinel,
            clock,
            reactor,
            channels=lambda: [self._CHANNEL],
            on_message=self._message,
            on_probe=lambda link: None,
            probe_interval=0,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
            on_change=lambda: None,
            rng=rng,
        )
        self._watched = watched
        self._on_switch = on_switch
        self._turn = 0

    def __repr__(self) -> str:
        return f"<SentinelWatch {self._watched}>"

    def _resolve(self) -> Deferred[tuple[str, int]]:
        sentinels = self._watched.sentinels
        target = sentinels[self._turn % len(sentinels)]
        self._turn += 1
        return succeed(target)

    def _message(self, channel: bytes, data: bytes) -> None:
        # "<master name> <old ip> <old port> <new ip> <new port>"
        parts = data.split()
        if channel != self._CHANNEL or len(parts) != 5:
            return
        if parts[0].decode(errors="replace") != self._watched.master_name:
            return
        try:
            host, port = parts[3].decode(), int(parts[4])
        except (UnicodeDecodeError, ValueError):
            return
        _log.info(
            "redis sentinel: master {name} switched to {host}:{port}",
            name=self._watched.master_name,
            host=host,
            port=port,
        )
        self._on_switch(host, port)

    def follow(self, link: _Link, host: str, port: int) -> None:
        """Move ``link`` to the new master (see :meth:`_Link.redirect`)."""
        name = self._watched.master_name
        link.redirect((host, port), f"Sentinel switched master {name} to {host}:{port}")
