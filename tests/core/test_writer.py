"""The flush scheduler under overload, on a Clock: healthy connections are never cut.

A reactor turn is one step of a :class:`TurnClock` (the calls due: the scheduler's next
slice) followed by the turn's input (a publication enqueued for every connection). Each sink takes whatever it
is given at once: every connection here is a fast reader, so a 3008 (the overflow
callback) would be the server's doing, not the client's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import task

from rtserver.core.writer import (
    FLUSH_HURRY,
    FLUSH_SLICE,
    FLUSH_TURNS,
    ClientWriter,
    FlushScheduler,
    Payload,
)

MAX_BYTES = 64 * 1024


class TurnClock(task.Clock):
    """A Clock where ``callLater(0)`` means the next turn, as on a reactor.

    ``task.Clock.advance(0)`` would also run what the calls it runs schedule for now,
    so a whole pass would run in one "turn"; here each :meth:`turn` runs only what was
    due when it began.
    """

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return super().callLater(max(delay, 1.0), callable, *args, **kw)

    def turn(self) -> None:
        self.advance(1.0)


class Sink:
    """A connection that reads promptly: records every batch, never pushes back."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def write(self, payloads: list[Payload]) -> None:
        self.batches.append([p.data for p in payloads])

    @property
    def received(self) -> list[bytes]:
        return [data for batch in self.batches for data in batch]


class Audience:
    """``count`` writers on one scheduler, with their sinks and overflow counts."""

    def __init__(self, count: int, max_bytes: int = MAX_BYTES) -> None:
        self.clock = TurnClock()
        self.scheduler = FlushScheduler(self.clock)
        self.sinks = [Sink() for _ in range(count)]
        self.overflows = 0
        self.writers = [
            ClientWriter(sink, self.scheduler, max_bytes, on_overflow=self._overflow)
            for sink in self.sinks
        ]
        self.published: list[bytes] = []
        self.peak_queued = 0

    def _overflow(self) -> None:
        self.overflows += 1

    def publish(self, size: int) -> None:
        """One publication of ``size`` bytes for every connection (one turn's input)."""
        data = b"%06d" % len(self.published) + b"x" * (size - 6)
        self.published.append(data)
        payload = Payload(data, shared=True)
        for writer in self.writers:
            writer.enqueue(payload)
        self.peak_queued = max(self.peak_queued, *(w.queued_bytes for w in self.writers))

    def turn(self, input_bytes: int) -> None:
        """The scheduler's slice, then ``input_bytes`` of publications for everybody."""
        self.clock.turn()
        self.publish(input_bytes)

    def drain(self) -> None:
        for _ in range(4 * FLUSH_TURNS):
            if not self.clock.getDelayedCalls():
                return
            self.clock.turn()
        raise AssertionError("the flush never ended")


@pytest.mark.parametrize("count", [FLUSH_SLICE * 4, FLUSH_SLICE * FLUSH_TURNS * 2])
def test_overload_never_cuts_a_fast_reader(count: int) -> None:
    """Input of an eighth of the queue bound every turn, for many turns: nobody is cut.

    Before a pass could end early, the writers at the end of a pass of FLUSH_TURNS
    slices held FLUSH_TURNS turns of input (twice the bound here) and were all closed
    as slow consumers, although each took everything it was given. Now a pass ends, and
    every writer waiting is written, on the turn after a waiting queue passes
    1/FLUSH_HURRY of the bound: no queue holds more than that plus one turn of input.
    """
    audience = Audience(count)
    per_turn = MAX_BYTES // 8
    audience.publish(per_turn)
    for _ in range(3 * FLUSH_TURNS):
        audience.turn(per_turn)
    audience.drain()
    assert audience.overflows == 0
    assert audience.peak_queued <= MAX_BYTES // FLUSH_HURRY + per_turn
    for sink in audience.sinks:  # everything, in order, nothing twice
        assert sink.received == audience.published


def test_a_light_load_is_still_written_in_slices() -> None:
    """Small queues leave the slices alone.

    The first turn writes one slice only, and the input of the next turn joins the
    batches of the writers not yet written.
    """
    audience = Audience(FLUSH_SLICE * 3)
    audience.publish(100)
    audience.turn(100)
    first, second = audience.published
    assert [s.batches for s in audience.sinks[:FLUSH_SLICE]] == [[[first]]] * FLUSH_SLICE
    assert all(s.batches == [] for s in audience.sinks[FLUSH_SLICE:])
    audience.drain()
    assert [s.batches for s in audience.sinks[:FLUSH_SLICE]] == [[[first], [second]]] * (
        FLUSH_SLICE
    )
    assert [s.batches for s in audience.sinks[FLUSH_SLICE:]] == [[[first, second]]] * (
        FLUSH_SLICE * 2
    )


def test_a_pass_reaches_every_writer_within_flush_turns() -> None:
    """A pass takes at most FLUSH_TURNS turns, whatever arrives meanwhile.

    With input for everybody on every turn (below the hurry mark), each writer is
    written at least once every FLUSH_TURNS turns: its queue never holds more than
    FLUSH_TURNS turns of input.
    """
    count = FLUSH_SLICE * FLUSH_TURNS * 2
    audience = Audience(count, max_bytes=1 << 30)
    audience.publish(10)
    for _ in range(4 * FLUSH_TURNS):
        audience.turn(10)
    assert audience.peak_queued <= 10 * (FLUSH_TURNS + 1)
    audience.drain()
    for sink in audience.sinks:
        assert sink.received == audience.published
        assert len(sink.batches) >= 3  # written in several passes, each a batch of turns


def test_a_paused_writer_does_not_end_the_pass_and_is_still_cut() -> None:
    """A slow consumer neither ends the others' pass nor escapes its bound.

    Its transport paused its writer: the others keep their slices, and past the bound
    it is cut (3008) as before.
    """
    audience = Audience(FLUSH_SLICE * 3)
    slow = audience.writers[-1]
    slow.pause()
    for _ in range(3):  # more than the hurry mark for the slow writer, in one turn
        payload = Payload(b"y" * (MAX_BYTES // 3))
        slow.enqueue(payload)
    assert slow.queued_bytes > MAX_BYTES // FLUSH_HURRY and audience.overflows == 0
    audience.publish(100)
    audience.clock.turn()
    written = sum(1 for s in audience.sinks if s.batches)
    assert written == FLUSH_SLICE  # still one slice per turn
    slow.enqueue(Payload(b"y" * (MAX_BYTES // 3)))
    assert audience.overflows == 1
    audience.drain()
    assert audience.sinks[-1].batches == []
    for sink in audience.sinks[:-1]:
        assert sink.received == audience.published
