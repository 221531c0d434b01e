"""WebTransport's configuration and sans-I/O pieces: keys, validation, framing, ports."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from harness import make_certificate

from rtserver import config as rtconfig
from rtserver.config import ConfigError
from rtserver.protocol import protobuf
from rtserver.protocol.frames import ProtocolError
from rtserver.service import default_listen, enabled_transports, http3_address
from rtserver.transports.webtransport import close_session_capsule, quic_configuration


@pytest.fixture
def pems(tmp_path: Path) -> tuple[Path, Path]:
    cert, key, _ = make_certificate(tmp_path)
    return cert, key


def _config(data: dict[str, Any]) -> rtconfig.Config:
    return rtconfig.from_mapping(data)


def _h3(cert: Path, key: Path, **tls: Any) -> dict[str, Any]:
    return {
        "http_server": {
            "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key), **tls},
            "http3": {"enabled": True},
        },
        "webtransport": {"enabled": True},
    }


def test_keys_and_defaults_follow_centrifugo_v6(pems: tuple[Path, Path]) -> None:
    cfg = _config(_h3(*pems))
    assert cfg.http_server.http3.enabled and cfg.webtransport.enabled
    assert cfg.webtransport.handler_prefix == "/connection/webtransport"
    assert "webtransport" in enabled_transports(cfg)
    assert "webtransport" not in enabled_transports(_config({}))
    # cert_pem/key_pem given as paths serve the TCP listener too
    (desc,) = default_listen(cfg)
    assert desc.startswith("ssl:8000:") and str(pems[0]) in desc and str(pems[1]) in desc


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"http_server": {"http3": {"enabled": True}}}, "http_server.http3.enabled"),
        ({"webtransport": {"enabled": True}}, "webtransport.enabled"),
        ({"http_server": {"tls": {"enabled": True}}}, "http_server.tls"),
        ({"webtransport": {"message_size_limit": 10}}, "webtransport.message_size_limit"),
        ({"webtransport": {"write_buffer_size": 10}}, "webtransport.write_buffer_size"),
        ({"webtransport": {"max_connections": 0}}, "webtransport.max_connections"),
        ({"webtransport": {"max_streams_per_session": 0}}, "webtransport.max_streams_per_session"),
        ({"webtransport": {"idle_timeout": "0s"}}, "webtransport.idle_timeout"),
        ({"webtransport": {"handler_prefix": "wt"}}, "webtransport.handler_prefix"),
    ],
)
def test_bad_values_name_their_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(data)
    assert str(info.value).startswith(key)


def test_inline_pem_needs_files_for_the_tcp_listener(pems: tuple[Path, Path]) -> None:
    cert, key = pems
    inline = _h3(cert, key)
    inline["http_server"]["tls"]["cert_pem"] = cert.read_text()
    with pytest.raises(ConfigError, match="file paths"):
        _config(inline)
    # ... unless the files are given too: then both agree
    both = _h3(cert, key, cert_pem_file=str(cert), key_pem_file=str(key))
    both["http_server"]["tls"]["cert_pem"] = base64.b64encode(cert.read_bytes()).decode()
    cfg = _config(both)
    assert rtconfig.server_tls_pem(cfg.http_server.tls)[0] == cert.read_bytes()


def test_a_pem_value_that_is_not_pem_is_refused(pems: tuple[Path, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"http_server.tls.cert_pem"):
        _config(_h3(junk, pems[1]))


def test_grpc_tls_takes_cert_pem_too(pems: tuple[Path, Path]) -> None:
    cert, key = pems
    cfg = _config(
        {"grpc_api": {"enabled": True, "tls": {"enabled": True, "cert_pem": cert.read_text(),
                                                "key_pem": key.read_text()}}}
    )
    assert rtconfig.server_tls_pem(cfg.grpc_api.tls, "grpc_api.tls")[1] == key.read_bytes()
    with pytest.raises(ConfigError, match=r"grpc_api\.tls"):
        _config({"grpc_api": {"enabled": True, "tls": {"enabled": True}}})


def test_the_udp_port_follows_the_tls_listener(pems: tuple[Path, Path]) -> None:
    cfg = _config(_h3(*pems))
    assert http3_address(cfg, []) == (8000, "")
    assert http3_address(cfg, ["tcp:9000", "ssl:8443:privateKey=k.pem:interface=127.0.0.1"]) == (
        8443,
        "127.0.0.1",
    )
    assert http3_address(cfg, ["ssl:port=9443:privateKey=a\\:b.pem"]) == (9443, "")
    # no TLS listener given: http_server's port and address
    assert http3_address(cfg, ["tcp:9000"]) == (8000, "")


def test_quic_configuration_loads_the_certificate(pems: tuple[Path, Path]) -> None:
    cert, key = pems
    quic = quic_configuration(cert.read_bytes(), key.read_bytes(), 12.0)
    assert quic.certificate is not None and quic.private_key is not None
    assert quic.idle_timeout == 12.0 and not quic.is_client


def test_close_session_capsule_layout() -> None:
    capsule = close_session_capsule(3501, "bad request")
    # type 0x2843 (2-byte varint 0x6843), length 4 + 11, code, reason
    assert capsule == b"\x68\x43\x0f" + (3501).to_bytes(4, "big") + b"bad request"


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"\x02ab", 3),
        (b"\x02ab\x03a", 3),  # the second message is cut
        (b"\x02ab\x80", 3),  # a cut length prefix
        (b"\x00\x00", 2),
        (b"\x81\x01" + b"x" * 129, 131),
    ],
)
def test_complete_end_finds_the_last_whole_message(data: bytes, end: int) -> None:
    assert protobuf.complete_end(data) == end


def test_complete_end_refuses_an_endless_length_prefix() -> None:
    with pytest.raises(ProtocolError):
        protobuf.complete_end(b"\xff" * 11)


def _listener(pems: tuple[Path, Path]) -> Any:
    from twisted.internet.task import Clock

    from rtserver.service import build_node
    from rtserver.transports.origin import OriginPolicy
    from rtserver.transports.webtransport import QuicListener

    cfg = _config(_h3(*pems))
    clock = Clock()
    node = build_node(cfg, clock)
    cert, key = pems
    quic = quic_configuration(cert.read_bytes(), key.read_bytes(), 5.0)
    return QuicListener(node, OriginPolicy([]), cfg.webtransport, quic, clock)


def test_a_failing_send_drops_the_datagram(pems: tuple[Path, Path]) -> None:
    """The kernel refusing a datagram (full buffer, too large) is QUIC's loss, not an error."""
    from twisted.internet.error import MessageLengthError

    listener = _listener(pems)

    class Refusing:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def write(self, data: bytes, addr: Any) -> None:
            raise self.error

    for error in (OSError(105, "No buffer space available"), MessageLengthError()):
        listener.transport = Refusing(error)
        listener.send(b"x" * 10, ("127.0.0.1", 9))
    assert listener.send_errors == 2


def test_a_bug_while_routing_is_logged_and_the_listener_survives(
    pems: tuple[Path, Path], expect_logged_failure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = _listener(pems)
    expect_logged_failure(ZeroDivisionError)

    def broken(data: bytes, addr: Any) -> None:
        raise ZeroDivisionError

    monkeypatch.setattr(listener, "_route", broken)
    listener.datagramReceived(b"x", ("127.0.0.1", 9))  # does not raise
    monkeypatch.undo()
    listener.datagramReceived(b"\x00" * 3, ("127.0.0.1", 9))  # served on: dropped as junk
    assert listener.dropped == 1


def test_longest_message_measures_whole_messages() -> None:
    assert protobuf.longest_message(b"") == 0
    assert protobuf.longest_message(b"\x02ab\x00\x81\x01" + b"x" * 129) == 129
    with pytest.raises(ProtocolError):
        protobuf.longest_message(b"\x05ab")
