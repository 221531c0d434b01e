"""``broker`` and ``presence_manager`` configuration, and the engine they select.

Every NATS example of Centrifugo v6's "Engines and scalability" chapter (and its
broker/presence manager examples that need no Redis address string) passes
``rtserver checkconfig`` unchanged; mistakes name the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from rtserver import config
from rtserver.cli import main
from rtserver.engines.composite import CompositeEngine
from rtserver.engines.memory import MemoryEngine
from rtserver.engines.nats import NatsBroker
from rtserver.engines.redis import RedisEngine
from rtserver.service import build_engine, describe_engine

CENTRIFUGO_EXAMPLES: dict[str, dict[str, Any]] = {
    "nats quickstart": {"broker": {"enabled": True, "type": "nats"}},
    "nats raw mode": {
        "broker": {
            "enabled": True,
            "type": "nats",
            "nats": {
                "raw_mode": {
                    "enabled": True,
                    "channel_replacements": {":": "."},
                    "prefix": "",
                }
            },
        }
    },
    "separate broker": {"broker": {"enabled": True, "type": "redis"}},
    "separate presence manager": {"presence_manager": {"enabled": True, "type": "redis"}},
}


def checkconfig(capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Any) -> tuple[int, str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    code = main(["checkconfig", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("example", sorted(CENTRIFUGO_EXAMPLES))
def test_centrifugo_examples_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, example: str
) -> None:
    """The documented Centrifugo examples are valid, without unknown-key warnings."""
    code, output = checkconfig(capsys, tmp_path, CENTRIFUGO_EXAMPLES[example])
    assert code == 0, output
    assert "config is valid" in output and "unknown key" not in output


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"broker": {"enabled": True, "type": "kafka"}}, "broker.type"),
        ({"presence_manager": {"enabled": True, "type": "nats"}}, "presence_manager.type"),
        ({"broker": {"enabled": True, "type": "nats", "nats": {"url": "http://x"}}},
         "broker.nats.url"),
        ({"broker": {"enabled": True, "type": "nats", "nats": {"url": "nats://a,ws://b"}}},
         "broker.nats.url"),
        ({"broker": {"enabled": True, "type": "nats", "nats": {"url": "nats://a,b:port"}}},
         "broker.nats.url"),
        # Centrifugo's url is a string (comma-separated for several servers), not a list
        ({"broker": {"enabled": True, "type": "nats", "nats": {"url": ["nats://a"]}}},
         "broker.nats.url"),
        ({"broker": {"enabled": True, "type": "nats",
                     "nats": {"tls": {"enabled": True, "server_ca_pem": "/no/such/ca.pem"}}}},
         "broker.nats.tls.server_ca_pem"),
        ({"broker": {"enabled": True, "type": "nats",
                     "nats": {"tls": {"enabled": True, "cert_pem": "/no/such/cert.pem"}}}},
         "broker.nats.tls"),
        ({"broker": {"nats": {"raw_mode": {"channel_replacements": [":"]}}}},
         "broker.nats.raw_mode.channel_replacements"),
        ({"broker": {"nats": {"raw_mode": {"channel_replacements": {":": 1}}}}},
         "broker.nats.raw_mode.channel_replacements"),
        ({"broker": {"nats": {"dial_timeout": "soon"}}}, "broker.nats.dial_timeout"),
        ({"broker": {"enabled": True, "type": "redis", "redis": {"address": []}}},
         "broker.redis.address"),
    ],
)
def test_mistakes_name_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: dict[str, Any], key: str
) -> None:
    code, output = checkconfig(capsys, tmp_path, data)
    assert code == 1
    assert f"error: {key}" in output, output


def test_disabled_sections_are_not_checked() -> None:
    """As in Centrifugo, ``type`` of a disabled section is not looked at."""
    cfg = config.from_mapping({"broker": {"type": "kafka"}})
    assert not cfg.broker.enabled


def test_environment_sets_channel_replacements() -> None:
    """A map key reads JSON from the environment."""
    cfg, _ = config.load(environ={
        "CENTRIFUGO_BROKER_NATS_RAW_MODE_CHANNEL_REPLACEMENTS": '{":": "."}',
    })
    assert cfg.broker.nats.raw_mode.channel_replacements == {":": "."}
    with pytest.raises(config.ConfigError, match="RAW_MODE_CHANNEL_REPLACEMENTS"):
        config.load(environ={"RTSERVER_BROKER_NATS_RAW_MODE_CHANNEL_REPLACEMENTS": "{"})


def _engine(data: dict[str, Any]) -> Any:
    return build_engine(config.from_mapping(data), Clock())


def test_engine_type_alone_is_one_engine() -> None:
    assert isinstance(_engine({}), MemoryEngine)
    assert isinstance(_engine({"engine": {"type": "redis"}}), RedisEngine)


def test_nats_broker_on_memory_engine() -> None:
    """Memory presence, NATS PUB/SUB, no history (Centrifugo's behaviour)."""
    data = {"broker": {"enabled": True, "type": "nats"}}
    engine = _engine(data)
    assert isinstance(engine, CompositeEngine) and isinstance(engine.broker, NatsBroker)
    assert [type(p) for p in engine.parts] == [MemoryEngine]
    assert engine.shared
    assert describe_engine(config.from_mapping(data)) == "nats broker, memory presence"


def test_nats_broker_on_redis_engine_keeps_history_in_redis() -> None:
    engine = _engine({"engine": {"type": "redis"}, "broker": {"enabled": True, "type": "nats"}})
    assert isinstance(engine, CompositeEngine) and isinstance(engine.broker, NatsBroker)
    assert [type(p) for p in engine.parts] == [RedisEngine]


def test_presence_manager_and_broker_both_replace_the_engine() -> None:
    engine = _engine({
        "engine": {"type": "redis"},
        "broker": {"enabled": True, "type": "nats"},
        "presence_manager": {"enabled": True, "type": "redis"},
    })
    assert isinstance(engine, CompositeEngine)
    # No engine built: the presence manager's Redis only; history is not available.
    assert [type(p) for p in engine.parts] == [RedisEngine]


def test_tls_and_several_urls_pass_checkconfig(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Centrifugo's TLS object keys under broker.nats.tls, a comma-separated url."""
    data = {
        "broker": {
            "enabled": True,
            "type": "nats",
            "nats": {
                "url": "tls://nats-1:4222,tls://nats-2:4222",
                "tls": {"enabled": True, "insecure_skip_verify": True, "server_name": "nats"},
            },
        }
    }
    code, output = checkconfig(capsys, tmp_path, data)
    assert code == 0, output
    assert "config is valid" in output and "unknown key" not in output


def test_several_urls_and_tls_reach_the_broker() -> None:
    """A comma-separated url is every server, in order; tls:// and broker.nats.tls apply."""
    data = {
        "broker": {
            "enabled": True,
            "type": "nats",
            "nats": {"url": " nats://u:p@a:4222, tls://b:4333 ,c", "tls": {"enabled": True}},
        }
    }
    engine = _engine(data)
    assert isinstance(engine, CompositeEngine) and isinstance(engine.broker, NatsBroker)
    link = engine.broker.link
    assert [str(a) for a in link.addresses] == [
        "nats://a:4222", "tls://b:4333", "nats://c:4222"]
    assert (link.addresses[0].user, link.addresses[0].password) == ("u", "p")
    assert "p@" not in repr(link.addresses) and "u:p" not in repr(link)
