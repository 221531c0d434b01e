"""``client.allowed_origins``: which browser origins may connect."""

from __future__ import annotations

import pytest

from rtserver.transports.origin import OriginPolicy


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        ([], None, True),  # not a browser: no Origin header
        ([], "", True),
        ([], "https://app.example.com", False),  # browsers need an explicit allow-list
        (["*"], "https://anything.test", True),
        (["https://app.example.com"], "https://app.example.com", True),
        (["https://app.example.com"], "HTTPS://App.Example.com/", True),  # case, trailing /
        (["https://app.example.com"], "https://app.example.com.evil.test", False),
        (["https://*.example.com"], "https://chat.example.com", True),
        (["https://*.example.com"], "https://example.com", False),
        (["https://*.example.com"], "https://a.b/.example.com", False),  # * stops at /
        (["http://localhost:*"], "http://localhost:3000", True),
        (["http://localhost:*"], "http://localhost.evil:3000", False),
    ],
)
def test_origin_patterns(patterns: list[str], origin: str | None, allowed: bool) -> None:
    """Exact origins, ``*`` for any, and ``*`` wildcards within one URL component."""
    assert OriginPolicy(patterns).allows(origin) is allowed
