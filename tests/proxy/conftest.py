"""Fixtures of the proxy suite: the backend process (``backend.py``) and its controls."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proxy_support import Backend


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    """The backend process for one test module."""
    b = Backend()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def fresh_backend(backend: Backend) -> Backend:
    """The module's backend, restarted if a test stopped it, with nothing recorded."""
    if backend.proc is None:
        backend.start()
    backend.reset()
    return backend
