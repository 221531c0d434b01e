"""Server CPU of a SockJS request relayed between workers vs served by its owner.

::

    python bench/sockjs_relay.py                     # 8 rounds x 500 round trips (~30 s)
    python bench/sockjs_relay.py --rounds 12 --batch 1000

One ``twistd rtserver --workers 2`` (Redis engine, SockJS on) pinned to one CPU; this
client and ``redis-server`` on the other. Two SockJS xhr sessions, one owned by each
worker (the owner of a session is CRC-32 of its id modulo 2), used over ONE keep-alive
connection: the kernel gave that connection to one worker, so one session's requests are
served where they land and the other's are relayed to its owner. A round trip is an
``xhr_send`` of one command (``presence_stats`` on a channel without presence: an error
reply, no Redis call) and the ``xhr`` poll that returns its reply. Rounds alternate the
two sessions (A/B pairs in the same run); the figure is the CPU time of both workers per
round trip, and the relay's cost is the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from cluster import node_config, redis_server
from fanout import _cpus, _free_port, _spawn, _stop, _twistd, _wait_listening, machine
from workers import children

HOST = "127.0.0.1"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_index(pid: int) -> int:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--worker-index") + 1])


def session_owned_by(index: int, tag: str) -> str:
    n = 0
    while True:
        sid = f"{tag}{n}"
        if zlib.crc32(sid.encode()) % 2 == index:
            return sid
        n += 1


class Session:
    """One SockJS xhr session on a shared keep-alive connection."""

    def __init__(self, conn: http.client.HTTPConnection, sid: str) -> None:
        self.conn = conn
        self.base = f"/connection/sockjs/000/{sid}"
        self.n = 1

    def request(self, suffix: str, body: bytes = b"") -> tuple[int, bytes]:
        self.conn.request("POST", self.base + suffix, body=body)
        response = self.conn.getresponse()
        return response.status, response.read()

    def open(self) -> None:
        assert self.request("/xhr") == (200, b"o\n")
        self.send({"id": 1, "connect": {}})
        assert b'connect' in self.poll()

    def send(self, command: dict[str, Any]) -> None:
        status, body = self.request("/xhr_send", json.dumps([json.dumps(command)]).encode())
        assert status == 204, (status, body)

    def poll(self) -> bytes:
        status, body = self.request("/xhr")
        assert status == 200 and body.startswith(b"a"), (status, body)
        if b'"{}"' in body:  # the server's ping: pong, as the SDKs do
            self.send({})
        return body

    def round_trip(self) -> None:
        self.n += 1
        self.send({"id": self.n, "presence_stats": {"channel": "bench"}})
        body = self.poll()
        assert f'\\"id\\":{self.n}'.encode() in body, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="A/B pairs (default 8)")
    parser.add_argument("--batch", type=int, default=500, help="round trips per round")
    args = parser.parse_args()
    server_cpu, side_cpu = _cpus()
    if side_cpu is not None:
        os.sched_setaffinity(0, {side_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="sockjs-relay-"))
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_port, _ = stack.enter_context(redis_server(side_cpu))
        port = _free_port()
        engine = {"type": "redis", "redis": {"address": [f"redis://{HOST}:{redis_port}"]}}
        config = {**node_config(engine), "sockjs": {"enabled": True}}
        cfg = workdir / "config.json"
        cfg.write_text(json.dumps(config))
        log = workdir / "server.log"
        cmd = [*_twistd(), "--pidfile=", "-n", f"--logfile={log}", "rtserver", "--config",
               str(cfg), "-l", f"tcp:{port}:interface={HOST}", "--workers", "2"]
        proc = _spawn(cmd, server_cpu, stdout=sys.stderr, stderr=sys.stderr)
        stack.callback(_stop, proc, 10)
        _wait_listening(proc, port, log, timeout=30)
        time.sleep(3)  # both workers listening
        pids = {worker_index(pid): pid for pid in children(proc.pid)}
        assert sorted(pids) == [0, 1], pids
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        sessions = {i: Session(conn, session_owned_by(i, f"bench{i}-")) for i in (0, 1)}
        for session in sessions.values():
            session.open()
        per_owner: dict[int, list[float]] = {0: [], 1: []}
        busy: dict[int, list[dict[int, float]]] = {0: [], 1: []}
        for _ in range(50):  # warm-up
            for session in sessions.values():
                session.round_trip()
        for _ in range(args.rounds):
            for owner, session in sessions.items():
                before = {i: cpu_seconds(p) for i, p in pids.items()}
                for _ in range(args.batch):
                    session.round_trip()
                spent = {i: cpu_seconds(p) - before[i] for i, p in pids.items()}
                per_owner[owner].append(sum(spent.values()) / args.batch * 1e6)
                busy[owner].append(spent)
        conn.close()
    # The session whose requests kept one worker idle is the one served where it landed.
    idle = {o: min(sum(s[i] for s in busy[o]) for i in (0, 1)) for o in (0, 1)}
    direct = min(idle, key=lambda o: idle[o])
    relayed = 1 - direct
    median = {o: statistics.median(v) for o, v in per_owner.items()}
    lines = [
        "### SockJS request relayed between workers vs served by its owner",
        "",
        "```",
        f"PYTHONPATH=. python bench/sockjs_relay.py --rounds {args.rounds} "
        f"--batch {args.batch}   # {time.monotonic() - started:.0f} s",
        "```",
        "",
        f"Machine: {machine()}. Server (supervisor + 2 workers) pinned to CPU{server_cpu}, "
        f"client and redis-server to CPU{side_cpu}.",
        "",
        "| session | server CPU µs per round trip (send + poll), median | per round |",
        "|---|---|---|",
        f"| served where it lands (owner = worker {direct}) | {median[direct]:.0f} | "
        + ", ".join(f"{v:.0f}" for v in per_owner[direct]) + " |",
        f"| relayed to its owner (worker {relayed}) | {median[relayed]:.0f} | "
        + ", ".join(f"{v:.0f}" for v in per_owner[relayed]) + " |",
        "",
        f"Relay cost: {median[relayed] - median[direct]:.0f} µs of server CPU per round trip "
        f"(two requests), {median[relayed] / median[direct]:.2f}x.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
