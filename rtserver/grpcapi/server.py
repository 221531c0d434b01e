"""A grpcio server as a Twisted service: listens on start, drains on stop.

Generic over the GRPC services it serves, so the server API (:mod:`rtserver.grpcapi.api`)
and any later GRPC endpoint share one lifecycle. grpcio runs its own threads (a C-core
poller and a small worker pool); handlers reach the reactor only through a
:class:`~rtserver.grpcapi.bridge.ReactorBridge`.

:meth:`GRPCServerService.startService` binds the port (a bind failure raises, so twistd
refuses to start) and starts serving. :meth:`GRPCServerService.stopService` stops
accepting calls, lets calls in flight finish for ``grace`` seconds, cancels the rest,
closes the bridge and returns a Deferred that fires when grpcio reports the shutdown
done: the reactor keeps running meanwhile (the completion is polled on the injected
clock, never waited for).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict, Unpack

import grpc
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from rtserver.config import ConfigError, TLSConfig, server_client_ca_pem, server_tls_pem
from rtserver.grpcapi.bridge import ReactorBridge
from rtserver.logs import Logger

__all__ = [
    "AioGRPCServerService",
    "GRPCServerService",
    "ServerSettings",
    "bind_address",
    "tls_scheme",
]

_log = Logger()

#: How often stopService checks whether grpcio finished shutting down.
_STOP_POLL_SECONDS = 0.02


def tls_scheme(tls: TLSConfig) -> str:
    """How the log names a GRPC port's security: plaintext, TLS or mutual TLS."""
    if not tls.enabled:
        return "plaintext"
    return "mutual TLS" if tls.client_ca_pem else "TLS"


def bind_address(address: str, port: int) -> str:
    """The ``host:port`` grpcio binds for ``address`` (empty: every interface; IPv6 bracketed)."""
    host = address or "[::]"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ServerSettings(TypedDict, total=False):
    """The keyword arguments both grpcio services take (see :class:`GRPCServerService`)."""

    address: str
    port: int
    tls: TLSConfig | None
    max_receive_message_size: int
    grace: float
    max_concurrent_rpcs: int | None
    options: Sequence[tuple[str, Any]]
    reuse_port: bool


class _GRPCServerBase(Service):
    """What both grpcio services share: their settings, grpcio options, binding, logging."""

    def __init__(
        self,
        label: str,
        handlers: Sequence[grpc.GenericRpcHandler],
        bridge: ReactorBridge,
        clock: IReactorTime,
        **settings: Unpack[ServerSettings],
    ) -> None:
        self.label = label
        self._reuse_port = settings.get("reuse_port", False)
        self._handlers = list(handlers)
        self._bridge = bridge
        self._clock = clock
        self._address = settings.get("address", "")
        self._requested_port = settings.get("port", 0)
        self._tls = settings.get("tls") or TLSConfig()
        self._max_receive = settings.get("max_receive_message_size", 0)
        self._grace = settings.get("grace", 5.0)
        self._max_concurrent = settings.get("max_concurrent_rpcs")
        self._extra_options = list(settings.get("options", ()))
        #: The bound port once started.
        self.port = 0

    def _options(self) -> list[tuple[str, Any]]:
        # A second process must not share the port silently (grpcio sets SO_REUSEPORT),
        # unless it is a sibling worker.
        options: list[tuple[str, Any]] = [("grpc.so_reuseport", int(self._reuse_port))]
        if self._max_receive > 0:
            options.append(("grpc.max_receive_message_length", self._max_receive))
        return options + self._extra_options

    def _target(self) -> str:
        return bind_address(self._address, self._requested_port)

    def _bind(self, server: grpc.Server | grpc.aio.Server, target: str) -> int:
        """Add the (TLS or plaintext) port to ``server``; the bound port, or RuntimeError."""
        try:
            if self._tls.enabled:
                cert, key = server_tls_pem(self._tls, self.label)
                client_ca = server_client_ca_pem(self._tls, self.label)
                creds = grpc.ssl_server_credentials(
                    [(key, cert)],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                )
                port = server.add_secure_port(target, creds)
            else:
                port = server.add_insecure_port(target)
        except (OSError, RuntimeError, ConfigError) as e:
            raise RuntimeError(f"{self.label}: cannot listen on {target}: {e}") from None
        if not port:  # older grpcio reports a failed bind as port 0
            raise RuntimeError(f"{self.label}: cannot listen on {target}")
        return int(port)

    def _log_listening(self) -> None:
        scheme = tls_scheme(self._tls)
        _log.info("{label} listening on {address} ({scheme})", label=self.label,
                  address=bind_address(self._address, self.port), scheme=scheme)


class GRPCServerService(_GRPCServerBase):
    """One grpcio server on one port.

    Args:
        label: how the log names this server (``GRPC API``).
        handlers: the GRPC services (generic handlers) to serve.
        bridge: the bridge the handlers use; closed when the service stops.
        clock: the reactor's clock, for polling shutdown completion.
        address: interface to bind; empty for all.
        port: port to bind; 0 picks a free one (:attr:`port` tells which).
        tls: serve over TLS with these PEM files when enabled; with ``client_ca_pem``,
            only to clients presenting a certificate those CAs signed.
        max_receive_message_size: largest request in bytes; 0 keeps grpcio's 4 MiB.
        reflection: names of the services to announce through server reflection;
            empty for no reflection service.
        workers: grpcio worker threads (calls served at once).
        grace: seconds calls in flight get to finish when the service stops.
        max_concurrent_rpcs: calls admitted at once; grpcio refuses more with
            RESOURCE_EXHAUSTED. None for no cap.
        options: further grpcio server options (channel arguments).
        reuse_port: share the port with other processes that set ``SO_REUSEPORT`` (the
            workers of ``--workers N``); off, a port in use fails the start.
    """

    def __init__(
        self,
        label: str,
        handlers: Sequence[grpc.GenericRpcHandler],
        bridge: ReactorBridge,
        clock: IReactorTime,
        *,
        reflection: Sequence[str] = (),
        workers: int = 8,
        **settings: Unpack[ServerSettings],
    ) -> None:
        super().__init__(label, handlers, bridge, clock, **settings)
        self._reflection = tuple(reflection)
        self._workers = workers
        self._server: grpc.Server | None = None

    def startService(self) -> None:
        """Bind, then serve. Raises when the port cannot be bound."""
        pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="grpc")
        server = grpc.server(pool, handlers=self._handlers, options=self._options(),
                             maximum_concurrent_rpcs=self._max_concurrent)
        if self._reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection((*self._reflection, reflection.SERVICE_NAME),
                                                server)
        try:
            self.port = self._bind(server, self._target())
        except RuntimeError:
            pool.shutdown(wait=False)
            raise
        server.start()
        self._server = server
        super().startService()
        self._log_listening()

    def stopService(self) -> Deferred[None]:
        """Stop accepting calls and drain; the Deferred fires when the port is closed."""
        super().stopService()
        server, self._server = self._server, None
        done: Deferred[None] = Deferred()
        if server is None:
            self._bridge.close()
            done.callback(None)
            return done
        stopped = server.stop(self._grace)

        def poll() -> None:
            if not stopped.is_set():
                self._clock.callLater(_STOP_POLL_SECONDS, poll)
                return
            self._bridge.close()
            _log.info("{label} stopped", label=self.label)
            done.callback(None)

        poll()
        return done


class AioGRPCServerService(_GRPCServerBase):
    """One ``grpc.aio`` server on one port, on an asyncio loop in a thread of its own.

    For streaming services (uni_grpc): a stream is a coroutine on that loop, not a
    thread, and each message costs grpcio less than on the synchronous server
    (bench/grpc_stream_floor.py). The reactor and the loop only meet through the
    :class:`~rtserver.grpcapi.bridge.ReactorBridge` (loop to reactor) and
    ``loop.call_soon_threadsafe`` (reactor to loop).

    :meth:`startService` starts the thread and binds (a bind failure raises, so twistd
    refuses to start). :meth:`stopService` stops accepting calls, lets calls in flight
    finish for ``grace`` seconds, cancels the rest, stops the loop and closes the bridge;
    its Deferred fires once the thread is gone, polled on the injected clock.

    Args: as :class:`GRPCServerService`, without ``reflection`` and ``workers`` (no
    thread per call).
    """

    # Set while the service runs (the constructor is the base's).
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: grpc.aio.Server | None = None
    #: The loop the service's calls run on, once started.
    loop: asyncio.AbstractEventLoop | None = None

    async def _start(self, target: str) -> int:
        server = grpc.aio.server(handlers=self._handlers, options=self._options(),
                                 maximum_concurrent_rpcs=self._max_concurrent)
        port = self._bind(server, target)
        await server.start()
        self._server = server
        return port

    def startService(self) -> None:
        """Start the loop thread, bind, then serve. Raises when the port cannot be bound."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name=f"{self.label} loop",
                                  daemon=True)
        thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(self._target()), loop)
        try:
            # Startup only, before the service serves: bounded, and bind errors surface.
            self.port = started.result(timeout=_START_TIMEOUT)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        self._loop = self.loop = loop
        self._thread = thread
        super().startService()
        self._log_listening()

    def stopService(self) -> Deferred[None]:
        """Stop accepting calls and drain; the Deferred fires when the loop thread ended."""
        super().stopService()
        done: Deferred[None] = Deferred()
        loop, thread, server = self._loop, self._thread, self._server
        self._loop = self._thread = self._server = None
        if loop is None or thread is None or server is None:
            self._bridge.close()
            done.callback(None)
            return done
        stopped = asyncio.run_coroutine_threadsafe(server.stop(self._grace), loop)
        stopping_loop = False

        def poll() -> None:
            nonlocal stopping_loop
            if not stopped.done():
                self._clock.callLater(_STOP_POLL_SECONDS, poll)
                return
            if not stopping_loop:
                stopping_loop = True
                # While the loop still runs: abandoned calls' outcomes can still reach it.
                self._bridge.close()
                loop.call_soon_threadsafe(loop.stop)
            if thread.is_alive():
                self._clock.callLater(_STOP_POLL_SECONDS, poll)
                return
            loop.close()
            _log.info("{label} stopped", label=self.label)
            done.callback(None)

        poll()
        return done


#: Seconds startService waits for the loop thread to bind the port.
_START_TIMEOUT = 10.0


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
