"""Regenerate the checked-in Python modules of rtserver's GRPC schema.

Usage: python scripts/grpc_gen.py [--check]

Runs grpcio-tools' protoc on ``api.proto`` and ``unistream.proto`` (in
``rtserver/grpcapi/proto/``) and writes ``<name>_pb2.py``, ``<name>_pb2.pyi`` and
``<name>_pb2_grpc.py`` beside each. ``--check`` writes nothing and exits 1 when the
checked-in files differ from a fresh generation (tests/grpcapi/test_schema.py and
test_unistream_schema.py run the same comparison).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = [
    "rtserver/grpcapi/proto/api.proto",
    "rtserver/grpcapi/proto/unistream.proto",
]
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Generate the modules of every schema under ``out``; return their relative paths."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    for proto in PROTOS:
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return [Path(p.removesuffix(".proto") + s) for p in PROTOS for s in SUFFIXES]


def main(argv: list[str]) -> int:
    """Write the modules, or with ``--check`` compare them with the checked-in ones."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stale = []
        for rel in generate(out):
            fresh = (out / rel).read_bytes()
            target = ROOT / rel
            if target.exists() and target.read_bytes() == fresh:
                continue
            stale.append(str(rel))
            if "--check" not in argv:
                target.write_bytes(fresh)
    if "--check" in argv and stale:
        print("out of date: " + ", ".join(stale) + " (run python scripts/grpc_gen.py)")
        return 1
    for rel in stale:
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
