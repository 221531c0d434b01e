"""Fixtures for the SockJS tests: the conformance services on a free port."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "transports"))

from sockjs_http import SockJSServer


@pytest_twisted.async_yield_fixture
async def sockjs_server() -> AsyncIterator[SockJSServer]:
    """The four test services (/echo, /close, ...) served in-process."""
    server = SockJSServer()
    yield server
    await server.stop()
