"""The NATS broker: PUB/SUB between nodes over a NATS server (``broker.type: nats``).

Subjects (prefix ``P`` = ``broker.nats.prefix``), as Centrifugo's NATS broker names them:

* ``P.client.<channel>``: a channel's publications, joins and leaves, subscribed while
  this node has local subscribers; in raw mode ``<raw prefix><channel>`` with
  ``channel_replacements`` applied, carrying the publication data only.
* ``P.control`` (every node) and ``P.node.<uid>`` (one node): control messages.

Payloads are rtserver's JSON wire format (:mod:`rtserver.engines.wire`) with the Redis
engine's message prefixes (``__p1:<offset>:<epoch>__``, ``__j__``, ``__l__``), not the
Protobuf of Go Centrifugo nodes: rtserver and Centrifugo nodes must not share a prefix.

Delivery is at most once: what is published while a node is disconnected from NATS never
reaches it. History: Centrifugo's NATS broker keeps none (history is "not available",
error 108). rtserver does the same unless the node also has a Redis engine
(``engine.type: redis``): then the stream lives in Redis (appended by the same Lua
script as the Redis engine's, without its PUBLISH) and the publication travels over NATS
with its offset and epoch, so a subscriber that missed publications notices the gap and
recovers from Redis (``recovered: false`` when the history no longer covers it). This is
what Centrifugo's experimental, unreleased ``redisnats`` broker does; see
docs/cluster.rst, "NATS broker".
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable
from typing import Any, Protocol

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.config import NatsBrokerConfig, parse_nats_urls
from rtserver.core.ports import IBroker, IEngineHandler, IHistory
from rtserver.core.types import (
    ControlMessage,
    HistoryFilter,
    HistoryResult,
    PublishOptions,
    Suppressed,
)
from rtserver.engines.natsconn import NatsLink, NatsUnavailable
from rtserver.engines.wire import (
    JOIN_PREFIX,
    LEAVE_PREFIX,
    WireError,
    decode_control,
    deliver,
    encode_client_info,
    encode_control,
    encode_publication,
)
from rtserver.logs import Logger
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import ClientInfo, Publication, StreamPosition
from rtserver.tlsclient import load_tls_material

__all__ = ["HistoryStore", "NatsBroker", "NatsUnavailable"]

_log = Logger()

# Bytes that end a subject or break the protocol line: whitespace and controls.
_BAD_SUBJECT = re.compile(r"[\x00-\x20\x7f]")
_NO_POSITION = StreamPosition(0, "")

_CLIENT, _CONTROL = 0, 1


class HistoryStore(Protocol):
    """Where the NATS broker keeps streams when it has somewhere (the Redis engine)."""

    @property
    def healthy(self) -> bool:
        """Whether the store can serve."""

    def append(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """Append; fires with the position, :class:`Suppressed` if nothing was appended.

        Nothing is appended for a repeated idempotency key or an outdated version
        (``PublishOptions``); the publication must not be delivered then.
        """

    def history(
        self, channel: str, filter: HistoryFilter, meta_ttl: float
    ) -> Deferred[HistoryResult]:
        """Read the stream."""

    def remove_history(self, channel: str) -> Deferred[None]:
        """Drop the stream's publications."""


def _replacer(replacements: dict[str, str]) -> Any:
    """One-pass replacement of every key by its value (longest key first)."""
    if not replacements:
        return None
    keys = sorted(replacements, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys if k))
    return lambda text: pattern.sub(lambda m: replacements[m.group(0)], text)


@implementer(IBroker, IHistory)
class NatsBroker:
    """IBroker (and IHistory, through a :class:`HistoryStore` or "not available").

    Args:
        clock: timers of the connection.
        config: ``broker.nats``.
        reactor: connects TCP; the global reactor when None.
        history: keeps streams (the Redis engine); None: history is not available.
        rng: reconnect jitter.
    """

    shared = True

    def __init__(
        self,
        clock: IReactorTime,
        config: NatsBrokerConfig,
        *,
        # Any: needs IReactorTCP and IReactorTime at once (see NatsLink).
        reactor: Any = None,
        history: HistoryStore | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._config = config
        self._store = history
        self._raw = config.raw_mode.enabled
        self._raw_prefix = config.raw_mode.prefix
        self._replace = _replacer(config.raw_mode.channel_replacements)
        self._wildcards = config.allow_wildcards
        prefix = config.prefix
        self._client_prefix = f"{prefix}.client."
        self._control = f"{prefix}.control".encode()
        self._node_prefix = f"{prefix}.node."
        self._handler: IEngineHandler | None = None
        self._healthy = False
        self._stopped = False
        self._ready: Deferred[None] | None = None
        # channel -> sid; sid -> (kind, channel)
        self._sids: dict[str, int] = {}
        self._routes: dict[int, tuple[int, str]] = {}
        self._subject_cache: dict[str, bytes] = {}
        tls = config.tls if config.tls.enabled else None
        if tls is not None:  # load the certificates now: a bad file fails at start
            load_tls_material(tls, "broker.nats.tls")
        self.link = NatsLink(
            parse_nats_urls(config.url),
            clock,
            reactor,
            on_message=self._on_message,
            on_change=self._changed,
            tls=tls,
            dial_timeout=config.dial_timeout,
            write_timeout=config.write_timeout,
            rng=rng,
        )

    # --- lifecycle -------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while connected to NATS (and the history store, if any, is healthy)."""
        return self._healthy and (self._store is None or self._store.healthy)

    def start(self, handler: IEngineHandler) -> Deferred[None]:
        """Connect and subscribe the control subjects; fires once up or tried once."""
        self._handler = handler
        for subject in (self._control, (self._node_prefix + handler.uid).encode()):
            sid, d = self.link.subscribe(subject)
            d.addErrback(_ignore_unavailable)
            self._routes[sid] = (_CONTROL, "")
        self._ready = Deferred()
        self.link.start()
        return self._ready

    def stop(self) -> Deferred[None]:
        """Close the connection."""
        self._stopped = True
        d = self.link.stop()
        self._changed()
        return d

    def sync(self) -> Deferred[None]:
        """Fire once everything the server sent this node before the call is handled."""
        return self.link.ping()

    def _changed(self) -> None:
        healthy = self.link.ready and not self._stopped
        if healthy != self._healthy:
            self._healthy = healthy
            if not self._stopped:
                if healthy:
                    _log.info("nats broker is healthy")
                else:
                    _log.warn("nats broker is unhealthy: the NATS connection is down")
        ready = self._ready
        if ready is not None and (self._stopped or self.link.ready or self.link.ever_tried):
            self._ready = None
            ready.callback(None)

    # --- subjects --------------------------------------------------------------------

    def _subject(self, channel: str) -> bytes:
        subject = self._subject_cache.get(channel)
        if subject is None:
            if self._raw:
                name = self._replace(channel) if self._replace is not None else channel
                text = self._raw_prefix + name
            else:
                text = self._client_prefix + channel
            if not _valid_subject(text):
                raise Error.BAD_REQUEST.with_message("channel cannot be a NATS subject")
            subject = text.encode()
            if len(self._subject_cache) >= 65536:
                self._subject_cache.clear()
            self._subject_cache[channel] = subject
        return subject

    @staticmethod
    def _wildcard(channel: str) -> bool:
        return "*" in channel or ">" in channel

    # --- inbound ---------------------------------------------------------------------

    def _on_message(self, sid: int, subject: bytes, payload: bytes) -> None:
        handler = self._handler
        route = self._routes.get(sid)
        if handler is None or route is None or self._stopped:
            return
        kind, channel = route
        try:
            if kind == _CONTROL:
                message = decode_control(payload)
                if message is not None:
                    handler.handle_control(message)
            elif self._raw:
                orjson.loads(payload)  # clients get JSON: drop what is not
                handler.handle_publication(channel, Publication(data=payload))
            else:
                deliver(handler, channel, payload)
        except (WireError, orjson.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            _log.warn(
                "nats broker: dropped a malformed message on {subject!r}: {error}",
                subject=subject[:200],
                error=str(e)[:200],
            )
        except Exception as e:
            _log.error(
                "nats broker: handler failed for a message on {subject!r}: {error!r}",
                subject=subject[:200],
                error=e,
            )

    # --- broker ----------------------------------------------------------------------

    def subscribe(self, channel: str) -> Deferred[None]:
        """SUB the channel's subject; fires once the NATS server has it."""
        if channel in self._sids:
            return succeed(None)
        if self._wildcard(channel) and not self._wildcards:
            return fail(Error.BAD_REQUEST.with_message("wildcard channels are not allowed"))
        try:
            subject = self._subject(channel)
        except Error as e:
            return fail(e)
        sid, d = self.link.subscribe(subject)
        self._sids[channel] = sid
        self._routes[sid] = (_CLIENT, channel)
        return d

    def unsubscribe(self, channel: str) -> Deferred[None]:
        """UNSUB the channel's subject."""
        sid = self._sids.pop(channel, None)
        if sid is not None:
            self._routes.pop(sid, None)
            self.link.unsubscribe(sid)
        return succeed(None)

    def _publish_channel(self, channel: str, payload: bytes) -> Deferred[None]:
        try:
            if self._wildcard(channel):
                raise Error.BAD_REQUEST.with_message("cannot publish into a wildcard channel")
            self.link.publish(self._subject(channel), payload)
        except (Error, NatsUnavailable) as e:
            return fail(e)
        return succeed(None)

    def publish_order(self, channel: str) -> Hashable | None:
        """None: a publish with history is two steps (append, then PUB), so not ordered."""
        return None

    def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> Deferred[StreamPosition]:
        """Deliver to every node; with a history store, append there first.

        In raw mode only the data is sent and nothing is kept.
        """
        store = self._store
        if (
            self._raw
            or store is None
            or not (
                options.idempotency_key or (options.history_size > 0 and options.history_ttl > 0)
            )
        ):
            payload = publication.data if self._raw else encode_publication(publication)
            return self._publish_channel(channel, payload).addCallback(lambda _: _NO_POSITION)
        if self._wildcard(channel):
            return fail(Error.BAD_REQUEST.with_message("cannot publish into a wildcard channel"))
        try:
            subject = self._subject(channel)
        except Error as e:
            return fail(e)
        d = store.append(channel, publication, options)
        return d.addCallback(self._send_positioned, subject, publication)

    def _send_positioned(
        self,
        position: StreamPosition,
        subject: bytes,
        publication: Publication,
    ) -> StreamPosition:
        if type(position) is Suppressed:  # not isinstance: its miss costs more
            return position
        payload = encode_publication(publication)
        if position.offset:
            payload = b"__p1:%d:%b__%b" % (position.offset, position.epoch.encode(), payload)
        try:
            self.link.publish(subject, payload)
        except NatsUnavailable as e:
            # Kept in history: subscribers notice the gap in offsets and recover it.
            _log.debug("nats broker: publication kept in history only: {error}", error=str(e))
        return position

    def publish_join(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Deliver a join (not in raw mode or on wildcard channels)."""
        if self._raw or self._wildcard(channel):
            return succeed(None)
        return self._publish_channel(channel, JOIN_PREFIX + encode_client_info(info))

    def publish_leave(self, channel: str, info: ClientInfo) -> Deferred[None]:
        """Deliver a leave (not in raw mode or on wildcard channels)."""
        if self._raw or self._wildcard(channel):
            return succeed(None)
        return self._publish_channel(channel, LEAVE_PREFIX + encode_client_info(info))

    def publish_control(self, message: ControlMessage, node: str = "") -> Deferred[None]:
        """PUB on ``P.control`` (every node) or ``P.node.<node>`` (one node)."""
        subject = (self._node_prefix + node).encode() if node else self._control
        try:
            self.link.publish(subject, encode_control(message))
        except NatsUnavailable as e:
            return fail(e)
        return succeed(None)

    # --- history ---------------------------------------------------------------------

    def history(
        self, channel: str, filter: HistoryFilter, meta_ttl: float
    ) -> Deferred[HistoryResult]:
        """Read the stream from the store; error 108 without one (as Centrifugo)."""
        if self._store is None:
            return fail(Error.NOT_AVAILABLE)
        return self._store.history(channel, filter, meta_ttl)

    def remove_history(self, channel: str) -> Deferred[None]:
        """Drop the stream in the store; error 108 without one."""
        if self._store is None:
            return fail(Error.NOT_AVAILABLE)
        return self._store.remove_history(channel)


def _valid_subject(text: str) -> bool:
    """No whitespace or control bytes, no empty ``.``-separated token."""
    return bool(text) and not _BAD_SUBJECT.search(text) and "" not in text.split(".")


def _ignore_unavailable(failure: Failure) -> None:
    # The control subjects are sent again with the handshake of the next connection.
    failure.trap(NatsUnavailable)
