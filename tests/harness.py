"""Test harness shared by the interop and browser suites: a real rtserver process.

``run_server`` starts ``twistd -n rtserver`` on a free loopback port with a config built
from ``base_config`` plus per-suite overrides, waits for ``/health``, and on exit checks
the process shut down cleanly and logged no traceback, unhandled error or critical line
(``subprocess_hook/sitecustomize.py`` is on the server's PYTHONPATH: it records logged
failures and measures coverage when ``scripts/test.sh`` asks for it). ``NodeScenario`` drives one Node script (JSON lines out,
commands in); its ``run_recovery`` is the pytest side of the recovery scenario every
transport shares (``runRecover`` in js/lib.mjs), checked by ``check_recovered``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
INTEROP_DIR = TESTS_DIR / "interop"
#: Start-up hook of every server process (coverage, logged-failure alarms).
SUBPROCESS_HOOK = TESTS_DIR / "subprocess_hook"
#: What in a server's own output means it hit an unexpected error.
LOG_ALARMS = ("Traceback", "Unhandled", "CRITICAL")
NODE_MODULES = INTEROP_DIR / "node_modules"
#: A deadline, not a wait: start-up returns as soon as /health answers. Generous because
#: a server under coverage on a loaded 2-core machine (``--workers 2`` starts three
#: processes) has been seen to need more than 15 s.
SERVER_START_TIMEOUT = 45.0
SERVER_STOP_TIMEOUT = 10.0

#: ``client.expired_close_delay`` of the server under test (seconds): small, so that a connection
#: whose token expired without refresh would be closed quickly.
EXPIRED_CLOSE_DELAY = 1.0
#: Default bound for one awaited event (Node line, asyncio wait) in a test.
EVENT_TIMEOUT = 10.0


@dataclass
class Server:
    """A running ``twistd -n rtserver`` and what a test needs to talk to it."""

    url: str
    ws_url: str
    api_url: str
    api_key: str
    secret: str
    log_path: Path
    process: subprocess.Popen[bytes]
    #: Where the start-up hook records every logged failure and critical event.
    alarms_path: Path | None = None
    #: Patterns (``re.search``, ``.`` matches newlines) of logged failures that are expected.
    expected_failures: list[str] = field(default_factory=list)
    _cent_clients: list[Any] = field(default_factory=list)

    def expect_logged_failure(self, pattern: str) -> None:
        """Declare that a logged failure matching ``pattern`` is expected (not an alarm)."""
        self.expected_failures.append(pattern)

    def token(self, user: str, ttl: float | None = 3600, **claims: Any) -> str:
        """HS256 connection token for ``user``; ``ttl`` seconds from now (negative: expired)."""
        payload: dict[str, Any] = {"sub": user, **claims}
        if ttl is not None:
            payload["exp"] = int(time.time() + ttl)
        return jwt.encode(payload, self.secret, algorithm="HS256")

    def cent(self) -> Any:
        """A sync ``cent.Client`` for the server API (closed at session end)."""
        import cent

        session = requests.Session()
        session.trust_env = False  # never route loopback traffic through an env proxy
        client = cent.Client(self.api_url, self.api_key, timeout=5.0, session=session)
        self._cent_clients.append(client)
        return client

    def publish(self, channel: str, data: Any) -> Any:
        """Publish through ``cent``; returns the ``PublishResult``."""
        import cent

        return self.cent_client.publish(cent.PublishRequest(channel=channel, data=data))

    @property
    def cent_client(self) -> Any:
        """A shared ``cent.Client``."""
        if not self._cent_clients:
            self.cent()
        return self._cent_clients[0]

    def log(self, tail: int = 20000) -> str:
        """The server's output so far (the last ``tail`` characters)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no server log>"
        return text[-tail:]

    def close_clients(self) -> None:
        """Close every ``cent`` client handed out."""
        for client in self._cent_clients:
            client.close()
        self._cent_clients.clear()


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A currently unused loopback TCP port (a UDP one with ``kind=socket.SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A currently unused loopback UDP port (HTTP/3)."""
    return free_port(socket.SOCK_DGRAM)


def make_certificate(directory: Path, days: int = 10) -> tuple[Path, Path, bytes]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1/localhost, valid ``days``.

    Returns the certificate and key files and the certificate's SHA-256 (DER) — what
    Chromium's ``serverCertificateHashes`` takes (validity at most 14 days).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "wt-cert.pem"
    key_path = directory / "wt-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return cert_path, key_path, digest


def tls_handshake_in_memory(server: Any, client: Any) -> None:
    """Run a TLS handshake between two memory-BIO pyOpenSSL connections to its end."""
    from OpenSSL import SSL

    done = {"server": False, "client": False}
    for _ in range(20):
        for side, conn, peer in (("client", client, server), ("server", server, client)):
            if not done[side]:
                try:
                    conn.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
            try:
                peer.bio_write(conn.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return
    raise AssertionError(f"handshake did not finish: {done}")


def _twistd() -> str:
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError(f"no twistd next to {sys.executable} nor on PATH")
    return found


def base_config(secret: str, api_key: str) -> dict[str, Any]:
    """The channel layout every interop suite uses (overrides are merged on top)."""
    history = {"history_size": 100, "history_ttl": "300s", "force_recovery": True}
    return {
        "log": {"level": "debug"},
        "client": {
            "token": {"hmac_secret_key": secret},
            # Node's ws sends no Origin header; keep the strict default.
            "allowed_origins": [],
            "expired_close_delay": f"{EXPIRED_CLOSE_DELAY:g}s",
        },
        "http_api": {"key": api_key},
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "presence": True,
                "join_leave": True,
                "force_push_join_leave": True,
                "allow_history_for_subscriber": True,
                "allow_presence_for_subscriber": True,
                **history,
            },
            "namespaces": [
                # Clients may subscribe but never publish: publish → 103.
                {"name": "ro", "allow_subscribe_for_client": True, **history},
                {
                    "name": "chat",
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_subscriber": True,
                    **history,
                },
            ],
        },
    }


def _wait_healthy(
    proc: subprocess.Popen[bytes], url: str, log: Path, session: requests.Session | None = None
) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    if session is None:
        session = requests.Session()
    session.trust_env = False
    last_error = "no attempt"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"rtserver exited with {proc.returncode} during start-up; log:\n"
                    + log.read_text(errors="replace")
                )
            try:
                response = session.get(url + "/health", timeout=1.0)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except requests.RequestException as e:
                last_error = f"{type(e).__name__}"
            time.sleep(0.1)
    finally:
        session.close()
    raise RuntimeError(
        f"rtserver did not answer GET /health within {SERVER_START_TIMEOUT:g}s "
        f"(last: {last_error}); log:\n" + log.read_text(errors="replace")
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
            raise AssertionError(
                f"rtserver ignored SIGTERM for {SERVER_STOP_TIMEOUT:g}s and was killed"
            ) from None
    return proc.returncode


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def spawn_server(
    workdir: Path,
    config: dict[str, Any],
    *,
    secret: str,
    api_key: str,
    port: int | None = None,
    log_name: str = "server.log",
    extra_args: tuple[str, ...] = (),
    listen: tuple[str, ...] | None = None,
    health: requests.Session | None = None,
) -> Server:
    """Start ``twistd -n rtserver`` with ``config`` and wait until ``/health`` answers 200.

    ``extra_args`` go after the ``rtserver`` options (e.g. ``("--workers", "2")``).
    ``listen``: the ``--listen`` descriptions (default: plain HTTP on ``port``; empty:
    none, ``http_server`` decides). ``health``: the session ``/health`` is asked with,
    over HTTPS on ``port`` (a TLS listener; e.g. one carrying a client certificate).
    """
    cfg = workdir / (Path(log_name).stem + ".json")
    cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
    port = port or free_port()
    log_path = workdir / log_name
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SUBPROCESS_HOOK), str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    # Environment overrides of the config would make the server differ from the file.
    for name in list(env):
        if name.startswith(("RTSERVER_", "CENTRIFUGO_")):
            del env[name]
    alarms_path = workdir / (Path(log_name).stem + ".alarms")
    alarms_path.unlink(missing_ok=True)
    env["RTSERVER_TEST_LOG_ALARMS"] = str(alarms_path)
    if listen is None:
        listen = (f"tcp:{port}:interface=127.0.0.1",)
    cmd = [_twistd(), "-n", "--pidfile=", "rtserver", "--config", str(cfg),
           *(arg for desc in listen for arg in ("-l", desc)), *extra_args]
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"{'http' if health is None else 'https'}://127.0.0.1:{port}"
    server = Server(
        url=base,
        ws_url=f"{'ws' if health is None else 'wss'}://127.0.0.1:{port}/connection/websocket",
        api_url=f"{base}/api",
        api_key=api_key,
        secret=secret,
        log_path=log_path,
        process=proc,
        alarms_path=alarms_path,
    )
    try:
        _wait_healthy(proc, base, log_path, health)
    except BaseException:
        _stop(proc)
        raise
    return server


def stop_server(server: Server) -> None:
    """SIGTERM the server; check it shut down cleanly and logged no unexpected failure."""
    server.close_clients()
    code = _stop(server.process)
    # twistd ends by re-raising the signal that stopped it: -SIGTERM is a clean exit.
    assert code in (0, -signal.SIGTERM), f"rtserver exited with {code}; log:\n{server.log()}"
    assert "Server Shut Down." in server.log(), server.log()
    alarms = unexpected_log_alarms(server)
    assert not alarms, (
        f"rtserver ({server.log_path}) logged unexpected failures:\n" + "\n".join(alarms)
    )


def unexpected_log_alarms(server: Server) -> list[str]:
    """Logged failures, critical events and alarm lines not declared as expected.

    Two sources: the start-up hook's record of failure/critical events (twistd's text log
    shows no levels), and the text log itself, where anything written to stderr (a
    traceback printed outside the logger) lands; a log entry is its first line plus the
    tab-indented continuation lines twistd writes for a multi-line message.
    """
    found: list[str] = []
    if server.alarms_path is not None and server.alarms_path.exists():
        text = server.alarms_path.read_text(encoding="utf-8", errors="replace")
        found += [block for block in text.split("\n\n") if block.strip()]
    entries: list[list[str]] = []
    for line in server.log(tail=10**9).splitlines():
        if line.startswith("\t") and entries:
            entries[-1].append(line)
        else:
            entries.append([line])
    found += [
        "\n".join(entry) for entry in entries
        if any(word in line for line in entry for word in LOG_ALARMS)
    ]
    return [
        block for block in found
        if not any(re.search(p, block, re.DOTALL) for p in server.expected_failures)
    ]


@contextmanager
def run_server(workdir: Path, overrides: dict[str, Any] | None = None) -> Iterator[Server]:
    """Run ``twistd -n rtserver`` (source tree first on PYTHONPATH); checks a clean shutdown."""
    secret = "interop-" + uuid.uuid4().hex  # 40 bytes: PyJWT warns below 32
    api_key = "api-" + uuid.uuid4().hex
    config = merge(base_config(secret, api_key), overrides or {})
    server = spawn_server(workdir, config, secret=secret, api_key=api_key)
    try:
        yield server
    finally:
        stop_server(server)


class NodeScenario:
    """A running ``js/<name>.mjs``: JSON lines from stdout, commands to stdin."""

    def __init__(self, node: str, script: Path, env: dict[str, str], timeout: float) -> None:
        self.script = script
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["SCENARIO_TIMEOUT_MS"] = str(int(timeout * 1000))
        self.proc = subprocess.Popen(
            [node, str(script)],
            cwd=INTEROP_DIR,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"raw": line}
            self._lines.put(obj)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def describe(self) -> str:
        """Everything seen so far, for assertion messages."""
        shown = "\n".join(json.dumps(e) for e in self.events)
        return (
            f"{self.script.name}: events so far:\n{shown}\nstderr:\n{''.join(self._stderr)[-4000:]}"
        )

    def expect(
        self, match: Callable[[dict[str, Any]], bool] | str, timeout: float = EVENT_TIMEOUT
    ) -> dict[str, Any]:
        """Wait for the next line satisfying ``match`` (a predicate, or a ``ready`` label)."""
        if isinstance(match, str):
            label = match

            def match(e: dict[str, Any]) -> bool:
                return e.get("ready") == label

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g}s\n{self.describe()}")
            try:
                event = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                self._lines.put(None)
                self.proc.wait(timeout=5)
                raise AssertionError(
                    f"script exited ({self.proc.returncode}) before the expected line\n"
                    + self.describe()
                )
            self.events.append(event)
            if "fatal" in event:
                raise AssertionError(f"script failed: {event['fatal']}\n{self.describe()}")
            if match(event):
                return event

    def send(self, command: str) -> None:
        """Write one command line to the script's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = EVENT_TIMEOUT) -> list[dict[str, Any]]:
        """Wait for a clean exit; returns every event printed."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"script did not exit in {timeout:g}s\n{self.describe()}"
            ) from None
        for t in self._threads:
            t.join(timeout=5)
        while True:
            try:
                event = self._lines.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                self.events.append(event)
        assert code == 0, f"script exited with {code}\n{self.describe()}"
        return self.events

    def run_recovery(
        self,
        publish: Callable[[str, Any], object],
        channel: str,
        *,
        live: int,
        missed: int,
        mode: str = "disconnect",
        transport: str | None = None,
        while_away: Callable[[], object] | None = None,
        timeout: float = EVENT_TIMEOUT,
    ) -> list[dict[str, Any]]:
        """The pytest side of ``runRecover`` (js/lib.mjs); returns every event printed.

        Publishes ``live`` publications ``{"live": i}`` through ``publish(channel, data)``
        once the script has subscribed, ``missed`` ones ``{"missed": i}`` while it is away
        (after ``while_away()``, a check of what the server sees then), and a sentinel once
        it has recovered; then waits for the script's clean exit. ``live``, ``missed`` and
        ``mode`` must be what the script was started with (it repeats them). With
        ``transport`` the SDK must report that transport when it subscribes, when it has
        recovered and on both of its ``connected`` events. Every event line is then
        checked by :func:`check_recovered`; ``timeout`` bounds each awaited line.
        """
        ready = self.expect("subscribed", timeout=timeout)
        started = {k: ready.get(k) for k in ("mode", "live", "missed")}
        assert started == {"mode": mode, "live": live, "missed": missed}, (
            f"the script runs {started}\n{self.describe()}"
        )
        if transport is not None:
            assert ready["transport"] == transport, (
                f"subscribed over {ready['transport']!r}, not {transport!r}\n{self.describe()}"
            )
        for i in range(live):
            publish(channel, {"live": i})
        self.send("published_live")
        self.expect("away", timeout=timeout)
        if while_away is not None:
            while_away()
        for i in range(missed):
            publish(channel, {"missed": i})
        self.send("published_missed")
        recovered = self.expect("recovered", timeout=timeout)
        if transport is not None:
            assert recovered["transport"] == transport, (
                f"recovered over {recovered['transport']!r}, not {transport!r}\n"
                + self.describe()
            )
        publish(channel, {"sentinel": True})
        self.send("published_sentinel")
        events = self.finish(timeout=timeout)
        if transport is not None:
            connected = events_of(events, "connected")
            assert [e["transport"] for e in connected] == [transport] * 2, connected
        check_recovered(events, live=live, missed=missed, mode=mode)
        return events

    def close(self) -> None:
        """Kill the script if still running and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=5)


def events_of(events: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    """The Node script's ``event`` lines of one kind whose fields match."""
    return [
        e for e in events if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())
    ]


def last_with(events: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The last line carrying ``key`` (a command result printed by the script)."""
    found = [e for e in events if key in e]
    assert found, f"no line with {key!r} in {events}"
    return found[-1]


def recovery_publications(live: int, missed: int) -> list[dict[str, Any]]:
    """The data of a recovery scenario's publications in order: live, missed, sentinel."""
    return (
        [{"live": i} for i in range(live)]
        + [{"missed": i} for i in range(missed)]
        + [{"sentinel": True}]
    )


def check_recovered(events: list[dict[str, Any]], *, live: int, missed: int, mode: str) -> None:
    """What the recover scenarios print (``runRecover`` in js/lib.mjs).

    Every publication exactly once and in order, the missed ones with the resubscribe
    (``recovered`` in the same epoch), the way the client went away (``disconnect()``;
    ``drop``: one connection failed, the SDK reconnecting with code 1) and no error.
    """
    subscribed = events_of(events, "subscribed")
    assert len(subscribed) == 2, subscribed
    first, again = subscribed
    assert first["recoverable"] is True and first["wasRecovering"] is False
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]

    pubs = events_of(events, "publication")
    expected = recovery_publications(live, missed)
    assert [p["data"] for p in pubs] == expected, "every publication exactly once, in order"
    assert [p["offset"] for p in pubs] == list(range(1, live + missed + 2))
    index = events.index(again)
    after = [e["data"] for e in events[index:] if e.get("event") == "publication"]
    assert after == expected[live:], "the missed ones arrive with the resubscribe"

    away = events[: events.index(last_with(events, "away_state"))]
    if mode == "disconnect":
        assert events_of(away, "disconnected", code=0), "disconnect() → disconnected"
    else:
        assert last_with(events, "dropped")["dropped"] == 1, "one live connection dropped"
        assert events_of(away, "connecting", code=1), "dropped transport → connecting (1)"
        assert not events_of(away, "disconnected")
        assert last_with(events, "released")["released"] >= 1
    errors = [e for e in events if e.get("event") in ("error", "sub_error")]
    assert not errors, f"no transport, command or subscription errors: {errors}"


def run_emulation_pubsub(
    node_js: str, stream: Any, emulation: Any, timeout: float
) -> list[dict[str, Any]]:
    """centrifuge-js streams from ``stream`` and posts its commands to ``emulation``.

    Both are servers (``url``, ``token``, ``publish``, ``log``): two nodes of a cluster, or
    the one port of ``--workers N``. Three publications through ``emulation``'s API must
    arrive in order, presence must show the streaming client, and ``emulation`` must not
    have logged a failed forward. Returns the scenario's events for further checks.
    """
    suffix = uuid.uuid4().hex[:10]
    channel = f"room-{suffix}"
    js = NodeScenario(
        node_js,
        INTEROP_DIR / "js" / "emulation_pubsub.mjs",
        {
            "BASE_URL": stream.url,
            "EMULATION_URL": emulation.url,
            "TRANSPORT": "http_stream",
            "TOKEN": stream.token(f"u-{suffix}"),
            "PEER_TOKEN": stream.token(f"p-{suffix}"),
            "CHANNEL": channel,
            "CHAT_CHANNEL": f"chat:room-{suffix}",
            "COUNT": "3",
        },
        timeout=30.0,
    )
    try:
        ready = js.expect("subscribed", timeout=timeout)
        sent = [{"n": i} for i in (1, 2, 3)]
        for data in sent:
            emulation.publish(channel, data)
        js.send("published")
        events = js.finish(timeout=timeout)
    finally:
        js.close()
    pubs = [e["data"] for e in events if e.get("event") == "publication"
            and e.get("channel") == channel]
    assert pubs == sent
    presence = next(e["presence"] for e in events if "presence" in e)
    assert list(presence) == [ready["id"]]
    assert "forwarding an emulation request failed" not in emulation.log()
    return events
