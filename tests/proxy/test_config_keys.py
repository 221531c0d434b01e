"""Proxy configuration keys as Centrifugo v6 spells them (docs/proxies.rst, "Configuration")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rtserver import config
from rtserver.cli import main

#: Shapes of the examples in Centrifugo v6's proxy documentation.
CENTRIFUGO_EXAMPLES: list[dict[str, Any]] = [
    {
        "client": {
            "proxy": {
                "connect": {
                    "enabled": True,
                    "endpoint": "http://localhost:3000/centrifugo/connect",
                    "timeout": "1s",
                    "http_headers": ["Cookie", "Authorization"],
                },
                "refresh": {"enabled": True, "endpoint": "http://localhost:3000/centrifugo/refresh"},
            }
        }
    },
    {
        "channel": {
            "proxy": {
                "subscribe": {"endpoint": "http://localhost:3000/centrifugo/subscribe"},
                "publish": {"endpoint": "http://localhost:3000/centrifugo/publish"},
                "sub_refresh": {"endpoint": "http://localhost:3000/centrifugo/sub_refresh"},
            },
            "namespaces": [
                {
                    "name": "sun",
                    "subscribe_proxy_enabled": True,
                    "publish_proxy_enabled": True,
                    "sub_refresh_proxy_enabled": True,
                }
            ],
        },
        "rpc": {
            "proxy": {"endpoint": "http://localhost:3000/centrifugo/rpc"},
            "without_namespace": {"proxy_enabled": True},
        },
    },
    {
        "proxies": [
            {"name": "subscribe1", "endpoint": "http://localhost:3001/centrifugo/subscribe"},
            {"name": "rpc1", "endpoint": "http://localhost:3001/centrifugo/rpc",
             "timeout": "500ms", "emulated_headers": ["X-Token"],
             "http": {"static_headers": {"X-Service": "rt"}}, "binary_encoding": True,
             "include_connection_meta": True},
        ],
        "channel": {"namespaces": [{"name": "ns1", "subscribe_proxy_enabled": True,
                                    "subscribe_proxy_name": "subscribe1"}]},
        "rpc": {"namespace_boundary": "::",
                "namespaces": [{"name": "rpc_ns", "proxy_enabled": True, "proxy_name": "rpc1"}],
                "ping": {"enabled": True, "method": "ping"}},
    },
]


@pytest.mark.parametrize("example", CENTRIFUGO_EXAMPLES)
def test_centrifugo_examples_load_and_every_reference_resolves(example: dict[str, Any]) -> None:
    cfg = config.from_mapping(example)
    names = {kind: set(named) for kind, named in config.proxy_names(cfg).items()}
    config.check_proxy_references(cfg, names)


def test_values_land_where_the_client_reads_them() -> None:
    cfg = config.from_mapping(CENTRIFUGO_EXAMPLES[2])
    (rpc1,) = [p for p in cfg.proxies if p.name == "rpc1"]
    assert (rpc1.timeout, rpc1.binary_encoding, rpc1.include_connection_meta) == (0.5, True, True)
    assert rpc1.http.static_headers == {"X-Service": "rt"}
    assert cfg.rpc.namespace_boundary == "::" and cfg.rpc.ping.enabled
    assert cfg.channel.namespaces[0].subscribe_proxy_name == "subscribe1"


def test_environment_sets_maps_and_named_proxies() -> None:
    env = {
        "RTSERVER_CLIENT_PROXY_CONNECT_ENABLED": "true",
        "RTSERVER_CLIENT_PROXY_CONNECT_ENDPOINT": "http://app/connect",
        "RTSERVER_CLIENT_PROXY_CONNECT_HTTP_STATIC_HEADERS": '{"X-A": "1"}',
        "RTSERVER_CLIENT_PROXY_CONNECT_HTTP_HEADERS": "Cookie Authorization",
        "CENTRIFUGO_PROXIES": '[{"name": "p", "endpoint": "http://p/"}]',
    }
    cfg, _ = config.load(environ=env)
    connect = cfg.client.proxy.connect
    assert connect.enabled and connect.http.static_headers == {"X-A": "1"}
    assert connect.http_headers == ["Cookie", "Authorization"]
    assert [p.name for p in cfg.proxies] == ["p"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"client": {"proxy": {"connect": {"enabled": True}}}},
         "client.proxy.connect.endpoint: expected an http://, https:// or grpc:// URL"),
        ({"client": {"proxy": {"refresh": {"enabled": True, "endpoint": "tcp://b:9000"}}}},
         "client.proxy.refresh.endpoint: expected an http://, https:// or grpc:// URL"),
        ({"proxies": [{"name": "a", "endpoint": "http://a"}, {"name": "a", "endpoint": "http://b"}]},
         "proxies[1].name: proxy 'a' is defined twice"),
        ({"proxies": [{"endpoint": "http://a"}]}, "proxies[0].name"),
        ({"client": {"proxy": {"connect": {"endpoint": "http://a", "http": {"static_headers": []}}}}},
         "client.proxy.connect.http.static_headers: expected an object of strings"),
        ({"rpc": {"namespaces": [{"name": "x"}]}}, "rpc.namespaces[0].name"),
    ],
)
def test_invalid_proxy_settings_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping(data)
    assert message in str(err.value)


def test_checkconfig_refuses_a_namespace_naming_a_missing_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"channel": {"namespaces": [{"name": "ns1", "publish_proxy_enabled": True}]},
            "http_api": {"key": "k"}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    assert main(["checkconfig", str(path)]) == 1
    assert "channel.namespaces[0].publish_proxy_name: no publish proxy named 'default'" in (
        capsys.readouterr().err
    )
