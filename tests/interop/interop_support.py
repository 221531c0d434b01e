"""Support code for the interop tests: the shared harness under the names tests use."""

from __future__ import annotations

from pathlib import Path

from harness import EVENT_TIMEOUT, EXPIRED_CLOSE_DELAY, NodeScenario, Server

__all__ = ["EVENT_TIMEOUT", "EXPIRED_CLOSE_DELAY", "HERE", "NodeScenario", "Server"]

HERE = Path(__file__).resolve().parent
