"""``twistd rtserver``: command-line options to a service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from rtserver import config as rtconfig
from rtserver.logs import Logger

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


def makeService(options: Options) -> IService:
    """Build the server from parsed options."""
    from rtserver import service

    if options["config"] is None:
        for note in quick_start_notes(options["config_object"]):
            _log.warn("{note}", note=note)
    for warning in options["warnings"]:
        _log.warn("config: {warning}", warning=warning)
    try:
        path = options["config"]
        overrides = options["overrides"]
        reload = None if path is None else (lambda: rtconfig.load(path, overrides=overrides))
        return service.build(
            options["config_object"], listen=options["listen"] or None, reload=reload
        )
    except ValueError as e:
        raise usage.UsageError(f"configuration error: {e}") from None
