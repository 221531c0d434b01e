"""docs/configuration.rst, "Differences from Centrifugo", says what the loader really does.

The keys the section lists as not read must each be reported as an unknown key by the
loader that ``twistd rtserver`` and ``rtserver checkconfig`` use; the rtserver keys the
section names must exist; and Centrifugo configurations using the features the docs
promise load without a single warning. A feature implemented later, or a key renamed,
makes these tests fail until the section is corrected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from harness import make_certificate

from rtserver import config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.rst"

# The placeholders the section defines, expanded to the objects they stand for.
PROXIES = [
    "client.proxy.connect",
    "client.proxy.refresh",
    "channel.proxy.subscribe",
    "channel.proxy.publish",
    "channel.proxy.sub_refresh",
    "rpc.proxy",
    "proxies[]",
]
NAMESPACES = ["channel.without_namespace", "channel.namespaces[]"]
REDIS = ["engine.redis", "broker.redis", "presence_manager.redis"]
TLS = [
    "http_server.tls",
    "grpc_api.tls",
    "uni_grpc.tls",
    *(f"{r}.{t}" for r in REDIS for t in ("tls", "sentinel_tls")),
    "broker.nats.tls",
    *(f"{p}.grpc.tls" for p in PROXIES),
    *(f"{p}.http.tls" for p in PROXIES),
]
PLACEHOLDERS = {"<proxy>": PROXIES, "<ns>": NAMESPACES, "<tls>": TLS}

# Entries of a list need what the loader checks in every entry.
_ENTRY = {
    "proxies": {"name": "named", "endpoint": "http://127.0.0.1:9/"},
    "namespaces": {"name": "ns"},
    "consumers": {"name": "queue"},
}
_LITERAL = re.compile(r"``([^`]+)``")
_KEY = re.compile(r"[a-z0-9_<>]+(?:\[\])?(?:\.[a-z0-9_<>]+(?:\[\])?)*")


def _section() -> str:
    """The text from the section's title to the next title of the same level (or the end)."""
    text = DOC.read_text(encoding="utf-8")
    title = "\nDifferences from Centrifugo\n---"
    assert title in text
    rest = text[text.index(title) + len(title) :]
    following = re.search(r"\n\S[^\n]*\n-{3,}\n", rest)
    return rest if following is None else rest[: following.start()]


def _unknown_block() -> str:
    section = _section()
    assert ".. unknown-keys-start" in section and ".. unknown-keys-end" in section, (
        "the section lists the Centrifugo keys rtserver does not read between "
        "'.. unknown-keys-start' and '.. unknown-keys-end'"
    )
    return section.split(".. unknown-keys-start", 1)[1].split(".. unknown-keys-end", 1)[0]


def _expand(key: str) -> list[str]:
    for name, targets in PLACEHOLDERS.items():
        if name in key:
            return [k for t in targets for k in _expand(key.replace(name, t, 1))]
    return [key]


def documented_unknown_keys() -> list[str]:
    """Every key named in the terms of the section's definition list, placeholders expanded."""
    keys: list[str] = []
    for line in _unknown_block().splitlines():
        if not line.startswith("``"):
            continue  # a definition (indented) or a blank line: prose, not a claim
        for literal in _LITERAL.findall(line):
            assert _KEY.fullmatch(literal), f"not a key path: {literal!r} in {line!r}"
            keys.extend(_expand(literal))
    return keys


def _tree(path: str, value: Any) -> tuple[dict[str, Any], str]:
    """A config mapping setting ``path`` (``[]``: one list entry) and its warning name."""
    root: dict[str, Any] = {}
    node = root
    parts = path.split(".")
    for part in parts[:-1]:
        if part.endswith("[]"):
            name = part[:-2]
            child = dict(_ENTRY.get(name, {}))
            node[name] = [child]
        else:
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value
    return root, path.replace("[]", "[0]")


def _load(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    """Load ``data`` from a file as ``rtserver checkconfig`` does; the warnings."""
    data = config._merge({"http_api": {"key": "api-key"}}, data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _, warnings = config.load(path, environ={})
    return warnings


def test_the_section_lists_unknown_keys() -> None:
    """The marked list exists and is not empty (a stale prose list has no markers)."""
    keys = documented_unknown_keys()
    assert len(keys) > 50
    assert len(set(keys)) == len(keys), "a key is listed twice"


@pytest.mark.parametrize(
    "key",
    documented_unknown_keys()
    if "unknown-keys-start" in DOC.read_text(encoding="utf-8")
    else ["<missing list>"],
)
def test_documented_unknown_key_is_reported_unknown(tmp_path: Path, key: str) -> None:
    """Each key the docs say rtserver does not read gets the loader's unknown-key warning."""
    assert key != "<missing list>", "docs/configuration.rst has no marked list"
    data, name = _tree(key, True)
    try:
        warnings = _load(tmp_path, data)
    except config.ConfigError as e:
        pytest.fail(f"{key}: rtserver reads this key ({e}); move it out of the list")
    # The loader names the outermost unknown object: ``graphite``, not ``graphite.host``.
    reported = {w.removeprefix("unknown key ").removesuffix(" (ignored)") for w in warnings}
    ancestors = {name[: m.start()] for m in re.finditer(r"\.|$", name)}
    assert reported & ancestors, (
        f"{key} loads without an unknown-key warning: rtserver reads it now ({warnings})"
    )


def _rtserver_paths() -> set[str]:
    """Every key rtserver reads and every object on the way to one."""
    out: set[str] = set()
    for key in config.schema_keys():
        for i in range(1, len(key.path) + 1):
            out.add(".".join(key.path[:i]))
    return out


def test_keys_named_as_read_exist() -> None:
    """Dotted keys the section names outside the unknown list are keys rtserver reads."""
    section = _section()
    prose = section.replace(_unknown_block(), "")
    known = _rtserver_paths()
    named = [
        lit
        for lit in _LITERAL.findall(prose)
        if "." in lit and "<" not in lit and _KEY.fullmatch(lit)
    ]
    assert "http_server.internal_port" in named
    missing = [k for k in named if k.replace("[]", "") not in known]
    assert not missing, f"named as read but not in rtserver.config: {missing}"


def test_internal_port_string_is_read(tmp_path: Path) -> None:
    """As documented: Centrifugo's string ``internal_port`` is read like the number.

    ``"9000"`` is 9000, ``""`` none; any other string stops the server naming the key.
    """
    for value, port in (("9000", 9000), (9000, 9000), ("", 0)):
        data = {"http_server": {"internal_port": value}}
        assert _load(tmp_path, data) == []
        assert config.from_mapping(data).http_server.internal_port == port
    with pytest.raises(config.ConfigError, match=r"http_server\.internal_port: expected a number"):
        _load(tmp_path, {"http_server": {"internal_port": "nine"}})


def _supported(tmp_path: Path) -> dict[str, dict[str, Any]]:
    cert, key, _ = make_certificate(tmp_path / "tls")
    proxy_grpc = {
        "endpoint": "grpc://127.0.0.1:10001",
        "timeout": "2s",
        "grpc": {
            "tls": {"enabled": True, "server_name": "backend"},
            "credentials_key": "token",
            "credentials_value": "t",
            "compression": True,
            "static_metadata": {"X-Tenant": "acme"},
        },
    }
    return {
        "redis address as one string, TLS": {
            "engine": {
                "type": "redis",
                "redis": {
                    "address": "rediss://127.0.0.1:6380/1",
                    "prefix": "app",
                    "client_name": "rt",
                    "tls": {"enabled": True, "insecure_skip_verify": True, "server_name": "r"},
                },
            }
        },
        "redis sentinel": {
            "engine": {
                "type": "redis",
                "redis": {
                    "sentinel_address": ["127.0.0.1:26379"],
                    "sentinel_master_name": "mymaster",
                    "sentinel_password": "p",
                    "sentinel_tls": {"enabled": False},
                },
            }
        },
        "redis cluster": {
            "engine": {
                "type": "redis",
                "redis": {"cluster_address": ["127.0.0.1:7000", "127.0.0.1:7001"]},
            }
        },
        "nats broker, redis presence manager": {
            "broker": {
                "enabled": True,
                "type": "nats",
                "nats": {
                    "url": "tls://127.0.0.1:4222,tls://127.0.0.1:4223",
                    "tls": {"enabled": True},
                    "allow_wildcards": True,
                },
            },
            "presence_manager": {
                "enabled": True,
                "type": "redis",
                "redis": {"address": ["127.0.0.1:6379"]},
            },
        },
        "redis broker": {
            "broker": {"enabled": True, "type": "redis", "redis": {"address": ["127.0.0.1:6379"]}}
        },
        "proxies": {
            "client": {
                "proxy": {
                    "connect": {
                        "enabled": True,
                        "endpoint": "http://127.0.0.1:9000/connect",
                        "http_headers": ["Cookie"],
                        "http": {
                            "static_headers": {"X-A": "b"},
                            "tls": {"enabled": True, "server_name": "backend"},
                        },
                    },
                    "refresh": {"endpoint": "http://127.0.0.1:9000/refresh"},
                }
            },
            "channel": {
                "proxy": {
                    "subscribe": proxy_grpc,
                    "publish": proxy_grpc,
                    "sub_refresh": proxy_grpc,
                },
                "without_namespace": {
                    "subscribe_proxy_enabled": True,
                    "publish_proxy_enabled": True,
                    "sub_refresh_proxy_enabled": True,
                },
                "namespaces": [
                    {"name": "ns", "publish_proxy_enabled": True, "publish_proxy_name": "other"}
                ],
            },
            "rpc": {
                "proxy": {"endpoint": "http://127.0.0.1:9000/rpc"},
                "without_namespace": {"proxy_enabled": True},
                "namespaces": [{"name": "rpcns", "proxy_enabled": True}],
                "ping": {"enabled": True},
            },
            "proxies": [{"name": "other", "endpoint": "http://127.0.0.1:9001/"}],
        },
        "JWKS and previous HMAC keys": {
            "client": {
                "token": {
                    "jwks_public_endpoint": "https://idp.example.com/jwks.json",
                    "hmac_secret_key": "a" * 32,
                    "hmac_previous_secret_key": "b" * 32,
                    "hmac_previous_secret_key_valid_until": 1900000000,
                    "audience": "app",
                    "issuer_regex": "^https://idp",
                },
                "subscription_token": {"enabled": True, "hmac_secret_key": "c" * 32},
            }
        },
        "admin UI on the internal port": {
            "admin": {"enabled": True, "password": "p", "secret": "s"},
            "http_server": {"internal_port": "9001"},  # Centrifugo's type: a string
        },
        "HTTP API in transport error mode": {"http_api": {"error_mode": "transport"}},
        "shutdown timeout": {"shutdown": {"timeout": "10s"}},
        "user id from a proxy's header": {"client": {"user_id_http_header": "X-User-Id"}},
        "GRPC server API and uni_grpc": {
            "grpc_api": {"enabled": True, "port": 10000, "key": "k", "error_mode": "transport"},
            "uni_grpc": {"enabled": True, "port": 11000},
        },
        "TLS, HTTP/3 and WebTransport": {
            "http_server": {
                "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
                "http3": {"enabled": True},
            },
            "webtransport": {"enabled": True},
        },
        "mutual TLS on the server ports": {
            "http_server": {
                "tls": {
                    "enabled": True,
                    "cert_pem": str(cert),
                    "key_pem": str(key),
                    "client_ca_pem": str(cert),
                },
            },
            "grpc_api": {
                "enabled": True,
                "key": "k",
                "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key),
                        "client_ca_pem": cert.read_text()},
            },
            "uni_grpc": {
                "enabled": True,
                "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key),
                        "client_ca_pem": str(cert)},
            },
        },
        "transports": {
            "http_stream": {"enabled": True},
            "sse": {"enabled": True},
            "uni_websocket": {"enabled": True},
            "uni_sse": {"enabled": True},
            "uni_http_stream": {"enabled": True},
            "websocket": {"write_timeout": "2s"},
            "prometheus": {"enabled": True},
            "health": {"enabled": True},
        },
        "redis_stream consumer": {
            "consumers": [
                {
                    "name": "events",
                    "enabled": True,
                    "type": "redis_stream",
                    "redis_stream": {
                        "address": "redis://127.0.0.1:6379",
                        "password": "p",
                        "streams": ["api"],
                        "consumer_group": "centrifugo",
                        "visibility_timeout": "60s",
                        "num_workers": 4,
                        "payload_value": "data",
                        "method_value": "m",
                        "publication_data_mode": {
                            "enabled": False,
                            "channels_value": "centrifugo-channels",
                            "idempotency_key_value": "centrifugo-idempotency-key",
                            "delta_value": "centrifugo-delta",
                            "version_value": "centrifugo-version",
                            "version_epoch_value": "centrifugo-version-epoch",
                            "tags_value_prefix": "centrifugo-tag-",
                        },
                    },
                },
                {"name": "later", "enabled": False, "type": "kafka"},
            ]
        },
        "delta, tag filters, data format": {
            "channel": {
                "without_namespace": {
                    "allowed_delta_types": ["fossil"],
                    "delta_publish": True,
                    "allow_tags_filter": True,
                    "publication_data_format": "json_object",
                }
            }
        },
    }


def test_documented_features_load_without_warnings(tmp_path: Path) -> None:
    """Centrifugo configs of the features the docs promise load with no warning at all."""
    noisy = {}
    for name, data in _supported(tmp_path).items():
        warnings = _load(tmp_path, data)
        if warnings:
            noisy[name] = warnings
    assert not noisy


def test_placeholders_are_defined_as_the_test_expands_them() -> None:
    """``<proxy>``, ``<ns>`` and ``<tls>`` mean in the docs what this test expands them to."""
    prose = _section().replace(_unknown_block(), "")
    named = set(_LITERAL.findall(prose))
    # As the section words them: "each ``proxies`` entry", "the Redis sections' ``tls``
    # and ``sentinel_tls``", "``<proxy>.grpc.tls``".
    written = {
        *(target.removesuffix("[]") for target in PROXIES + NAMESPACES),
        *(target for target in TLS if not target.startswith(tuple(REDIS + PROXIES))),
        "tls",
        "sentinel_tls",
        "<proxy>.grpc.tls",
        "<proxy>.http.tls",
    }
    assert written - named == set()
