"""The proxy suite's backend process (``backend.py``) and server configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from harness import free_port

HERE = Path(__file__).resolve().parent


class Backend:
    """A running ``backend.py`` process: its URL, what it received, its answer mode."""

    def __init__(self, port: int | None = None, tls: list[Path] | None = None) -> None:
        """Start ``backend.py`` on ``port`` (default: a free one).

        ``tls``: serve HTTPS with ``[cert, key]``; ``[cert, key, client_ca]`` also requires
        a client certificate of that CA (on the control endpoints too).
        """
        self.port = port or free_port()
        self.tls = tls or []
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._http = requests.Session()
        self._http.trust_env = False
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it listens."""
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "backend.py"), str(self.port), *map(str, self.tls)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the process prints or exits
        assert json.loads(line) == {"ready": self.port}, line

    def stop(self) -> None:
        """Terminate the process; the port refuses connections afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def requests(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded proxy requests (of one ``kind``), oldest first."""
        found: list[dict[str, Any]] = self._http.get(self.url + "/requests", timeout=5).json()
        return [r for r in found if kind is None or r["kind"] == kind]

    def mode(self, mode: str) -> None:
        """``ok``, ``sleep`` (answer after 5 s), ``garbage`` (not JSON) or ``status`` (503)."""
        self._http.post(self.url + "/mode", json={"mode": mode}, timeout=5).raise_for_status()

    def reset(self) -> None:
        """Forget the recorded requests and answer normally."""
        self._http.post(self.url + "/reset", timeout=5).raise_for_status()
        self.mode("ok")

    def close(self) -> None:
        self.stop()
        self._http.close()


def proxy_config(backend_url: str, timeout: str = "500ms") -> dict[str, Any]:
    """Rtserver config overrides sending every proxy event to the backend."""

    def proxy(kind: str, **extra: Any) -> dict[str, Any]:
        return {"endpoint": f"{backend_url}/{kind}", "timeout": timeout, **extra}

    return {
        "client": {
            "proxy": {
                "connect": proxy(
                    "connect",
                    enabled=True,
                    http_headers=["Cookie"],
                    emulated_headers=["X-Session"],
                ),
                "refresh": proxy("refresh", enabled=True),
            },
        },
        "channel": {
            "proxy": {
                "subscribe": proxy("subscribe"),
                "publish": proxy("publish"),
                "sub_refresh": proxy("sub_refresh"),
            },
            "namespaces": [
                {
                    "name": "proxied",
                    "presence": True,
                    "allow_presence_for_subscriber": True,
                    "subscribe_proxy_enabled": True,
                    "publish_proxy_enabled": True,
                    "sub_refresh_proxy_enabled": True,
                },
            ],
        },
        "rpc": {"proxy": proxy("rpc"), "without_namespace": {"proxy_enabled": True}},
        "http_stream": {"enabled": True},
    }
