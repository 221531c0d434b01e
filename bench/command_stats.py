"""Cost of the per-command and per-engine-call counters behind ``/metrics``, A/B.

Runs the same in-process loop against two source trees (``--a`` and ``--b``, e.g. the
main checkout and a branch), alternating A and B in separate processes, and prints
the median microseconds per operation of each:

* ``command``: a client's ``publish`` command (decode, permission, engine publish,
  reply), one connected client, no subscribers;
* ``api publish``: ``Node.publish`` with one subscriber (the server API's path).

Usage: ``python bench/command_stats.py --a /work/main --b . --rounds 5``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, time
from rtserver.testing import RecordingSink, make_node
SETTINGS = {
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {"without_namespace": {
        "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
        "allow_publish_for_client": True, "allow_publish_for_anonymous": True}},
}
N = 20000
node, clock = make_node(SETTINGS)
sink = RecordingSink()
client = node.make_client(sink)
client.receive(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"sub"}}')
clock.advance(0)
frame = b'{"id":3,"publish":{"channel":"room","data":{"n":1}}}'
out = {}
start = time.perf_counter()
for i in range(N):
    client.receive(frame)
    if i % 100 == 0:
        clock.advance(0)
        sink.batches.clear()
out["command"] = (time.perf_counter() - start) / N * 1e6
clock.advance(0)
sink.batches.clear()
start = time.perf_counter()
for i in range(N):
    node.publish("sub", b'{"n":1}')
    if i % 100 == 0:
        clock.advance(0)
        sink.batches.clear()
out["api publish"] = (time.perf_counter() - start) / N * 1e6
print(json.dumps(out))
"""


def run(tree: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a", required=True, help="baseline source tree")
    parser.add_argument("--b", required=True, help="source tree to compare")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for _ in range(args.rounds):
        results["a"].append(run(args.a))
        results["b"].append(run(args.b))
    for op in results["a"][0]:
        a = statistics.median(r[op] for r in results["a"])
        b = statistics.median(r[op] for r in results["b"])
        change = (b / a - 1) * 100
        print(f"{op:12s}  A {a:6.2f} us  B {b:6.2f} us  B-A {b - a:+.2f} us ({change:+.1f}%)")


if __name__ == "__main__":
    main()
