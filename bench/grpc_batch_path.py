"""The GRPC API's Batch path in process, without grpcio: typed path vs general path.

::

    python bench/grpc_batch_path.py                 # 100 publishes per batch, 8 rounds
    python bench/grpc_batch_path.py --batch 10 --rounds 12

A memory-engine node (rtserver.testing.make_node) and its executor; one ``BatchRequest``
of ``--batch`` publish commands (data ``{"text":"hello","n":1}``, 8 channels nobody
reads), serialized once. Each iteration does what the GRPC handler does minus grpcio and
the reactor hand-off: parse the request bytes, convert, execute, build the response bytes.

* ``typed``: ``convert.batch_publishes`` -> ``APIExecutor.publish_commands`` ->
  ``convert.encode_batch_publish_response`` (what an all-publish Batch runs).
* ``general``: ``convert.batch_commands`` -> ``APIExecutor.call("batch")`` ->
  ``convert.batch_response`` (what any other Batch runs, and what every Batch ran before).

The two alternate per round; CPU time (``time.process_time``) per publication, min and
median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred

from rtserver.api.executor import APIExecutor
from rtserver.grpcapi import convert
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.testing import make_node


def _fired(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the memory engine answers at once"
    return out[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200, help="batches per round")
    args = parser.parse_args()
    node, _clock = make_node()
    executor = APIExecutor(node)
    data = b'{"text":"hello","n":1}'
    raw = pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel=f"bench{i % 8}", data=data))
        for i in range(args.batch)
    ]).SerializeToString()
    n = args.batch

    def typed() -> bytes:
        typed = convert.batch_publishes(pb.BatchRequest.FromString(raw))
        assert typed is not None
        commands, failed = typed
        outcomes = _fired(Deferred.fromCoroutine(executor.publish_commands(commands)))
        return convert.encode_batch_publish_response(outcomes, failed, n)

    def general() -> bytes:
        commands, failed = convert.batch_commands(pb.BatchRequest.FromString(raw))
        body = _fired(Deferred.fromCoroutine(
            executor.call("batch", {"commands": commands, "parallel": False})))
        return convert.batch_response(body["replies"], failed, n).SerializeToString()

    assert typed() == general()
    paths: dict[str, Callable[[], bytes]] = {"typed": typed, "general": general}
    results: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            started = time.process_time()
            for _ in range(args.iterations):
                fn()
            results[name].append((time.process_time() - started) / args.iterations / n * 1e6)
    print(f"`python bench/grpc_batch_path.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    for name, values in results.items():
        print(f"{name}: min {min(values):.2f}, median {statistics.median(values):.2f} "
              f"µs CPU per publication")
    return 0


if __name__ == "__main__":
    sys.exit(main())
