"""An rtserver with HTTP-streaming and SSE emulation, for the Node and Chromium suites."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import NODE_MODULES, Server, free_port, run_server

__all__ = ["NODE_MODULES", "PageServers", "emulation_server", "free_port"]


@dataclass(frozen=True)
class PageServers:
    """Origins the browser test page is served from (see tests/browser/conftest.py)."""

    allowed: str
    foreign: str
    wildcard: str
    wildcard_pattern: str


@contextmanager
def emulation_server(workdir: Path, allowed_origins: list[str]) -> Iterator[Server]:
    """The interop server with ``http_stream``/``sse`` on and the given browser origins."""
    overrides = {
        "http_stream": {"enabled": True},
        "sse": {"enabled": True},
        "client": {"allowed_origins": allowed_origins},
    }
    with run_server(workdir, overrides) as server:
        yield server
