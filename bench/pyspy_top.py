"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): top functions.

``python bench/pyspy_top.py PROFILE.txt [--top 25] [--under FUNC]`` prints, per function
(``name (file)``, line numbers dropped), the share of samples where it is on top of the
stack (self) and anywhere on it (inclusive). ``--under`` keeps only stacks through a
function whose name contains FUNC (e.g. ``FlushScheduler._run``).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``."""
    return _LINE.sub(")", frame.strip())


def summarize(path: Path, under: str = "") -> tuple[int, Counter[str], Counter[str]]:
    """``(total samples, self counts, inclusive counts)``."""
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        if under and not any(under in f for f in frames):
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            incl[name] += count
    return total, own, incl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", default="", help="only stacks through this function")
    args = parser.parse_args()
    total, own, incl = summarize(args.profile, args.under)
    if not total:
        raise SystemExit("no samples")
    print(f"{total} samples{f' under {args.under}' if args.under else ''}\n")
    print("| self % | function |\n|---:|---|")
    for name, count in own.most_common(args.top):
        print(f"| {100 * count / total:5.1f} | `{name}` |")
    print("\n| inclusive % | function |\n|---:|---|")
    for name, count in incl.most_common(args.top):
        print(f"| {100 * count / total:5.1f} | `{name}` |")


if __name__ == "__main__":
    main()
