"""The user docs stay true to the code: every config key documented, commands present."""

from __future__ import annotations

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
