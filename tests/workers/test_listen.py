"""Which listeners and configurations ``--workers N`` accepts (rtserver/workers.py)."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from rtserver import config as rtconfig
from rtserver.workers import grpc_listen, parse_tcp, refusals, reserve, worker_name


def test_tcp_descriptions_are_taken_apart() -> None:
    address = parse_tcp("tcp:8000:interface=127.0.0.1:backlog=128")
    assert (address.port, address.interface, address.backlog) == (8000, "127.0.0.1", 128)
    v6 = parse_tcp("tcp:port=8001:interface=\\:\\:1")
    assert (v6.port, v6.interface, v6.family) == (8001, "::1", socket.AF_INET6)


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ("ssl:8443:privateKey=k.pem", "only tcp: endpoints"),
        ("unix:/tmp/s", "only tcp: endpoints"),
        ("tcp:0", "fixed port"),
        ("tcp:http", "must be numbers"),
        ("tcp:8000:reuse=1", "unsupported"),
    ],
)
def test_other_descriptions_are_refused_with_the_reason(description: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_tcp(description)


def test_refusals_name_what_to_configure() -> None:
    cfg, _ = rtconfig.load(None)
    (memory,) = refusals(cfg, ["tcp:8000"])
    assert "engine.type" in memory and "nats" in memory
    redis = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, type="redis"))
    assert refusals(redis, ["tcp:8000"]) == []
    assert refusals(redis, ["ssl:8443:privateKey=k.pem"])
    # SockJS and the GRPC servers are shared by the workers (relayed sessions, SO_REUSEPORT).
    sockjs = dataclasses.replace(redis, sockjs=dataclasses.replace(redis.sockjs, enabled=True))
    assert refusals(sockjs, ["tcp:8000"]) == []
    grpc = dataclasses.replace(redis, grpc_api=dataclasses.replace(redis.grpc_api, enabled=True))
    uni = dataclasses.replace(grpc, uni_grpc=dataclasses.replace(redis.uni_grpc, enabled=True))
    assert refusals(uni, ["tcp:8000"]) == []
    assert grpc_listen(uni) == ["tcp:10000", "tcp:11000"]
    v6 = dataclasses.replace(grpc, grpc_api=dataclasses.replace(grpc.grpc_api, address="::1"))
    assert parse_tcp(grpc_listen(v6)[0]).interface == "::1"
    unbound = dataclasses.replace(grpc, grpc_api=dataclasses.replace(grpc.grpc_api, port=0))
    assert [p for p in refusals(unbound, ["tcp:8000"]) if "fixed port" in p]
    server = dataclasses.replace(redis.http_server, http3=rtconfig.HTTP3Config(enabled=True))
    h3 = dataclasses.replace(redis, http_server=server)
    assert [p for p in refusals(h3, ["tcp:8000"]) if "http3" in p]


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
