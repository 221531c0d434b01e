"""Packaging and launch: the twistd plugin, its options, the .tac file."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from twisted.application.service import IServiceCollection, IServiceMaker, loadApplication
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from rtserver import config as rtconfig
from rtserver import service, tap

ROOT = Path(__file__).resolve().parent.parent


def test_plugin_is_discovered() -> None:
    """``twistd`` finds a service maker named rtserver."""
    makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
    assert "rtserver" in makers
    assert makers["rtserver"].module == "rtserver.tap"


def test_twistd_lists_rtserver() -> None:
    """``twistd --help`` in a fresh process lists the rtserver command."""
    twistd = Path(sys.executable).with_name("twistd")
    out = subprocess.run(
        [str(twistd), "--help"], capture_output=True, text=True, timeout=60, cwd="/"
    ).stdout
    assert "rtserver" in out


def test_wheel_ships_plugin_without_package_markers(tmp_path: Path) -> None:
    """A normal install carries twisted/plugins/rtserver_plugin.py and no twisted __init__."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = tmp_path.glob("rtserver-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/rtserver_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "rtserver/py.typed" in names


def test_options_defaults_and_listen() -> None:
    """Without options: port 8000, memory engine; --listen is repeatable."""
    opts = tap.Options()
    opts.parseOptions([])
    cfg = opts["config_object"]
    assert service.default_listen(cfg) == ["tcp:8000"]
    assert cfg.engine.type == "memory"
    opts = tap.Options()
    opts.parseOptions(["--listen", "tcp:9000", "-l", "ssl:9443:privateKey=k.pem", "--port", "8100"])
    assert opts["listen"] == ["tcp:9000", "ssl:9443:privateKey=k.pem"]
    assert opts["config_object"].http_server.port == 8100


def test_bad_config_is_a_usage_error_naming_the_key(tmp_path: Path) -> None:
    """A wrong value stops start-up with a message naming the key."""
    path = tmp_path / "config.json"
    path.write_text('{"client": {"ping_interval": "soon"}}')
    opts = tap.Options()
    with pytest.raises(UsageError, match=r"client\.ping_interval"):
        opts.parseOptions(["--config", str(path)])


def test_make_service_builds_listeners_without_starting() -> None:
    """MakeService returns a MultiService with the node and one listener per --listen."""
    opts = tap.Options()
    opts.parseOptions(["-l", "tcp:0:interface=127.0.0.1", "-l", "tcp:0:interface=127.0.0.1"])
    svc = tap.makeService(opts)
    children = list(IServiceCollection(svc))
    assert len(children) == 3
    assert not svc.running


def test_tls_settings_make_an_ssl_listener() -> None:
    """http_server.tls becomes an ssl: endpoint on the same port."""
    cfg = rtconfig.from_mapping(
        {"http_server": {"port": 8443, "tls": {"enabled": True, "cert_pem_file": "c.pem",
                                                "key_pem_file": "k.pem"}}}
    )
    assert service.default_listen(cfg) == ["ssl:8443:privateKey=k.pem:certKey=c.pem"]


def test_tac_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """tac/rtserver.tac builds an Application (not started)."""
    monkeypatch.delenv("RTSERVER_CONFIG", raising=False)
    application = loadApplication(str(ROOT / "tac" / "rtserver.tac"), "python")
    services = list(IServiceCollection(application))
    assert services and services[0].name == "rtserver"


def test_cluster_node_tac_builds_a_redis_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """tac/cluster-node.tac builds a node on the Redis engine from its example config."""
    monkeypatch.delenv("RTSERVER_CONFIG", raising=False)
    monkeypatch.setenv("RTSERVER_NODE_NAME", "node-7")
    application = loadApplication(str(ROOT / "tac" / "cluster-node.tac"), "python")
    top = next(iter(IServiceCollection(application)))
    assert top.node.name == "node-7"
    assert type(top.node.engine).__name__ == "RedisEngine" and top.node.shared_engine
