"""Server CPU per new-connection Initial on the HTTP/3 listener: Retry vs a connection.

In process, no sockets: a QuicListener with a transport that keeps nothing;
fresh client Initials (made by aioquic's client beforehand, not timed) are fed to
``datagramReceived``. Rounds alternate A/B in the same run:

* ``retry``: the listener is above its Retry threshold; each Initial gets a Retry.
* ``accept``: below it; each Initial creates a QUIC connection (TLS ServerHello,
  certificate, the first flight) as without address validation.

Prints µs of process CPU per Initial for each round and the medians.

    python3 bench/quic_retry.py            # ROUNDS=6 N=300
"""

from __future__ import annotations

import gc
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from harness import make_certificate

from rtserver import config as rtconfig
from rtserver.service import build_node
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.webtransport import QuicListener, quic_configuration

ROUNDS = int(os.environ.get("ROUNDS", "6"))
N = int(os.environ.get("N", "300"))


class Null:
    def write(self, data: bytes, addr: Any) -> None:
        pass


def initials(n: int) -> list[bytes]:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.verify_mode = ssl.CERT_NONE
    out = []
    for _ in range(n):
        quic = QuicConnection(configuration=config)
        quic.connect(("127.0.0.1", 4433), now=0.0)
        out.append(quic.datagrams_to_send(now=0.0)[0][0])
    return out


def listener(directory: Path) -> QuicListener:
    cert, key, _ = make_certificate(directory)
    cfg = rtconfig.from_mapping({
        "http_server": {
            "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
            "http3": {"enabled": True},
        },
        "webtransport": {"enabled": True, "max_connections": 1_000_000},
    })
    # the reactor as the clock (not running): its timers are a heap, where a Clock's
    # list is sorted on every callLater and would inflate the ``accept`` rounds
    from twisted.internet import reactor

    clock: Any = reactor
    node = build_node(cfg, clock)
    quic = quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0)
    lis = QuicListener(node, OriginPolicy([]), cfg.webtransport, quic, clock)
    lis.transport = Null()
    return lis


def forget(lis: QuicListener) -> None:
    """Cancel the round's timers: the next round starts from an empty reactor."""
    clock: Any = lis.clock
    for call in clock.getDelayedCalls():
        call.cancel()
    gc.collect()


def run(lis: QuicListener, packets: list[bytes], retry: bool) -> float:
    if retry:
        lis.handshaking = lis.retry_threshold  # as if that many handshakes were open
    else:
        lis.retry_threshold = 10 * len(packets)  # never reached
    start = time.process_time()
    for i, data in enumerate(packets):
        lis.datagramReceived(data, (f"10.0.{i // 250}.{i % 250 + 1}", 40000))
    return (time.process_time() - start) / len(packets) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, list[float]] = {"retry": [], "accept": []}
        for r in range(ROUNDS):
            order = ("retry", "accept") if r % 2 == 0 else ("accept", "retry")
            for mode in order:
                lis = listener(Path(tmp) / f"{r}-{mode}")
                us = run(lis, initials(N), mode == "retry")
                results[mode].append(us)
                forget(lis)
                print(f"round {r} {mode:6s} {us:8.1f} µs/Initial "
                      f"(connections {len(lis.peers)}, retries {lis.retries_sent})")
        for mode, values in results.items():
            print(f"median {mode:6s} {statistics.median(values):8.1f} µs/Initial")


if __name__ == "__main__":
    main()
