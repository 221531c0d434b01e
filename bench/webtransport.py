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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fanout import (  # noqa: E402
    HOST,
    _cpus,
    _free_port,
    _spawn,
    _stop,
    machine,
    rtserver_config,
    start_rtserver,
)
from uni_grpc import _ws_consumers, phase, print_table  # noqa: E402

CHANNEL = "bench"


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


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


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
        udp_port = _free_udp_port()
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
        **rtserver_config(None),
        "http_server": {"port": udp_port, "address": HOST,
                        "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
                        "http3": {"enabled": True}},
        "webtransport": {"enabled": True},
        "client": {"allow_anonymous_connect_without_token": True, "allowed_origins": ["*"]},
    }
    return start_rtserver(workdir, config, port, _cpus()[0])


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
    udp_port = _free_udp_port()
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
                                  script=__file__, profile=args.profile or ""))
        finally:
            _stop(proc, grace=15.0)
    print_table(f"python bench/webtransport.py --n {args.n} --pubs {args.pubs} "
                f"--rounds {args.rounds}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
