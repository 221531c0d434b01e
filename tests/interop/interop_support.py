"""Support code for the interop tests: the shared harness under the names tests use."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from harness import EVENT_TIMEOUT, EXPIRED_CLOSE_DELAY, NodeScenario, Server

__all__ = [
    "EVENT_TIMEOUT",
    "EXPIRED_CLOSE_DELAY",
    "HERE",
    "NodeScenario",
    "Server",
    "check_pubsub_presence_history",
    "check_recovered",
    "events_of",
    "last_with",
    "unique",
]

HERE = Path(__file__).resolve().parent


def unique(prefix: str) -> str:
    """A name no other test uses (channels, users)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


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


def check_recovered(events: list[dict[str, Any]], *, live: int, missed: int, mode: str) -> None:
    """What the recover scenarios print (``runRecover`` in js/lib.mjs).

    Every publication exactly once and in order, the missed ones with the resubscribe
    (``recovered`` in the same epoch), and the way the client went away.
    """
    subscribed = events_of(events, "subscribed")
    assert len(subscribed) == 2, subscribed
    first, again = subscribed
    assert first["recoverable"] is True and first["wasRecovering"] is False
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]

    pubs = events_of(events, "publication")
    expected = (
        [{"live": i} for i in range(live)]
        + [{"missed": i} for i in range(missed)]
        + [{"sentinel": True}]
    )
    assert [p["data"] for p in pubs] == expected, "every publication exactly once, in order"
    assert [p["offset"] for p in pubs] == list(range(1, live + missed + 2))
    index = events.index(again)
    after = [e["data"] for e in events[index:] if e.get("event") == "publication"]
    assert after == expected[live:], "the missed ones arrive with the resubscribe"

    away = events[: events.index(last_with(events, "away_state"))]
    if mode == "disconnect":
        assert events_of(away, "disconnected", code=0), "disconnect() → disconnected"
    else:
        assert events_of(away, "connecting"), "dropped transport → connecting"
        assert not events_of(away, "disconnected")
        assert last_with(events, "released")["released"] >= 1
