"""ClientWriter.enqueue in process: ns per enqueue of a shared payload, two source trees.

    python3 bench/enqueue_cost.py /tmp/ovbase     # another tree (e.g. a git archive)
    python3 bench/enqueue_cost.py .               # this one

1000 writers on one FlushScheduler (a Clock), 8 enqueues each per round, then the
flush; median of 30 rounds.
"""

from __future__ import annotations

import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])

from twisted.internet import task

from rtserver.core.writer import ClientWriter, FlushScheduler, Payload


class Sink:
    def write(self, batch: list[Payload]) -> None:
        pass


def main() -> None:
    clock = task.Clock()
    scheduler = FlushScheduler(clock)
    writers = [ClientWriter(Sink(), scheduler, 1 << 20, lambda: None) for _ in range(1000)]
    payload = Payload(b"x" * 100, shared=True)
    rounds = []
    for _ in range(30):
        t = time.perf_counter()
        for _ in range(8):
            for writer in writers:
                writer.enqueue(payload)
        rounds.append((time.perf_counter() - t) / 8000 * 1e9)
        clock.advance(0)  # a Clock runs every slice of the pass at once
    print(f"{sys.argv[1]}: {statistics.median(rounds):.1f} ns/enqueue (median of 30)")


if __name__ == "__main__":
    main()
