"""The options a publish is stored with follow the channel's options and config reloads.

Node.publish builds the common publish's options (no idempotency key, no version) once
per namespace; a reload (new config and channel options, as ``twistd``'s SIGHUP applies
them) must reach the next publication.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest_twisted

from rtserver import config as rtconfig
from rtserver.core.channels import ChannelResolver
from rtserver.core.node import Node
from rtserver.core.types import HistoryFilter
from rtserver.testing import make_node

HISTORY = {"history_size": 10, "history_ttl": "5s"}


def settings(meta_ttl: str) -> dict[str, Any]:
    return {
        "channel": {
            "history_meta_ttl": meta_ttl,
            "namespaces": [{"name": "hist", **HISTORY}],
        }
    }


def reload(node: Node, new: dict[str, Any]) -> None:
    """Apply a new channel section as the service's reload does."""
    cfg = rtconfig.from_mapping(new)
    node.config = dataclasses.replace(node.config, channel=cfg.channel)
    node.resolver = ChannelResolver(node.config.channel)


@pytest_twisted.ensureDeferred
async def test_a_reloaded_meta_ttl_reaches_the_next_publication() -> None:
    """Meta TTL 1 h, then 10 s after a reload: 20 s of silence now start a new epoch."""
    node, clock = make_node(settings("3600s"))
    first = await node.publish("hist:news", b"{}")
    clock.advance(20)
    same = await node.publish("hist:news", b"{}")
    assert (same.epoch, same.offset) == (first.epoch, 2)  # kept for an hour

    reload(node, settings("10s"))
    await node.publish("hist:news", b"{}")  # stored with the new, shorter meta TTL
    clock.advance(20)
    after = await node.publish("hist:news", b"{}")
    assert after.epoch != first.epoch and after.offset == 1


@pytest_twisted.ensureDeferred
async def test_skip_history_and_versioned_publishes_keep_their_own_options() -> None:
    """The remembered options of one publish never serve another kind of publish."""
    node, _ = make_node(settings("3600s"))
    await node.publish("hist:a", b"{}")
    skipped = await node.publish("hist:a", b"{}", skip_history=True)
    assert skipped.offset == 0  # not appended: no position
    await node.publish("hist:a", b"{}", version=5)
    old = await node.publish("hist:a", b"{}", version=4)
    assert old.offset == 2  # suppressed: the current top, nothing appended
    plain = await node.publish("hist:a", b"{}")
    assert plain.offset == 3
    assert [p.offset for p in (await node.history("hist:a", HistoryFilter(limit=-1))).publications] == [1, 2, 3]
