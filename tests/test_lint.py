"""Code quality gate: the tree is clean under the ruff version setup.cfg pins."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pinned(package: str) -> str | None:
    """The exact version ``package==X`` in setup.cfg's ``test`` extra, or None."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    for line in cfg["options.extras_require"]["test"].splitlines():
        match = re.fullmatch(rf"\s*{re.escape(package)}\s*==\s*([\w.]+)\s*", line)
        if match:
            return match.group(1)
    return None


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    # The ruff installed with this interpreter's packages (pip install '.[test]'), never
    # whichever ruff comes first on PATH.
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_is_the_pinned_version() -> None:
    """setup.cfg pins ruff exactly, and the suite runs that version: new rules never sneak in."""
    pinned = _pinned("ruff")
    assert pinned is not None, "setup.cfg's test extra must pin ruff==<version>"
    version = _ruff("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.split() == ["ruff", pinned], f"run: pip install '.[test]' ({version.stdout})"


def test_ruff_clean() -> None:
    """``ruff check`` reports nothing for the package, tests, scripts and bench."""
    result = _ruff("check", "--output-format=concise", "rtserver", "tests", "scripts", "bench",
                   "twisted", "tac")
    assert result.returncode == 0, result.stdout + result.stderr
