"""Building the grpc-go client of the GRPC API (``go/grpc_api_client.go``).

From Debian's packages ``golang-go`` and ``golang-google-grpc-dev`` (grpc-go 1.33,
sources under /usr/share/gocode), in GOPATH mode: nothing is downloaded. Used by
tests/interop/test_go_grpc.py and bench/grpc_h2_replay.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["GOPATH", "SOURCE", "build_go_client", "go_missing"]

SOURCE = Path(__file__).resolve().parent / "go" / "grpc_api_client.go"
#: Where Debian's golang-*-dev packages put their sources.
GOPATH = Path("/usr/share/gocode")
#: Seconds a build gets (the first one compiles grpc-go: ~10-60 s).
BUILD_TIMEOUT = 300.0


def go_missing() -> str:
    """Why the client cannot be built here (empty when it can)."""
    if shutil.which("go") is None:
        return "go is not installed (apt package golang-go)"
    if not (GOPATH / "src" / "google.golang.org" / "grpc" / "encoding" / "gzip").is_dir():
        return f"grpc-go is not under {GOPATH} (apt package golang-google-grpc-dev)"
    return ""


def build_go_client(directory: Path) -> Path:
    """Build the client into ``directory`` (its build cache too); the binary's path.

    Raises RuntimeError with the compiler's output when the build fails.
    """
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(go_missing())
    binary = directory / "grpc_api_client"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
           "GOCACHE": str(directory / "cache"), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    done = subprocess.run([go, "build", "-o", str(binary), str(SOURCE)], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} failed:\n{done.stderr}")
    return binary
