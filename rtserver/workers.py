"""``twistd rtserver --workers N``: N worker processes serving one port.

The parent (:class:`Supervisor`) serves no client: it reserves the listening ports,
starts N children ``twistd -n rtserver ... --worker-index I``, restarts a child that
dies (with backoff), forwards SIGHUP, and on shutdown sends SIGTERM to every child and
waits for their drain. Each child is a full cluster node (its own node name) over the
configured broker, and listens with ``SO_REUSEPORT`` (:class:`ReusePortService`, TLS
included): the Linux kernel spreads new connections over the children's sockets by a hash
of the connection's addresses. HTTP/3 likewise, except that the parent makes the
``SO_REUSEPORT`` UDP socket of each child (:func:`udp_sockets`) and keeps it while the
child restarts: the kernel hashes each client address to one socket of the group, and a
group that never changes keeps sending a QUIC connection's datagrams to the child that
holds it (rtserver/transports/webtransport.py, ``HTTP3Service``). See
docs/deployment.rst, "Workers".
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from rtserver._compat import ssl_server_context
from rtserver.config import Config
from rtserver.connections import address_family, reuse_port_socket
from rtserver.connections import split_description as _split
from rtserver.logs import Logger
from rtserver.shutdown import StopSignalGuard

__all__ = [
    "HTTP3_FD",
    "ListenAddress",
    "ReusePortService",
    "Supervisor",
    "WorkerWatchdog",
    "grpc_listen",
    "parse_listen",
    "refusals",
    "reserve",
    "runtime_dir",
    "sibling_paths",
    "tls_context",
    "twistd_argv",
    "udp_sockets",
    "worker_name",
]

_log = Logger()

#: First restart delay of a worker that died; doubles per quick death up to the cap.
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
#: A worker that ran this long before dying restarts after RESTART_DELAY again.
STABLE_AFTER = 10.0
#: The descriptor number of its HTTP/3 UDP socket in a worker (``--http3-fd``).
HTTP3_FD = 3


#: ``ssl:`` arguments a worker serves (Twisted's own ``ssl:`` parser reads the files).
TLS_ARGUMENTS = frozenset({"privateKey", "certKey", "extraCertChain", "dhParameters", "sslmethod"})


class ListenAddress:
    """A ``tcp:`` or ``ssl:`` endpoint description taken apart: port, interface, backlog.

    ``tls``: the description is ``ssl:`` (its TLS options: :func:`tls_context`).
    """

    def __init__(
        self, port: int, interface: str = "", backlog: int = 50, tls: bool = False
    ) -> None:
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.tls = tls

    @property
    def family(self) -> socket.AddressFamily:
        return address_family(self.interface)


def parse_listen(description: str) -> ListenAddress:
    """The address of a ``tcp:PORT`` or ``ssl:PORT:privateKey=...`` description.

    ``tcp:`` takes ``interface=`` and ``backlog=``; ``ssl:`` also the TLS arguments of
    Twisted's ``ssl:`` endpoint (:data:`TLS_ARGUMENTS`).

    Raises:
        ValueError: another endpoint type (``unix:``...), an unknown argument, or port 0
            (each worker would get its own port).
    """
    parts = _split(description)
    if parts[0] not in ("tcp", "ssl"):
        raise ValueError(
            f"--listen {description!r}: with --workers > 1 only tcp: and ssl: endpoints are served"
        )
    tls = parts[0] == "ssl"
    args: dict[str, str] = {}
    positional: list[str] = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            args[key] = value
        else:
            positional.append(part)
    if positional:
        args.setdefault("port", positional[0])
    unknown = set(args) - {"port", "interface", "backlog"} - (TLS_ARGUMENTS if tls else set())
    if unknown or len(positional) > 1:
        what = ", ".join(sorted(unknown)) or "positional arguments after the port"
        raise ValueError(f"--listen {description!r}: unsupported with --workers > 1 ({what})")
    try:
        port, backlog = int(args.get("port", "")), int(args.get("backlog", "50"))
    except ValueError:
        raise ValueError(f"--listen {description!r}: port and backlog must be numbers") from None
    if not 0 < port < 65536:
        raise ValueError(f"--listen {description!r}: --workers > 1 needs a fixed port")
    return ListenAddress(port, args.get("interface", ""), backlog, tls)


def tls_context(description: str, client_ca: Any = None) -> Any:
    """The TLS options of ``ssl:`` ``description``: those a single process listens with.

    ``client_ca``: None, or the trust root a client certificate must verify against
    (``http_server.tls.client_ca_pem``).

    Raises:
        ValueError: the certificate, key or chain cannot be loaded.
    """
    try:
        return ssl_server_context(description, client_ca)
    except Exception as e:  # OSError, OpenSSL.SSL.Error, ValueError
        raise ValueError(
            f"--listen {description!r}: cannot load the TLS certificate and key: {e}"
        ) from None


def refusals(config: Config, listen: Sequence[str]) -> list[str]:
    """Why this configuration cannot run with more than one worker (empty: it can)."""
    out: list[str] = []
    broker = config.broker.type if config.broker.enabled else config.engine.type
    if broker == "memory":
        out.append(
            "the memory engine keeps each worker's channels to itself: set engine.type "
            "to redis (with engine.redis.address), or enable a shared broker "
            '(broker.enabled: true with broker.type "nats" and broker.nats.url)'
        )
    for description in [*listen, *grpc_listen(config)]:
        try:
            if parse_listen(description).tls:
                tls_context(description)  # a bad file fails here, not in every worker
        except ValueError as e:
            out.append(str(e))
    return out


def grpc_listen(config: Config) -> list[str]:
    """``tcp:`` descriptions of the enabled GRPC ports (the supervisor reserves them)."""
    out = []
    for section in (config.grpc_api, config.uni_grpc):
        if section.enabled:
            interface = section.address.replace(":", "\\:")
            out.append(
                f"tcp:{section.port}:interface={interface}" if interface else f"tcp:{section.port}"
            )
    return out


def worker_name(config: Config, index: int) -> str:
    """The node name of worker ``index``: ``node.name`` (or ``<host>_<port>``) + ``-I``."""
    base = config.node.name or f"{socket.gethostname()}_{config.http_server.port}"
    return f"{base}-{index}"


def runtime_dir() -> str:
    """A new private directory (mode 0700) for the workers' Unix sockets."""
    return tempfile.mkdtemp(prefix="rtserver-workers-")


def sibling_paths(directory: str, count: int) -> list[str]:
    """The private Unix socket of each of ``count`` workers, by index.

    A worker serves there the SockJS sessions it owns to the other workers, which relay
    those sessions' requests (rtserver/sockjs/forward.py).
    """
    return [os.path.join(directory, f"worker-{index}.sock") for index in range(count)]


def reserve(descriptions: Sequence[str]) -> list[socket.socket]:
    """Bind (without serving) every address, so a port in use fails the parent at start.

    ``descriptions``: ``tcp:``/``ssl:`` listeners. A bound TCP socket that does not
    listen receives no connection; it keeps processes without ``SO_REUSEPORT`` off the
    port while workers restart.

    Raises:
        OSError: an address cannot be bound (e.g. in use by another program).
    """
    held: list[socket.socket] = []
    try:
        for description in descriptions:
            address = parse_listen(description)
            held.append(reuse_port_socket(socket.SOCK_STREAM, address.interface, address.port))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def udp_sockets(port: int, interface: str, count: int) -> list[socket.socket]:
    """HTTP/3's UDP socket of each of ``count`` workers, by index, bound with SO_REUSEPORT.

    Linux picks the socket of a datagram by a hash of its addresses over the sockets of
    the group, in the order they joined; a socket that leaves the group (its last
    descriptor closed) reorders it, after which most client addresses map to another
    socket. QUIC connections live in one worker, so the group must not change while
    clients are connected: the supervisor makes the sockets, hands worker I socket I
    (descriptor :data:`HTTP3_FD`) and keeps its own descriptor, so a worker that dies and
    restarts serves the same socket. A port in use fails here, at start.

    Raises:
        OSError: the address cannot be bound.
    """
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = reuse_port_socket(socket.SOCK_DGRAM, interface, port)
            sock.setblocking(False)
            made.append(sock)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


class ReusePortService(Service):
    """Listens on a ``tcp:`` or ``ssl:`` description with ``SO_REUSEPORT`` (one per worker).

    ``ssl:``: the site is wrapped in TLS (``TLSMemoryBIOFactory``, as Twisted's own
    ``ssl:`` listener does) with the options Twisted's ``ssl:`` parser builds, requiring
    a client certificate verified against ``client_ca`` when given (mutual TLS).
    """

    def __init__(
        self, description: str, factory: IProtocolFactory, reactor: Any, client_ca: Any = None
    ) -> None:
        self.address = parse_listen(description)
        self.factory = factory
        if self.address.tls:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            options = tls_context(description, client_ca)
            self.factory = TLSMemoryBIOFactory(options, False, factory)
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        address = self.address
        sock = reuse_port_socket(socket.SOCK_STREAM, address.interface, address.port)
        try:
            sock.listen(address.backlog)
            sock.setblocking(False)
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped


class WorkerWatchdog(Service):
    """Stops a worker whose supervisor has gone (killed with SIGKILL, say).

    ``directory``: the workers' private directory, which the supervisor can no longer
    remove: the first worker to notice removes it.
    """

    def __init__(
        self, reactor: Any, parent: int, interval: float = 1.0, directory: str | None = None
    ) -> None:
        self.reactor = reactor
        self.interval = interval
        self.directory = directory
        self._parent = parent  # given, not read: the supervisor may die before this runs
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def _schedule(self) -> None:
        self._call = self.reactor.callLater(self.interval, self._check)

    def _check(self) -> None:
        self._call = None
        if os.getppid() != self._parent:
            _log.warn("the supervisor (pid {pid}) is gone: stopping", pid=self._parent)
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
            self.reactor.stop()
            return
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Worker(ProcessProtocol):
    """One child process; tells the supervisor when it ends."""

    def __init__(self, supervisor: Supervisor, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.ended: Deferred[None] = Deferred()
        #: The child's process transport (set once spawned).
        self.process: Any = None

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """Starts N workers, restarts the ones that die, drains them all on stop."""

    def __init__(
        self,
        count: int,
        argv: Callable[[int], list[str]],
        reactor: Any,
        *,
        held: Sequence[socket.socket] = (),
        udp: Sequence[socket.socket] = (),
        stop_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        directory: str | None = None,
    ) -> None:
        self.count = count
        #: The workers' private directory (removed once they all ended), if any.
        self.directory = directory
        self.argv = argv
        self.reactor = reactor
        self.held = list(held)
        #: HTTP/3's UDP socket of each worker, by index (given as :data:`HTTP3_FD`).
        self.udp = list(udp)
        self.stop_timeout = stop_timeout
        self.env = dict(os.environ) if env is None else env
        self.workers: dict[int, _Worker] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopping = False
        self._previous_hup: Any = None
        self._signals = StopSignalGuard(reactor)

    def startService(self) -> None:
        super().startService()
        _log.info("supervisor: starting {count} workers", count=self.count)
        for index in range(self.count):
            self._spawn(index)
        if hasattr(signal, "SIGHUP"):
            self._previous_hup = signal.signal(signal.SIGHUP, self._hup)
        self.reactor.callWhenRunning(self._signals.install)

    def _hup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.signal_all, "HUP")

    def signal_all(self, name: str) -> None:
        """Send signal ``name`` (``"TERM"``, ``"HUP"``...) to every running worker."""
        for worker in list(self.workers.values()):
            try:
                worker.process.signalProcess(name)
            except Exception as e:  # ProcessExitedAlready: it ended meanwhile
                _log.debug("worker {index}: no signal: {error}", index=worker.index, error=e)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = _Worker(self, index, self.reactor.seconds())
        argv = self.argv(index)
        fds = {0: 0, 1: 1, 2: 2}
        if self.udp:
            fds[HTTP3_FD] = self.udp[index].fileno()
        worker.process = self.reactor.spawnProcess(
            worker, argv[0], argv, env=self.env, childFDs=fds
        )
        self.workers[index] = worker
        _log.info("worker {index} started (pid {pid})", index=index, pid=worker.process.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        ran = self.reactor.seconds() - worker.started
        failures = 0 if ran >= STABLE_AFTER else self._failures.get(worker.index, 0) + 1
        self._failures[worker.index] = failures
        delay = min(RESTART_DELAY * 2 ** max(failures - 1, 0), RESTART_DELAY_MAX)
        _log.warn(
            "worker {index} ended ({reason}) after {ran:.1f}s: restarting in {delay:g}s",
            index=worker.index,
            reason=reason.getErrorMessage(),
            ran=ran,
            delay=delay,
        )
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._signals.uninstall()
        self._stopping = True
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ended = [worker.ended for worker in self.workers.values()]
        self.signal_all("TERM")  # each worker drains: 3001 to its clients, then exits
        kill = self.reactor.callLater(self.stop_timeout, self._kill)
        done = DeferredList(ended, consumeErrors=True)

        def finished(result: object) -> object:
            if kill.active():
                kill.cancel()
            for sock in [*self.held, *self.udp]:
                sock.close()
            self.held, self.udp = [], []
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
            return result

        return done.addBoth(finished)

    def _kill(self) -> None:
        if self.workers:
            _log.error(
                "workers {indexes} did not drain within {timeout:g}s: killed",
                indexes=sorted(self.workers),
                timeout=self.stop_timeout,
            )
            self.signal_all("KILL")


def twistd_argv(args: Sequence[str], index: int) -> list[str]:
    """The command of worker ``index``: this Python running twistd in the foreground."""
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "rtserver",
        *args,
        "--worker-index",
        str(index),
        "--supervisor-pid",
        str(os.getpid()),
    ]
