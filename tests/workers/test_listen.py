"""Which listeners and configurations ``--workers N`` accepts (rtserver/workers.py)."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from harness import make_certificate

from rtserver import config as rtconfig
from rtserver.service import default_listen
from rtserver.workers import grpc_listen, parse_listen, refusals, reserve, worker_name


def test_tcp_and_ssl_descriptions_are_taken_apart() -> None:
    address = parse_listen("tcp:8000:interface=127.0.0.1:backlog=128")
    assert (address.port, address.interface, address.backlog) == (8000, "127.0.0.1", 128)
    assert not address.tls
    v6 = parse_listen("tcp:port=8001:interface=\\:\\:1")
    assert (v6.port, v6.interface, v6.family) == (8001, "::1", socket.AF_INET6)
    tls = parse_listen(
        "ssl:8443:privateKey=k.pem:certKey=c.pem:extraCertChain=chain.pem"
        ":interface=127.0.0.1:backlog=64"
    )
    assert (tls.port, tls.interface, tls.backlog, tls.tls) == (8443, "127.0.0.1", 64, True)


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ("unix:/tmp/s", "only tcp: and ssl: endpoints"),
        ("tcp:0", "fixed port"),
        ("ssl:0:privateKey=k.pem", "fixed port"),
        ("tcp:http", "must be numbers"),
        ("tcp:8000:reuse=1", r"unsupported with --workers > 1 \(reuse\)"),
        ("tcp:8000:privateKey=k.pem", r"unsupported with --workers > 1 \(privateKey\)"),
        ("ssl:8443:privateKey=k.pem:ciphers=x", r"unsupported with --workers > 1 \(ciphers\)"),
        ("ssl:8443:k.pem", "positional arguments after the port"),
    ],
)
def test_other_descriptions_are_refused_with_the_reason(description: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_listen(description)


def test_refusals_name_what_to_configure() -> None:
    cfg, _ = rtconfig.load(None)
    (memory,) = refusals(cfg, ["tcp:8000"])
    assert "engine.type" in memory and "nats" in memory
    redis = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, type="redis"))
    assert refusals(redis, ["tcp:8000"]) == []
    (missing,) = refusals(redis, ["ssl:8443:privateKey=/nonexistent/k.pem"])
    assert "cannot load the TLS certificate and key" in missing and "k.pem" in missing
    # SockJS and the GRPC servers are shared by the workers (relayed sessions, SO_REUSEPORT).
    sockjs = dataclasses.replace(redis, sockjs=dataclasses.replace(redis.sockjs, enabled=True))
    assert refusals(sockjs, ["tcp:8000"]) == []
    grpc = dataclasses.replace(redis, grpc_api=dataclasses.replace(redis.grpc_api, enabled=True))
    uni = dataclasses.replace(grpc, uni_grpc=dataclasses.replace(redis.uni_grpc, enabled=True))
    assert refusals(uni, ["tcp:8000"]) == []
    assert grpc_listen(uni) == ["tcp:10000", "tcp:11000"]
    v6 = dataclasses.replace(grpc, grpc_api=dataclasses.replace(grpc.grpc_api, address="::1"))
    assert parse_listen(grpc_listen(v6)[0]).interface == "::1"
    unbound = dataclasses.replace(grpc, grpc_api=dataclasses.replace(grpc.grpc_api, port=0))
    assert [p for p in refusals(unbound, ["tcp:8000"]) if "fixed port" in p]
    # HTTP/3 is shared too (a SO_REUSEPORT UDP socket per worker).
    server = dataclasses.replace(redis.http_server, http3=rtconfig.HTTP3Config(enabled=True))
    h3 = dataclasses.replace(redis, http_server=server)
    assert refusals(h3, ["tcp:8000"]) == []


def test_ssl_listeners_with_loadable_files_are_accepted(tmp_path: Path) -> None:
    cfg, _ = rtconfig.load(None)
    redis = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, type="redis"))
    cert, key, _ = make_certificate(tmp_path)
    good = f"ssl:8443:privateKey={key}:certKey={cert}:extraCertChain={cert}"
    assert refusals(redis, [good]) == []
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    (bad,) = refusals(redis, [f"ssl:8443:privateKey={key}:certKey={junk}"])
    assert "cannot load the TLS certificate and key" in bad
    # http_server.tls makes an ssl: listener (service.default_listen) the workers serve
    tls, _ = rtconfig.load(None, overrides={
        "engine": {"type": "redis"},
        "http_server": {"port": 8443, "tls": {
            "enabled": True, "cert_pem_file": str(cert), "key_pem_file": str(key)}},
    })
    (listen,) = default_listen(tls)
    assert parse_listen(listen).tls
    assert refusals(tls, [listen]) == []


def test_worker_names_are_distinct() -> None:
    cfg, _ = rtconfig.load(None)
    named = dataclasses.replace(cfg, node=rtconfig.NodeConfig(name="edge"))
    assert [worker_name(named, i) for i in (0, 1)] == ["edge-0", "edge-1"]
    assert worker_name(cfg, 0) != worker_name(cfg, 1)


def test_a_port_in_use_fails_the_reservation() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            reserve([f"tcp:{port}:interface=127.0.0.1"])
    finally:
        busy.close()


def test_a_udp_port_in_use_fails_the_reservation() -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            reserve([], [(busy.getsockname()[1], "127.0.0.1")])
    finally:
        busy.close()


def _reuse_port_udp(interface: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((interface, port))
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("interface", ["", "127.0.0.1"])
def test_the_udp_reservation_takes_no_datagram_from_the_workers(interface: str) -> None:
    """Every client address reaches a worker, none the supervisor's reservation.

    The reserved UDP socket is in the workers' SO_REUSEPORT group: a datagram the kernel
    gave it would be lost.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (held,) = reserve([], [(port, interface)])
    held.setblocking(False)
    worker = _reuse_port_udp(interface, port)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
    try:
        for i, client in enumerate(clients):
            client.sendto(b"%d" % i, ("127.0.0.1", port))
        got = sorted(int(worker.recv(16)) for _ in clients)
        assert got == list(range(len(clients)))
        with pytest.raises(BlockingIOError):
            held.recv(16)
    finally:
        for sock in [*clients, held, worker]:
            sock.close()
