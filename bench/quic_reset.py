"""Server CPU per packet of an unknown QUIC connection: Stateless Reset vs drop.

In process, no sockets: a QuicListener with a transport that keeps nothing, fed 1-RTT
(short header) packets of 61 bytes for connection ids it does not hold, each from its own
address. Rounds alternate A/B in the same run:

* ``reset``: each packet is answered with a Stateless Reset (HMAC-SHA256 of the id, 42
  bytes of which 26 random).
* ``drop``: the listener's reset budget for the current second is used up, so each packet
  is counted and dropped, as every such packet was before Stateless Reset.

Prints µs of process CPU per packet for each round and the medians.

    python3 bench/quic_reset.py            # ROUNDS=6 N=20000
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import make_certificate
from twisted.internet.task import Clock

from rtserver import config as rtconfig
from rtserver.service import build_node
from rtserver.transports import webtransport
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.webtransport import QuicListener, quic_configuration, reset_secret

ROUNDS = int(os.environ.get("ROUNDS", "6"))
N = int(os.environ.get("N", "20000"))


class Null:
    def write(self, data: bytes, addr: Any) -> None:
        pass


def listener(directory: Path) -> QuicListener:
    cert, key, _ = make_certificate(directory)
    cfg = rtconfig.from_mapping({
        "http_server": {
            "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
            "http3": {"enabled": True},
        },
        "webtransport": {"enabled": True},
    })
    clock = Clock()
    quic = quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0)
    lis = QuicListener(
        build_node(cfg, clock), OriginPolicy([]), cfg.webtransport, quic, clock,
        reset_key=reset_secret(key.read_bytes()),
    )
    lis.transport = Null()
    return lis


def run(lis: QuicListener, packets: list[bytes], reset: bool) -> float:
    # the budget per second: never reached, or already used up
    webtransport._RESETS_PER_SECOND = 10 * len(packets) if reset else 0
    start = time.process_time()
    for i, data in enumerate(packets):
        lis.datagramReceived(data, (f"10.0.{i // 250 % 250}.{i % 250 + 1}", 40000))
    return (time.process_time() - start) / len(packets) * 1e6


def main() -> None:
    packets = [b"\x41" + os.urandom(60) for _ in range(N)]
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, list[float]] = {"reset": [], "drop": []}
        for r in range(ROUNDS):
            order = ("reset", "drop") if r % 2 == 0 else ("drop", "reset")
            for mode in order:
                lis = listener(Path(tmp) / f"{r}-{mode}")
                us = run(lis, packets, mode == "reset")
                results[mode].append(us)
                print(f"round {r} {mode:5s} {us:6.2f} µs/packet "
                      f"(resets {lis.resets_sent}, dropped {lis.dropped})")
        for mode, values in results.items():
            print(f"median {mode:5s} {statistics.median(values):6.2f} µs/packet")


if __name__ == "__main__":
    main()
