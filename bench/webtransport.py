"""WebTransport fan-out: server CPU per delivery next to WebSocket, in the same run.

::

    python bench/webtransport.py                      # N=200 consumers, 500 publications each
    python bench/webtransport.py --n 50 --pubs 200    # smaller
    python bench/webtransport.py --profile out.txt    # also: where the server's time goes

One ``twistd rtserver`` (source tree first on PYTHONPATH, pinned to CPU0) serves both
transports, with HTTP/3 on a fresh self-signed ECDSA certificate; the consumers run in one
asyncio process on CPU1: N WebTransport sessions (aioquic's asyncio client, one QUIC
connection each, JSON on the session's stream) in one phase, N JSON WebSocket
connections (``websockets``) in the other, all subscribed to one channel. Phases
alternate. The bench publishes ``--pubs`` publications through the HTTP API in batches of
50 and waits until every consumer received all of them. The figure is the server's CPU
(user+sys of its process, from the first publish to the last delivery) divided by the
deliveries (N x pubs); the API's own cost is included in both phases alike.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fanout import _cpus, _free_port, _spawn, _stop, _twistd, _wait_listening, machine  # noqa: E402
from grpc_api import _cpu_seconds  # noqa: E402
from uni_grpc import _ws_consumers  # noqa: E402

HOST = "127.0.0.1"
API_KEY = "bench-key"
CHANNEL = "bench"
BATCH = 50


def _certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- consumers (their own process) --------------------------------------------------------


async def _wt_consumers(port: int, n: int, pubs: int) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    ready = asyncio.Event()
    connected = 0
    commands = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"' + CHANNEL.encode() \
        + b'"}}\n'

    class Consumer(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic, enable_webtransport=True)
            self.session = -1
            self.stream = -1
            self.buffer = b""
            self.got = 0
            self.accepted = asyncio.Event()
            self.finished = asyncio.Event()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.stream_id == self.stream:
                self._lines(event.data)
                return
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived) and h3_event.stream_id == self.session:
                    self.accepted.set()

        def _lines(self, data: bytes) -> None:
            nonlocal connected
            self.buffer += data
            *lines, self.buffer = self.buffer.split(b"\n")
            for line in lines:
                if b'"pub"' in line:
                    self.got += 1
                elif b'"id":2' in line:
                    connected += 1
                    if connected == n:
                        ready.set()
                elif line == b"{}":
                    self._quic.send_stream_data(self.stream, b"{}\n")
                    self.transmit()
            if self.got >= pubs:
                self.finished.set()

        async def run(self) -> None:
            self.session = self._quic.get_next_available_stream_id()
            self.h3.send_headers(self.session, [
                (b":method", b"CONNECT"), (b":scheme", b"https"),
                (b":authority", f"localhost:{port}".encode()),
                (b":path", b"/connection/webtransport"), (b":protocol", b"webtransport"),
            ])
            self.transmit()
            await self.accepted.wait()
            self.stream = self.h3.create_webtransport_stream(self.session)
            self._quic.send_stream_data(self.stream, commands)
            self.transmit()
            await self.finished.wait()

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               max_datagram_frame_size=65536, verify_mode=ssl.CERT_NONE)

    async def one() -> None:
        async with connect(HOST, port, configuration=config, create_protocol=Consumer,
                           wait_connected=True) as client:
            assert isinstance(client, Consumer)
            await client.run()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print("done", flush=True)


def consumer_main(params: dict[str, Any]) -> None:
    """``--consume``: N consumers of one kind; prints ``ready`` then ``done``."""
    if params["kind"] == "webtransport":
        asyncio.run(_wt_consumers(params["target"], params["n"], params["pubs"]))
    else:
        asyncio.run(_ws_consumers(params["target"], params["n"], params["pubs"]))


# --- the run ------------------------------------------------------------------------------


def phase(kind: str, target: Any, api: str, pid: int, n: int, pubs: int,
          profile: str = "") -> dict[str, Any]:
    """One fan-out phase; returns the server CPU per delivery.

    With ``profile``, py-spy samples the server while it delivers (raw collapsed stacks
    appended to that file; summarise with ``bench/pyspy_top.py``).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    params = json.dumps({"kind": kind, "target": target, "n": n, "pubs": pubs})
    proc = _spawn([sys.executable, __file__, "--consume", params], _cpus()[1],
                  stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
        if line != b"ready":
            raise SystemExit(f"{kind} consumers failed to connect: {line!r}")
        session = requests.Session()
        session.trust_env = False
        data = {"text": "hello", "n": 1}
        spy = None
        if profile:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw",
                                    "--rate", "250", "--nonblocking", "-o", profile],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches before the measured work starts
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        for start in range(0, pubs, BATCH):
            commands = [{"publish": {"channel": CHANNEL, "data": data}}
                        for _ in range(min(BATCH, pubs - start))]
            session.post(f"{api}/batch", json={"commands": commands},
                         headers={"X-API-Key": API_KEY}, timeout=60).raise_for_status()
        line = proc.stdout.readline().strip()
        cpu1, t1 = _cpu_seconds(pid), time.monotonic()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if line != b"done":
            raise SystemExit(f"{kind} consumers did not finish: {line!r}")
    finally:
        _stop(proc)
    deliveries = n * pubs
    return {"kind": kind, "n": n, "pubs": pubs, "seconds": t1 - t0,
            "cpu_s": cpu1 - cpu0, "us_per_delivery": (cpu1 - cpu0) / deliveries * 1e6,
            "deliveries_per_s": deliveries / (t1 - t0)}


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def memory_main(n: int) -> int:
    """Server RSS growth per idle connection (connected and subscribed), per kind."""
    rows = []
    for kind in ("websocket", "webtransport"):
        port = _free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            udp_port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            proc = _start_server(workdir, port, udp_port)
            try:
                before = _rss_kib(proc.pid)
                target: Any = udp_port if kind == "webtransport" else \
                    f"ws://{HOST}:{port}/connection/websocket"
                params = json.dumps({"kind": kind, "target": target, "n": n, "pubs": 10**9})
                consumers = _spawn([sys.executable, __file__, "--consume", params], _cpus()[1],
                                   stdout=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
                assert consumers.stdout is not None
                try:
                    if consumers.stdout.readline().strip() != b"ready":
                        raise SystemExit(f"{kind} consumers failed to connect")
                    after = _rss_kib(proc.pid)
                finally:
                    _stop(consumers)
            finally:
                _stop(proc, grace=15.0)
        rows.append((kind, n, (after - before) / n))
    print(machine())
    print(f"\n`python bench/webtransport.py --memory {n}`\n")
    print("| transport | idle connections | server RSS KiB / connection |")
    print("|---|---|---|")
    for kind, count, per in rows:
        print(f"| {kind} | {count} | {per:.1f} |")
    return 0


def _start_server(workdir: Path, port: int, udp_port: int) -> subprocess.Popen[bytes]:
    """rtserver on CPU0: WebSocket on ``port``, HTTP/3 on UDP ``udp_port``."""
    cert, key = _certificate(workdir)
    config = {
        "http_server": {"port": udp_port, "address": HOST,
                        "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
                        "http3": {"enabled": True}},
        "webtransport": {"enabled": True},
        "client": {"allow_anonymous_connect_without_token": True, "allowed_origins": ["*"]},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True,
                                          "allow_subscribe_for_anonymous": True}},
        "http_api": {"key": API_KEY},
        "log": {"level": "warn"},
    }
    cfg = workdir / "rtserver.json"
    cfg.write_text(json.dumps(config))
    log = workdir / "server.log"
    cmd = [*_twistd(), "--pidfile=", "-n", f"--logfile={log}", "rtserver",
           "--config", str(cfg), "-l", f"tcp:{port}:interface={HOST}"]
    with (workdir / "server.out").open("wb") as out:
        proc = _spawn(cmd, _cpus()[0], stdout=out, stderr=subprocess.STDOUT,
                      env={**os.environ, "PYTHONPATH": str(ROOT)})
    _wait_listening(proc, port, log, timeout=30)
    return proc


def main(argv: list[str] | None = None) -> int:
    """Run alternating phases against one server and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--pubs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="phases alternate per round")
    parser.add_argument("--profile", help="py-spy the WebTransport phase into this raw file")
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="instead: server RSS per idle connection, N of each kind, "
                             "a fresh server per kind")
    parser.add_argument("--consume", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consume:
        consumer_main(json.loads(args.consume))
        return 0
    if args.memory:
        return memory_main(args.memory)
    port = _free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        udp_port = s.getsockname()[1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc = _start_server(workdir, port, udp_port)
        try:
            api = f"http://{HOST}:{port}/api"
            for _ in range(args.rounds):
                rows.append(phase("websocket", f"ws://{HOST}:{port}/connection/websocket",
                                  api, proc.pid, args.n, args.pubs))
                rows.append(phase("webtransport", udp_port, api, proc.pid, args.n, args.pubs,
                                  args.profile or ""))
        finally:
            _stop(proc, grace=15.0)
    print(machine())
    print(f"\n`python bench/webtransport.py --n {args.n} --pubs {args.pubs} "
          f"--rounds {args.rounds}`\n")
    print("| transport | N | publications | server CPU µs / delivery | deliveries/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['n']} | {r['pubs']} | {r['us_per_delivery']:.2f} | "
              f"{r['deliveries_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
