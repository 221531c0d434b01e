"""The ``grpc_api`` configuration section: defaults, validation, warnings, environment."""

from __future__ import annotations

from typing import Any

import pytest

from rtserver import config
from rtserver.config import ConfigError


def test_defaults_are_centrifugos() -> None:
    grpc = config.from_mapping({}).grpc_api
    assert (grpc.enabled, grpc.address, grpc.port, grpc.key) == (False, "", 10000, "")
    assert (grpc.reflection, grpc.max_receive_message_size, grpc.error_mode) == (False, 0, "")
    assert grpc.tls.enabled is False


@pytest.mark.parametrize(("section", "served_by"), [
    ({}, "h2"),  # the HTTP/2 server on the reactor by default
    ({"reflection": True}, "grpcio"),  # grpcio's reflection service needs grpcio's server
    ({"server": "grpcio"}, "grpcio"),
    ({"server": "grpcio", "reflection": True}, "grpcio"),
    ({"server": "h2"}, "h2"),
])
def test_which_server_speaks_grpc(section: dict[str, Any], served_by: str) -> None:
    grpc = config.from_mapping({"grpc_api": {"enabled": True, **section}}).grpc_api
    assert grpc.served_by == served_by


def test_key_never_shows_in_repr() -> None:
    grpc = config.from_mapping({"grpc_api": {"key": "hunter2-secret"}}).grpc_api
    assert "hunter2-secret" not in repr(grpc)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"port": 0}, "grpc_api.port: must be between 1 and 65535"),
        ({"port": 70000}, "grpc_api.port: must be between 1 and 65535"),
        ({"error_mode": "loud"}, "grpc_api.error_mode: 'loud' is not '' or 'transport'"),
        ({"max_receive_message_size": -1},
         "grpc_api.max_receive_message_size: must not be negative"),
        ({"tls": {"enabled": True, "cert_pem_file": "c.pem"}},
         "grpc_api.tls: cert_pem and key_pem (or cert_pem_file and key_pem_file) are "
         "required"),
        ({"server": "grpc-go"}, "grpc_api.server: 'grpc-go' is not 'h2' or 'grpcio'"),
        ({"server": "h2", "reflection": True},
         "grpc_api.reflection: the reflection service is served by grpcio's server, not by "
         "grpc_api.server: h2; set grpc_api.server: grpcio, or turn reflection off"),
    ],
)
def test_invalid_settings_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.from_mapping({"grpc_api": {"enabled": True, **section}})
    assert str(e.value) == message


def test_a_disabled_section_is_not_checked() -> None:
    assert config.from_mapping({"grpc_api": {"port": 0}}).grpc_api.port == 0


def test_an_enabled_api_without_key_warns() -> None:
    _, warnings = config.load(environ={}, overrides={"grpc_api": {"enabled": True}})
    assert any(w.startswith("grpc_api.key is empty") for w in warnings)
    _, warnings = config.load(environ={}, overrides={"grpc_api": {"enabled": True, "key": "k"}})
    assert not any("grpc_api" in w for w in warnings)


def test_environment_overrides() -> None:
    loaded, _ = config.load(environ={
        "CENTRIFUGO_GRPC_API_ENABLED": "true",
        "CENTRIFUGO_GRPC_API_PORT": "10001",
        "RTSERVER_GRPC_API_KEY": "k",
        "RTSERVER_GRPC_API_TLS_ENABLED": "false",
    })
    grpc = loaded.grpc_api
    assert (grpc.enabled, grpc.port, grpc.key) == (True, 10001, "k")


def test_uni_grpc_defaults_are_centrifugos() -> None:
    uni = config.from_mapping({}).uni_grpc
    assert (uni.enabled, uni.address, uni.port, uni.max_receive_message_size) == (
        False, "", 11000, 0)
    assert (uni.tls.enabled, uni.max_concurrent_streams) == (False, 128)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"port": 0}, "uni_grpc.port: must be between 1 and 65535"),
        ({"max_receive_message_size": -1},
         "uni_grpc.max_receive_message_size: must not be negative"),
        ({"max_concurrent_streams": 0}, "uni_grpc.max_concurrent_streams: must be at least 1"),
        ({"tls": {"enabled": True, "key_pem_file": "k.pem"}},
         "uni_grpc.tls: cert_pem and key_pem (or cert_pem_file and key_pem_file) are "
         "required"),
    ],
)
def test_invalid_uni_grpc_settings_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.from_mapping({"uni_grpc": {"enabled": True, **section}})
    assert str(e.value) == message


def test_uni_grpc_from_the_environment() -> None:
    environ = {"CENTRIFUGO_UNI_GRPC_ENABLED": "true", "CENTRIFUGO_UNI_GRPC_PORT": "11001"}
    uni = config.load(None, environ=environ)[0].uni_grpc
    assert (uni.enabled, uni.port) == (True, 11001)
