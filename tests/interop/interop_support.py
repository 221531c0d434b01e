"""Support code for the interop tests: the shared harness under the names tests use."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from harness import (
    EVENT_TIMEOUT,
    EXPIRED_CLOSE_DELAY,
    NodeScenario,
    Server,
    events_of,
    last_with,
)

__all__ = [
    "EVENT_TIMEOUT",
    "EXPIRED_CLOSE_DELAY",
    "HERE",
    "NodeScenario",
    "Server",
    "check_pubsub_presence_history",
    "events_of",
    "last_with",
    "unique",
]

HERE = Path(__file__).resolve().parent


def unique(prefix: str) -> str:
    """A name no other test uses (channels, users)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def check_pubsub_presence_history(
    events: list[dict[str, Any]],
    *,
    channel: str,
    sent: list[Any],
    offsets: list[int],
    client_id: str,
    user: str,
    info: Any,
) -> None:
    """What the ``pubsub`` scenarios print: publications, presence, stats and history."""
    pubs = events_of(events, "publication", channel=channel)
    assert [p["data"] for p in pubs] == sent
    assert [p["offset"] for p in pubs] == offsets == list(range(1, len(sent) + 1))

    presence = last_with(events, "presence")["presence"]
    assert list(presence) == [client_id]
    assert presence[client_id]["user"] == user
    assert presence[client_id]["client"] == client_id
    assert presence[client_id]["connInfo"] == info
    assert last_with(events, "presence_stats")["presence_stats"] == {
        "numClients": 1,
        "numUsers": 1,
    }

    history = last_with(events, "history")["history"]
    assert [p["data"] for p in history["publications"]] == sent
    assert [p["offset"] for p in history["publications"]] == offsets
    assert history["offset"] == offsets[-1]
    assert isinstance(history["epoch"], str) and history["epoch"]
    latest = last_with(events, "history_latest")["history_latest"]
    assert [p["data"] for p in latest] == [sent[-1]]
