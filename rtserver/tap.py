"""``twistd rtserver``: command-line options to a service."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from rtserver import config as rtconfig
from rtserver import logs
from rtserver._compat import set_twistd_logger
from rtserver.logs import Logger

#: Loads the configuration again (as rtserver.service.Loader).
Loader = Callable[[], tuple[rtconfig.Config, list[str]]]

__all__ = ["Options", "makeService", "quick_start_notes"]

_log = Logger()


class Options(usage.Options):
    """Options of ``twistd rtserver``."""

    synopsis = "[options]"
    longdesc = (
        "Real-time messaging server speaking the Centrifugo client protocol and HTTP API. "
        "Listens on port 8000 with the in-memory engine unless told otherwise."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (JSON, YAML or TOML)."],
        ["port", "p", None, "HTTP port (overrides http_server.port).", int],
        [
            "workers",
            "w",
            1,
            "Worker processes serving the port(s), each a node of the cluster "
            "(needs engine.type redis or a NATS broker when above 1).",
            int,
        ],
        ["worker-index", None, None, "Internal: set by the --workers supervisor.", int],
        ["supervisor-pid", None, None, "Internal: set by the --workers supervisor.", int],
        ["worker-dir", None, None, "Internal: set by the --workers supervisor."],
        ["http3-fd", None, None, "Internal: set by the --workers supervisor.", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, e.g. tcp:8000 or ssl:8443:privateKey=k.pem:certKey=c.pem.

        Repeat for several; replaces http_server settings.
        """
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {}
        if self["port"] is not None:
            overrides["http_server"] = {"port": self["port"]}
        try:
            cfg, warnings = rtconfig.load(self["config"], overrides=overrides)
        except rtconfig.ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be 1 or more")
        index = self["worker-index"]
        if index is not None:
            from rtserver.workers import worker_name

            name = worker_name(cfg, index)
            overrides["node"] = {"name": name}
            cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, name=name))
        if cfg.log.format == "json":
            logfile = set_twistd_logger(self, "rtserver.logs.json_observer")
            if logfile is not None:
                logs.set_json_output(logfile)
        self["config_object"] = cfg
        self["overrides"] = overrides
        self["warnings"] = warnings


def quick_start_notes(cfg: rtconfig.Config) -> list[str]:
    """What a server started without a config file does, and how to get a working one.

    Logged first by ``twistd rtserver`` without ``-c``, so a newcomer sees why clients
    and API calls are refused instead of bare 401s.
    """
    client = cfg.client
    token = client.token
    has_key = bool(
        token.hmac_secret_key
        or token.rsa_public_key
        or token.ecdsa_public_key
        or token.jwks_public_endpoint
    )
    notes = [
        f"no config file given (-c): running on defaults: {cfg.engine.type} engine, "
        f"HTTP on port {cfg.http_server.port}"
    ]
    if not has_key and not client.insecure:
        if client.allow_anonymous_connect_without_token:
            notes.append("no token key set: only anonymous connections without a token work")
        else:
            notes.append("no token key set (client.token.*): every client connection is refused")
    if not cfg.admin.enabled:
        notes.append("the admin web UI is off")
    notes.append(
        "for a working setup with the admin web UI: run 'rtserver genconfig', then "
        "'twistd -n rtserver -c config.json', and open the URL it prints"
    )
    return notes


def worker_args(options: Options) -> list[str]:
    """The ``twistd rtserver`` arguments a worker gets (all but ``--workers``)."""
    args: list[str] = []
    if options["config"] is not None:
        args += ["--config", os.path.abspath(options["config"])]
    if options["port"] is not None:
        args += ["--port", str(options["port"])]
    for description in options["listen"]:
        args += ["--listen", description]
    return args


def _supervisor(options: Options) -> IService:
    """``--workers N`` (N > 1): the parent process that runs N workers."""
    from twisted.internet import reactor

    from rtserver import service, workers

    cfg = options["config_object"]
    listen = list(options["listen"] or service.default_listen(cfg))
    if service.admin_internal(cfg):
        listen.append(service.internal_listen(cfg))
    problems = workers.refusals(cfg, listen)
    if problems:
        raise usage.UsageError(
            f"--workers {options['workers']} cannot run this configuration: " + "; ".join(problems)
        )
    # The GRPC ports and HTTP/3's UDP port too: a port in use fails here, and stays
    # reserved across restarts.
    # HTTP/3: one UDP socket per worker, made here and kept across the worker's restarts.
    shared = listen + workers.grpc_listen(cfg)
    udp = service.http3_address(cfg, listen) if cfg.http_server.http3.enabled else None
    try:
        held = workers.reserve(shared)
        udp_sockets = [] if udp is None else workers.udp_sockets(*udp, options["workers"])
    except OSError as e:
        where = [*shared, *([] if udp is None else [f"udp:{udp[0]}"])]
        raise usage.UsageError(f"cannot listen on {', '.join(where)}: {e.strerror}") from None
    directory = workers.runtime_dir()
    count = str(options["workers"])
    args = [*worker_args(options), "--workers", count, "--worker-dir", directory]
    if udp_sockets:
        args += ["--http3-fd", str(workers.HTTP3_FD)]
    return workers.Supervisor(
        options["workers"],
        lambda index: workers.twistd_argv(args, index),
        reactor,
        held=held,
        udp=udp_sockets,
        # workers stay up, not ready, for health.drain_delay before they drain, then
        # stop within shutdown.timeout; killed only when one misses its own bound
        stop_timeout=cfg.health.drain_delay + cfg.shutdown.timeout + 5.0,
        directory=directory,
    )


def makeService(options: Options) -> IService:
    """Build the server from parsed options."""
    from rtserver import service

    if options["workers"] > 1 and options["worker-index"] is None:
        return _supervisor(options)
    if options["config"] is None:
        for note in quick_start_notes(options["config_object"]):
            _log.warn("{note}", note=note)
    for warning in options["warnings"]:
        _log.warn("config: {warning}", warning=warning)
    try:
        path = options["config"]
        overrides = options["overrides"]
        reload = None if path is None else (lambda: rtconfig.load(path, overrides=overrides))
        if options["worker-index"] is None:
            return service.build(
                options["config_object"], listen=options["listen"] or None, reload=reload
            )
        return _worker(options, reload)
    except ValueError as e:
        raise usage.UsageError(f"configuration error: {e}") from None


def _worker(options: Options, reload: Loader | None) -> IService:
    """One worker of ``--workers N``: the whole server, listening with SO_REUSEPORT."""
    from twisted.internet import reactor

    from rtserver import service, workers
    from rtserver.sockjs.forward import Siblings

    siblings = None
    if options["worker-dir"] is not None and options["workers"] > 1:
        paths = workers.sibling_paths(options["worker-dir"], options["workers"])
        siblings = Siblings(options["worker-index"], paths)
    top = service.build(
        options["config_object"],
        listen=options["listen"] or None,
        reload=reload,
        listener=workers.ReusePortService,
        reactor=reactor,
        siblings=siblings,
        reuse_port=True,
        http3_fd=options["http3-fd"],
    )
    parent = options["supervisor-pid"]
    if parent is not None:
        watchdog = workers.WorkerWatchdog(reactor, parent, directory=options["worker-dir"])
        watchdog.setServiceParent(top)
    return top
