"""Import layering of rtserver/ as docs/architecture.rst states it.

A layer imports only layers below it; the adapters (transports, api, engines, auth) are
independent of each other (and of ``proxy/``); ``sockjs/`` knows nothing of the core; ``protocol/`` uses only
the standard library and orjson; the core takes from Twisted only Deferreds, the reactor
time interfaces (an injected clock) and the logger. Every ``import`` in the tree counts,
including lazy ones inside functions and ``importlib.import_module("...")`` calls.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rtserver"

#: The layer table of docs/architecture.rst, bottom (0) to top. A module belongs to the
#: longest prefix listed. ``cli`` (the ``rtserver`` command) and ``testing`` (public test
#: doubles) are entry points for users: nothing in rtserver may import them.
LAYERS: dict[str, int] = {
    "rtserver": 0,  # the package itself: __version__
    "rtserver.config": 0,
    "rtserver.logs": 0,
    "rtserver.connections": 0,
    "rtserver._compat": 0,  # the one place touching other libraries' internals
    "rtserver.protocol": 1,
    "rtserver.core": 2,
    "rtserver.sockjs": 3,
    "rtserver.tlsclient": 3,  # client TLS options for engines and proxies
    "rtserver.tlsserver": 3,  # server TLS options (client CA) for web listeners and GRPC
    "rtserver.transports": 4,
    "rtserver.api": 4,
    "rtserver.engines": 4,
    "rtserver.auth": 4,
    "rtserver.proxy": 4,
    "rtserver.web": 5,
    "rtserver.grpcapi": 5,  # the GRPC server API, beside web/
    "rtserver.consumers": 5,  # server API commands from queues, beside web/ and grpcapi/
    "rtserver.shutdown": 5,  # stop-signal guard, used by service and workers
    "rtserver.service": 6,
    "rtserver.workers": 6,  # the --workers supervisor, beside service (tap uses both)
    "rtserver.tap": 7,
    "rtserver.cli": 8,
    "rtserver.testing": 8,
}

#: Packages that sit in one layer but must not import each other.
INDEPENDENT = (
    "rtserver.transports",
    "rtserver.api",
    "rtserver.engines",
    "rtserver.auth",
    "rtserver.proxy",
)

#: What a package may import besides the layers below it, when the doc restricts it.
FORBIDDEN_BELOW = {"rtserver.sockjs": ("rtserver.core",)}

#: Third-party imports allowed in the sans-I/O protocol (besides the standard library).
PROTOCOL_THIRD_PARTY = ("orjson",)

#: Third-party imports allowed in the core (besides the standard library and orjson):
#: Deferreds (and Failure), IReactorTime/IDelayedCall and LoopingCall on an injected clock,
#: the logger, and zope.interface for the ports.
CORE_THIRD_PARTY = (
    "orjson",
    "twisted.internet.defer",
    "twisted.internet.interfaces",
    "twisted.internet.task",
    "twisted.python.failure",
    "twisted.logger",
    "zope.interface",
)


@dataclass(frozen=True)
class Import:
    """One import statement: the importing module, the imported name and where."""

    module: str
    target: str
    line: int

    def __str__(self) -> str:
        path = self.module.replace(".", "/")
        return f"{path}.py:{self.line}: {self.module} imports {self.target}"


def module_name(path: Path) -> str:
    """``rtserver/core/node.py`` -> ``rtserver.core.node``; a package's ``__init__`` -> itself."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every module ``path`` imports, absolute names, at any depth of the syntax tree."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from pkg import sub`` may name a submodule: count pkg.sub when it exists.
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                target = sub if _is_module(sub) else name
                found.append(Import(module, target, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(module, node.args[0].value, node.lineno))
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("rtserver"):
        return False
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def owner(name: str) -> str | None:
    """The LAYERS key a module belongs to (longest prefix), or None."""
    best = None
    for key in LAYERS:
        if (name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def violations(imports: list[Import]) -> list[str]:
    """Each import that breaks a rule of docs/architecture.rst, as a readable line."""
    out: list[str] = []
    for imp in imports:
        src = owner(imp.module)
        top = imp.target.split(".")[0]
        if src is None:
            out.append(f"{imp}: {imp.module} has no layer (add it to docs/architecture.rst)")
            continue
        if top == "rtserver":
            dst = owner(imp.target)
            if dst is None:
                out.append(f"{imp}: unknown module")
            elif dst == src or (src != "rtserver" and dst.startswith(src + ".")):
                pass  # inside its own package
            elif LAYERS[dst] > LAYERS[src]:
                out.append(f"{imp}: layer {LAYERS[src]} imports layer {LAYERS[dst]}")
            elif LAYERS[dst] == LAYERS[src] and dst not in ("rtserver", "rtserver._compat"):
                independent = src in INDEPENDENT and dst in INDEPENDENT
                out.append(
                    f"{imp}: {'independent adapters' if independent else 'same layer'}"
                )
            elif any(
                imp.target == bad or imp.target.startswith(bad + ".")
                for bad in FORBIDDEN_BELOW.get(src, ())
            ):
                out.append(f"{imp}: {src} must know nothing of {imp.target}")
        elif src == "rtserver.protocol":
            if top not in sys.stdlib_module_names and not _allowed(imp.target, PROTOCOL_THIRD_PARTY):
                out.append(f"{imp}: protocol/ uses only the standard library and orjson")
        elif src == "rtserver.core":
            if top not in sys.stdlib_module_names and not _allowed(imp.target, CORE_THIRD_PARTY):
                out.append(f"{imp}: core/ takes from Twisted only Deferreds, clock and logger")
    return out


def _allowed(target: str, allowed: tuple[str, ...]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def all_imports() -> list[Import]:
    """Imports of every module under rtserver/."""
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def test_every_module_has_a_layer() -> None:
    """Each module of rtserver/ falls in a layer of the table (a new package must be placed)."""
    missing = [
        module_name(p) for p in sorted(PACKAGE.rglob("*.py")) if owner(module_name(p)) is None
    ]
    assert not missing


def test_no_layer_imports_upward() -> None:
    """No module imports a higher layer, a sibling adapter, or what its layer must not know."""
    assert violations(all_imports()) == []


def test_the_table_mirrors_docs_architecture() -> None:
    """Every package and module of the table appears in the doc's layer diagram."""
    doc = (ROOT / "docs" / "architecture.rst").read_text(encoding="utf-8")
    diagram = doc[: doc.index("Modules and what they own")]
    unlisted = []
    for key in LAYERS:
        if key in ("rtserver", "rtserver.cli", "rtserver.testing", "rtserver._compat"):
            continue
        name = key.rpartition(".")[2]
        if f"{name}/" not in diagram and f"{name}.py" not in diagram:
            unlisted.append(key)
    assert not unlisted


# --- the checker itself catches each kind of violation ---------------------------------


def _check(module_path: str, source: str) -> list[str]:
    return violations(imports_of(ROOT / module_path, source))


@pytest.mark.parametrize(
    ("module_path", "source"),
    [
        # upward, at module top
        ("rtserver/core/node.py", "from rtserver.web.site import RTSite\n"),
        # upward, lazily inside a function
        ("rtserver/protocol/codec.py", "def f():\n    from rtserver.core import node\n"),
        # relative import reaching up a layer
        ("rtserver/core/hub.py", "from ..transports import websocket\n"),
        # sibling adapters
        ("rtserver/engines/memory.py", "import rtserver.auth.jwt\n"),
        # the generic SockJS server must not know the core
        ("rtserver/sockjs/session.py", "from rtserver.core.client import Client\n"),
        # importlib with a literal name
        ("rtserver/config.py", "import importlib\nimportlib.import_module('rtserver.service')\n"),
        # library modules must not import the test doubles
        ("rtserver/service.py", "from rtserver import testing\n"),
        # sans-I/O protocol: no Twisted
        ("rtserver/protocol/frames.py", "from twisted.internet import defer\n"),
        # core: no reactor, no twisted.web
        ("rtserver/core/client.py", "from twisted.internet import reactor\n"),
        ("rtserver/core/client.py", "from twisted.web import server\n"),
    ],
)
def test_checker_reports_a_violation(module_path: str, source: str) -> None:
    """Each rule of the checker fires on a planted import."""
    assert _check(module_path, source), f"{module_path}: {source!r} passed"


@pytest.mark.parametrize(
    ("module_path", "source"),
    [
        ("rtserver/transports/websocket.py", "from rtserver.core.node import Node\n"),
        ("rtserver/transports/sockjs.py", "from rtserver.sockjs import SockJSResource\n"),
        ("rtserver/core/node.py", "from twisted.internet.defer import Deferred\n"),
        ("rtserver/protocol/codec.py", "import orjson\nimport json\n"),
        ("rtserver/web/site.py", "from . import apifast\n"),
    ],
)
def test_checker_accepts_a_downward_import(module_path: str, source: str) -> None:
    """Imports the doc allows are not reported."""
    assert _check(module_path, source) == []


# --- library code takes its reactor ------------------------------------------------------


_IMPORT_EACH = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    if "twisted.internet.reactor" in sys.modules:
        print(name)
        break
"""


def library_modules() -> list[str]:
    """Every importable module of rtserver/, and the twistd plugin."""
    names = [module_name(p) for p in sorted(PACKAGE.rglob("*.py"))]
    return [*names, "twisted.plugins.rtserver_plugin"]


def test_reactor_not_imported_by_library() -> None:
    """Importing any library module (or the twistd plugin) leaves the global reactor alone.

    Each is imported in turn in a fresh interpreter that checks, after every import,
    that ``twisted.internet.reactor`` was not imported (which installs the default
    reactor, before twistd's ``--reactor`` or a test's own reactor).
    """
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *library_modules()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{result.stdout.strip()} imports the global reactor"
