"""Cost and gain of the fossil delta encoder (rtserver/protocol/fossil.py), in one run.

For a JSON document republished with one small edit each time (the interop tests'
``edited_document``, ~6 KB) and for a 600-byte and a 60 KB variant, it reports:

* bytes: the delta against the full payload (what a delta subscriber reads instead);
* time (CPU, ``process_time``): ``fossil.delta_or_full`` per publication, against
  encoding the same publication once as a JSON ``pub`` push (``codec.encode_push``,
  the work the fan-out already does once per publication), so the ratio says what
  delta adds to a publication's encode cost. The delta is computed once per
  publication whatever the number of subscribers (see docs/client-protocol.rst,
  "Delta compression and tag filters"), so at N=1000 subscribers it is added once to
  a publication whose fan-out costs ~1,000 deliveries.

``python bench/delta.py [--number 200] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from deltachains import edited_document

from rtserver.protocol import codec, fossil
from rtserver.protocol.frames import Publication


def scaled(payloads: list[bytes], factor: float) -> list[bytes]:
    """The same chain with the row list cut or repeated (a smaller or larger document)."""
    out = []
    for raw in payloads:
        doc = json.loads(raw)
        rows = doc["rows"]
        doc["rows"] = rows[: max(1, int(len(rows) * factor))] if factor < 1 else rows * int(factor)
        out.append(json.dumps(doc, ensure_ascii=False).encode())
    return out


def measure(name: str, payloads: list[bytes], number: int, repeat: int) -> str:
    """One table row for a chain."""
    pairs = list(itertools.pairwise(payloads))
    full = sum(len(t) for _, t in pairs)
    sent = sum(len(fossil.delta_or_full(s, t)[0]) for s, t in pairs)
    deltas = sum(fossil.delta_or_full(s, t)[1] for s, t in pairs)

    def run_delta() -> None:
        for s, t in pairs:
            fossil.delta_or_full(s, t)

    pubs = [Publication(data=t, offset=i) for i, (_, t) in enumerate(pairs, 1)]

    def run_encode() -> None:
        for pub in pubs:
            codec.encode_push("docs:report", "pub", pub.to_wire())

    def per_pub(fn: Callable[[], None]) -> float:
        runs = timeit.repeat(fn, timer=time.process_time, number=number, repeat=repeat)
        return min(runs) / number / len(pairs)

    t_delta = per_pub(run_delta)
    t_enc = per_pub(run_encode)
    return (
        f"| {name} | {full // len(pairs):,} | {deltas}/{len(pairs)} | {sent / full:.3f} | "
        f"{t_enc * 1e6:.1f} | {t_delta * 1e6:.1f} | {t_delta / t_enc:.1f} |"
    )


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = edited_document(50)
    print(
        "| document | avg bytes | deltas | bytes sent / full | JSON push encode µs "
        "| delta µs | delta / encode |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, chain, number in [
        ("small (0.1x)", scaled(base, 0.1), args.number),
        ("report (1x)", base, args.number),
        ("large (10x)", scaled(base, 10), max(1, args.number // 10)),
    ]:
        print(measure(name, chain, number, args.repeat))


if __name__ == "__main__":
    main()
