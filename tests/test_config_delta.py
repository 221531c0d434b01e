"""Namespace keys for delta compression and tag filters (docs/configuration.rst)."""

from __future__ import annotations

from typing import Any

import pytest

from rtserver import config
from rtserver.config import ConfigError


def _namespace(**options: Any) -> dict[str, Any]:
    return {"channel": {"namespaces": [{"name": "docs", **options}]}}


def test_keys_load_from_a_namespace() -> None:
    """``allowed_delta_types``, ``delta_publish`` and ``allow_tags_filter`` reach the options."""
    loaded = config.from_mapping(
        _namespace(allowed_delta_types=["fossil"], delta_publish=True, allow_tags_filter=True)
    )
    (ns,) = loaded.channel.namespaces
    assert (ns.allowed_delta_types, ns.delta_publish, ns.allow_tags_filter) == (
        ["fossil"],
        True,
        True,
    )
    plain = config.from_mapping(_namespace()).channel.namespaces[0]
    assert (plain.allowed_delta_types, plain.delta_publish, plain.allow_tags_filter) == (
        [],
        False,
        False,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"allowed_delta_types": ["zstd"]}, "only 'fossil' is supported"),
        ({"allowed_delta_types": "fossil"}, "channel.namespaces[0].allowed_delta_types"),
        ({"delta_publish": True}, "delta_publish: needs allowed_delta_types"),
        ({"allow_tags_filter": "yes"}, "allow_tags_filter"),
    ],
)
def test_bad_values_are_refused(options: dict[str, Any], message: str) -> None:
    """A bad value is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.from_mapping(_namespace(**options))
