"""The HTTP front door of the server API, three ways in one run.

Servers (each its own process, pinned to CPU0, 127.0.0.1 only):

* ``new``: rtserver's site with today's fast path (``web/apifast.py``: llhttp heads,
  the API key checked on the head) and the request-head deadline on;
* ``old``: the same site with the previous hand-written fast path, copied below
  (``OldFastPath``) as the same-run baseline; its heads are never reported to the
  channel, so the head deadline is off for it;
* ``twisted``: the same site with the fast path off (twisted.web parses everything).

Loads (a Python asyncio client pinned to CPU1):

* ``publish``: ``--conns`` keep-alive connections, one ``POST /api/publish`` in flight
  each, for ``--seconds``: requests/s and server CPU µs per request;
* ``body``: ``--bodies`` authenticated publish requests with a 10 MiB body, one at a
  time: server CPU seconds per request;
* ``unauth``: 40 connections each sending an unauthenticated head with a 10 MiB
  ``Content-Length`` and the whole body: server RSS growth at its peak, and server CPU.

Usage::

    python bench/apifront.py                       # all three servers, all loads (~3 min)
    python bench/apifront.py --servers new,old --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's rtserver, not an installed one
KEY = "bench-key"
MIB10 = 10 * 1024 * 1024
CLK = os.sysconf("SC_CLK_TCK")


# --- the previous fast path (baseline only) -------------------------------------------

_OLD_HEAD_LIMIT = 16384
_OLD_METHOD_RE = re.compile(rb"[a-z_]{1,64}")


class OldFastPath:
    """The hand-written parser this repository used before llhttp (for comparison only)."""

    def __init__(self, api: Any, prefix: str, body_limit: int) -> None:
        self._api = api
        self._prefix = prefix.rstrip("/").encode("utf-8") + b"/"
        self._body_limit = body_limit

    def feed(self, state: Any, data: bytes) -> None:
        state.buffer += data
        while not state.pending and not state.slow and not state.closing and state.buffer:
            parsed = self._parse(state.buffer)
            if parsed is None:
                return
            if parsed is False:
                state.slow = True
                buffered, state.buffer = state.buffer, b""
                state.fallback(buffered)
                return
            size, method, headers, body = parsed
            state.buffer = state.buffer[size:]
            if headers.get(b"connection", b"").lower() == b"close":
                state.closing = True
            self._answer(state, method, headers, body)

    def _parse(self, buf: bytes) -> Any:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if b"\n\n" in buf or b"\n\r\n" in buf:
                return False
            return None if len(buf) < _OLD_HEAD_LIMIT else False
        if end > _OLD_HEAD_LIMIT:
            return False
        lines = buf[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return False
        path = parts[1]
        if not path.startswith(self._prefix):
            return False
        method = path[len(self._prefix):]
        if _OLD_METHOD_RE.fullmatch(method) is None:
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                return False
            key = name.lower()
            if key in headers or key in (b"transfer-encoding", b"expect", b"upgrade"):
                return False
            headers[key] = value.strip()
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            return False
        size = int(length)
        if size > self._body_limit:
            return False
        start = end + 4
        if len(buf) - start < size:
            return None
        return start + size, method.decode("ascii"), headers, buf[start : start + size]

    def _answer(self, state: Any, method: str, headers: dict[bytes, bytes], body: bytes) -> None:
        from twisted.internet.defer import Deferred

        from rtserver.web.api import INTERNAL_ERROR, APIResponse, header_credentials
        from rtserver.web.api import transport_mode as mode_of

        api = self._api
        keys = header_credentials(headers.get(b"x-api-key"), headers.get(b"authorization"))
        if not api.authorized(keys):
            _old_send(state, APIResponse(401, b""))
            return
        mode = mode_of(headers.get(b"x-centrifugo-error-mode"))
        d = Deferred.fromCoroutine(api.run_method(method, body, mode))
        d.addErrback(lambda f: INTERNAL_ERROR)
        if d.called:
            _old_send(state, d.result)
            return
        state.pending = True

        def done(response: Any) -> None:
            state.pending = False
            _old_send(state, response)
            self.feed(state, b"")

        d.addCallback(done)


def _old_send(state: Any, response: Any) -> None:
    from twisted.web.http import RESPONSES

    if state.gone:
        return
    code, body = response.code, response.body
    head = b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b"Unknown"))
    if body or code != 401:
        head += b"Content-Type: %s\r\n" % response.content_type
    head += b"Content-Length: %d\r\n" % len(body)
    if state.closing:
        head += b"Connection: close\r\n"
    state.write(head + b"\r\n" + body)
    if state.closing:
        state.close()


# --- server process -----------------------------------------------------------------------


def serve(variant: str, port: int) -> None:
    """Run one server variant on 127.0.0.1:``port`` until killed."""
    os.sched_setaffinity(0, {0})
    from twisted.internet import reactor
    from twisted.web.resource import Resource

    from rtserver.api.executor import APIExecutor
    from rtserver.config import from_mapping
    from rtserver.core.node import Node
    from rtserver.engines.memory import MemoryEngine
    from rtserver.web.api import APIResource
    from rtserver.web.apifast import APIFastPath
    from rtserver.web.site import RTSite

    config = from_mapping({"http_api": {"key": KEY}})
    node = Node(MemoryEngine(reactor), config, clock=reactor)
    node.start()
    root = Resource()
    api = APIResource(APIExecutor(node), config.http_api)
    root.putChild(b"api", api)
    limit = config.http_api.max_request_body_size
    fast: Any = None
    if variant == "new":
        fast = APIFastPath(api, "/api", limit)
    elif variant == "old":
        fast = OldFastPath(api, "/api", limit)
    site = RTSite(
        root,
        body_limits=[("/api", limit)],
        api_fast_path=fast,
        read_header_timeout=0 if variant == "old" else 10.0,
        max_unfinished_heads=1024,
        reactor=reactor,
    )
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


def in_process(variants: list[str], requests: int, rounds: int) -> dict[str, float]:
    """CPU µs per publish request with no sockets: bytes fed to the channel directly.

    The same site setup as :func:`serve`, on the real reactor (its ``callLater`` drives the
    head deadline), one keep-alive connection over a StringTransport; the median of
    ``rounds`` interleaved rounds.
    """
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from rtserver.api.executor import APIExecutor
    from rtserver.config import from_mapping
    from rtserver.core.node import Node
    from rtserver.engines.memory import MemoryEngine
    from rtserver.web.api import APIResource
    from rtserver.web.apifast import APIFastPath
    from rtserver.web.site import RTSite

    config = from_mapping({"http_api": {"key": KEY}})
    node = Node(MemoryEngine(reactor), config, clock=reactor)
    node.start()
    root = Resource()
    api = APIResource(APIExecutor(node), config.http_api)
    root.putChild(b"api", api)
    limit = config.http_api.max_request_body_size
    request = publish_request(b'{"channel":"bench","data":{"n":1}}')
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            fast: Any = None
            if variant == "new":
                fast = APIFastPath(api, "/api", limit)
            elif variant == "old":
                fast = OldFastPath(api, "/api", limit)
            site = RTSite(
                root,
                body_limits=[("/api", limit)],
                api_fast_path=fast,
                read_header_timeout=0 if variant == "old" else 10.0,
                reactor=reactor,
            )
            proto: Any = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport()
            proto.makeConnection(transport)
            n = requests if fast is not None else requests // 4
            for _ in range(n // 10):  # warm-up
                proto.dataReceived(request)
            transport.clear()
            started = time.process_time()
            for _ in range(n):
                proto.dataReceived(request)
                if len(transport.io.getvalue()) > 1 << 20:
                    transport.clear()
            samples[variant].append((time.process_time() - started) / n * 1e6)
            if transport.io.getvalue().count(b"HTTP/1.1 200") == 0:
                raise SystemExit(f"{variant}: no 200 answers in process")
            proto.connectionLost(None)
            site.stopFactory()
    return {v: statistics.median(x) for v, x in samples.items()}


# --- load ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def publish_request(body: bytes, key: str = KEY) -> bytes:
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (key.encode(), len(body))
    ) + body


class KeepAlive(asyncio.Protocol):
    """One request in flight; the next is sent when a whole response has arrived."""

    def __init__(self, request: bytes, on_response: Callable[[], bool]) -> None:
        self.request = request
        self.on_response = on_response
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected response: {head[:80]!r}")
            if self.on_response() and self.transport is not None:
                self.transport.write(self.request)


async def load_publish(port: int, pid: int, conns: int, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    request = publish_request(b'{"channel":"bench","data":{"n":1}}')
    count = 0
    measuring = False
    stop = False

    def on_response() -> bool:
        nonlocal count
        if measuring:
            count += 1
        return not stop

    transports = []
    for _ in range(conns):
        t, _ = await loop.create_connection(
            lambda: KeepAlive(request, on_response), "127.0.0.1", port
        )
        transports.append(t)
    await asyncio.sleep(1.0)  # warm-up
    measuring = True
    cpu0, t0, own0 = cpu_seconds(pid), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    cpu1, t1, own1 = cpu_seconds(pid), time.perf_counter(), time.process_time()
    got = count
    stop = True
    for t in transports:
        t.close()
    return {
        "requests_per_s": got / (t1 - t0),
        "cpu_us_per_request": (cpu1 - cpu0) / got * 1e6 if got else float("nan"),
        "server_util": (cpu1 - cpu0) / (t1 - t0),
        "client_util": (own1 - own0) / (t1 - t0),
    }


async def load_bodies(port: int, pid: int, bodies: int) -> dict[str, float]:
    body = b'{"channel":"bench","data":"' + b"x" * (MIB10 - 40) + b'"}'
    request = publish_request(body)
    cpu0 = cpu_seconds(pid)
    for _ in range(bodies):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected response: {head[:80]!r}")
        writer.close()
    return {"cpu_s_per_10mib_request": (cpu_seconds(pid) - cpu0) / bodies}


async def load_unauth(port: int, pid: int, conns: int = 40) -> dict[str, float]:
    head = publish_request(b"", key="wrong").replace(
        b"Content-Length: 0", b"Content-Length: %d" % MIB10
    )
    chunk = b"x" * 65536
    rss0, cpu0 = rss_mb(pid), cpu_seconds(pid)
    peak = rss0
    writers = []
    for _ in range(conns):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        writers.append(writer)

    async def body(writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(MIB10 // len(chunk) - 1):  # all but the last 64 KiB
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass  # the server may close after its 401 (only once the body is complete)

    task = asyncio.gather(*(body(w) for w in writers))
    while not task.done():
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.05)
    await task
    await asyncio.sleep(0.5)
    peak = max(peak, rss_mb(pid))
    for w in writers:
        w.close()
    return {
        "unauth_rss_growth_mb": peak - rss0,
        "unauth_cpu_s": cpu_seconds(pid) - cpu0,
    }


def run_client(port: int, pid: int, args: argparse.Namespace) -> dict[str, float]:
    os.sched_setaffinity(0, {1})
    out: dict[str, float] = {}

    async def main() -> None:
        out.update(await load_publish(port, pid, args.conns, args.seconds))
        if args.bodies:
            out.update(await load_bodies(port, pid, args.bodies))
        if args.unauth:
            out.update(await load_unauth(port, pid))

    asyncio.run(asyncio.wait_for(main(), 20 * args.seconds + 120))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="old,new,twisted")
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--bodies", type=int, default=3)
    p.add_argument("--no-unauth", dest="unauth", action="store_false")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--in-process", type=int, default=20000, metavar="N",
                   help="requests per in-process round (0: skip)")
    p.add_argument("--port", type=int, default=18901)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    variants = args.servers.split(",")
    if args.in_process:
        cpu = in_process(variants, args.in_process, args.repeat)
        print("In process, no sockets (one keep-alive connection, median of "
              f"{args.repeat} rounds of {args.in_process:,} requests):\n")
        print("| server | CPU µs per publish request |\n| --- | --- |")
        for variant in variants:
            print(f"| {variant} | {cpu[variant]:.1f} |")
        print()
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    started = time.perf_counter()
    for round_ in range(args.repeat):  # interleaved, so drift on the machine hits all alike
        for i, variant in enumerate(variants):
            port = args.port + i
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, "--port", str(port)],
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
            try:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit(f"{variant}: server did not start")
                runs[variant].append(run_client(port, proc.pid, args))
            finally:
                proc.terminate()
                proc.wait(10)
            shown = {k: round(v, 3) for k, v in runs[variant][-1].items()}
            print(f"round {round_ + 1} {variant}: {shown}", file=sys.stderr, flush=True)
    print(f"({args.repeat} interleaved rounds, median per column, "
          f"{time.perf_counter() - started:.0f} s)\n")
    print("| server | publish requests/s | server CPU µs/request | server util | client util "
          "| CPU s per 10 MiB body | 40 unauthenticated 10 MiB bodies: server RSS growth MB "
          "| their server CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in variants:
        r = {k: statistics.median(run.get(k, math.nan) for run in runs[variant])
             for k in runs[variant][0]}
        print(
            f"| {variant} | {r['requests_per_s']:,.0f} | {r['cpu_us_per_request']:.1f} "
            f"| {r['server_util']:.0%} | {r['client_util']:.0%} "
            f"| {r.get('cpu_s_per_10mib_request', math.nan):.3f} "
            f"| {r.get('unauth_rss_growth_mb', math.nan):.0f} "
            f"| {r.get('unauth_cpu_s', math.nan):.2f} |"
        )


if __name__ == "__main__":
    main()
