"""The user docs stay true to the code: every config key documented, commands present."""

from __future__ import annotations

import re
from pathlib import Path

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
#: Background notes that never were part of the repository.
_NOTES = re.compile(r"\b(?:protocol|reliability|architecture|performance|sockjs|style)\.md\b")
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


def test_no_file_cites_notes_outside_the_repository() -> None:
    """Code, tests, benchmarks and docs cite only documents a clone contains."""
    cited = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for path, text in _repository_texts()
        for m in _NOTES.finditer(text)
    ]
    assert cited == []


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
