"""``shutdown.timeout`` on a real server stopped with SIGTERM.

A WebSocket client that never answers the server's close frame holds the close-handshake
wait (5 s, as Centrifugo's WebSocket waits for a close frame). ``shutdown.timeout`` below
that stops the process at the timeout, with one log line; without the key the wait runs
its 5 s and nothing about a timeout is logged. Real parts: ``twistd -n rtserver`` and a
raw socket speaking the WebSocket protocol by hand (so it can refuse the close handshake).
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import SERVER_STOP_TIMEOUT, Server, base_config, merge, spawn_server, stop_server

pytestmark = pytest.mark.interop

TIMEOUT_LINE = "shutdown timeout reached"


def _frame(payload: bytes) -> bytes:
    """One masked text frame (a client's) of a payload under 64 KiB."""
    mask = os.urandom(4)
    size = len(payload)
    head = b"\x81" + (bytes([0x80 | size]) if size < 126 else b"\xfe" + size.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stuck_client(server: Server) -> socket.socket:
    """A connected client (connect reply received) that will read nothing more."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    sock.sendall(
        b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    _read_until(sock, b"\r\n\r\n", b"101 Switching Protocols")
    command = {"id": 1, "connect": {"token": server.token("stuck"), "name": "raw"}}
    sock.sendall(_frame(orjson.dumps(command)))
    _read_until(sock, b'"client"')  # the connect reply names the client id
    return sock


def _read_until(sock: socket.socket, end: bytes, expected: bytes = b"") -> None:
    received = b""
    deadline = time.monotonic() + 5.0
    while end not in received:
        assert time.monotonic() < deadline, received
        chunk = sock.recv(65536)
        assert chunk, f"closed early: {received!r}"
        received += chunk
    assert expected in received, received


def stop_timed(server: Server) -> float:
    """SIGTERM; seconds until the process ended."""
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=SERVER_STOP_TIMEOUT)
    return time.monotonic() - start


def _start(tmp_path: Path, over: dict[str, Any]) -> Server:
    secret, api_key = "shutdown-" + uuid.uuid4().hex, "api-" + uuid.uuid4().hex
    return spawn_server(tmp_path, merge(base_config(secret, api_key), over),
                        secret=secret, api_key=api_key)


def test_timeout_cuts_the_wait_for_a_stuck_client(tmp_path: Path) -> None:
    """``shutdown.timeout: 1s``: stopped after about 1 s, not the 5 s close wait; logged."""
    server = _start(tmp_path, {"shutdown": {"timeout": "1s"}})
    sock = stuck_client(server)
    try:
        took = stop_timed(server)
        log = server.log()
        stop_server(server)  # exit status, "Server Shut Down.", no logged failure
    finally:
        sock.close()
    assert 0.9 <= took < 3.5, (took, log)
    assert log.count(TIMEOUT_LINE) == 1, log
    assert "1s (shutdown.timeout)" in log


def test_without_the_key_the_close_wait_runs_out(tmp_path: Path) -> None:
    """Centrifugo's default (30 s) leaves the 5 s close-handshake wait as it was."""
    server = _start(tmp_path, {})
    sock = stuck_client(server)
    try:
        took = stop_timed(server)
        stop_server(server)
    finally:
        sock.close()
    assert 3.5 <= took < 9.0, took  # the 5 s wait, well beyond a 1 s bound
    assert TIMEOUT_LINE not in server.log()


def test_timeout_counts_from_the_end_of_the_drain_delay(tmp_path: Path) -> None:
    """``health.drain_delay`` 1 s then ``shutdown.timeout`` 1 s: about 2 s in all."""
    server = _start(tmp_path, {"health": {"drain_delay": "1s"}, "shutdown": {"timeout": "1s"}})
    sock = stuck_client(server)
    try:
        took = stop_timed(server)
        stop_server(server)
    finally:
        sock.close()
    assert 1.9 <= took < 4.5, took
    assert server.log().count(TIMEOUT_LINE) == 1
