"""A throw-away ``redis-server`` for tests (no persistence, loopback, a free port).

Usable from pytest fixtures and from plain code::

    from redisserver import RedisServer

    with RedisServer() as server:
        server.command("PING")            # b"PONG"
        server.address                    # "redis://127.0.0.1:<port>"
        server.restart()                  # same port, empty data (no persistence)
        server.kill_pubsub_clients()      # CLIENT KILL TYPE pubsub

    RedisServer(password="admin", user=("alice", "pw"))   # + an ACL user
    RedisServer(tls=make_tls(tmp_path))                   # + a TLS port (server.tls_port)
    RedisServer(replicaof=master.port)                    # a replica
    SentinelServer(master.port, tmp_path)                 # redis-server --sentinel
    SentinelSetup(tmp_path)        # master + replica + 3 sentinels; .url, .stop()

The helper's own commands (``command``/``pipeline``) always use the plain port and, with
a password, the default user. :func:`require_redis_server` gives the binary's path, or
skips the calling test (fails instead when ``RTSERVER_REQUIRE_ALL`` is set, as in CI).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "RedisClusterSetup",
    "RedisServer",
    "RespError",
    "SentinelServer",
    "SentinelSetup",
    "TLSFiles",
    "free_port",
    "make_tls",
    "require_redis_server",
    "wait_for",
]


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


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` (blocking, for set-up outside the reactor) until true."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, RespError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a server certificate for 127.0.0.1/localhost, as PEM files."""

    ca_cert: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path) -> TLSFiles:
    """Generate a CA, a server certificate (127.0.0.1, localhost) and a client certificate.

    Uses the ``cryptography`` package; every file is written into ``directory``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("rtserver test CA"))
        .issuer_name(name("rtserver test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, san: list[x509.GeneralName]) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = leaf("rtserver test client", [])
    files = TLSFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files.key)
    files.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    write_key(client_key, files.client_key)
    return files


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
        user: tuple[str, str] | None = None,
        tls: TLSFiles | None = None,
        replicaof: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.port = port or free_port()
        self.password = password
        self.user = user
        self.tls = tls
        self.tls_port = free_port() if tls is not None else 0
        self.replicaof = replicaof
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        # a replica's full sync writes dump.rdb even with --save "": keep it out of the
        # working directory (the checkout), in a directory removed with this object
        self.directory = tempfile.mkdtemp(prefix="rtserver-redis-")
        weakref.finalize(self, shutil.rmtree, self.directory, True)

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--dir",
            self.directory,
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
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.user is not None:
            name, secret = self.user
            argv += ["--user", name, "on", f">{secret}", "~*", "&*", "+@all"]
        if self.tls is not None:
            argv += [
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca_cert),
                "--tls-auth-clients",
                "optional",
            ]
        if self.replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replicaof)]
            if self.password:
                argv += ["--masterauth", self.password]
        return [*argv, *self.extra_args]

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
            self._argv(),
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

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its connections are reset."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(5.0)
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

    def info(self, section: str) -> dict[str, str]:
        """``INFO <section>`` as a mapping."""
        text = self.command("INFO", section).decode()
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: v for k, v in pairs}

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


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching the master on ``master_port`` as ``name``.

    Fast failover for tests: down after ``down_after_ms``, failover timeout 2 s.
    Sentinel rewrites its configuration file, so each gets one in ``directory``.
    """

    def __init__(
        self,
        master_port: int,
        directory: Path,
        *,
        name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 300,
        master_password: str = "",
    ) -> None:
        super().__init__()
        self.master_port = master_port
        self.name = name
        self.conf = directory / f"sentinel-{self.port}.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode no",
            "loglevel warning",
            f"sentinel monitor {name} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} 2000",
            f"sentinel parallel-syncs {name} 1",
        ]
        if master_password:
            lines.append(f"sentinel auth-pass {name} {master_password}")
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` (a Sentinel, not a Redis to store data in)."""
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        return [self.binary, str(self.conf), "--sentinel"]

    def master(self) -> tuple[str, int] | None:
        """What this sentinel answers to ``SENTINEL get-master-addr-by-name``."""
        reply = self.command("SENTINEL", "get-master-addr-by-name", self.name)
        if not reply:
            return None
        return reply[0].decode(), int(reply[1])


class SentinelSetup:
    """A master, one replica and three sentinels (quorum 2) on loopback."""

    def __init__(self, directory: Path) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(replicaof=self.master.port)
        self.sentinels = [SentinelServer(self.master.port, directory) for _ in range(3)]
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for server in (self.master, self.replica, *self.sentinels):
            server.start()
        wait_for(
            lambda: self.replica.info("replication").get("master_link_status") == "up",
            10,
            "the replica to sync",
        )
        # every sentinel knows the replica and the two other sentinels before any failover
        for s in self.sentinels:
            wait_for(
                lambda s=s: (
                    len(s.command("SENTINEL", "replicas", "mymaster")) == 1
                    and len(s.command("SENTINEL", "sentinels", "mymaster")) == 2
                ),
                15,
                "the sentinels to discover the replica and each other",
            )

    @property
    def url(self) -> str:
        first, *rest = self.sentinels
        extra = "".join(f"&addr={s.address}" for s in rest)
        return f"redis+sentinel://{first.address}?sentinel_master_name=mymaster{extra}"

    def wait_replicated(self) -> None:
        """Until the replica has everything the master wrote."""

        def caught_up() -> bool:
            offset = self.master.info("replication")["master_repl_offset"]
            return self.replica.info("replication").get("slave_repl_offset") == offset

        wait_for(caught_up, 10, "the replica to catch up")

    def stop(self) -> None:
        # the old master first: a master stopping with a replica attached waits for it
        for server in (*self.sentinels, self.master, self.replica):
            server.stop()


class RedisClusterSetup:
    """A Redis Cluster of three masters (no replicas) on loopback, slots spread evenly.

    Made as operators make one: ``redis-server --cluster-enabled yes`` three times, then
    ``redis-cli --cluster create ... --cluster-yes``. ``url`` is the
    ``redis+cluster://`` address listing every node as a seed.
    """

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.nodes = [
            RedisServer(extra_args=self._cluster_args(directory, i)) for i in range(masters)
        ]
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _cluster_args(directory: Path, i: int) -> tuple[str, ...]:
        return (
            # a replica's full sync writes dump.rdb to --dir (the working directory if unset)
            "--dir", str(directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / f"nodes-{i}-{free_port()}.conf"),
            # the bus port defaults to port + 10000, which may be taken
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", "2000",
        )  # fmt: skip

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-yes",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every running node says ``cluster_state:ok`` and knows every master."""
        wanted = len(self.nodes)

        def ok(node: RedisServer) -> bool:
            info = node.command("CLUSTER", "INFO").decode()
            return "cluster_state:ok" in info and f"cluster_size:{wanted}" in info

        for node in self.nodes:
            if node.running:
                wait_for(lambda n=node: ok(n), 20, "the Redis Cluster to be ok")

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def keyslot(self, key: str) -> int:
        """``CLUSTER KEYSLOT`` as the server computes it."""
        return int(self.nodes[0].command("CLUSTER", "KEYSLOT", key))

    def owner(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        slot = self.keyslot(key)
        for start, end, master, *_ in self.nodes[0].command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def kill_pubsub_clients(self) -> int:
        """``CLIENT KILL TYPE pubsub`` on every node."""
        return sum(n.kill_pubsub_clients() for n in self.nodes if n.running)

    def start(self) -> None:
        """Start every stopped node again (each rejoins from its nodes.conf, empty)."""
        for node in self.nodes:
            node.start()
        self.wait_ok()

    def stop(self) -> None:
        """Stop every node; their nodes.conf files stay for :meth:`start`."""
        for node in self.nodes:
            node.stop()
