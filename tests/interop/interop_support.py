"""Support code for the interop tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

HERE = Path(__file__).resolve().parent

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
    _cent_clients: list[Any] = field(default_factory=list)

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
            cwd=HERE,
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
