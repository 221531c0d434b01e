"""Tests for ``rtserver.config``: defaults, file formats, env vars, validation, v5 keys."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtserver import config
from rtserver.config import ConfigError


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _load(data: dict[str, Any], tmp_path: Path, **kwargs: Any) -> tuple[config.Config, list[str]]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    kwargs.setdefault("environ", {})
    return config.load(path, **kwargs)


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(data)
    return str(info.value)


# --- defaults --------------------------------------------------------------------------

#: Centrifugo v6's defaults for the keys this server implements (docs/configuration.rst).
PROTOCOL_DEFAULTS: dict[str, Any] = {
    "http_server.address": "",
    "http_server.port": 8000,
    "http_server.tls.enabled": False,
    "log.level": "info",
    "client.token.hmac_secret_key": "",
    "client.token.rsa_public_key": "",
    "client.token.ecdsa_public_key": "",
    "client.token.audience": "",
    "client.token.issuer": "",
    "client.token.user_id_claim": "",
    "client.subscription_token.enabled": False,
    "client.subscription_token.hmac_secret_key": "",
    "client.allowed_origins": [],
    "client.allow_anonymous_connect_without_token": False,
    "client.disallow_anonymous_connection_tokens": False,
    "client.insecure": False,
    "client.ping_interval": 25.0,
    "client.pong_timeout": 8.0,
    "client.expired_close_delay": 25.0,
    "client.expired_sub_close_delay": 25.0,
    "client.stale_close_delay": 10.0,
    "client.channel_limit": 128,
    "client.queue_max_size": 1048576,
    "client.presence_update_interval": 27.0,
    "client.history_max_publication_limit": 300,
    "client.recovery_max_publication_limit": 300,
    "client.user_connection_limit": 0,
    "client.connect_include_server_time": False,
    "client.subscribe_to_user_personal_channel.enabled": False,
    "client.subscribe_to_user_personal_channel.personal_channel_namespace": "",
    "client.subscribe_to_user_personal_channel.single_connection": False,
    "channel.without_namespace": config.ChannelOptions(),
    "channel.namespaces": [],
    "channel.history_meta_ttl": 720 * 3600.0,
    "channel.max_length": 255,
    "channel.private_prefix": "$",
    "channel.namespace_boundary": ":",
    "channel.user_boundary": "#",
    "channel.user_separator": ",",
    "http_api.key": "",
    "http_api.insecure": False,
    "http_api.handler_prefix": "/api",
    "http_api.disabled": False,
    "websocket.disabled": False,
    "websocket.handler_prefix": "/connection/websocket",
    "websocket.message_size_limit": 65536,
    "websocket.write_timeout": 1.0,
    "health.handler_prefix": "/health",
    "engine.type": "memory",
}


@pytest.mark.parametrize("key", sorted(PROTOCOL_DEFAULTS))
def test_default_matches_protocol(key: str) -> None:
    """Each Centrifugo v6 default listed above is the built-in default."""
    assert _get(config.Config(), key) == PROTOCOL_DEFAULTS[key]


def test_channel_options_all_off_by_default() -> None:
    """Channel options default to false/0/"" (docs/configuration.rst, "Channel options").

    The exceptions: the recovery mode, and the proxy names, "default" as in Centrifugo.
    """
    opts = config.ChannelOptions()
    names = {"subscribe_proxy_name", "publish_proxy_name", "sub_refresh_proxy_name"}
    others = set(opts.__dataclass_fields__) - {"force_recovery_mode"} - names
    assert not any(getattr(opts, name) for name in others)
    assert opts.force_recovery_mode == "stream"
    assert {getattr(opts, name) for name in names} == {"default"}
    assert not opts.history_enabled


def test_health_enabled_by_default_deliberately() -> None:
    """``health.enabled`` is on by default, a documented divergence from Centrifugo."""
    assert config.Config().health.enabled is True


def test_load_without_sources_gives_defaults() -> None:
    """Loading with no file, no env and no overrides gives ``Config()``."""
    cfg, _ = config.load(environ={})
    assert cfg == config.Config()


def test_default_tree_round_trips() -> None:
    """``default_tree()`` fed back through ``from_mapping`` gives the defaults."""
    tree = config.default_tree()
    assert config.from_mapping(tree) == config.Config()
    assert config.from_mapping(json.loads(json.dumps(tree))) == config.Config()


def test_default_tree_renders_durations_as_strings() -> None:
    """Durations in ``default_tree()`` are written like ``"25s"`` and ``"720h"``."""
    tree = config.default_tree()
    assert tree["client"]["ping_interval"] == "25s"
    assert tree["channel"]["history_meta_ttl"] == "720h"
    assert tree["websocket"]["write_timeout"] == "1s"


def test_default_tree_loads_without_unknown_key_warnings(tmp_path: Path) -> None:
    """Every key of ``default_tree()`` is known to the loader."""
    _, warnings = _load(config.default_tree(), tmp_path)
    assert not [w for w in warnings if "unknown key" in w]


# --- file formats ----------------------------------------------------------------------

SAMPLE: dict[str, Any] = {
    "client": {
        "token": {"hmac_secret_key": "secret"},
        "allowed_origins": ["http://localhost:3000"],
        "ping_interval": "20s",
    },
    "http_api": {"key": "api-key"},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True},
        "namespaces": [
            {
                "name": "chat",
                "presence": True,
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": True,
            }
        ],
    },
    "engine": {"type": "memory"},
}

SAMPLE_TOML = """\
[client]
allowed_origins = ["http://localhost:3000"]
ping_interval = "20s"

[client.token]
hmac_secret_key = "secret"

[http_api]
key = "api-key"

[channel.without_namespace]
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "chat"
presence = true
history_size = 100
history_ttl = "300s"
force_recovery = true

[engine]
type = "memory"
"""


def _write_sample(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"config{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(SAMPLE), encoding="utf-8")
    elif suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(SAMPLE), encoding="utf-8")
    else:
        path.write_text(SAMPLE_TOML, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".toml"])
def test_file_formats_load_the_same_config(tmp_path: Path, suffix: str) -> None:
    """JSON, YAML and TOML files with the same content give the same config."""
    cfg, warnings = config.load(_write_sample(tmp_path, suffix), environ={})
    assert cfg == config.from_mapping(SAMPLE)
    assert cfg.client.token.hmac_secret_key == "secret"
    assert cfg.client.ping_interval == 20.0
    assert cfg.channel.namespaces[0].name == "chat"
    assert cfg.channel.namespaces[0].history_ttl == 300.0
    assert not [w for w in warnings if "unknown key" in w]


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    """A missing config file raises ConfigError naming the file."""
    with pytest.raises(ConfigError, match=re.escape("nope.json")):
        config.load(tmp_path / "nope.json", environ={})


@pytest.mark.parametrize(
    ("name", "text"),
    [("bad.json", "{not json"), ("bad.yaml", "a: [1"), ("bad.toml", "a = ")],
)
def test_unparsable_file_is_config_error(tmp_path: Path, name: str, text: str) -> None:
    """A file that does not parse raises ConfigError naming the file."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(name)):
        config.load(path, environ={})


def test_top_level_must_be_object(tmp_path: Path) -> None:
    """A file whose top level is not an object is rejected."""
    path = tmp_path / "list.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be an object"):
        config.load(path, environ={})


def test_empty_files_mean_defaults(tmp_path: Path) -> None:
    """Empty JSON and YAML files load as the defaults."""
    for name in ("empty.json", "empty.yaml"):
        path = tmp_path / name
        path.write_text("", encoding="utf-8")
        assert config.load(path, environ={})[0] == config.Config()


# --- environment -----------------------------------------------------------------------


def test_env_rtserver_prefix() -> None:
    """``RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY`` sets ``client.token.hmac_secret_key``."""
    cfg, _ = config.load(environ={"RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY": "s3"})
    assert cfg.client.token.hmac_secret_key == "s3"


def test_env_centrifugo_prefix() -> None:
    """``CENTRIFUGO_*`` variables are accepted too."""
    cfg, _ = config.load(environ={"CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": "c"})
    assert cfg.client.token.hmac_secret_key == "c"


def test_env_rtserver_wins_over_centrifugo() -> None:
    """When both prefixes set a key, the ``RTSERVER_`` value wins."""
    environ = {
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": "c",
        "RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY": "r",
    }
    assert config.load(environ=environ)[0].client.token.hmac_secret_key == "r"


def test_env_space_separated_list() -> None:
    """String arrays come from space-separated env values."""
    environ = {"RTSERVER_CLIENT_ALLOWED_ORIGINS": " http://a.example  http://b.example "}
    cfg, _ = config.load(environ=environ)
    assert cfg.client.allowed_origins == ["http://a.example", "http://b.example"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_env_bool_parsing(raw: str, expected: bool) -> None:
    """Boolean env values accept true/false, 1/0, yes/no, on/off."""
    cfg, _ = config.load(environ={"RTSERVER_CLIENT_INSECURE": raw})
    assert cfg.client.insecure is expected


def test_env_bad_bool_names_variable() -> None:
    """An unparsable boolean env value names the variable."""
    with pytest.raises(ConfigError, match="RTSERVER_CLIENT_INSECURE"):
        config.load(environ={"RTSERVER_CLIENT_INSECURE": "maybe"})


def test_env_int_and_bad_int() -> None:
    """Integer env values are parsed; bad ones name the variable."""
    assert config.load(environ={"RTSERVER_HTTP_SERVER_PORT": "9000"})[0].http_server.port == 9000
    with pytest.raises(ConfigError, match="RTSERVER_HTTP_SERVER_PORT"):
        config.load(environ={"RTSERVER_HTTP_SERVER_PORT": "eighty"})


@pytest.mark.parametrize(("value", "port"), [("9000", 9000), ("", 0), (9000, 9000), (0, 0)])
def test_internal_port_as_centrifugo_types_it(tmp_path: Path, value: Any, port: int) -> None:
    """Centrifugo's ``internal_port`` is a string: digits are the port, ``""`` is none."""
    cfg, warnings = _load({"http_server": {"internal_port": value}, "http_api": {"key": "k"}},
                          tmp_path)
    assert (cfg.http_server.internal_port, warnings) == (port, [])


@pytest.mark.parametrize("value", ["nine", " 9000", "9000 ", "-1", "+9000", "9_000", "9e3", True])
def test_internal_port_other_values_are_refused(value: Any) -> None:
    assert _error({"http_server": {"internal_port": value}}).startswith(
        "http_server.internal_port: expected "
    )


def test_internal_port_out_of_range_string() -> None:
    assert _error({"http_server": {"internal_port": "65536"}}) == (
        "http_server.internal_port: must be between 0 and 65535"
    )


def test_env_internal_port_like_centrifugo() -> None:
    """``CENTRIFUGO_HTTP_SERVER_INTERNAL_PORT=""`` is no internal port; text names the variable."""
    for raw, port in (("9001", 9001), ("", 0)):
        env = {"CENTRIFUGO_HTTP_SERVER_INTERNAL_PORT": raw}
        assert config.load(environ=env)[0].http_server.internal_port == port
    with pytest.raises(ConfigError, match="RTSERVER_HTTP_SERVER_INTERNAL_PORT: expected a number"):
        config.load(environ={"RTSERVER_HTTP_SERVER_INTERNAL_PORT": "admin"})


def test_string_internal_port_serves_the_admin_ui(tmp_path: Path) -> None:
    """Centrifugo's ``"internal_port": "<port>"``: twistd serves the admin UI there."""
    import urllib.request

    from harness import free_port, run_server

    port = free_port()
    overrides = {"admin": {"enabled": True, "password": "p", "secret": "s"},
                 "http_server": {"internal_port": str(port)}}
    with run_server(tmp_path, overrides) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            page = reply.read().decode()
        assert reply.status == 200 and "<html" in page.lower()
        with pytest.raises(urllib.error.HTTPError) as main:  # not on the main port
            urllib.request.urlopen(f"{server.url}/", timeout=10)
        assert main.value.code == 404


def test_env_duration() -> None:
    """Duration env values use the duration syntax."""
    cfg, _ = config.load(environ={"RTSERVER_CLIENT_PING_INTERVAL": "1m"})
    assert cfg.client.ping_interval == 60.0


def test_env_namespaces_json_array() -> None:
    """``RTSERVER_CHANNEL_NAMESPACES`` is a JSON array of namespace objects."""
    raw = json.dumps([{"name": "chat", "presence": True}, {"name": "news"}])
    cfg, _ = config.load(environ={"RTSERVER_CHANNEL_NAMESPACES": raw})
    assert [ns.name for ns in cfg.channel.namespaces] == ["chat", "news"]
    assert cfg.channel.namespaces[0].presence is True


def test_env_namespaces_bad_json() -> None:
    """A non-JSON namespaces env value names the variable."""
    with pytest.raises(ConfigError, match="RTSERVER_CHANNEL_NAMESPACES"):
        config.load(environ={"RTSERVER_CHANNEL_NAMESPACES": "chat news"})


def test_env_nested_channel_option() -> None:
    """Deeply nested keys have env names too."""
    environ = {"RTSERVER_CHANNEL_WITHOUT_NAMESPACE_PRESENCE": "true"}
    assert config.load(environ=environ)[0].channel.without_namespace.presence is True


def test_env_names_unique_and_prefixed() -> None:
    """``env_names()`` lists unique ``RTSERVER_*`` names including known ones."""
    names = config.env_names()
    assert len(names) == len(set(names))
    assert all(n.startswith("RTSERVER_") and n == n.upper() for n in names)
    assert "RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY" in names
    assert "RTSERVER_CHANNEL_NAMESPACES" in names
    assert "RTSERVER_ENGINE_TYPE" in names


def test_env_ignores_unrelated_variables() -> None:
    """Variables that are not config keys are ignored."""
    cfg, warnings = config.load(environ={"RTSERVER_NOPE": "1", "PATH": "/bin"})
    assert cfg == config.Config()
    assert not [w for w in warnings if "unknown key" in w]


# --- precedence ------------------------------------------------------------------------


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    """File values lose to env values, which lose to explicit overrides."""
    data = {"http_server": {"port": 1111, "address": "file"}, "log": {"level": "debug"}}
    environ = {"RTSERVER_HTTP_SERVER_PORT": "2222", "RTSERVER_LOG_LEVEL": "warn"}
    cfg, _ = _load(data, tmp_path, environ=environ, overrides={"http_server": {"port": 3333}})
    assert cfg.http_server.port == 3333
    assert cfg.log.level == "warn"
    assert cfg.http_server.address == "file"


def test_env_merges_into_file_tables(tmp_path: Path) -> None:
    """An env value replaces one leaf and keeps its siblings from the file."""
    data = {"client": {"token": {"hmac_secret_key": "file", "issuer": "iss"}}}
    environ = {"RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY": "env"}
    cfg, _ = _load(data, tmp_path, environ=environ)
    assert cfg.client.token.hmac_secret_key == "env"
    assert cfg.client.token.issuer == "iss"


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("25s", 25.0),
        ("1500ms", 1.5),
        ("720h", 720 * 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2.5s", 2.5),
        (" 10s ", 10.0),
        ("500us", 0.0005),
        ("30", 30.0),
        (30, 30.0),
        (1.25, 1.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    """Durations accept Go-style unit strings and plain numbers of seconds."""
    assert config.parse_duration(value, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "10x", "s", "-5s", "1h 30m x", True, None, [1]])
def test_parse_duration_rejects(value: Any) -> None:
    """Bad durations raise ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"^client\.ping_interval: "):
        config.parse_duration(value, "client.ping_interval")


def test_negative_duration_rejected() -> None:
    """A negative number of seconds is rejected."""
    with pytest.raises(ConfigError, match="must not be negative"):
        config.parse_duration(-1, "x")


def test_bad_duration_in_file_names_key() -> None:
    """A bad duration in the config names its dotted key."""
    message = _error({"client": {"ping_interval": "soon"}})
    assert message.startswith("client.ping_interval:")


def test_bad_duration_in_namespace_names_key() -> None:
    """A bad duration inside a namespace names ``channel.namespaces[i].<key>``."""
    message = _error({"channel": {"namespaces": [{"name": "chat", "history_ttl": "long"}]}})
    assert message.startswith("channel.namespaces[0].history_ttl:")


@pytest.mark.parametrize("seconds", [25.0, 1.5, 720 * 3600.0, 5400.0, 0.0, 0.25])
def test_format_duration_round_trips(seconds: float) -> None:
    """``format_duration`` output parses back to the same number of seconds."""
    assert config.parse_duration(config.format_duration(seconds), "k") == seconds


# --- unknown keys ----------------------------------------------------------------------


def test_unknown_top_level_key_warns(tmp_path: Path) -> None:
    """An unknown top-level key produces a warning naming it."""
    _, warnings = _load({"bogus": 1}, tmp_path)
    assert any("bogus" in w and "unknown key" in w for w in warnings)


def test_unknown_nested_key_warns_with_dotted_path(tmp_path: Path) -> None:
    """An unknown nested key is reported by its dotted path."""
    _, warnings = _load({"client": {"token": {"hmac_secret": "x"}}}, tmp_path)
    assert any("client.token.hmac_secret" in w for w in warnings)


def test_unknown_key_in_namespace_warns_with_index(tmp_path: Path) -> None:
    """An unknown key inside a namespace is reported as ``channel.namespaces[i].<key>``."""
    data = {"channel": {"namespaces": [{"name": "ok"}, {"name": "chat", "presense": True}]}}
    _, warnings = _load(data, tmp_path)
    assert any("channel.namespaces[1].presense" in w for w in warnings)


def test_unknown_key_does_not_fail() -> None:
    """Unknown keys are ignored rather than rejected."""
    assert config.from_mapping({"client": {"nope": True}}) == config.Config()


# --- bad values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"client": {"ping_interval": True}}, "client.ping_interval"),
        ({"client": {"channel_limit": "many"}}, "client.channel_limit"),
        ({"client": {"channel_limit": -1}}, "client.channel_limit"),
        ({"client": {"channel_limit": 1.5}}, "client.channel_limit"),
        ({"client": {"insecure": "yes"}}, "client.insecure"),
        ({"client": {"allowed_origins": "http://a"}}, "client.allowed_origins"),
        ({"client": {"allowed_origins": [1]}}, "client.allowed_origins"),
        ({"client": {"token": "secret"}}, "client.token"),
        ({"client": {"token": {"hmac_secret_key": 5}}}, "client.token.hmac_secret_key"),
        ({"http_server": {"port": 0}}, "http_server.port"),
        ({"http_server": {"port": 70000}}, "http_server.port"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"channel": {"namespaces": {"chat": {}}}}, "channel.namespaces"),
        ({"channel": {"namespaces": ["chat"]}}, "channel.namespaces[0]"),
        ({"websocket": {"message_size_limit": 10}}, "websocket.message_size_limit"),
        ({"client": {"queue_max_size": 10}}, "client.queue_max_size"),
        ({"client": {"max_messages_in_frame": 0}}, "client.max_messages_in_frame"),
        ({"http_server": {"tls": {"enabled": True}}}, "http_server.tls"),
        (
            {"channel": {"without_namespace": {"force_recovery_mode": "x"}}},
            "channel.without_namespace.force_recovery_mode",
        ),
        (
            {"channel": {"without_namespace": {"publication_data_format": "xml"}}},
            "channel.without_namespace.publication_data_format",
        ),
    ],
)
def test_bad_value_names_key(data: dict[str, Any], key: str) -> None:
    """A bad value raises ConfigError whose message starts with the dotted key."""
    assert _error(data).startswith(key)


# --- cross-field validation ------------------------------------------------------------


def test_pong_timeout_must_be_below_ping_interval() -> None:
    """``client.pong_timeout >= client.ping_interval`` is rejected."""
    message = _error({"client": {"ping_interval": "10s", "pong_timeout": "10s"}})
    assert message.startswith("client.pong_timeout")
    assert "client.ping_interval" in message


def test_pong_timeout_below_ping_interval_ok() -> None:
    """A pong timeout shorter than the ping interval is accepted."""
    cfg = config.from_mapping({"client": {"ping_interval": "10s", "pong_timeout": "9s"}})
    assert cfg.client.pong_timeout == 9.0


def test_history_size_without_ttl() -> None:
    """``history_size`` without ``history_ttl`` is rejected, naming the section."""
    message = _error({"channel": {"without_namespace": {"history_size": 10}}})
    assert message.startswith("channel.without_namespace")
    assert "history_ttl" in message


def test_history_ttl_without_size() -> None:
    """``history_ttl`` without ``history_size`` is rejected."""
    message = _error({"channel": {"without_namespace": {"history_ttl": "60s"}}})
    assert "history_size" in message


def test_recovery_without_history() -> None:
    """Recovery without history is rejected."""
    message = _error({"channel": {"without_namespace": {"force_recovery": True}}})
    assert message.startswith("channel.without_namespace")
    assert "recovery" in message


def test_allow_recovery_without_history_in_namespace() -> None:
    """``allow_recovery`` without history in a namespace names ``channel.namespaces[i]``."""
    message = _error({"channel": {"namespaces": [{"name": "chat", "allow_recovery": True}]}})
    assert message.startswith("channel.namespaces[0]")


def test_history_ttl_longer_than_meta_ttl() -> None:
    """``history_ttl`` above ``history_meta_ttl`` is rejected."""
    data = {
        "channel": {
            "history_meta_ttl": "1h",
            "without_namespace": {"history_size": 10, "history_ttl": "2h"},
        }
    }
    assert "history_meta_ttl" in _error(data)


def test_namespace_meta_ttl_overrides_global() -> None:
    """A namespace's own ``history_meta_ttl`` is the limit for its ``history_ttl``."""
    ns = {"name": "chat", "history_size": 10, "history_ttl": "2h", "history_meta_ttl": "1h"}
    assert "history_meta_ttl" in _error({"channel": {"namespaces": [ns]}})
    ns["history_meta_ttl"] = "3h"
    assert config.from_mapping({"channel": {"namespaces": [ns]}}).channel.namespaces[0]


@pytest.mark.parametrize("name", ["", "a", "bad name", "chat:room", "chat/x"])
def test_bad_namespace_name(name: str) -> None:
    """Namespace names must match ``[-a-zA-Z0-9_.]{2,}``."""
    message = _error({"channel": {"namespaces": [{"name": name}]}})
    assert message.startswith("channel.namespaces[0].name")


def test_duplicate_namespace() -> None:
    """A namespace defined twice is rejected, naming the second one."""
    data = {"channel": {"namespaces": [{"name": "chat"}, {"name": "news"}, {"name": "chat"}]}}
    message = _error(data)
    assert message.startswith("channel.namespaces[2].name")
    assert "twice" in message


def test_bad_channel_regex() -> None:
    """An invalid ``channel_regex`` names the key."""
    message = _error({"channel": {"without_namespace": {"channel_regex": "(["}}})
    assert message.startswith("channel.without_namespace.channel_regex")


def test_bad_channel_regex_in_namespace() -> None:
    """An invalid ``channel_regex`` in a namespace names ``channel.namespaces[i].channel_regex``."""
    message = _error({"channel": {"namespaces": [{"name": "chat", "channel_regex": "(["}]}})
    assert message.startswith("channel.namespaces[0].channel_regex")
    assert "chat" in message


def test_unknown_engine_type() -> None:
    """An unsupported ``engine.type`` is rejected."""
    assert _error({"engine": {"type": "nats"}}).startswith("engine.type")


def test_valid_namespaces_accepted() -> None:
    """Well-formed namespaces with history and recovery load."""
    cfg = config.from_mapping(SAMPLE)
    ns = cfg.channel.namespaces[0]
    assert isinstance(ns, config.NamespaceOptions)
    assert ns.history_enabled and ns.force_recovery and ns.presence


# --- v5 keys ---------------------------------------------------------------------------


def test_v5_flat_keys_are_moved(tmp_path: Path) -> None:
    """v5 flat keys land on their v6 paths, with a warning each."""
    data = {
        "token_hmac_secret_key": "secret",
        "api_key": "key",
        "allowed_origins": ["http://x"],
        "namespaces": [{"name": "chat"}],
        "port": 9000,
        "log_level": "debug",
    }
    cfg, warnings = _load(data, tmp_path)
    assert cfg.client.token.hmac_secret_key == "secret"
    assert cfg.http_api.key == "key"
    assert cfg.client.allowed_origins == ["http://x"]
    assert [ns.name for ns in cfg.channel.namespaces] == ["chat"]
    assert cfg.http_server.port == 9000
    assert cfg.log.level == "debug"
    for old in data:
        assert any(old in w and "v5" in w for w in warnings), old
    assert any("client.token.hmac_secret_key" in w for w in warnings)


def test_v5_top_level_channel_options_are_moved(tmp_path: Path) -> None:
    """Top-level channel options move to ``channel.without_namespace`` with a warning."""
    cfg, warnings = _load({"presence": True, "join_leave": True}, tmp_path)
    assert cfg.channel.without_namespace.presence is True
    assert cfg.channel.without_namespace.join_leave is True
    assert any("presence" in w and "channel.without_namespace" in w for w in warnings)


def test_v5_engine_string_is_moved(tmp_path: Path) -> None:
    """``engine: "memory"`` becomes ``engine.type`` with a warning."""
    cfg, warnings = _load({"engine": "memory"}, tmp_path)
    assert cfg.engine.type == "memory"
    assert any("engine.type" in w for w in warnings)


def test_v5_keys_in_from_mapping() -> None:
    """``from_mapping`` also understands v5 keys."""
    cfg = config.from_mapping({"token_hmac_secret_key": "s", "engine": "memory"})
    assert cfg.client.token.hmac_secret_key == "s"


def test_from_mapping_does_not_mutate_input() -> None:
    """``from_mapping`` leaves the caller's mapping, including nested tables, untouched."""
    data = {"channel": {"without_namespace": {}}, "presence": True, "namespaces": []}
    before = copy.deepcopy(data)
    config.from_mapping(data)
    assert data == before


# --- warnings about risky settings -----------------------------------------------------


def test_risky_settings_warn() -> None:
    """Wildcard origins, insecure modes and a missing API key produce warnings."""
    overrides = {"client": {"allowed_origins": ["*"], "insecure": True}}
    _, warnings = config.load(environ={}, overrides=overrides)
    assert any("client.allowed_origins" in w for w in warnings)
    assert any("client.insecure" in w for w in warnings)
    assert any("http_api.key" in w for w in warnings)


def test_no_api_key_warning_when_key_set() -> None:
    """A configured API key silences the empty-key warning."""
    _, warnings = config.load(environ={}, overrides={"http_api": {"key": "k"}})
    assert not any("http_api.key" in w for w in warnings)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("redis+cluster://cache:7000/2", "Redis Cluster has only database 0"),
        ("memcached://cache:11211", "unsupported Redis address scheme"),
        ("redis://cache:99999", "invalid port"),
        ("redis://user:hunter2-secret@cache:6379/zero", "database number"),
    ],
)
def test_bad_redis_address_is_named_without_its_password(address: str, problem: str) -> None:
    """A broken engine.redis.address fails the config check and never echoes the password."""
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping({"engine": {"type": "redis", "redis": {"address": [address]}}})
    assert str(err.value).startswith("engine.redis.address[0]: ")
    assert problem in str(err.value)
    assert "hunter2" not in str(err.value)


def test_v5_redis_address_string_is_moved() -> None:
    """Centrifugo v5's flat ``engine``/``redis_address`` keys land in ``engine.redis``."""
    cfg = config.from_mapping({"engine": "redis", "redis_address": "redis://cache:6379"})
    assert cfg.engine.type == "redis"
    assert cfg.engine.redis.address == ["redis://cache:6379"]


def test_secrets_stay_out_of_the_config_repr() -> None:
    """Printing or logging a Config never shows the token secret, API key or Redis password."""
    cfg = config.from_mapping({
        "client": {"token": {"hmac_secret_key": "token-secret-value"}},
        "http_api": {"key": "api-key-value"},
        "engine": {"type": "redis", "redis": {"password": "redis-password-value"}},
    })
    shown = repr(cfg)
    for secret in ("token-secret-value", "api-key-value", "redis-password-value"):
        assert secret not in shown


def test_zero_presence_ttl_is_refused() -> None:
    """A Redis presence TTL of 0 would empty presence at once: refused at load."""
    with pytest.raises(config.ConfigError, match=r"engine\.redis\.presence_ttl"):
        config.from_mapping({"engine": {"type": "redis", "redis": {"presence_ttl": "0s"}}})


def test_schema_keys_are_the_leaves_the_loader_accepts() -> None:
    """Each key of the one schema walker loads from a file and from its env variable."""
    keys = list(config.schema_keys())
    by_name = {key.name: key for key in keys}
    assert len(by_name) == len(keys)
    assert by_name["client.ping_interval"].env_name == "RTSERVER_CLIENT_PING_INTERVAL"
    assert by_name["channel.namespaces"].holds_objects
    assert "channel.without_namespace.presence" in by_name
    assert [k.name for k in config.schema_keys(config.ChannelOptions)] == [
        f.name for f in dataclasses.fields(config.ChannelOptions)
    ]
    for key in keys:
        tree: dict[str, Any] = {}
        node = tree
        for part in key.path[:-1]:
            node = node.setdefault(part, {})
        node[key.path[-1]] = key.default
        assert config.from_mapping(tree) == config.Config(), key.name
        environ = {key.env_name: key.env_default}
        assert config.load(environ=environ)[0] == config.Config(), key.env_name


# --- client_ca_pem (mutual TLS on the server TLS objects) --------------------------------


def _server_tls(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    from harness import make_certificate

    cert, key, _ = make_certificate(tmp_path)
    return {"enabled": True, "cert_pem": str(cert), "key_pem": str(key), **extra}


@pytest.mark.parametrize("section", ["http_server", "grpc_api", "uni_grpc"])
def test_client_ca_pem_is_read_in_every_value_form(tmp_path: Path, section: str) -> None:
    """A file path, PEM text or base64 of PEM text: each gives the same certificates."""
    import base64

    from harness import make_certificate

    ca, _, _ = make_certificate(tmp_path / "ca")
    pem = ca.read_text()
    loaded = set()
    for value in (str(ca), pem, base64.b64encode(pem.encode()).decode()):
        tls = _server_tls(tmp_path, client_ca_pem=value)
        cfg = config.from_mapping({section: {"enabled": True, "tls": tls}})
        got = config.server_client_ca_pem(getattr(cfg, section).tls, f"{section}.tls")
        assert got is not None and b"BEGIN CERTIFICATE" in got
        loaded.add(got)
    assert len(loaded) == 1
    # Without TLS, as in Centrifugo, there is no client CA.
    cfg = config.from_mapping({section: {"tls": {"enabled": False, "client_ca_pem": pem}}})
    assert config.server_client_ca_pem(getattr(cfg, section).tls, section) is None


@pytest.mark.parametrize("section", ["http_server", "grpc_api", "uni_grpc"])
@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("/no/such/ca.pem", "neither PEM text"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no certificate"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid"),
    ],
)
def test_bad_client_ca_pem_fails_at_load(
    tmp_path: Path, section: str, value: str, why: str
) -> None:
    """A value that loads no CA certificate stops the server (and checkconfig), named."""
    message = _error({section: {"enabled": True, "tls": _server_tls(tmp_path, client_ca_pem=value)}})
    assert message.startswith(f"{section}.tls.client_ca_pem: "), message
    assert why in message


def test_client_ca_pem_with_http3_is_refused(tmp_path: Path) -> None:
    """HTTP/3 and mTLS do not mix: aioquic's server does not verify client certificates."""
    from harness import make_certificate

    ca, _, _ = make_certificate(tmp_path / "ca")
    message = _error(
        {
            "http_server": {
                "tls": _server_tls(tmp_path, client_ca_pem=str(ca)),
                "http3": {"enabled": True},
            }
        }
    )
    assert message.startswith("http_server.tls.client_ca_pem: HTTP/3"), message


def test_client_ca_pem_is_unknown_in_client_tls_objects(tmp_path: Path) -> None:
    """On a connection rtserver opens the key has no meaning (nor in Centrifugo): unknown."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"engine": {"type": "redis", "redis": {"tls": {"client_ca_pem": "x"}}}}),
        encoding="utf-8",
    )
    _, warnings = config.load(path, environ={})
    assert "unknown key engine.redis.tls.client_ca_pem (ignored)" in warnings
