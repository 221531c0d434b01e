"""Public test doubles: a node on a ``Clock`` with the memory engine, a recording sink.

Example::

    node, clock = make_node({"client": {"insecure": True}})
    sink = RecordingSink()
    client = node.make_client(sink)
    client.receive(b'{"id":1,"connect":{}}')
    clock.advance(0)                  # output is flushed once per reactor turn
    assert sink.replies()[0]["id"] == 1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from twisted.internet.task import Clock
from zope.interface import implementer

from rtserver import config as rtconfig
from rtserver.core.node import Node
from rtserver.core.ports import ISink, ITokenVerifier
from rtserver.core.proxy import Proxies
from rtserver.core.writer import Payload
from rtserver.engines.memory import MemoryEngine
from rtserver.protocol.codes import Disconnect

__all__ = ["RecordingSink", "make_node"]


@implementer(ISink)
class RecordingSink:
    """An ISink that records what a client writes and how it closes."""

    def __init__(
        self,
        *,
        transport_name: str = "test",
        unidirectional: bool = False,
        emulation: bool = False,
        pong: bool = True,
    ) -> None:
        self.transport_name = transport_name
        self.unidirectional = unidirectional
        self.emulation = emulation
        self.pong = pong
        self.batches: list[list[bytes]] = []
        self.closed_with: Disconnect | None = None
        self.closed = False

    def write(self, payloads: Sequence[Payload]) -> None:
        """Record one flushed batch."""
        assert not self.closed, "write after close"
        self.batches.append([p.data for p in payloads])

    def close(self, disconnect: Disconnect | None) -> None:
        """Record the close."""
        self.closed = True
        self.closed_with = disconnect

    # Any: decoded JSON messages (objects, or arrays for batched replies).
    def messages(self) -> list[Any]:
        """Every message written so far, decoded, in order."""
        return [orjson.loads(m) for batch in self.batches for m in batch]

    # Any (here and below): values of decoded JSON objects.
    def replies(self) -> list[dict[str, Any]]:
        """Messages with an ``id`` (command replies)."""
        return [m for m in self.messages() if m.get("id")]

    def pushes(self) -> list[dict[str, Any]]:
        """The ``push`` bodies of bidirectional pushes."""
        return [m["push"] for m in self.messages() if "push" in m]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.batches.clear()


def make_node(
    # Any: a configuration mapping in the config-file layout, validated by config.
    settings: Mapping[str, Any] | None = None,
    *,
    clock: Clock | None = None,
    verifier: ITokenVerifier | None = None,
    proxies: Proxies | None = None,
) -> tuple[Node, Clock]:
    """A started node with the memory engine, driven by a ``Clock``.

    ``settings`` is a configuration mapping in the config-file layout. A JWT verifier is
    built from ``client.token`` settings unless ``verifier`` is given; ``proxies`` are
    the node's backend proxies (none by default).
    """
    clock = clock or Clock()
    cfg = rtconfig.from_mapping(settings or {})
    if verifier is None:
        from rtserver.auth.jwt import JWTVerifier

        verifier = JWTVerifier.from_config(cfg.client)
    node = Node(
        MemoryEngine(clock, cleanup_interval=0),
        cfg,
        clock=clock,
        verifier=verifier,
        proxies=proxies,
    )
    node.start()
    return node, clock
