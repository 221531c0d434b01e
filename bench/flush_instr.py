"""Instructions per flush of the delivery path, in process (valgrind callgrind).

::

    python bench/flush_instr.py                       # this tree, N=200, k=1,2
    python bench/flush_instr.py --tree /tmp/base --k 1,2,4

N writers (``ClientWriter``) over open ``WebSocketProtocol`` objects whose transports are
fake ``tcp.Server`` objects (``fanout_path.fake_protocol``; ``send()`` is ``len``), one
``FlushScheduler`` on a ``Clock``. A round enqueues the same k shared payloads to every
writer and runs the flush pass (``Clock.advance(0)``): per writer, k ``enqueue`` calls
and one flush (scheduler -> ``WebSocketProtocol.write`` -> eager write). The script runs
the workload under ``valgrind --tool=callgrind`` for 20 and for 120 rounds and reports
``(I(120) - I(20)) / (100 * N)``: the instructions of one flush with its k enqueues,
start-up and imports cancelled out. Instruction counts do not depend on the machine's
load. ``--tree`` measures another checkout (e.g. ``git archive`` of a base commit) with
the same workload; its ``bench/fanout_path.py`` provides the fake connections.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PAYLOAD = (
    b'{"push":{"channel":"bench","pub":{"data":'
    b'{"input":"hello world, this is a benchmark publication payload"}}}}'
)


def workload(tree: Path, n: int, k: int, rounds: int) -> None:
    """The measured loop (runs inside valgrind)."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    import fanout_path
    from twisted.internet import task

    from rtserver.core.writer import ClientWriter, FlushScheduler, Payload

    clock = task.Clock()
    scheduler = FlushScheduler(clock)
    make_factory = getattr(fanout_path, "fake_factory", None)  # absent in older trees
    factory: Any = make_factory(clock=clock) if make_factory is not None else None
    writers = []
    for _ in range(n):
        proto: Any = fanout_path.fake_protocol()
        if factory is not None:
            proto.factory = factory
        proto.transport.socket = SimpleNamespace(send=len)
        writers.append(ClientWriter(proto, scheduler, 1 << 20, lambda: None))
    payloads = [Payload(PAYLOAD, shared=True) for _ in range(k)]

    def run(count: int) -> None:
        for _ in range(count):
            for payload in payloads:
                for writer in writers:
                    writer.enqueue(payload)
            clock.advance(0)

    run(rounds)


def instructions(tree: Path, n: int, k: int, rounds: int) -> int:
    """Instructions of the whole child process (callgrind's total)."""
    # the dump goes to a scratch directory: callgrind replaces its output file, which
    # must never be /dev/null
    with tempfile.TemporaryDirectory() as scratch:
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/callgrind.out",
            sys.executable, __file__, "--child", "--tree", str(tree),
            "--n", str(n), "--k", str(k), "--rounds", str(rounds),
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no callgrind total in:\n{out[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--k", default="1,2", help="payloads per flush, e.g. 1,2,4")
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload(args.tree.resolve(), args.n, int(args.k), args.rounds)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    tree = args.tree.resolve()
    for k in (int(x) for x in args.k.split(",")):
        low = instructions(tree, args.n, k, 20)
        high = instructions(tree, args.n, k, 120)
        per_flush = (high - low) / (100 * args.n)
        print(f"{tree} N={args.n} k={k}: {per_flush:,.0f} Ir per flush with its {k} enqueue(s)")


if __name__ == "__main__":
    main()
