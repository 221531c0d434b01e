"""The stream position part of a subscribe result, and the recovery rules.

Recovery is all-or-nothing (docs/reliability.rst): a resubscribing client gets the whole
gap from history, or ``recovered: false`` and no publications. In ``cache`` recovery
mode the client needs only the newest publication. Everything here is pure: the client
reads the stream and hands the result in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtserver.core.types import HistoryFilter, HistoryResult
from rtserver.protocol.codes import Error
from rtserver.protocol.frames import Publication, StreamPosition

__all__ = [
    "cache_recovered",
    "positioned_result",
    "recovered",
    "recovery_filter",
    "recovery_result",
]


def recovered(
    pubs: list[Publication], offset: int, epoch: str, top: StreamPosition
) -> list[Publication] | None:
    """The publications that fill the gap after ``offset``, or None when they can't."""
    if epoch and epoch != top.epoch:
        return None
    if not pubs:
        return pubs if top.offset == offset else None
    if pubs[0].offset == offset + 1 and pubs[-1].offset == top.offset:
        return pubs
    return None


def cache_recovered(
    latest: list[Publication], offset: int, epoch: str, top: StreamPosition
) -> list[Publication] | None:
    """Cache-mode recovery: the client needs only the newest publication, if any."""
    if epoch == top.epoch and offset == top.offset:
        return []
    if latest and latest[0].offset == top.offset:
        return latest
    return None


def recovery_filter(cache: bool, offset: int, max_limit: int) -> HistoryFilter:
    """What to read to recover from ``offset`` (``client.recovery_max_publication_limit``)."""
    if cache:
        return HistoryFilter(limit=1, reverse=True)
    return HistoryFilter(since=StreamPosition(offset, ""), limit=max_limit or -1)


# Any: the values are JSON of the subscribe result (bools, ints, publication objects).
def recovery_result(
    history: HistoryResult,
    offset: int,
    epoch: str,
    *,
    cache: bool,
    reject_unrecovered: bool,
    wire: Callable[[Publication], dict[str, Any]] = Publication.to_wire,
    keep: Callable[[Publication], bool] | None = None,
) -> dict[str, Any]:
    """``was_recovering``, ``recovered``, ``offset`` and ``publications`` of a recovery.

    ``wire`` turns a recovered publication into its wire object (the client's encoding
    decides what a payload may be); ``keep`` (a subscriber's tag filter) drops the
    publications it is false for.

    Raises:
        Error: 112 unrecoverable position when ``reject_unrecovered`` and the gap cannot
            be filled.
    """
    top = history.position
    rule = cache_recovered if cache else recovered
    pubs = rule(history.publications, offset, epoch, top)
    result: dict[str, Any] = {"was_recovering": True}
    if pubs is not None:
        result["recovered"] = True
        result["offset"] = offset
        if keep is not None:
            pubs = [p for p in pubs if keep(p)]
        if pubs:
            result["publications"] = [wire(p) for p in pubs]
    elif reject_unrecovered:
        raise Error.UNRECOVERABLE_POSITION
    else:
        result["offset"] = top.offset
    return result


# Any: as in recovery_result.
def positioned_result(
    result: dict[str, Any], top: StreamPosition, recoverable: bool
) -> dict[str, Any]:
    """Complete a positioned subscription's result with the stream's epoch and flags."""
    result["epoch"] = top.epoch
    result["positioned"] = True
    if recoverable:
        result["recoverable"] = True
    if not result["offset"]:
        del result["offset"]
    return result
