"""Helpers for the NATS broker tests: brokers on a unique prefix, on the real reactor."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

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


@contextmanager
def warnings_logged() -> Iterator[list[str]]:
    """The text of every warning (or worse) logged inside the block, as it is logged."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)
