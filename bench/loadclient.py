"""Fan-out load client for ``bench/fanout.py`` (one process, one run, JSON result on stdout).

Cheaper than the server by construction: asyncio (uvloop when installed) with hand-rolled
WebSocket handshakes and a minimal parser for unmasked server frames. Deliveries are
counted with ``bytes.count(b'"pub":')`` over each text frame's payload, so several
newline-separated messages in one frame (rtserver coalesces) cost no extra Python work.

Flow: open ``n`` subscribers (bounded concurrent handshakes), subscribe them all to one
channel, publish ``warmup`` publications and wait until all are delivered, then the
measured window: ``pubs`` publications over ``http_conns`` keep-alive HTTP connections,
``burst`` publications per request, never more than ``window`` publications whose
deliveries have not all arrived (the load is self-clocked, so neither server builds
unbounded queues). The window ends when all ``n * pubs`` deliveries arrived, or when
nothing arrived for ``stall`` seconds, or at ``timeout``. Server CPU (user+sys) is read
from ``/proc/<server_pid>/stat`` at both ends of the window.

Run by ``fanout.py``: ``python bench/loadclient.py '<json params>'``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

PAYLOAD = {"input": "hello world, this is a benchmark publication payload"}
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MASK = b"\x00\x00\x00\x00"  # an all-zero mask key: masked bytes equal the payload
_PONG = b"\x81\x82" + _MASK + b"{}"


@dataclass
class Params:
    """One run's parameters (given as JSON on the command line)."""

    kind: str  # "rtserver" or "baseline"
    host: str
    port: int
    server_pid: int
    server_core: int = -1  # the CPU the server is pinned to (-1: not pinned)
    n: int = 1000
    pubs: int = 500
    warmup: int = 100
    burst: int = 1
    window: int = 8
    http_conns: int = 2
    channel: str = "bench"
    api_key: str = "bench-key"
    connect_concurrency: int = 40
    timeout: float = 120.0
    stall: float = 5.0


@dataclass
class Result:
    """What one run measured."""

    kind: str
    n: int
    burst: int
    pubs: int
    connected: int = 0
    subscribed: int = 0
    expected: int = 0
    delivered: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    server_user_s: float = 0.0
    server_sys_s: float = 0.0
    core_busy_s: float = 0.0
    core_softirq_s: float = 0.0
    client_cpu_s: float = 0.0
    server_rss_kb: int = 0
    frames: int = 0
    conns_short: int = 0
    conns_extra: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    http_errors: int = 0
    pings: int = 0
    stalled: bool = False
    setup_s: float = 0.0
    error: str = ""


def proc_cpu(pid: int) -> tuple[float, float]:
    """``(user, sys)`` CPU seconds of a process, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def core_times(cpu: int) -> tuple[float, float, float]:
    """``(busy, softirq, total)`` seconds of one CPU since boot, from ``/proc/stat``."""
    if cpu < 0:
        return 0.0, 0.0, 0.0
    prefix = f"cpu{cpu} ".encode()
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(prefix):
                ticks = [int(x) for x in line.split()[1:9]]
                total = sum(ticks)
                idle = ticks[3] + ticks[4]
                return (total - idle) / _CLK_TCK, ticks[6] / _CLK_TCK, total / _CLK_TCK
    return 0.0, 0.0, 0.0


def proc_rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def self_cpu() -> float:
    """This process's user+sys CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def http_answers(buf: bytes) -> tuple[list[tuple[bool, bytes]], bytes]:
    """Complete HTTP/1.1 answers at the start of ``buf``: ``([(ok, body)...], rest)``.

    ``ok``: status 200 and no ``"error"`` in the body (a server API answer that worked).
    Bodies are delimited by Content-Length (the server API sends it).
    """
    answers = []
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            break
        i = buf.find(b"content-length:", 0, head_end)
        if i < 0:
            i = buf.find(b"Content-Length:", 0, head_end)
        j = buf.find(b"\r\n", i)
        length = int(buf[i + 15 : j]) if i >= 0 else 0
        if len(buf) < head_end + 4 + length:
            break
        ok = buf.startswith(b"HTTP/1.1 200")
        body = buf[head_end + 4 : head_end + 4 + length]
        buf = buf[head_end + 4 + length :]
        answers.append((ok and b'"error"' not in body, body))
    return answers, buf


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame (masked with the zero key, which RFC 6455 permits)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    elif length < 65536:
        header = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + _MASK + payload


class Subscriber(asyncio.Protocol):
    """One WebSocket subscriber: handshake, subscribe, count ``pub`` pushes."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.handshaken: asyncio.Future[None] = run.loop.create_future()
        self.open = False
        self.subscribed = False
        self.closed = False
        self.count = 0
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (b"/connection/websocket", self.run.p.host.encode(), self.run.p.port, key)
        )

    def data_received(self, data: bytes) -> None:
        if self.subscribed and not self.buf:
            # Fast path: exactly one small complete text frame, no ping inside.
            size = len(data)
            if (
                size >= 2
                and data[0] == 0x81
                and data[1] < 126
                and size == data[1] + 2
                and b"{}" not in data
            ):
                count = data.count(b'"pub":')
                self.count += count
                run = self.run
                run.frames += 1
                run.delivered += count
                if run.delivered >= run.wake_at:
                    run.pump()
                return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status:
                self._fail(f"handshake: {status.decode(errors='replace')}")
                return
            self.open = True
            if not self.handshaken.done():
                self.handshaken.set_result(None)
            data = data[end + 4 :]
            if not data:
                return
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        delivered = 0
        frames = 0
        while size - pos >= 2:
            b1 = data[pos + 1] & 0x7F
            if b1 < 126:
                start = pos + 2
                length = b1
            elif b1 == 126:
                if size - pos < 4:
                    break
                start = pos + 4
                length = int.from_bytes(data[pos + 2 : start], "big")
            else:
                if size - pos < 10:
                    break
                start = pos + 10
                length = int.from_bytes(data[pos + 2 : start], "big")
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            frames += 1
            if opcode == 1 or opcode == 0:
                delivered += data.count(b'"pub":', start, end)
                if not self.subscribed or data.find(b"{}", start, end) >= 0:
                    self._control_lines(data[start:end])
            elif opcode == 8:
                code = int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005
                self.run.note_close(self, str(code))
            elif opcode == 9 and self.transport is not None:
                frame = data[start:end]
                self.transport.write(bytes((0x8A, 0x80 | len(frame))) + _MASK + frame)
            pos = end
        if pos < size:
            self.buf = data[pos:]
        if delivered:
            self.count += delivered
            self.run.on_delivered(delivered, frames)
        else:
            self.run.frames += frames

    def _control_lines(self, payload: bytes) -> None:
        """Answer ``{}`` pings; notice the subscribe reply (``id`` 2)."""
        for line in payload.split(b"\n"):
            if line == b"{}":
                self.run.pings += 1
                if self.transport is not None:
                    self.transport.write(_PONG)
            elif not self.subscribed and line.startswith(b'{"id":2,'):
                if b'"subscribe"' in line:
                    self.subscribed = True
                    self.run.on_subscribed()
                else:
                    self._fail(f"subscribe failed: {line[:200].decode(errors='replace')}")

    def _fail(self, reason: str) -> None:
        if not self.run.result.error:
            self.run.result.error = reason
        if not self.handshaken.done():
            self.handshaken.set_exception(RuntimeError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.run.note_close(self, "lost")
        if not self.handshaken.done():
            self.handshaken.set_exception(RuntimeError(f"connection lost: {exc}"))


class Publisher(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request outstanding."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.ready: asyncio.Future[None] = run.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set_result(None)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            self.buf = buf
            return
        head = buf[:head_end].lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(buf) < head_end + 4 + length:
            self.buf = buf
            return
        body = buf[head_end + 4 : head_end + 4 + length]
        self.buf = buf[head_end + 4 + length :]
        ok = head.startswith(b"http/1.1 200") and b'"error"' not in body
        self.run.on_response(self, ok, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.http_lost(exc)


class Run:
    """One benchmark run against one server."""

    def __init__(self, p: Params, loop: asyncio.AbstractEventLoop) -> None:
        self.p = p
        self.loop = loop
        # Whole requests only: round both phases up to a multiple of the burst.
        p.pubs = -(-p.pubs // p.burst) * p.burst
        p.warmup = -(-p.warmup // p.burst) * p.burst
        self.result = Result(kind=p.kind, n=p.n, burst=p.burst, pubs=p.pubs)
        self.subs: list[Subscriber] = []
        self.subscribed = 0
        self.all_subscribed: asyncio.Future[None] = loop.create_future()
        self.delivered = 0
        self.frames = 0
        self.pings = 0
        self.closed: dict[str, int] = {}
        self.idle: list[Publisher] = []
        self.sent = 0  # publications sent
        self.target = 0  # publications to send in the current phase
        self.wake_at = 1 << 62  # call pump() once delivered reaches this
        self.done: asyncio.Future[None] | None = None
        self.http_errors = 0
        self.requests = self._requests()

    # --- requests -------------------------------------------------------------------

    def _requests(self) -> bytes:
        """The HTTP request carrying ``burst`` publications (identical every time)."""
        p = self.p
        pub = {"channel": p.channel, "data": PAYLOAD}
        if p.kind == "rtserver":
            if p.burst == 1:
                path, body = b"/api/publish", json.dumps(pub).encode()
            else:
                commands = [{"publish": pub}] * p.burst
                path, body = b"/api/batch", json.dumps({"commands": commands}).encode()
        else:
            path = b"/publish"
            body = b"\n".join([json.dumps(pub).encode()] * p.burst)
        return (
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nX-API-Key: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path, p.host.encode(), p.port, p.api_key.encode(), len(body), body)
        )

    # --- callbacks ------------------------------------------------------------------

    def on_subscribed(self) -> None:
        self.subscribed += 1
        if self.subscribed == self.p.n and not self.all_subscribed.done():
            self.all_subscribed.set_result(None)

    def on_delivered(self, count: int, frames: int) -> None:
        self.frames += frames
        self.delivered = delivered = self.delivered + count
        if delivered >= self.wake_at:
            self.pump()

    def note_close(self, sub: Subscriber, why: str) -> None:
        if sub.closed:
            return
        sub.closed = True
        self.closed[why] = self.closed.get(why, 0) + 1

    def on_response(self, pub: Publisher, ok: bool, body: bytes) -> None:
        if not ok:
            self.http_errors += 1
            if not self.result.error:
                self.result.error = f"publish failed: {body[:200].decode(errors='replace')}"
        self.idle.append(pub)
        self.pump()

    def http_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.result.error = self.result.error or f"HTTP connection lost: {exc}"
            self.done.set_result(None)

    # --- publishing -----------------------------------------------------------------

    def pump(self) -> None:
        """Send requests while an HTTP connection is idle and the window allows."""
        p = self.p
        burst, n = p.burst, p.n
        while self.sent < self.target and self.idle:
            allowed = self.delivered // n + p.window
            if self.sent + burst > allowed:
                self.wake_at = (self.sent + burst - p.window) * n
                break
            self.idle.pop().send(self.requests)
            self.sent += burst
        else:
            self.wake_at = self.target * n
        if self.delivered >= self.target * n and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def phase(self, pubs: int, deadline: float) -> bool:
        """Publish ``pubs`` more; True when every delivery arrived before the deadline."""
        self.done = self.loop.create_future()
        self.target += pubs
        last_progress, seen = time.monotonic(), self.delivered
        self.pump()
        while not self.done.done():
            await asyncio.wait([self.done], timeout=0.5)
            now = time.monotonic()
            if self.done.done():
                break
            if self.delivered != seen:
                last_progress, seen = now, self.delivered
            if now >= deadline or now - last_progress > self.p.stall:
                self.result.stalled = True
                return False
        return self.delivered >= self.target * self.p.n

    # --- the run --------------------------------------------------------------------

    async def connect_all(self) -> None:
        p = self.p
        gate = asyncio.Semaphore(p.connect_concurrency)
        hello = (
            masked_text_frame(
                b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"%s"}}' % p.channel.encode()
            )
            if p.kind == "rtserver"
            else masked_text_frame(b"subscribe")
        )

        async def one() -> None:
            async with gate:
                _, sub = await self.loop.create_connection(lambda: Subscriber(self), p.host, p.port)
                self.subs.append(sub)
                await sub.handshaken
                assert sub.transport is not None
                sub.transport.write(hello)

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(p.n))), timeout=60)
        self.result.connected = len(self.subs)
        await asyncio.wait_for(self.all_subscribed, timeout=30)

    async def main(self) -> Result:
        p, r = self.p, self.result
        t_setup = time.monotonic()
        await self.connect_all()
        for _ in range(p.http_conns):
            _, pub = await self.loop.create_connection(lambda: Publisher(self), p.host, p.port)
            await pub.ready
            self.idle.append(pub)
        r.subscribed = self.subscribed
        r.setup_s = time.monotonic() - t_setup
        start = time.monotonic()
        if p.warmup and not await self.phase(p.warmup, start + p.timeout):
            r.error = r.error or "warm-up did not complete"
            return self._finish()
        base_delivered = self.delivered
        base_frames = self.frames
        user0, sys0 = proc_cpu(p.server_pid)
        busy0, softirq0, _ = core_times(p.server_core)
        client0 = self_cpu()
        t0 = time.monotonic()
        await self.phase(p.pubs, t0 + p.timeout)
        t1 = time.monotonic()
        user1, sys1 = proc_cpu(p.server_pid)
        busy1, softirq1, _ = core_times(p.server_core)
        client1 = self_cpu()
        r.wall_s = t1 - t0
        r.server_user_s = user1 - user0
        r.server_sys_s = sys1 - sys0
        r.server_cpu_s = r.server_user_s + r.server_sys_s
        r.client_cpu_s = client1 - client0
        r.core_busy_s = busy1 - busy0
        r.core_softirq_s = softirq1 - softirq0
        r.server_rss_kb = proc_rss_kb(p.server_pid)
        await asyncio.sleep(0.3)  # let duplicates or stragglers show up
        r.expected = p.n * p.pubs
        r.delivered = self.delivered - base_delivered
        r.frames = self.frames - base_frames
        return self._finish()

    def _finish(self) -> Result:
        r, p = self.result, self.p
        want = p.warmup + p.pubs
        r.conns_short = sum(1 for s in self.subs if s.count < want)
        r.conns_extra = sum(1 for s in self.subs if s.count > want)
        r.closed = dict(self.closed)
        r.http_errors = self.http_errors
        r.pings = self.pings
        for sub in self.subs:
            sub.closed = True
            if sub.transport is not None:
                sub.transport.abort()
        return r


async def _amain(p: Params) -> Result:
    run = Run(p, asyncio.get_running_loop())
    try:
        return await run.main()
    except Exception as e:  # report, do not hang the orchestrator
        run.result.error = run.result.error or f"{type(e).__name__}: {e}"
        return run._finish()


def main(argv: list[str] | None = None) -> None:
    """Run once with the JSON parameters in ``argv[0]``; print the result as JSON."""
    args = sys.argv[1:] if argv is None else argv
    params = Params(**json.loads(args[0]))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_amain(params))
    print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
