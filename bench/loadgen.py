"""Load generator for ``bench/run.py``: one process per server, JSON result on stdout.

Cheaper than the servers it drives: asyncio on uvloop (when installed), hand-rolled
WebSocket handshakes, a minimal parser for unmasked server frames, and keep-alive
HTTP/1.1 publishers. Deliveries are counted with ``bytes.count(b'"pub":')`` per frame.
Progress lines go to stderr (``run.py`` shows the latest one).

Modes (``"mode"`` in the JSON parameters):

``fanout``  N subscribers on one channel; for each case ``BxC`` (B publications per
            request, C requests in flight), a self-clocked window of publications; with
            ``"paced"`` (deliveries per second) the requests go out open-loop at the
            fixed pace that offers that many deliveries (C keep-alive connections to send
            them on), whatever the server does, so every server under test gets the
            same arrivals.
``many``    N connections, each on its own channel plus one shared channel;
            personal publications (one delivery each) spread over all channels.
``latency`` N subscribers; open-loop publications at a fixed rate, each stamped with
            the send time; publish-to-receive latency per delivery.
``idle``    N authenticated connections with one subscription each, from several
            loopback source addresses; server RSS and idle CPU.
``http``    keep-alive publish requests (single and ``batch``) to a channel nobody reads.

Run by ``run.py``: ``python bench/loadgen.py '<json params>'``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import sys
import time
from typing import Any, cast

from loadclient import (
    PAYLOAD,
    core_times,
    http_answers,
    masked_text_frame,
    proc_cpu,
    proc_rss_kb,
    self_cpu,
)

_PONG = b"\x81\x82\x00\x00\x00\x00{}"
#: The Protobuf pong: a binary frame holding the empty Command (length prefix 0).
_PB_PONG = b"\x82\x81\x00\x00\x00\x00\x00"
#: Protobuf replies to the subscribe command (id 2): ``Reply.id = 2`` then ``subscribe`` (6)
#: or ``error`` (2).
_PB_ACK = b"\x08\x02\x32"
_PB_REFUSED = b"\x08\x02\x12"


def pb_pub_marker(channel: str) -> bytes:
    """The bytes that open every Protobuf ``pub`` push of ``channel``: Push.channel, Push.pub."""
    raw = channel.encode()
    return b"\x12" + bytes((len(raw),)) + raw + b"\x22"


def pb_command(fields: bytes) -> bytes:
    """One varint-delimited Command (bodies here are short)."""
    return bytes((len(fields),)) + fields


def pb_hello(channel: str) -> bytes:
    """``connect`` (id 1) and ``subscribe`` to ``channel`` (id 2) in one masked binary frame."""
    raw = channel.encode()
    sub = b"\x0a" + bytes((len(raw),)) + raw
    payload = pb_command(b"\x08\x01\x22\x00") + pb_command(
        b"\x08\x02\x2a" + bytes((len(sub),)) + sub
    )
    return bytes((0x82, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload
_STAMP = re.compile(rb'"t":(\d+)')


def progress(text: str) -> None:
    """One progress line for the orchestrator's live display."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def hs256_token(secret: str, sub: str) -> str:
    """A minimal HS256 JWT with only ``sub``."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps({"sub": sub}).encode())
    sig = hmac.new(secret.encode(), signing, hashlib.sha256).digest()
    return (signing + b"." + b64(sig)).decode()


def percentiles(values: list[int], points: tuple[float, ...]) -> list[float]:
    """Nearest-rank percentiles of ``values`` (ns) in ms."""
    if not values:
        return [0.0 for _ in points]
    values.sort()
    last = len(values) - 1
    return [values[min(last, int(p / 100 * len(values)))] / 1e6 for p in points]


class Conn(asyncio.Protocol):
    """One WebSocket connection: handshake, hello frame, count ``pub`` pushes."""

    def __init__(self, gen: Gen, hello: bytes, ack: bytes, protobuf: bool = False) -> None:
        self.gen = gen
        self.hello = hello
        self.ack = ack
        self.protobuf = protobuf
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.open = False
        self.acked = False
        self.count = 0
        self.buf = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (key, b"Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" if self.protobuf else b"")
        )

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if b" 101 " not in data[: data.find(b"\r\n")]:
                self._fail("handshake refused")
                return
            self.open = True
            assert self.transport is not None
            self.transport.write(self.hello)
            data = data[end + 4 :]
        size = len(data)
        pos = delivered = frames = 0
        stamps = self.gen.stamps
        while size - pos >= 2:
            b1 = data[pos + 1] & 0x7F
            if b1 < 126:
                start, length = pos + 2, b1
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
            if opcode <= 1:
                delivered += data.count(b'"pub":', start, end)
                if stamps is not None:
                    now = time.monotonic_ns()
                    stamps.extend(now - int(m) for m in _STAMP.findall(data, start, end))
                if not self.acked or data.find(b"{}", start, end) >= 0:
                    self._control(data[start:end])
            elif opcode == 2:
                delivered += data.count(self.gen.pb_marker, start, end)
                # a zero byte only occurs as an empty message (a ping): payloads are JSON
                if data.find(b"\x00", start, end) >= 0 and self.transport is not None:
                    self.transport.write(_PB_PONG)
                if not self.acked:
                    self._pb_control(data[start:end])
            elif opcode == 8:
                code = int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005
                self.gen.note_close(self, str(code))
            elif opcode == 9 and self.transport is not None:
                frame = data[start:end]
                self.transport.write(bytes((0x8A, 0x80 | len(frame))) + b"\0\0\0\0" + frame)
            pos = end
        if pos < size:
            self.buf = data[pos:]
        self.gen.frames += frames
        if delivered:
            self.count += delivered
            self.gen.on_delivered(delivered)

    def _control(self, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            if line == b"{}":
                if self.transport is not None:
                    self.transport.write(_PONG)
            elif not self.acked and line.startswith(self.ack):
                if b'"error"' in line:
                    self._fail(f"refused: {line[:200].decode(errors='replace')}")
                    return
                self.acked = True
                if not self.ready.done():
                    self.ready.set_result(None)

    def _pb_control(self, payload: bytes) -> None:
        if _PB_REFUSED in payload:
            self._fail("refused (protobuf subscribe error)")
        elif _PB_ACK in payload:
            self.acked = True
            if not self.ready.done():
                self.ready.set_result(None)

    def _fail(self, reason: str) -> None:
        self.gen.error = self.gen.error or reason
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.note_close(self, "lost")
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost: {exc}"))


class Http(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection with one request outstanding."""

    def __init__(self, gen: Gen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.sent_at = time.monotonic_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        answers, self.buf = http_answers(self.buf + data)
        for ok, body in answers:
            self.gen.on_response(self, ok, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.error = self.gen.error or f"HTTP connection lost: {exc}"
        self.gen.wake()


class Gen:
    """One load-generator process (one server, one mode)."""

    def __init__(self, p: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.p = p
        self.loop = loop
        self.kind: str = p["kind"]
        self.conns: list[Conn] = []
        self.delivered = 0
        self.frames = 0
        self.closed: dict[str, int] = {}
        self.error = ""
        self.stamps: list[int] | None = None
        self.idle: list[Http] = []
        self.http_all: list[Http] = []
        self.responses = 0
        self.http_errors = 0
        self.rtts: list[int] | None = None
        self.requests: list[bytes] = [b""]
        self.req_i = 0
        self.burst = 1
        self.per_pub = 1
        self.window = 16
        self.sent = 0
        self.target = 0
        self.wake_at = 1 << 62
        self.done: asyncio.Future[None] | None = None
        self.keep_sending = False
        self.paced = False
        self.late = 0
        self.pb_marker = pb_pub_marker(p.get("channel", "bench"))

    # --- connections ------------------------------------------------------------------

    async def connect(self, n: int, hello_for: Any, ack: bytes, sources: int = 1) -> None:
        """Open ``n`` WebSocket connections (bounded handshakes) and wait for each ack.

        With ``protobuf`` (a share, 0..1) that share of the connections, spread evenly,
        negotiates ``centrifuge-protobuf`` and subscribes with a binary frame.
        """
        p = self.p
        share = float(p.get("protobuf", 0.0))
        pb_hello_frame = pb_hello(p.get("channel", "bench"))

        def make(i: int) -> Conn:
            if share and int((i + 1) * share) > int(i * share):
                return Conn(self, pb_hello_frame, _PB_ACK, protobuf=True)
            return Conn(self, hello_for(i), ack)

        gate = asyncio.Semaphore(p.get("connect_concurrency", 40))
        started = time.monotonic()

        async def one(i: int) -> None:
            async with gate:
                local = (f"127.0.0.{2 + i % sources}", 0) if sources > 1 else None
                _, conn = await self.loop.create_connection(
                    lambda: make(i), p["host"], p["port"], local_addr=local
                )
                self.conns.append(conn)
                await conn.ready
                if len(self.conns) % 1000 == 0:
                    progress(f"connected {len(self.conns)}/{n}")

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), p.get("timeout", 120))
        progress(f"connected {n}/{n} in {time.monotonic() - started:.1f}s")

    async def http_pool(self, count: int) -> None:
        """Open ``count`` keep-alive HTTP connections."""
        p = self.p
        port = p.get("api_port") or p["port"]  # publish through another node (S6)
        for _ in range(count):
            _, h = await self.loop.create_connection(lambda: Http(self), p["host"], port)
            self.idle.append(h)
            self.http_all.append(h)

    def note_close(self, conn: Conn, why: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.closed[why] = self.closed.get(why, 0) + 1

    # --- requests ---------------------------------------------------------------------

    def request(self, path: bytes, body: bytes) -> bytes:
        """One POST with the API key."""
        return (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path, self.p["api_key"].encode(), len(body), body)
        )

    def publish_request(self, channels: list[str], data: Any = PAYLOAD) -> bytes:
        """Publications of ``data`` to ``channels`` in one request (the server's shape)."""
        pubs = [{"channel": c, "data": data} for c in channels]
        if self.kind != "rtserver":
            return self.request(b"/publish", b"\n".join(json.dumps(x).encode() for x in pubs))
        if len(pubs) == 1:
            return self.request(b"/api/publish", json.dumps(pubs[0]).encode())
        body = json.dumps({"commands": [{"publish": x} for x in pubs]}).encode()
        return self.request(b"/api/batch", body)

    # --- the self-clocked window ------------------------------------------------------

    def on_delivered(self, count: int) -> None:
        self.delivered += count
        if self.delivered >= self.wake_at:
            self.pump()

    def on_response(self, h: Http, ok: bool, body: bytes) -> None:
        self.responses += 1
        if self.rtts is not None:
            self.rtts.append(time.monotonic_ns() - h.sent_at)
        if not ok:
            self.http_errors += 1
            self.error = self.error or f"request failed: {body[:200].decode(errors='replace')}"
        if self.keep_sending:
            self.req_i = i = (self.req_i + 1) % len(self.requests)
            h.send(self.requests[i])
            return
        self.idle.append(h)
        self.pump()

    def wake(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def pump(self) -> None:
        """Send requests while a connection is idle and the window allows."""
        if self.paced:  # the pacer sends; here only the end is noticed
            if self.delivered >= self.target * self.per_pub:
                self.wake()
            return
        burst, per_pub, window = self.burst, self.per_pub, self.window
        requests = self.requests
        while self.sent < self.target and self.idle:
            if self.sent + burst > self.delivered // per_pub + window:
                self.wake_at = (self.sent + burst - window) * per_pub
                break
            self.req_i = i = (self.req_i + 1) % len(requests)
            self.idle.pop().send(requests[i])
            self.sent += burst
        else:
            self.wake_at = self.target * per_pub
        if self.delivered >= self.target * per_pub:
            self.wake()

    async def phase(self, pubs: int, label: str) -> bool:
        """Publish ``pubs`` more; True when every delivery arrived in time."""
        p = self.p
        self.done = self.loop.create_future()
        self.target += pubs
        deadline = time.monotonic() + self.p.get("timeout", 60)
        last, seen = time.monotonic(), self.delivered
        pacer = None
        if self.paced:
            self.wake_at = self.target * self.per_pub
            pacer = asyncio.ensure_future(self.pace(pubs))
        else:
            self.pump()
        while not self.done.done():
            await asyncio.wait([self.done], timeout=0.5)
            now = time.monotonic()
            if self.delivered != seen:
                last, seen = now, self.delivered
            progress(f"{label}: {self.delivered - self.base}/{self.goal} deliveries")
            if not self.done.done() and (now > deadline or now - last > p.get("stall", 5)):
                if pacer is not None:
                    pacer.cancel()
                return False
        if pacer is not None:
            await pacer
        return self.delivered >= self.target * self.per_pub and not self.error

    async def pace(self, pubs: int) -> None:
        """Open loop: a request every ``B * N / paced`` s on an idle connection (a request
        due while every connection is busy waits for one and counts as late)."""
        requests, burst = self.requests, self.burst
        interval = burst * self.per_pub / float(self.p["paced"])
        t0 = time.monotonic()
        for k in range(-(-pubs // burst)):
            delay = t0 + k * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.idle:
                self.late += 1
                while not self.idle:
                    await asyncio.sleep(0.0005)
            self.req_i = i = (self.req_i + 1) % len(requests)
            self.idle.pop().send(requests[i])
            self.sent += burst
        self.pump()

    base = 0
    goal = 0

    async def measured(self, pubs: int, label: str) -> dict[str, Any]:
        """One measured window: deliveries, wall time, server and client CPU."""
        p = self.p
        pid, core = p["server_pid"], p.get("server_core", -1)
        await self.run_hooks(p.get("before_measure", []))
        self.base, self.goal = self.delivered, pubs * self.per_pub
        frames0, late0 = self.frames, self.late
        u0, s0 = proc_cpu(pid)
        busy0, _, _ = core_times(core)
        c0 = self_cpu()
        extra0 = {x: sum(proc_cpu(x)) for x in p.get("extra_pids", [])}
        t0 = time.monotonic()
        complete = await self.phase(pubs, label)
        wall = time.monotonic() - t0
        extra = {str(x): sum(proc_cpu(x)) - c for x, c in extra0.items()}
        u1, s1 = proc_cpu(pid)
        busy1, _, _ = core_times(core)
        await self.run_hooks(p.get("after_measure", []))
        delivered = self.delivered - self.base
        return {
            "complete": complete,
            "delivered": delivered,
            "expected": self.goal,
            "wall_s": wall,
            "rate": delivered / wall if wall else 0.0,
            "server_cpu_s": (u1 - u0) + (s1 - s0),
            "server_user_s": u1 - u0,
            "server_sys_s": s1 - s0,
            "core_busy_s": busy1 - busy0,
            "client_cpu_s": self_cpu() - c0,
            "frames": self.frames - frames0,
            "late_requests": self.late - late0,
            "server_rss_kb": proc_rss_kb(pid),
            "extra_cpu_s": extra,
        }

    async def run_hooks(self, commands: list[list[str]]) -> None:
        """Run each command to its end (``before_measure``/``after_measure``: e.g.
        ``callgrind_control -z PID`` so that only the measured window is counted)."""
        for argv in commands:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err[-300:]!r}")

    async def cases(self, label: str) -> list[dict[str, Any]]:
        """Run every ``BxC`` case on the open connections (warm-up first)."""
        p = self.p
        out = []
        self.paced = bool(p.get("paced"))
        for burst, conns in p["cases"]:
            if len(self.http_all) < conns:
                # opened when first needed: the server answers a connection that sends no
                # request head within its read_header_timeout with 408 and closes it
                await self.http_pool(conns - len(self.http_all))
            self.burst = burst
            self.window = max(p.get("window", 16), 2 * burst * conns)
            self.requests = self.requests_for(burst)
            self.idle = list(self.http_all[:conns])
            warmup = -(-p["warmup"] // burst) * burst
            self.base, self.goal = self.delivered, warmup * self.per_pub
            await self.phase(warmup, f"{label} {burst}x{conns} warm-up")
            pubs = -(-p["pubs"] // burst) * burst
            r = await self.measured(pubs, f"{label} {burst}x{conns}")
            r["case"] = f"{burst}x{conns}"
            r["closed"] = dict(self.closed)
            r["error"] = self.error
            out.append(r)
            if self.error or not r["complete"]:
                break
            await asyncio.sleep(0.2)
        return out

    def requests_for(self, burst: int) -> list[bytes]:
        if self.p["mode"] == "fanout":
            return [self.publish_request([self.p.get("channel", "bench")] * burst)]
        n = self.p["n"]
        groups = max(1, n // burst)
        return [
            self.publish_request([f"p{(g * burst + j) % n}" for j in range(burst)])
            for g in range(groups)
        ]

    # --- modes ------------------------------------------------------------------------

    def hello(self) -> tuple[Any, bytes]:
        """The first frame of each connection and the reply prefix that ends setup."""
        channel = self.p.get("channel", "bench")
        if self.kind != "rtserver":
            frame = masked_text_frame(b"subscribe")
            return (lambda i: frame), b'{"id":2,'
        single = masked_text_frame(
            b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"%s"}}' % channel.encode()
        )
        return (lambda i: single), b'{"id":2,'

    async def run_fanout(self) -> dict[str, Any]:
        hello, ack = self.hello()
        await self.connect(self.p["n"], hello, ack)
        self.per_pub = self.p["n"]
        return {"cases": await self.cases(f"N={self.p['n']}")}

    async def run_many(self) -> dict[str, Any]:
        def hello(i: int) -> bytes:
            return masked_text_frame(
                b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"p%d"}}\n'
                b'{"id":3,"subscribe":{"channel":"shared"}}' % i
            )

        await self.connect(self.p["n"], hello, b'{"id":3,')
        self.per_pub = 1
        return {"cases": await self.cases(f"N={self.p['n']} personal")}

    async def run_latency(self) -> dict[str, Any]:
        p = self.p
        hello, ack = self.hello()
        n, rate, seconds = p["n"], p["rate"], p["seconds"]
        await self.connect(n, hello, ack)
        await self.http_pool(p.get("http_conns", 8))
        self.per_pub = n
        self.stamps = []
        interval = 1.0 / rate
        total = max(1, int(rate * seconds))
        backlog: list[bytes] = []
        sent = 0
        late = 0
        pid = p["server_pid"]
        u0, s0 = proc_cpu(pid)
        t0 = time.monotonic()
        self.keep_sending = False

        def flush_backlog(h: Http) -> None:
            h.send(backlog.pop(0))

        while sent < total:
            due = t0 + sent * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            stamp = t0 + sent * interval
            data = {"input": PAYLOAD["input"], "t": int(stamp * 1e9)}
            req = self.publish_request([p.get("channel", "bench")], data)
            if self.idle:
                self.idle.pop().send(req)
            else:
                late += 1
                backlog.append(req)
            while backlog and self.idle:
                flush_backlog(self.idle.pop())
            sent += 1
            if sent % max(1, int(rate)) == 0:
                progress(f"latency N={n} {rate:.0f} pubs/s: {sent}/{total} sent")
        deadline = time.monotonic() + 10
        while (backlog or self.delivered < total * n) and time.monotonic() < deadline:
            while backlog and self.idle:
                flush_backlog(self.idle.pop())
            await asyncio.sleep(0.05)
        wall = time.monotonic() - t0
        u1, s1 = proc_cpu(pid)
        p50, p99, p999, pmax = percentiles(self.stamps, (50, 99, 99.9, 100))
        return {
            "n": n,
            "rate": rate,
            "pubs": total,
            "delivered": self.delivered,
            "expected": total * n,
            "late_requests": late,
            "server_util": ((u1 - u0) + (s1 - s0)) / wall,
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "max_ms": pmax,
            "closed": dict(self.closed),
        }

    async def run_idle(self) -> dict[str, Any]:
        p = self.p
        n, secret = p["n"], p["secret"]
        pid = p["server_pid"]
        rss0 = proc_rss_kb(pid)
        tokens = [hs256_token(secret, f"u{i}") for i in range(n)]

        def hello(i: int) -> bytes:
            return masked_text_frame(
                b'{"id":1,"connect":{"token":"%s"}}\n{"id":2,"subscribe":{"channel":"idle%d"}}'
                % (tokens[i].encode(), i % 100)
            )

        t0 = time.monotonic()
        await self.connect(n, hello, b'{"id":2,', sources=p.get("sources", 8))
        setup = time.monotonic() - t0
        u0, s0 = proc_cpu(pid)
        await asyncio.sleep(p.get("idle_seconds", 5))
        u1, s1 = proc_cpu(pid)
        rss1 = proc_rss_kb(pid)
        idle_s = p.get("idle_seconds", 5)
        return {
            "n": n,
            "connected": sum(1 for c in self.conns if c.acked and not c.closed),
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "kb_per_conn": (rss1 - rss0) / n,
            "setup_s": setup,
            "connects_per_s": n / setup if setup else 0.0,
            "idle_cpu_us_per_conn_s": ((u1 - u0) + (s1 - s0)) * 1e6 / n / idle_s,
            "closed": dict(self.closed),
        }

    async def run_http(self) -> dict[str, Any]:
        p = self.p
        pid = p["server_pid"]
        await self.http_pool(p.get("http_conns", 16))
        out = []
        for burst in p["bursts"]:
            self.requests = [self.publish_request(["nobody"] * burst)]
            self.responses = 0
            self.rtts = []
            self.keep_sending = True
            for h in self.idle:
                h.send(self.requests[0])
            self.idle = []
            await asyncio.sleep(p.get("warmup_seconds", 1))
            r0, t0 = self.responses, time.monotonic()
            u0, s0 = proc_cpu(pid)
            self.rtts = []
            seconds = p.get("seconds", 5)
            end = t0 + seconds
            while time.monotonic() < end:
                await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
                progress(f"http burst={burst}: {self.responses - r0} responses")
            requests, wall = self.responses - r0, time.monotonic() - t0
            u1, s1 = proc_cpu(pid)
            rtts = self.rtts
            self.keep_sending = False
            # let in-flight requests finish before the next shape
            settle = time.monotonic() + 5
            while len(self.idle) < len(self.http_all) and time.monotonic() < settle:
                await asyncio.sleep(0.05)
            p50, p99 = percentiles(rtts, (50, 99))
            cpu = (u1 - u0) + (s1 - s0)
            out.append(
                {
                    "burst": burst,
                    "requests_per_s": requests / wall,
                    "pubs_per_s": requests * burst / wall,
                    "server_util": cpu / wall,
                    "server_us_per_pub": cpu * 1e6 / max(1, requests * burst),
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "errors": self.http_errors,
                }
            )
        return {"shapes": out, "error": self.error}

    def finish(self) -> None:
        for conn in self.conns:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()
        for h in self.http_all:
            if h.transport is not None:
                h.transport.abort()


async def _amain(p: dict[str, Any]) -> dict[str, Any]:
    gen = Gen(p, asyncio.get_running_loop())
    try:
        result: dict[str, Any] = await getattr(gen, f"run_{p['mode']}")()
    except Exception as e:  # report, never hang the orchestrator
        result = {"error": gen.error or f"{type(e).__name__}: {e}"}
    finally:
        gen.finish()
    result.setdefault("error", gen.error)
    result["kind"] = p["kind"]
    return result


def main() -> None:
    """Run once with the JSON parameters in ``argv[1]``; print the result as JSON."""
    p = json.loads(sys.argv[1])
    want = p.get("nofile", 0)
    if want:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    try:
        import uvloop

        result = uvloop.run(_amain(p))
    except ImportError:
        result = asyncio.run(_amain(p))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
