"""Shared fixtures: a Clock-driven node with the memory engine, and a dirty-reactor guard."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _reactor_is_clean() -> Iterator[None]:
    """Fail a test that leaves DelayedCalls on the global reactor."""
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    yield
    leftover = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    for call in leftover:
        call.cancel()
    assert not leftover, f"test left delayed calls behind: {leftover}"
