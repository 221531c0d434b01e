"""Which listeners and configurations ``--workers N`` accepts (rtserver/workers.py)."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
from pathlib import Path

import pytest
from harness import make_certificate

from rtserver import config as rtconfig
from rtserver.service import default_listen
from rtserver.workers import (
    grpc_listen,
    parse_listen,
    refusals,
    reserve,
    udp_sockets,
    worker_name,
)


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
            udp_sockets(busy.getsockname()[1], "127.0.0.1", 2)
    finally:
        busy.close()


def _where(sockets: list[socket.socket], clients: list[socket.socket], port: int) -> list[int]:
    """The index of the socket each client's datagram reached."""
    for i, client in enumerate(clients):
        client.sendto(b"%d" % i, ("127.0.0.1", port))
    where: dict[int, int] = {}
    while len(where) < len(clients):
        readable, _, _ = select.select(sockets, [], [], 5)
        assert readable, f"datagrams lost: {sorted(where)}"
        for sock in readable:
            where[int(sock.recv(16))] = sockets.index(sock)
    return [where[i] for i in range(len(clients))]


@pytest.mark.parametrize("interface", ["", "127.0.0.1"])
def test_a_client_address_keeps_its_worker_socket_across_a_worker_restart(
    interface: str,
) -> None:
    """HTTP/3's sockets of two workers: a client address maps to the same one throughout.

    A worker that dies closes its descriptor of its socket, and its successor gets the
    supervisor's: the group never changes, so each client address keeps reaching the
    socket of the worker that holds its QUIC connection (a socket that left the group and
    joined again would reorder it and send most addresses elsewhere).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    held = udp_sockets(port, interface, 2)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        worker = [socket.socket(fileno=os.dup(sock.fileno())) for sock in held]
        first = _where(worker, clients, port)
        assert set(first) == {0, 1}  # all on one socket by chance: 2 / 2**64
        worker[0].close()  # worker 0 is killed...
        worker[0] = socket.socket(fileno=os.dup(held[0].fileno()))  # ...and restarted
        assert _where(worker, clients, port) == first
        worker[1].close()
        worker[1] = socket.socket(fileno=os.dup(held[1].fileno()))
        assert _where(worker, clients, port) == first
        for sock in worker:
            sock.close()
    finally:
        for sock in [*clients, *held]:
            sock.close()
