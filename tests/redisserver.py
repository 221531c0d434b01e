"""A throw-away ``redis-server`` for tests (no persistence, loopback, a free port).

Usable from pytest fixtures and from plain code::

    from redisserver import RedisServer

    with RedisServer() as server:
        server.command("PING")            # b"PONG"
        server.address                    # "redis://127.0.0.1:<port>"
        server.restart()                  # same port, empty data (no persistence)
        server.kill_pubsub_clients()      # CLIENT KILL TYPE pubsub

:func:`require_redis_server` gives the binary's path, or skips the calling test (fails
instead when ``RTSERVER_REQUIRE_ALL`` is set, as in CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from types import TracebackType
from typing import Any

__all__ = ["RedisServer", "RespError", "free_port", "require_redis_server"]


class RespError(Exception):
    """An error reply from Redis."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_redis_server() -> str:
    """Path of ``redis-server``; pytest-skip without it (fail under RTSERVER_REQUIRE_ALL)."""
    import pytest

    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed: the Redis engine tests need it"
        if os.environ.get("RTSERVER_REQUIRE_ALL"):
            pytest.fail(reason + " (RTSERVER_REQUIRE_ALL is set)", pytrace=False)
        pytest.skip(reason)
    return path


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self._buf += chunk

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self._buf) < n + 2:
                self._fill()
            data, self._buf = self._buf[:n], self._buf[n + 2 :]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError(f"unexpected reply {line[:50]!r}")


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1 without persistence."""

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        *,
        password: str = "",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.port = port or free_port()
        self.password = password
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``redis://127.0.0.1:<port>``."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING."""
        if self.running:
            return self
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                *(("--requirepass", self.password) if self.password else ()),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == b"PONG":
                    return self
            except (OSError, RespError):
                pass
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise RuntimeError(f"redis-server exited at start: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (kill if it does not exit within ``timeout``)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self.stop()
        return self.start()

    def command(self, *args: Any, timeout: float = 5.0) -> Any:
        """Run one command on a fresh blocking connection and return its reply."""
        return self.pipeline([args], timeout=timeout)[0]

    def pipeline(self, commands: list[tuple[Any, ...]], timeout: float = 5.0) -> list[Any]:
        """Run several commands on one connection; the replies in order."""
        if self.password:
            commands = [("AUTH", self.password), *commands]
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(b"".join(_encode(c) for c in commands))
            reader = _Reader(sock)
            replies = [reader.reply() for _ in commands]
        return replies[1:] if self.password else replies

    def kill_pubsub_clients(self) -> int:
        """``CLIENT KILL TYPE pubsub``; the number of connections killed."""
        return int(self.command("CLIENT", "KILL", "TYPE", "pubsub"))

    def flushall(self) -> None:
        """Drop every key."""
        self.command("FLUSHALL")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
