"""A NATS client connection on the Twisted reactor: the core NATS text protocol.

Why not the official ``nats-py``: it runs on an asyncio event loop, while rtserver runs on
twistd's default epoll reactor; using it would mean switching the whole process to the
asyncio reactor (a global decision affecting every transport) or running it on a thread.
The core protocol the broker needs is small (``INFO``, ``CONNECT``, ``PUB``, ``SUB``,
``UNSUB``, ``MSG``, ``PING``, ``PONG``, ``+OK``, ``-ERR``; see
docs/cluster.rst, "The NATS client"), so :class:`NatsLink` speaks it directly: no
threads, no second event loop, one ``transport.write`` per publication.

The link:

* connects to the servers of ``broker.nats.url`` in turn: the first that answers, and
  on a lost connection or a failed attempt the next one (wrapping around);
* speaks TLS when ``broker.nats.tls`` is enabled or a URL is ``tls://``, or when the
  server requires it (as the official clients do): the server's first ``INFO`` is
  plaintext, then TLS starts on the same connection before ``CONNECT``;
* parses strictly and within bounds: a control line longer than
  :data:`MAX_CONTROL_LINE` or a message larger than the server's ``max_payload`` drops
  the connection (a protocol error, logged on one line);
* reconnects by itself with capped, jittered exponential backoff on the injected clock
  and re-sends every ``SUB`` before it reports itself ready (``PONG`` after the subs
  proves the server registered them);
* fails a publish at once with :class:`NatsUnavailable` while disconnected (at most
  once: nothing is queued for a later connection);
* drops a connection whose writes stay blocked for ``write_timeout`` and refuses more
  than ``max_pending`` bytes queued behind a blocked socket;
* pings the server every ``ping_interval`` and drops a connection that leaves two pings
  unanswered.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from rtserver import __version__
from rtserver.config import ClientTLSConfig, NatsAddress
from rtserver.logs import Logger
from rtserver.tlsclient import tls_connection_creator, tls_failure

__all__ = [
    "MAX_CONTROL_LINE",
    "NatsLink",
    "NatsProtocolError",
    "NatsUnavailable",
]

_log = Logger()

#: Longest control line accepted from the server (the NATS server's own default).
MAX_CONTROL_LINE = 4096
#: Message size assumed until the server's INFO says otherwise (NATS default, 1 MB).
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class NatsUnavailable(ConnectionError):
    """The NATS connection is down or cannot take more data (the core answers 100)."""


class NatsProtocolError(ValueError):
    """The server sent something this client does not accept."""


# --- the protocol ----------------------------------------------------------------------

_AWAIT_INFO, _AWAIT_PONG, _READY = range(3)

#: The TLS object used when the server requires TLS that the configuration does not
#: enable: the system's trust store, the URL's host name.
_SYSTEM_TLS = ClientTLSConfig(enabled=True)


@implementer(IPushProducer)
class NatsProtocol(Protocol):
    """One TCP connection to NATS; the link owns its lifecycle.

    The parser keeps at most one control line (:data:`MAX_CONTROL_LINE`) or one message
    (the server's ``max_payload``) of unparsed input.
    """

    def __init__(self, link: NatsLink, address: NatsAddress) -> None:
        self.link = link
        self.address = address
        self.tls = False
        self.state = _AWAIT_INFO
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self._buf = bytearray()
        # A MSG whose payload is still arriving: (sid, subject, size).
        self._msg: tuple[int, bytes, int] | None = None
        self.pongs: deque[Deferred[None] | None] = deque()
        self.unanswered = 0
        self.paused = False
        self.pending_while_paused = 0
        self._write_timer: IDelayedCall | None = None
        self.lost = False

    # --- Protocol --------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        """Register as the transport's producer (write back-pressure, write timeout)."""
        assert self.transport is not None
        IConsumer(self.transport).registerProducer(self, True)
        self.link._connected(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        """Parse what arrived; a protocol error drops the connection."""
        self._buf += data
        try:
            self._parse()
        except NatsProtocolError as e:
            self.abort(f"protocol error: {e}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Fail whatever waits for a PONG and tell the link."""
        self.lost = True
        self._cancel_write_timer()
        pongs, self.pongs = self.pongs, deque()
        for waiter in pongs:
            if waiter is not None:
                waiter.errback(NatsUnavailable("NATS connection lost"))
        self.link._lost(self, reason)

    # --- IPushProducer (the transport tells us when its buffer is full) --------------

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted API
        """The socket does not drain: start the write timeout."""
        self.paused = True
        self.pending_while_paused = 0
        if self._write_timer is None:
            self._write_timer = self.link.clock.callLater(
                self.link.write_timeout, self._write_timed_out
            )

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted API
        """The socket drains again."""
        self.paused = False
        self.pending_while_paused = 0
        self._cancel_write_timer()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        """The transport is going away; connectionLost follows."""
        self._cancel_write_timer()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self.abort(f"writes blocked for {self.link.write_timeout:g}s (write timeout)")

    def _cancel_write_timer(self) -> None:
        timer, self._write_timer = self._write_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # --- output ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write, refusing to queue more than ``max_pending`` behind a blocked socket."""
        if self.paused:
            self.pending_while_paused += len(data)
            if self.pending_while_paused > self.link.max_pending:
                raise NatsUnavailable("NATS connection is not draining (write buffer full)")
        assert self.transport is not None
        self.transport.write(data)

    def ping(self, waiter: Deferred[None] | None) -> None:
        """Send PING; ``waiter`` fires on the matching PONG (None: keepalive)."""
        self.pongs.append(waiter)
        self.write(b"PING\r\n")

    def start_tls(self, options: Any) -> None:
        """Switch this connection to TLS; what is written from now on is encrypted."""
        assert self.transport is not None
        ITLSTransport(self.transport).startTLS(options)
        self.tls = True

    def close(self) -> None:
        """Close cleanly (after what is buffered; TLS: with a close_notify)."""
        assert self.transport is not None
        # A TLS transport closes only once no producer is registered.
        IConsumer(self.transport).unregisterProducer()
        self.transport.loseConnection()

    def close_now(self) -> None:
        """Drop the connection without a word (stopping: nothing to log)."""
        if not self.lost and self.transport is not None:
            ITCPTransport(self.transport).abortConnection()

    def abort(self, why: str) -> None:
        """Drop the connection now (the link reconnects)."""
        if self.lost:
            return
        self.link._dropping(self, why)
        if self.transport is not None:
            ITCPTransport(self.transport).abortConnection()

    # --- input -----------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        try:
            while not self.lost:
                if self._msg is not None:
                    sid, subject, size = self._msg
                    end = pos + size
                    if len(buf) < end + 2:
                        break
                    if buf[end : end + 2] != b"\r\n":
                        raise NatsProtocolError("message payload is not followed by CRLF")
                    payload = bytes(buf[pos:end])
                    pos = end + 2
                    self._msg = None
                    self.link._message(sid, subject, payload)
                    continue
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if len(buf) - pos > MAX_CONTROL_LINE:
                        raise NatsProtocolError("control line too long")
                    break
                if eol - pos > MAX_CONTROL_LINE:
                    raise NatsProtocolError("control line too long")
                line = bytes(buf[pos:eol])
                pos = eol + 2
                self._line(line)
        finally:
            del buf[:pos]

    def _line(self, line: bytes) -> None:
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"MSG":
            args = rest.split()
            if len(args) not in (3, 4) or not args[1].isdigit() or not args[-1].isdigit():
                raise NatsProtocolError("malformed MSG line")
            size = int(args[-1])
            if size > self.max_payload:
                raise NatsProtocolError(f"message of {size} bytes exceeds max_payload")
            self._msg = (int(args[1]), args[0], size)
        elif op == b"PING":
            self.write(b"PONG\r\n")
        elif op == b"PONG":
            self.unanswered = 0
            if self.pongs:
                waiter = self.pongs.popleft()
                if waiter is not None:
                    waiter.callback(None)
            if self.state == _AWAIT_PONG:
                self.state = _READY
                self.link._up(self)
        elif op == b"+OK":
            pass
        elif op == b"-ERR":
            self.link._server_error(self, rest.strip(b" '").decode(errors="replace")[:200])
        elif op == b"INFO":
            self._info(rest)
        else:
            raise NatsProtocolError(f"unknown operation {op[:20]!r}")

    def _info(self, body: bytes) -> None:
        try:
            info = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise NatsProtocolError("INFO is not JSON") from None
        if not isinstance(info, dict):
            raise NatsProtocolError("INFO is not an object")
        max_payload = info.get("max_payload")
        if isinstance(max_payload, int) and max_payload > 0:
            self.max_payload = max_payload
        if self.state != _AWAIT_INFO:
            return  # a later INFO (cluster topology update): nothing to do
        self.state = _AWAIT_PONG
        self.link._handshake(self, info)


class _Factory(ClientFactory):
    """Builds the link's protocol and reports failed connection attempts."""

    noisy = False  # no "Starting factory" line per reconnect attempt

    def __init__(self, link: NatsLink, address: NatsAddress) -> None:
        self.link = link
        self.address = address

    def buildProtocol(self, addr: Any) -> NatsProtocol:  # noqa: N802 - Twisted API
        return NatsProtocol(self.link, self.address)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.link._connect_failed(reason)


# --- the link --------------------------------------------------------------------------


class NatsLink:
    """A self-healing NATS connection with its subscriptions.

    Args:
        addresses: the servers, tried in this order (failover: the next one after a
            failed attempt or a lost connection).
        clock: every timer (dial timeout, backoff, write timeout, keepalive).
        reactor: connects TCP (``connectTCP``).
        on_message: ``(sid, subject, payload)`` for every MSG.
        on_change: called whenever ``ready`` changes.
        tls: ``broker.nats.tls`` when enabled. TLS is also used (with these options, or
            the system's trust store) when a URL is ``tls://`` or the server requires it.
        dial_timeout: TCP connect plus handshake (INFO, CONNECT, PONG) limit.
        write_timeout: a connection whose writes stay blocked this long is dropped.
        max_pending: bytes that may queue behind a blocked socket before publishes fail.
        ping_interval: keepalive PING period; two unanswered PINGs drop the connection.
        rng: backoff jitter.
        name: the client name sent in CONNECT.
    """

    def __init__(
        self,
        addresses: Sequence[NatsAddress],
        clock: IReactorTime,
        # Any: needs IReactorTCP and IReactorTime at once; Twisted has no type for both.
        reactor: Any,
        *,
        on_message: Callable[[int, bytes, bytes], None],
        on_change: Callable[[], None] = lambda: None,
        tls: ClientTLSConfig | None = None,
        dial_timeout: float = 1.0,
        write_timeout: float = 1.0,
        max_pending: int = 16 * 1024 * 1024,
        ping_interval: float = 20.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        rng: random.Random | None = None,
        name: str = "rtserver",
    ) -> None:
        if not addresses:
            raise ValueError("NatsLink needs at least one server address")
        self.addresses = tuple(addresses)
        self._index = 0
        self._tls_wanted = tls is not None or any(a.tls for a in self.addresses)
        self._tls_configured = tls is not None
        self._tls = tls or _SYSTEM_TLS
        self.clock = clock
        self._reactor = reactor
        self._on_message = on_message
        self._on_change = on_change
        self.dial_timeout = dial_timeout
        self.write_timeout = write_timeout
        self.max_pending = max_pending
        self._ping_interval = ping_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = rng or random.Random()
        self._name = name
        self.ready = False
        #: Every server was tried at least once (or one answered).
        self.ever_tried = False
        self._failures_in_round = 0
        #: address -> the last problem logged as a warning (repeats go to debug).
        self._reported: dict[NatsAddress, str] = {}
        self._proto: NatsProtocol | None = None
        self._connector: Any = None
        self._running = False
        self._attempt = 0
        self._was_up = False
        self._dial_timer: IDelayedCall | None = None
        self._retry_timer: IDelayedCall | None = None
        self._ping_timer: IDelayedCall | None = None
        self._stopped: Deferred[None] | None = None
        self._next_sid = 1
        #: sid -> subject, kept across reconnects and re-sent on each new connection.
        self.subscriptions: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"NatsLink({','.join(map(str, self.addresses))})"

    @property
    def address(self) -> NatsAddress:
        """The server connected to, or tried next."""
        return self.addresses[self._index]

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting until :meth:`stop`)."""
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Close the connection and cancel every timer; fires once closed."""
        self._running = False
        for timer in (self._dial_timer, self._retry_timer, self._ping_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._dial_timer = self._retry_timer = self._ping_timer = None
        proto = self._proto
        if proto is not None and not proto.lost:
            stopped: Deferred[None] = Deferred()
            self._stopped = stopped
            proto.close()
            # A server that never completes the close (TLS close_notify) is cut off.
            cutoff = self.clock.callLater(self.write_timeout, proto.close_now)

            def cancel_cutoff(result: None) -> None:
                if cutoff.active():
                    cutoff.cancel()
                return result

            return stopped.addBoth(cancel_cutoff)
        connector, self._connector = self._connector, None
        if connector is not None and connector.state == "connecting":
            connector.stopConnecting()
        self._set_ready(False)
        return succeed(None)

    def _connect(self) -> None:
        address = self.address
        self._connector = self._reactor.connectTCP(
            address.host, address.port, _Factory(self, address), timeout=self.dial_timeout
        )
        self._dial_timer = self.clock.callLater(self.dial_timeout, self._dial_timed_out)

    def _dial_timed_out(self) -> None:
        self._dial_timer = None
        proto = self._proto
        if proto is not None and not proto.lost:
            proto.abort(f"no handshake within dial_timeout ({self.dial_timeout:g}s)")
        elif self._connector is not None and self._connector.state == "connecting":
            self._connector.stopConnecting()  # clientConnectionFailed follows

    def _connected(self, proto: NatsProtocol) -> None:
        self._proto = proto

    def _handshake(self, proto: NatsProtocol, info: dict[str, Any]) -> None:
        """INFO arrived: TLS if wanted or required, CONNECT, every SUB, then PING.

        The PONG to that PING completes the handshake.
        """
        required = info.get("tls_required") is True
        if self._tls_wanted and not (required or info.get("tls_available") is True):
            proto.abort(
                "TLS is configured (broker.nats.tls or a tls:// URL) but the server does "
                "not offer it"
            )
            return
        if self._tls_wanted or required:
            try:
                creator = tls_connection_creator(self._tls, proto.address.host, "broker.nats.tls")
            except ValueError as e:
                proto.abort(f"TLS: {e}")
                return
            proto.start_tls(creator)
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "lang": "python-twisted",
            "version": __version__,
            "protocol": 1,
            "name": self._name,
            "headers": False,
            "no_responders": False,
            "tls_required": proto.tls,
        }
        address = proto.address
        if address.user or address.password:
            options["user"] = address.user
            options["pass"] = address.password
        elif address.token:
            options["auth_token"] = address.token
        out = [b"CONNECT " + orjson.dumps(options) + b"\r\n"]
        out.extend(_sub(subject, sid) for sid, subject in self.subscriptions.items())
        proto.write(b"".join(out))
        proto.ping(None)

    def _up(self, proto: NatsProtocol) -> None:
        if proto is not self._proto:
            return
        timer, self._dial_timer = self._dial_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._attempt = 0
        self._failures_in_round = 0
        self._reported.clear()
        self.ever_tried = True
        self._was_up = True
        _log.info(
            "nats link to {address} is up{tls}",
            address=str(proto.address),
            tls=" (TLS)" if proto.tls else "",
        )
        self._schedule_ping()
        self._set_ready(True)

    def _dropping(self, proto: NatsProtocol, why: str) -> None:
        self._report(proto.address, why)

    def _report(self, address: NatsAddress, why: str) -> None:
        """A warning, once per server and problem until a connection is up again."""
        if self._reported.get(address) == why:
            _log.debug("nats link to {address}: {why}", address=str(address), why=why)
            return
        self._reported[address] = why
        _log.warn("nats link to {address}: {why}", address=str(address), why=why)

    def _server_error(self, proto: NatsProtocol, message: str) -> None:
        # Authorization and protocol errors come with a close by the server; a bad
        # subject of one PUB/SUB does not. Either way, one line in the log.
        _log.warn(
            "nats server {address} reported an error: {message}",
            address=str(proto.address),
            message=message,
        )

    def _connect_failed(self, reason: Failure) -> None:
        self._connector = None
        timer, self._dial_timer = self._dial_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._log_down(self.address, f"cannot connect: {reason.getErrorMessage()}")
        self._next_server()
        self._set_ready(False)
        self._on_change()  # ever_tried may have changed: a start waiting for it may go on
        self._schedule_reconnect()

    def _lost(self, proto: NatsProtocol, reason: Failure) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self._connector = None
        for attr in ("_dial_timer", "_ping_timer"):
            timer = getattr(self, attr)
            setattr(self, attr, None)
            if timer is not None and timer.active():
                timer.cancel()
        stopped, self._stopped = self._stopped, None
        if self._running:
            tls = tls_failure(reason) if proto.tls and proto.state != _READY else None
            if tls is not None:
                if not self._tls_configured:
                    tls += (
                        f" ({'' if self._tls_wanted else 'the server requires TLS; '}"
                        "broker.nats.tls is not enabled, so its certificate was checked"
                        " against the system's trust store)"
                    )
                self._report(proto.address, f"TLS handshake failed: {tls}")
            self._log_down(proto.address, f"connection lost: {reason.getErrorMessage()}")
            self._next_server()
        self._set_ready(False)
        self._on_change()
        if stopped is not None:
            stopped.callback(None)
        self._schedule_reconnect()

    def _log_down(self, address: NatsAddress, why: str) -> None:
        if not self._running:
            return
        if self._was_up:
            self._was_up = False
            _log.warn("nats link to {address} is down: {why}", address=str(address), why=why)
        else:
            _log.debug("nats link to {address}: {why}", address=str(address), why=why)

    def _next_server(self) -> None:
        """An attempt failed or a connection was lost: the next server is tried next."""
        self._failures_in_round += 1
        if self._failures_in_round >= len(self.addresses):
            self.ever_tried = True
        self._index = (self._index + 1) % len(self.addresses)

    def _schedule_reconnect(self) -> None:
        if not self._running or self._retry_timer is not None:
            return
        delay = min(self._backoff_cap, self._backoff_base * (2**self._attempt))
        delay *= self._rng.uniform(0.5, 1.0)
        self._attempt = min(self._attempt + 1, 30)
        self._retry_timer = self.clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        if self._running:
            self._connect()

    def _schedule_ping(self) -> None:
        self._ping_timer = self.clock.callLater(self._ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping_timer = None
        proto = self._proto
        if proto is None or proto.lost:
            return
        if proto.unanswered >= 2:
            proto.abort("two keepalive PINGs unanswered (stale connection)")
            return
        proto.unanswered += 1
        try:
            proto.ping(None)
        except NatsUnavailable as e:
            proto.abort(str(e))
            return
        self._schedule_ping()

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._on_change()

    def _message(self, sid: int, subject: bytes, payload: bytes) -> None:
        if sid in self.subscriptions:
            self._on_message(sid, subject, payload)

    # --- operations ------------------------------------------------------------------

    def _ready_proto(self) -> NatsProtocol:
        proto = self._proto
        if not self.ready or proto is None or proto.lost:
            raise NatsUnavailable(f"NATS at {self.address} is not connected")
        return proto

    def publish(self, subject: bytes, payload: bytes) -> None:
        """PUB (at most once: raises :class:`NatsUnavailable` instead of queueing)."""
        proto = self._ready_proto()
        if len(payload) > proto.max_payload:
            raise NatsUnavailable(
                f"message of {len(payload)} bytes exceeds the server's max_payload"
            )
        proto.write(b"PUB %b %d\r\n%b\r\n" % (subject, len(payload), payload))

    def subscribe(self, subject: bytes) -> tuple[int, Deferred[None]]:
        """SUB ``subject`` (kept across reconnects); fires once the server has it.

        The sid is returned at once; while disconnected the Deferred fails with
        :class:`NatsUnavailable` and the subscription is made on the next connection.
        """
        sid = self._next_sid
        self._next_sid += 1
        self.subscriptions[sid] = subject
        try:
            proto = self._ready_proto()
            proto.write(_sub(subject, sid))
            waiter: Deferred[None] = Deferred()
            proto.ping(waiter)
        except NatsUnavailable as e:
            return sid, fail(e)
        return sid, waiter

    def unsubscribe(self, sid: int) -> None:
        """UNSUB (and forget: not re-sent on the next connection)."""
        if self.subscriptions.pop(sid, None) is None:
            return
        proto = self._proto
        if self.ready and proto is not None and not proto.lost:
            try:
                proto.write(b"UNSUB %d\r\n" % sid)
            except NatsUnavailable:
                proto.abort("write buffer full on UNSUB")

    def ping(self) -> Deferred[None]:
        """Fires once the server answered a PING: everything sent before is processed."""
        try:
            proto = self._ready_proto()
            waiter: Deferred[None] = Deferred()
            proto.ping(waiter)
        except NatsUnavailable as e:
            return fail(e)
        return waiter


def _sub(subject: bytes, sid: int) -> bytes:
    return b"SUB %b %d\r\n" % (subject, sid)
