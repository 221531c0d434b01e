"""Pushing the metrics of ``/metrics`` to Graphite (``graphite.enabled``).

Every ``graphite.interval`` the exporter collects the same Prometheus registry
``/metrics`` renders and writes Graphite's plaintext protocol, one
``<path> <value> <unix time>`` line per sample, over one TCP connection it keeps open.
Paths are named as Centrifugo names them: ``<prefix>.<node name>.`` then the sample's
name split at its first two underscores (namespace, subsystem, name:
``centrifugo.node.num_clients``), ``sum`` or ``count`` for a summary, and the labels,
either as ``name.value`` path components or, with ``graphite.tags``, as Graphite tags
(``;name=value``). As in Centrifugo, counters and summaries are sent as their increase
over the interval (gauges as they are), counters as integers, other values with six
decimals.

While Graphite is unreachable the lines wait in a buffer of at most ``max_buffer``
bytes; the oldest batches are dropped (and counted) beyond it. The connection is
retried with a doubling delay up to 30 s. A Graphite server that reads slowly pauses
the writes (the exporter is the transport's producer) instead of growing Twisted's
write buffer. Nothing blocks the reactor.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver.logs import Logger

__all__ = ["GraphiteExporter", "path_component", "render"]

_log = Logger()

_UNSAFE = re.compile(r"[^\x00-\x7f]")
_BREAKS_LINE = re.compile(r"[\s;=]")
_COUNTER_TYPES = ("counter", "unknown", "untyped")

#: Default bound of lines waiting for Graphite, in bytes.
MAX_BUFFER = 1 << 20
_MAX_BACKOFF = 30.0


def path_component(text: str) -> str:
    """``text`` as one component of a Graphite path.

    Centrifugo's rule: every non-ASCII character and every dot becomes ``_``; here
    whitespace, ``;`` and ``=`` too, since they would break the line or read as a tag.
    """
    return _BREAKS_LINE.sub("_", _UNSAFE.sub("_", text).replace(".", "_"))


def _format(value: float, integer: bool) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return ""  # Graphite has no NaN or infinity
    return str(int(value)) if integer else f"{value:f}"


def _path(name: str) -> list[str]:
    return [path_component(part) for part in name.split("_", 2) if part]


#: Previous cumulative values by (sample name, labels): counters are sent as deltas.
Previous = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def render(
    families: Iterable[Metric],
    prefix: str,
    now: int,
    *,
    tags: bool = False,
    previous: Previous | None = None,
) -> list[bytes]:
    """One plaintext line per sample of ``families``, as Centrifugo writes them.

    Gauges are sent as they are; counters, and a summary's ``sum`` and ``count``, as
    the increase since the ``previous`` call (updated here; without it, or the first
    time, the value itself). Label pairs with an empty value are left out; families of
    other types (histograms) are skipped.
    """
    lines: list[bytes] = []
    for family in families:
        if family.type not in (*_COUNTER_TYPES, "gauge", "summary"):
            continue
        for sample in family.samples:
            suffix = ""
            if family.type == "summary":
                suffix = sample.name[len(family.name) :]
                if suffix not in ("_sum", "_count"):
                    continue  # quantiles: rtserver's summaries have none
                parts = [prefix, *_path(family.name), suffix[1:]]
            elif family.type == "counter" and sample.name != family.name + "_total":
                continue  # _created
            else:
                parts = [prefix, *_path(sample.name)]
            labels = [(k, v) for k, v in sample.labels.items() if v != ""]
            value = sample.value
            if family.type != "gauge" and previous is not None:
                key = (sample.name, tuple(labels))
                before = previous.get(key)
                previous[key] = value
                if before is not None and value >= before:
                    value -= before
            if tags:
                path = ".".join(parts) + "".join(
                    f";{path_component(k)}={path_component(v)}" for k, v in labels
                )
            else:
                for k, v in labels:
                    parts.extend((path_component(k), path_component(v)))
                path = ".".join(parts)
            text = _format(value, family.type in _COUNTER_TYPES)
            if text:
                lines.append(f"{path} {text} {now}\n".encode())
    return lines


@implementer(IPushProducer)
class _Line(Protocol):
    """The connection to Graphite: writes what the exporter hands it; never reads."""

    def __init__(self, exporter: GraphiteExporter) -> None:
        self.exporter = exporter
        self.paused = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self.exporter._connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.exporter._lost(self, reason)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.exporter._send()

    def stopProducing(self) -> None:
        self.paused = True


class GraphiteExporter(Service):
    """Pushes ``registry`` to ``host``:``port`` every ``interval`` seconds.

    ``dropped`` counts the lines thrown away because Graphite was down or too slow for
    ``max_buffer``; ``sent`` the lines handed to the connection.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        prefix: str,
        interval: float,
        tags: bool,
        reactor: Any,
        max_buffer: int = MAX_BUFFER,
        connect_timeout: float = 1.0,
    ) -> None:
        self.registry = registry
        self.address = f"{host}:{port}"
        self.prefix = prefix
        self.interval = interval
        self.tags = tags
        self.max_buffer = max_buffer
        self.dropped = 0
        self.sent = 0
        self._reactor = reactor
        self._host, self._port, self._connect_timeout = host, port, connect_timeout
        self._previous: Previous = {}
        self._pending: deque[list[bytes]] = deque()
        self._pending_bytes = 0
        self._line: _Line | None = None
        self._connecting: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._backoff = 0.0
        self._dropped_reported = 0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        _log.info(
            "graphite: pushing metrics to {address} every {interval}s as {prefix}.*",
            address=self.address,
            interval=self.interval,
            prefix=self.prefix,
        )
        self._connect()
        d = self._loop.start(self.interval, now=False)
        d.addErrback(lambda f: _log.failure("graphite: the export loop stopped", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._line is not None and self._line.transport is not None:
            self._line.transport.loseConnection()
        self._line = None

    # --- exporting ------------------------------------------------------------------

    def _tick(self) -> None:
        # One failed collection is logged; the next interval tries again.
        try:
            self.export()
        except Exception:
            _log.failure("graphite: exporting the metrics failed")

    def export(self) -> None:
        """Collect the registry now and queue its lines (the loop calls this)."""
        now = int(self._reactor.seconds())
        lines = render(
            self.registry.collect(), self.prefix, now, tags=self.tags, previous=self._previous
        )
        if not lines:
            return
        self._pending.append(lines)
        self._pending_bytes += sum(len(line) for line in lines)
        while self._pending_bytes > self.max_buffer and len(self._pending) > 1:
            old = self._pending.popleft()
            self._pending_bytes -= sum(len(line) for line in old)
            self.dropped += len(old)
        if self._pending_bytes > self.max_buffer:
            # a single batch larger than the bound: keep its head
            batch = self._pending[0]
            kept: list[bytes] = []
            size = 0
            for line in batch:
                if size + len(line) > self.max_buffer:
                    break
                kept.append(line)
                size += len(line)
            self.dropped += len(batch) - len(kept)
            self._pending[0] = kept
            self._pending_bytes = size
        self._send()

    def _send(self) -> None:
        line = self._line
        if line is None or line.paused or line.transport is None:
            return
        while self._pending and not line.paused:
            batch = self._pending.popleft()
            self._pending_bytes -= sum(len(b) for b in batch)
            line.transport.write(b"".join(batch))
            self.sent += len(batch)
        if self.dropped > self._dropped_reported:
            _log.warn(
                "graphite: {count} lines dropped while {address} was unreachable or slow",
                count=self.dropped - self._dropped_reported,
                address=self.address,
            )
            self._dropped_reported = self.dropped

    # --- the connection -------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        if not self.running or self._line is not None or self._connecting is not None:
            return
        endpoint = HostnameEndpoint(
            self._reactor, self._host, self._port, timeout=self._connect_timeout
        )
        d: Deferred[Any] = endpoint.connect(Factory.forProtocol(lambda: _Line(self)))
        self._connecting = d
        d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if self._connecting is None:
            return  # cancelled by stopService
        self._connecting = None
        _log.warn(
            "graphite: cannot connect to {address}: {error}",
            address=self.address,
            error=failure.getErrorMessage() or repr(failure.value),
        )
        self._schedule()

    def _connected(self, line: _Line) -> None:
        self._connecting = None
        if not self.running:
            assert line.transport is not None
            line.transport.loseConnection()
            return
        self._line = line
        self._backoff = 0.0
        _log.info("graphite: connected to {address}", address=self.address)
        self._send()

    def _lost(self, line: _Line, reason: Failure) -> None:
        if self._line is not line:
            return
        self._line = None
        if self.running:
            _log.warn(
                "graphite: connection to {address} lost: {error}",
                address=self.address,
                error=reason.getErrorMessage(),
            )
            self._schedule()

    def _schedule(self) -> None:
        if not self.running or self._retry is not None:
            return
        self._backoff = min(_MAX_BACKOFF, self._backoff * 2 if self._backoff else 0.5)
        self._retry = self._reactor.callLater(self._backoff, self._connect)
