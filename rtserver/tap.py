"""``twistd rtserver``: command-line options to a service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from rtserver import config as rtconfig
from rtserver.logs import Logger

__all__ = ["Options", "makeService"]

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
        self["warnings"] = warnings


def makeService(options: Options) -> IService:
    """Build the server from parsed options."""
    from rtserver import service

    for warning in options["warnings"]:
        _log.warn("config: {warning}", warning=warning)
    try:
        return service.build(options["config_object"], listen=options["listen"] or None)
    except ValueError as e:
        raise usage.UsageError(f"configuration error: {e}") from None
