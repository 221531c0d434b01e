"""Origin policy (``client.allowed_origins``) shared by every transport.

An empty list admits only requests without an ``Origin`` header (non-browser clients);
``"*"`` admits every origin; other entries are origins with ``*`` wildcards, e.g.
``https://*.example.com``, compared case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["OriginPolicy"]


class OriginPolicy:
    """Decides whether a request's ``Origin`` may use the server."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.replace(patterns)

    def replace(self, patterns: Iterable[str]) -> None:
        """Admit ``patterns`` from now on (SIGHUP reload; every transport shares the policy)."""
        self._any = False
        regexes = []
        for pattern in patterns:
            if pattern == "*":
                self._any = True
                continue
            parts = (re.escape(p) for p in pattern.lower().rstrip("/").split("*"))
            regexes.append(re.compile("[^/]*".join(parts)))
        self._regexes = tuple(regexes)

    def allows(self, origin: str | None) -> bool:
        """True when a request with this ``Origin`` header (or none) is allowed."""
        if not origin:
            return True
        if self._any:
            return True
        origin = origin.strip().lower().rstrip("/")
        return any(r.fullmatch(origin) for r in self._regexes)
