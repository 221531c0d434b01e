"""The user docs stay true to the code: every config key documented, commands present."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rtserver import config

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_key_is_documented() -> None:
    """docs/configuration.rst lists every configuration key the server reads."""
    text = (ROOT / "docs" / "configuration.rst").read_text()
    missing = []
    for name in config.env_names():
        path = name.removeprefix("RTSERVER_").lower()
        if path.startswith("channel_without_namespace_"):
            key = "``" + path.removeprefix("channel_without_namespace_") + "``"
        else:
            key = None
            for candidate in _dotted_paths():
                if candidate.replace(".", "_") == path:
                    key = "``" + candidate + "``"
        if key is None or key not in text:
            missing.append(name)
    assert not missing


def test_configuration_tables_are_generated_from_the_schema() -> None:
    """The key tables in docs/configuration.rst match rtserver.config (scripts/config_doc.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_doc", ROOT / "scripts" / "config_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "docs" / "configuration.rst").read_text()
    assert module.render(text) == text, "run: python scripts/config_doc.py"


def _dotted_paths() -> list[str]:
    return [key.name for key in config.schema_keys()]


def test_readme_holds_the_two_commands() -> None:
    """README shows the run command and the test command that CI runs."""
    readme = (ROOT / "README.rst").read_text()
    assert "pip install . && twistd -n rtserver" in readme
    assert "./scripts/test.sh" in readme
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


_SOURCES = ("rtserver", "tests", "bench", "scripts", "twisted", "tac", "docs")
_SUFFIXES = {".py", ".md", ".rst", ".js", ".tac", ".cfg", ".toml"}
_DOC_REF = re.compile(r'docs/([\w.-]+\.rst)(?:,? \(?"([^"]+)")?')


def _repository_texts() -> list[tuple[Path, str]]:
    out = [(ROOT / "README.rst", (ROOT / "README.rst").read_text())]
    for top in _SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if "node_modules" in path.parts or path.suffix not in _SUFFIXES:
                continue
            if path.is_file() and path != Path(__file__).resolve():
                out.append((path, path.read_text(encoding="utf-8", errors="replace")))
    return out


def _titles(rst: str) -> set[str]:
    lines = rst.splitlines()
    return {
        lines[i].strip()
        for i in range(len(lines) - 1)
        if lines[i].strip()
        and len(set(lines[i + 1].strip())) == 1
        and lines[i + 1].strip()[0] in "=-~^"
        and len(lines[i + 1].strip()) >= len(lines[i].strip())
    }


def test_every_docs_reference_resolves() -> None:
    """Each ``docs/<file>.rst`` (and ``, "Section"``) cited in the tree exists."""
    broken = []
    for path, text in _repository_texts():
        for m in _DOC_REF.finditer(text):
            doc = ROOT / "docs" / m.group(1)
            where = f"{path.relative_to(ROOT)}: {m.group(0)}"
            if not doc.is_file():
                broken.append(where)
            elif m.group(2) and m.group(2) not in _titles(doc.read_text()):
                broken.append(where)
    assert broken == []


# --- every reference resolves inside the repository ---------------------------------------

#: Notes that lived outside the repository; what the code relies on is in docs/*.rst now.
_OUTSIDE_NOTES = re.compile(
    r"(?<![\w-])(?:protocol|reliability|architecture|performance|sockjs|style)\.md\b"
    r"|\.\./shared\b"
)
_DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]+?\.rst\b")
_SKIP_DIRS = {".git", "node_modules", "__pycache__", ".hypothesis", "build", "dist",
              ".ruff_cache", ".mypy_cache", ".pytest_cache", "_trial_temp"}
_TEXT_SUFFIXES = {".py", ".rst", ".md", ".txt", ".cfg", ".toml", ".ini", ".tac", ".json",
                  ".sh", ".mjs", ".js", ".html", ".yaml", ".yml", ""}


def _repository_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in _TEXT_SUFFIXES and path != Path(__file__):
            files.append(path)
    return files


def _cites(pattern: re.Pattern[str]) -> list[tuple[str, int, str]]:
    found = []
    for path in _repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [
                (str(path.relative_to(ROOT)), number, m.group(0)) for m in pattern.finditer(line)
            ]
    return found


def test_no_reference_to_notes_outside_the_repository() -> None:
    """No file cites protocol.md, reliability.md, ... or ../shared: a clone has no such file."""
    cited = [f"{path}:{line}: {name}" for path, line, name in _cites(_OUTSIDE_NOTES)]
    assert cited == []


def test_every_cited_docs_file_exists() -> None:
    """Every ``docs/<name>.rst`` cited anywhere in the repository is a file of the repository."""
    missing = [
        f"{path}:{line}: {name}"
        for path, line, name in _cites(_DOCS_PATH)
        if not (ROOT / name).is_file()
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("pattern", "line", "hits"),
    [
        (_OUTSIDE_NOTES, "Semantics follow Centrifugo (protocol.md §6.2).", ["protocol.md"]),
        (_OUTSIDE_NOTES, "see /work/../shared/docs for it", ["../shared"]),
        (_OUTSIDE_NOTES, "``style.md`` and sockjs.md", ["style.md", "sockjs.md"]),
        (_OUTSIDE_NOTES, "bench/RESULTS.md and my-protocol.md", []),
        (_DOCS_PATH, "`docs/cluster.rst <docs/cluster.rst>`_", ["docs/cluster.rst"] * 2),
        (_DOCS_PATH, "see docs/api/server.rst, not mydocs/x.rst", ["docs/api/server.rst"]),
    ],
)
def test_reference_patterns(pattern: re.Pattern[str], line: str, hits: list[str]) -> None:
    """The patterns find the citations they are meant to and nothing else."""
    assert [m.group(0) for m in pattern.finditer(line)] == hits


@pytest.mark.parametrize(
    "name",
    ["README.rst", "CHANGELOG.rst", *sorted(p.name for p in (ROOT / "docs").glob("*.rst"))],
)
def test_rst_parses_cleanly(name: str) -> None:
    """Each reST document parses without a warning (a broken table renders as an error)."""
    import io

    import docutils.core

    path = ROOT / name if (ROOT / name).is_file() else ROOT / "docs" / name
    warnings = io.StringIO()
    docutils.core.publish_doctree(
        path.read_text(),
        source_path=str(path),
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5},
    )
    assert warnings.getvalue() == ""


# --- images -------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Screenshots are committed to the repository: keep each one small.
_MAX_IMAGE_BYTES = 100_000


def _image_uris(path: Path) -> list[str]:
    """The ``image`` and ``figure`` URIs of a reST document, as docutils parses them."""
    import docutils.core
    import docutils.nodes

    doctree = docutils.core.publish_doctree(
        path.read_text(), source_path=str(path), settings_overrides={"report_level": 5}
    )
    return [str(node["uri"]) for node in doctree.findall(docutils.nodes.image)]


def _rst_documents() -> list[Path]:
    return [ROOT / "README.rst", ROOT / "CHANGELOG.rst", *sorted((ROOT / "docs").glob("*.rst"))]


def test_every_image_in_the_docs_exists() -> None:
    """Each image a document embeds is a small PNG in the repository, next to the document."""
    broken = []
    for doc in _rst_documents():
        for uri in _image_uris(doc):
            image = (doc.parent / uri).resolve()
            where = f"{doc.relative_to(ROOT)}: {uri}"
            if "://" in uri or ROOT not in image.parents or not image.is_file():
                broken.append(f"{where}: not a file of the repository")
            elif image.read_bytes()[:8] != _PNG_SIGNATURE:
                broken.append(f"{where}: not a PNG")
            elif image.stat().st_size > _MAX_IMAGE_BYTES:
                broken.append(f"{where}: {image.stat().st_size} bytes")
    assert broken == []


def test_every_docs_image_is_embedded() -> None:
    """No image in docs/_static/ is left behind by a page that stopped showing it."""
    embedded = {(doc.parent / uri).resolve() for doc in _rst_documents() for uri in _image_uris(doc)}
    orphans = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "docs" / "_static").glob("*")
        if path.resolve() not in embedded
    )
    assert orphans == []


def test_admin_page_screenshots_are_embedded() -> None:
    """docs/admin.rst shows every page the browser test photographs."""
    text = (ROOT / "tests" / "browser" / "test_chromium_admin.py").read_text()
    pages = re.search(r"^PAGES = \(([^)]*)\)", text, re.M)
    assert pages is not None
    names = re.findall(r'"([\w-]+)"', pages.group(1))
    assert len(names) == 5
    uris = _image_uris(ROOT / "docs" / "admin.rst")
    assert [f"_static/{name}.png" for name in names] == uris
