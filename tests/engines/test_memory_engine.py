"""The memory engine against the engine contract, driven by a Clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from contract import HISTORY, EngineContract, EngineEnv, RecordingHandler, pub
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from rtserver.core.types import HistoryFilter
from rtserver.engines.memory import MemoryEngine


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine_env(clock: Clock) -> Iterator[EngineEnv]:
    engine = MemoryEngine(clock, cleanup_interval=30.0)
    handler = RecordingHandler()
    engine.start(handler)

    def advance(seconds: float) -> Deferred[None]:
        clock.advance(seconds)
        return succeed(None)

    yield EngineEnv(engine, handler, advance, lambda: succeed(None))
    engine.stop()
    assert not clock.getDelayedCalls(), "engine left timers running after stop()"


class TestMemoryEngine(EngineContract):
    """Memory engine: the shared contract plus its own cleanup behaviour."""

    def test_cleanup_releases_expired_streams(self, engine_env: EngineEnv, clock: Clock) -> None:
        """The periodic cleanup forgets streams whose metadata expired."""
        engine = engine_env.engine
        engine.publish("h", pub(1), HISTORY)
        assert engine.retained_streams == 1
        clock.advance(HISTORY.history_meta_ttl + 31)
        assert engine.retained_streams == 0

    def test_reverse_limit_without_since(self, engine_env: EngineEnv) -> None:
        """Reverse with a limit returns the newest publications, newest first."""
        engine = engine_env.engine
        for i in range(3):
            engine.publish("h", pub(i), HISTORY)
        d = engine.history("h", HistoryFilter(limit=1, reverse=True), 3600.0)
        assert [p.offset for p in d.result.publications] == [3]
