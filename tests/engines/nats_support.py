"""Helpers for the NATS broker tests: brokers on a unique prefix, on the real reactor."""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import reactor

from rtserver.config import NatsBrokerConfig, NatsRawModeConfig
from rtserver.engines.nats import HistoryStore, NatsBroker


def make_broker(
    url: str,
    prefix: str | None = None,
    *,
    history: HistoryStore | None = None,
    raw: dict[str, Any] | None = None,
    **config: Any,
) -> NatsBroker:
    """A NatsBroker on the real reactor."""
    cfg = NatsBrokerConfig(
        url=url,
        prefix=prefix or "t" + uuid.uuid4().hex[:12],
        raw_mode=NatsRawModeConfig(**raw) if raw else NatsRawModeConfig(),
        **config,
    )
    return NatsBroker(reactor, cfg, reactor=reactor, history=history)
