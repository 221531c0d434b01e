"""A live rtserver site on 127.0.0.1 for transport tests (real reactor, real sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor

from rtserver import config as rtconfig
from rtserver.service import build_node, build_site


class Server:
    """A listening site with its node; ``stop()`` drains and closes everything."""

    def __init__(self, settings: dict[str, Any]) -> None:
        cfg = rtconfig.from_mapping(settings)
        self.node = build_node(cfg, reactor)
        site, self.drains = build_site(self.node, cfg, reactor)
        self.site = site
        self.node.start()
        self.listening = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        self.url = f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def stop(self) -> None:
        await self.listening.stopListening()
        self.node.stop()
        await defer.DeferredList([d.wait_closed(3) for d in self.drains])
