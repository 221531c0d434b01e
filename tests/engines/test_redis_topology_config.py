"""Redis topologies in the configuration: address forms, TLS and Sentinel keys.

Every ``engine.redis`` example of Centrifugo v6's engines documentation
(centrifugal.dev, "Engines and scalability") is written out below and must pass
``rtserver checkconfig`` without an unknown-key warning, its Redis Cluster examples
included (each gives one Redis Cluster shard with the seeds it lists).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from redisserver import make_tls

from rtserver import config
from rtserver.cli import main
from rtserver.config import ClientTLSConfig, RedisAddress, parse_address, redis_shards


def _redis(redis: dict[str, Any]) -> dict[str, Any]:
    return {"engine": {"type": "redis", "redis": redis}}


#: The engine.redis examples of Centrifugo v6's engines page, in page order.
CENTRIFUGO_EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("switch to redis", _redis({})),
    ("single address string", _redis({"address": "127.0.0.1:6379"})),
    ("user, password, db", _redis({"address": "redis://user:password@127.0.0.1:6379/0"})),
    ("TLS", _redis({"address": "rediss://user:password@127.0.0.1:6379/0"})),
    (
        "sentinel",
        _redis({"address": "redis+sentinel://localhost:26379?sentinel_master_name=mymaster"}),
    ),
    (
        "sentinel with more sentinels",
        _redis(
            {
                "address": "redis+sentinel://localhost:26379?sentinel_master_name=mymaster"
                "&addr=localhost:26380"
            }
        ),
    ),
    (
        "sentinel user and password",
        _redis(
            {
                "address": "redis+sentinel://localhost:26379?sentinel_master_name=mymaster"
                "&sentinel_user=sentinel&sentinel_password=XXX"
            }
        ),
    ),
    (
        "sentinel TLS",  # the page elides the TLS object's other fields with "..."
        _redis(
            {
                "address": "redis+sentinel://localhost:26379?sentinel_master_name=mymaster",
                "sentinel_tls": {"enabled": True},
            }
        ),
    ),
    ("haproxy in front of sentinels", _redis({"address": "localhost:16379"})),
    ("sharding", _redis({"address": ["127.0.0.1:6379", "127.0.0.1:6380"]})),
]

#: Its Redis Cluster examples.
CENTRIFUGO_CLUSTER_EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    (
        "cluster seeds",
        _redis({"address": "redis://127.0.0.1:6380?addr=127.0.0.1:6381&addr=127.0.0.1:6382"}),
    ),
    ("cluster_address", _redis({"cluster_address": ["localhost:30001,localhost:30002"]})),
    ("redis+cluster scheme", _redis({"address": "redis+cluster://127.0.0.1:7000"})),
]


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("RTSERVER_", "CENTRIFUGO_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _checkconfig(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: dict[str, Any]
) -> tuple[int, str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    code = main(["checkconfig", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize(
    ("what", "data"), CENTRIFUGO_EXAMPLES, ids=[w for w, _ in CENTRIFUGO_EXAMPLES]
)
def test_centrifugo_redis_examples_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str, data: dict[str, Any]
) -> None:
    """Each engine.redis example of Centrifugo's docs passes checkconfig, every key known."""
    code, output = _checkconfig(capsys, tmp_path, data)
    assert code == 0, output
    assert "config is valid" in output
    assert "unknown key engine" not in output, output


@pytest.mark.parametrize(
    ("what", "data"), CENTRIFUGO_CLUSTER_EXAMPLES, ids=[w for w, _ in CENTRIFUGO_CLUSTER_EXAMPLES]
)
def test_centrifugo_cluster_examples_load_as_clusters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str, data: dict[str, Any]
) -> None:
    """Each Redis Cluster example passes checkconfig and gives one cluster of its seeds."""
    code, output = _checkconfig(capsys, tmp_path, data)
    assert code == 0, output
    assert "config is valid" in output
    assert "unknown key engine" not in output, output
    (shard,) = redis_shards(config.from_mapping(data).engine.redis)
    assert shard.is_cluster and not shard.is_sentinel and shard.db == 0
    assert len(shard.cluster_seeds) >= 1
    assert (shard.host, shard.port) == shard.cluster_seeds[0]


def test_cluster_address_forms() -> None:
    """Seeds in the host list, in addr=, with TLS and credentials; one shard per cluster."""
    a = parse_address("rediss+cluster://bob:pw@n1:7000,n2:7001?addr=n3:7002")
    assert a.cluster_seeds == (("n1", 7000), ("n2", 7001), ("n3", 7002))
    assert (a.user, a.password, a.tls) == ("bob", "pw", ClientTLSConfig(enabled=True))
    assert str(a) == "rediss+cluster://n1:7000,n2:7001,n3:7002" and "pw" not in repr(a)
    shards = redis_shards(
        config.from_mapping(
            _redis({"cluster_address": ["h1:30001,h2:30002", "redis://:pw@h3:30101,h4:30102"]})
        ).engine.redis
    )
    assert [s.cluster_seeds for s in shards] == [
        (("h1", 30001), ("h2", 30002)),
        (("h3", 30101), ("h4", 30102)),
    ]
    assert shards[1].password == "pw"


def test_address_string_and_list_give_the_same_shards() -> None:
    """``"address": "h:p"`` is the one-shard list Centrifugo's docs mean."""
    one = config.from_mapping(_redis({"address": "127.0.0.1:6379"}))
    many = config.from_mapping(_redis({"address": ["127.0.0.1:6379"]}))
    assert one.engine.redis.address == many.engine.redis.address == ["127.0.0.1:6379"]
    assert redis_shards(one.engine.redis) == [RedisAddress("127.0.0.1", 6379)]


def test_address_from_the_environment_is_split_on_spaces() -> None:
    """RTSERVER_ENGINE_REDIS_ADDRESS lists shards separated by spaces."""
    cfg, _ = config.load(
        environ={
            "RTSERVER_ENGINE_TYPE": "redis",
            "RTSERVER_ENGINE_REDIS_ADDRESS": "redis://a:6379 redis://b:6379",
        }
    )
    assert [str(a) for a in redis_shards(cfg.engine.redis)] == [
        "redis://a:6379/0",
        "redis://b:6379/0",
    ]


def test_url_forms() -> None:
    """User/password/db from the URL; rediss turns TLS on; tcp:// is redis://."""
    a = parse_address("redis://alice:s%40cret@cache:6380/3")
    assert (a.host, a.port, a.db, a.user, a.password, a.tls) == (
        "cache",
        6380,
        3,
        "alice",
        "s@cret",
        None,
    )
    assert parse_address("tcp://cache:1") == RedisAddress("cache", 1)
    tls = parse_address("rediss://cache")
    assert tls.tls == ClientTLSConfig(enabled=True) and tls.port == 6379
    assert parse_address("redis://cache?tls_enabled=true").tls is not None
    timed = parse_address("redis://cache?connect_timeout=250ms&io_timeout=2s")
    assert (timed.connect_timeout, timed.io_timeout) == (0.25, 2.0)


def test_sentinel_url_forms() -> None:
    """Sentinel URLs: sentinels from host and addr=, credentials for master and sentinels."""
    a = parse_address(
        "rediss+sentinel://u:pw@s1:26379/2?sentinel_master_name=mymaster&addr=s2:26380"
        "&sentinel_user=su&sentinel_password=spw"
    )
    assert a.is_sentinel and a.master_name == "mymaster"
    assert a.sentinels == (("s1", 26379), ("s2", 26380))
    assert (a.user, a.password, a.db) == ("u", "pw", 2)
    assert (a.sentinel_user, a.sentinel_password) == ("su", "spw")
    assert a.tls is not None and a.sentinel_tls is not None
    # sentinel_master_name on a redis:// URL means Sentinel too (as in Centrifugo)
    assert parse_address("redis://s1:26379?sentinel_master_name=m").sentinels == (("s1", 26379),)
    assert parse_address("redis+sentinel://s1?sentinel_master_name=m").port == 26379
    shown = str(a) + repr(a)
    assert "pw" not in shown.replace("mymaster", "") and "spw" not in shown


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("redis+sentinel://s1:26379", "needs ?sentinel_master_name"),
        ("redis+sentinel://s1:26379?sentinel_master_name=m&addr=bad", "not host:port"),
        ("redis://cache?bogus=1", "unknown Redis address parameter 'bogus'"),
        ("redis://cache?tls_enabled=maybe", "must be true or false"),
        ("redis://cache?io_timeout=soon", "not a duration"),
        ("redis://cache?replica_client_enabled=true", "not supported"),
        ("unix:///run/redis.sock", "unsupported Redis address scheme"),
        ("rediss+cluster://cache:7000/1", "Redis Cluster has only database 0"),
        ("redis+cluster://c:7000?sentinel_master_name=m", "takes no sentinel_master_name"),
        ("redis+cluster://c:7000,nope", "seed 'nope' is not host:port"),
    ],
)
def test_bad_addresses_are_refused_with_the_reason(address: str, problem: str) -> None:
    """A bad address fails the config check naming the entry and the problem."""
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping(_redis({"address": [address]}))
    assert str(err.value).startswith("engine.redis.address[0]: ")
    assert problem in str(err.value)


def test_sentinel_address_keys_make_one_shard_per_entry() -> None:
    """engine.redis.sentinel_address (Centrifugo's key form) wins over address."""
    cfg = config.from_mapping(
        _redis(
            {
                "sentinel_address": ["s1:26379,s2:26379", "t1:26379"],
                "sentinel_master_name": "mymaster",
                "sentinel_password": "sentinel-pw-8f3a",
                "password": "redis-pw-8f3a",
                "db": 1,
            }
        )
    )
    shards = redis_shards(cfg.engine.redis)
    assert [s.sentinels for s in shards] == [
        (("s1", 26379), ("s2", 26379)),
        (("t1", 26379),),
    ]
    assert all(s.master_name == "mymaster" and s.db == 1 for s in shards)
    assert all(
        s.password == "redis-pw-8f3a" and s.sentinel_password == "sentinel-pw-8f3a" for s in shards
    )
    assert "pw-8f3a" not in repr(cfg) + repr(shards)


def test_sentinel_address_needs_a_master_name() -> None:
    """Without sentinel_master_name the sentinels cannot be asked anything."""
    with pytest.raises(config.ConfigError, match=r"engine\.redis\.sentinel_master_name: required"):
        config.from_mapping(_redis({"sentinel_address": "s1:26379"}))


def test_tls_pem_values_are_text_base64_or_files(tmp_path: Path) -> None:
    """Each *_pem value is PEM text, base64 PEM or a path, as in Centrifugo."""
    tls = make_tls(tmp_path)
    ca_text = tls.ca_cert.read_text()
    for value in (ca_text, base64.b64encode(ca_text.encode()).decode(), str(tls.ca_cert)):
        assert config.load_pem(value, "k") == ca_text.encode()
    cfg = config.from_mapping(
        _redis(
            {
                "address": "rediss://127.0.0.1:6379",
                "tls": {
                    "enabled": True,
                    "server_ca_pem": str(tls.ca_cert),
                    "cert_pem": str(tls.client_cert),
                    "key_pem": str(tls.client_key),
                },
            }
        )
    )
    assert redis_shards(cfg.engine.redis)[0].tls == cfg.engine.redis.tls


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"server_ca_pem": "/nonexistent/ca.pem"}, "engine.redis.tls.server_ca_pem: neither PEM"),
        ({"cert_pem": "-----BEGIN CERTIFICATE-----"}, "cert_pem and key_pem go together"),
    ],
)
def test_bad_tls_settings_fail_the_config_check(
    tmp_path: Path, tls: dict[str, Any], problem: str
) -> None:
    """A missing CA file or half a client certificate is a config error, not a runtime one."""
    with pytest.raises(config.ConfigError) as err:
        config.from_mapping(_redis({"tls": {"enabled": True, **tls}}))
    assert problem in str(err.value)


def test_a_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    """A PEM path that holds something else fails with the file named."""
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(config.ConfigError, match="holds no PEM data"):
        config.from_mapping(_redis({"sentinel_tls": {"enabled": True, "server_ca_pem": str(junk)}}))
