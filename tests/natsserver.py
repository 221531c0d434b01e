"""A throw-away ``nats-server`` for tests (loopback, a free port, no persistence).

Usable from pytest fixtures and from plain code::

    from natsserver import NatsServer

    with NatsServer() as server:
        server.url                        # "nats://127.0.0.1:<port>"
        server.restart()                  # same port, no subscriptions kept
        server.publish("subject", b"x")   # one PUB on a fresh connection

    with NatsServer(tls=make_tls(tmp_path), verify=True) as server:
        server.url                        # "tls://127.0.0.1:<port>"; clients must
                                          # present a certificate of the test CA

:func:`require_nats_server` gives the binary's path, or skips the calling test (fails
instead when ``RTSERVER_REQUIRE_ALL`` is set, as in CI). On Debian/Ubuntu the binary
comes with the ``nats-server`` package.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from types import TracebackType

from redisserver import TLSFiles, free_port

__all__ = ["NatsServer", "require_nats_server"]


def _binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )


def require_nats_server() -> str:
    """Path of ``nats-server``; pytest-skip without it (fail under RTSERVER_REQUIRE_ALL)."""
    import pytest

    path = _binary()
    if path is None:
        reason = "nats-server is not installed (apt package nats-server): NATS tests need it"
        if os.environ.get("RTSERVER_REQUIRE_ALL"):
            pytest.fail(reason + " (RTSERVER_REQUIRE_ALL is set)", pytrace=False)
        pytest.skip(reason)
    return path


class NatsServer:
    """One ``nats-server`` child process on 127.0.0.1."""

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        *,
        user: str = "",
        password: str = "",
        max_payload: int = 0,
        tls: TLSFiles | None = None,
        verify: bool = False,
    ) -> None:
        """One server; started by :meth:`start`.

        ``tls``: the server requires TLS with ``tls.cert``/``tls.key``; ``verify``: and a
        client certificate issued by ``tls.ca_cert`` (``--tlsverify``).
        """
        self.binary = binary or _binary() or "nats-server"
        self.port = port or free_port()
        self.user = user
        self.password = password
        self.max_payload = max_payload
        self.tls = tls
        self.verify = verify
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://[user:password@]127.0.0.1:<port>`` (``tls://`` for a TLS server)."""
        auth = f"{self.user}:{self.password}@" if self.user else ""
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start and wait until it accepts a client (INFO, then PONG to PING)."""
        if self.running:
            return self
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        if self.max_payload:
            config = f"/tmp/nats-{self.port}.conf"
            with open(config, "w") as f:
                f.write(f"max_payload: {self.max_payload}\n")
            args += ["-c", config]
        if self.tls is not None:
            args += ["--tls", "--tlscert", str(self.tls.cert), "--tlskey", str(self.tls.key)]
            if self.verify:
                args += ["--tlsverify", "--tlscacert", str(self.tls.ca_cert)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._roundtrip(b"")
                return self
            except OSError:
                pass
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"nats-server exited at start: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server on port {self.port} did not answer")
            time.sleep(0.01)

    def _roundtrip(self, commands: bytes, timeout: float = 5.0) -> bytes:
        auth = (
            f',"user":"{self.user}","pass":"{self.password}"'.encode() if self.user else b""
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw:
            sock = self._secure(raw) if self.tls is not None else raw
            sock.sendall(b'CONNECT {"verbose":false' + auth + b"}\r\n" + commands + b"PING\r\n")
            data = b""
            while b"PONG\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("nats-server closed the connection")
                data += chunk
                if b"-ERR" in data:
                    raise ConnectionError(data.decode(errors="replace"))
        return data

    def _secure(self, sock: socket.socket) -> ssl.SSLSocket:
        """Read the plaintext INFO, then TLS as a NATS client does (test CA, client cert)."""
        assert self.tls is not None
        info = b""
        while not info.endswith(b"\r\n"):
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError("nats-server closed the connection before INFO")
            info += chunk
        if not json.loads(info.partition(b" ")[2]).get("tls_required"):
            raise ConnectionError("nats-server does not require TLS")
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def publish(self, subject: str, payload: bytes) -> None:
        """PUB one message on a fresh connection (returns once the server has it)."""
        self._roundtrip(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

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

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(10)
            if process.stderr is not None:
                process.stderr.close()

    def restart(self) -> NatsServer:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
