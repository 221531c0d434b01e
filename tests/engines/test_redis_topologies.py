"""The Redis engine on real Redis topologies: ACL user and db, TLS, Sentinel failover.

Every server is a real ``redis-server`` (``--sentinel`` for the sentinels) started by
the test on free ports (tests/redisserver.py). Waits are bounded polls, never fixed
sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from contract import HISTORY, pub
from redis_support import handler, make_engine, until
from redisserver import (
    RedisServer,
    SentinelSetup,
    TLSFiles,
    free_port,
    make_tls,
    require_redis_server,
    wait_for,
)
from twisted.internet.defer import Deferred

from rtserver.config import ClientTLSConfig
from rtserver.core.types import HistoryFilter
from rtserver.engines.redis import RedisEngine, RedisUnavailable
from rtserver.engines.redisconn import RedisNotMaster
from rtserver.protocol.frames import ClientInfo

pytestmark = pytest.mark.redis

ALL = HistoryFilter(limit=-1)


def _tls(options: dict[str, Any]) -> ClientTLSConfig:
    return ClientTLSConfig(**options)


async def _works(engine: RedisEngine, channel: str, n: int) -> None:
    """Publish with history, read it back, add and read presence: the engine's basics."""
    position = await engine.publish(channel, pub(n), HISTORY)
    assert position.offset == n
    result = await engine.history(channel, ALL, 60.0)
    assert [p.offset for p in result.publications][-1] == n
    await engine.add_presence(channel, f"client-{n}", ClientInfo("u", f"client-{n}"))
    assert f"client-{n}" in await engine.presence(channel)


# --- ACL user and database ---------------------------------------------------------------


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    """A redis-server with a default-user password and an ACL user alice."""
    require_redis_server()
    with RedisServer(password="admin-secret", user=("alice", "alice-secret")) as s:
        yield s


@pytest_twisted.ensureDeferred
async def test_acl_user_and_database_from_the_url(acl_server: RedisServer) -> None:
    """redis://alice:pw@host:port/5 authenticates as alice and keeps every key in db 5."""
    address = f"redis://alice:alice-secret@127.0.0.1:{acl_server.port}/5"
    engine = make_engine([address])
    await engine.start(handler())
    try:
        assert engine.healthy
        await _works(engine, "acl", 1)
        p = engine._prefix
        assert acl_server.pipeline([("SELECT", 5), ("EXISTS", f"{p}.stream.acl")])[1] == 1
        assert acl_server.command("EXISTS", f"{p}.stream.acl") == 0  # not in db 0
        users = acl_server.command("CLIENT", "LIST").decode()
        assert "user=alice" in users
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_acl_password_keeps_the_engine_down(acl_server: RedisServer) -> None:
    """A refused AUTH leaves the engine unhealthy and every call failing at once."""
    engine = make_engine([f"redis://alice:wrong-secret@127.0.0.1:{acl_server.port}/0"])
    await engine.start(handler())
    try:
        assert not engine.healthy
        with pytest.raises(RedisUnavailable):
            await engine.publish("acl", pub(1), HISTORY)
    finally:
        await engine.stop()


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_tls(tmp_path)


@pytest.fixture
def tls_server(tls_files: TLSFiles) -> Iterator[RedisServer]:
    """A redis-server with a TLS port (the plain port is for the test's own commands)."""
    require_redis_server()
    with RedisServer(tls=tls_files) as s:
        yield s


@pytest_twisted.ensureDeferred
async def test_rediss_with_the_test_ca(tls_server: RedisServer, tls_files: TLSFiles) -> None:
    """rediss:// + tls.server_ca_pem: the engine works over TLS, PUB/SUB included."""
    address = f"rediss://127.0.0.1:{tls_server.tls_port}"
    engine = make_engine(
        [address], tls=_tls({"enabled": True, "server_ca_pem": str(tls_files.ca_cert)})
    )
    h = handler()
    await engine.start(h)
    try:
        assert engine.healthy
        await engine.subscribe("secure")
        await _works(engine, "secure", 1)
        await until(lambda: len(h.publications) == 1, what="the publication over TLS")
        # every connection of the engine is on the TLS port
        clients = tls_server.command("CLIENT", "LIST").decode().splitlines()
        tls_port = f"laddr=127.0.0.1:{tls_server.tls_port}"
        assert sum(tls_port in line for line in clients) == 2  # command + PUB/SUB links
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_tls_client_certificate(tls_files: TLSFiles) -> None:
    """cert_pem/key_pem are presented when the server requires a client certificate."""
    require_redis_server()
    with RedisServer(tls=tls_files, extra_args=("--tls-auth-clients", "yes")) as server:
        address = f"rediss://127.0.0.1:{server.tls_port}"
        tls: dict[str, Any] = {"enabled": True, "server_ca_pem": str(tls_files.ca_cert)}
        anonymous = make_engine([address], tls=_tls(tls))
        await anonymous.start(handler())
        try:
            assert not anonymous.healthy  # the server refuses a client without certificate
        finally:
            await anonymous.stop()
        tls |= {"cert_pem": str(tls_files.client_cert), "key_pem": str(tls_files.client_key)}
        engine = make_engine([address], tls=_tls(tls))
        await engine.start(handler())
        try:
            assert engine.healthy
            await _works(engine, "mtls", 1)
        finally:
            await engine.stop()


@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_server_it_cannot_verify(
    tls_server: RedisServer, tmp_path: Path
) -> None:
    """With another CA (or the system's) the handshake fails: no data goes to that server."""
    (tmp_path / "other").mkdir()
    other = make_tls(tmp_path / "other")
    address = f"rediss://127.0.0.1:{tls_server.tls_port}"
    engine = make_engine(
        [address], tls=_tls({"enabled": True, "server_ca_pem": str(other.ca_cert)})
    )
    await engine.start(handler())
    try:
        assert not engine.healthy
        with pytest.raises(RedisUnavailable):
            await engine.publish("x", pub(1), HISTORY)
    finally:
        await engine.stop()
    # insecure_skip_verify accepts it (for tests only)
    engine = make_engine([address], tls=_tls({"enabled": True, "insecure_skip_verify": True}))
    await engine.start(handler())
    try:
        assert engine.healthy
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_tls_server_name_is_checked(tls_server: RedisServer, tls_files: TLSFiles) -> None:
    """server_name must match the certificate (localhost does; another name does not)."""
    address = f"rediss://127.0.0.1:{tls_server.tls_port}"
    ca = str(tls_files.ca_cert)
    for name, healthy in (("localhost", True), ("redis.example.com", False)):
        engine = make_engine(
            [address], tls=_tls({"enabled": True, "server_ca_pem": ca, "server_name": name})
        )
        await engine.start(handler())
        try:
            assert engine.healthy is healthy, name
        finally:
            await engine.stop()


# --- Sentinel ------------------------------------------------------------------------------


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    """Master + replica + 3 sentinels of this test's own."""
    require_redis_server()
    setup = SentinelSetup(tmp_path)
    try:
        yield setup
    finally:
        setup.stop()


@pytest_twisted.ensureDeferred
async def test_sentinel_failover_without_restarting_the_engine(
    sentinel_setup: SentinelSetup,
) -> None:
    """Kill -9 the master: the same engine works again once the replica is promoted.

    It publishes, reads history and presence, and its subscriptions deliver again.
    """
    setup = sentinel_setup
    h = handler()
    engine = make_engine([setup.url], connect_timeout=0.5, io_timeout=1.0)
    await engine.start(h)
    try:
        assert engine.healthy
        assert {link.target for link in engine._links()} == {("127.0.0.1", setup.master.port)}
        await engine.subscribe("ha")
        await _works(engine, "ha", 1)
        await until(lambda: len(h.publications) == 1, what="the first publication")
        setup.wait_replicated()

        setup.master.kill()
        await until(lambda: not engine.healthy, what="the engine to notice the master died")
        with pytest.raises(RedisUnavailable):
            await engine.publish("ha", pub(2), HISTORY)
        new_master = ("127.0.0.1", setup.replica.port)
        await until(
            lambda: all(s.master() == new_master for s in setup.sentinels),
            timeout=20,
            what="the sentinels to promote the replica",
        )
        await until(lambda: engine.healthy, timeout=15, what="the engine to reach the new master")
        assert {link.target for link in engine._links()} == {new_master}

        # history written before the failover survived on the promoted replica
        await _works(engine, "ha", 2)
        result = await engine.history("ha", ALL, 60.0)
        assert [p.offset for p in result.publications] == [1, 2]
        assert "client-1" in await engine.presence("ha")
        # the PUB/SUB link resubscribed on the new master
        await until(lambda: len(h.publications) == 2, what="delivery after the failover")
        assert [p.offset for _, p in h.publications] == [1, 2]
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_sentinel_switch_moves_the_engine_before_the_old_master_is_demoted(
    sentinel_setup: SentinelSetup,
) -> None:
    """A planned failover (SENTINEL FAILOVER) with the old master still up.

    Sentinel demotes the old master only when it next reaches it, seconds later; until
    then that master still takes writes, which are lost when it becomes a replica. The
    engine follows Sentinel's +switch-master at once instead, so its writes go to the
    new master while the old one still calls itself master.
    """
    setup = sentinel_setup
    engine = make_engine([setup.url], connect_timeout=0.5, io_timeout=1.0)
    await engine.start(handler())
    try:
        await _works(engine, "planned", 1)
        setup.wait_replicated()
        setup.sentinels[0].command("SENTINEL", "FAILOVER", "mymaster")
        new_master = ("127.0.0.1", setup.replica.port)
        await until(
            lambda: engine.healthy and {link.target for link in engine._links()} == {new_master},
            timeout=10,
            what="the engine to follow the switch",
        )
        old_role = setup.master.info("replication")["role"]
        await _works(engine, "planned", 2)
        assert setup.replica.info("replication")["role"] == "master"
        result = await engine.history("planned", ALL, 60.0)
        assert [p.offset for p in result.publications] == [1, 2]
        assert old_role == "master"  # the engine moved before Sentinel demoted it
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_readonly_replica_drops_the_link() -> None:
    """A READONLY reply (the server is a replica now) fails the call and drops the link.

    The caller gets RedisNotMaster (error 100); the link reconnects, which for a
    Sentinel address means asking the sentinels for the master again.
    """
    require_redis_server()
    with RedisServer() as master, RedisServer(replicaof=master.port) as replica:
        engine = make_engine([replica.address])
        await engine.start(handler())
        try:
            link = engine.shards[0].command
            first = link._proto
            with pytest.raises(RedisNotMaster):
                await engine.publish("ro", pub(1), HISTORY)
            await until(
                lambda: link._proto is not None and link._proto is not first and engine.healthy,
                what="the link to be re-established",
            )
        finally:
            await engine.stop()


@pytest_twisted.ensureDeferred
async def test_sentinels_all_down_fail_fast(tmp_path: Path) -> None:
    """With no sentinel reachable the engine is unhealthy and calls fail at once."""
    require_redis_server()
    engine = make_engine(
        [f"redis+sentinel://127.0.0.1:{free_port()}?sentinel_master_name=mymaster"],
        connect_timeout=0.3,
    )
    d: Deferred[None] = engine.start(handler())
    await d
    try:
        assert not engine.healthy
        with pytest.raises(RedisUnavailable):
            await engine.presence("x")
    finally:
        await engine.stop()


# --- a Redis Cluster node given as a plain address ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_cluster_node_address_fails_with_a_clear_error(tmp_path: Path) -> None:
    """A plain address pointing at a Redis Cluster node: calls fail saying what to write."""
    require_redis_server()
    node = RedisServer(
        extra_args=(
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(tmp_path / "nodes.conf"),
            # the bus port defaults to port + 10000, which may not exist
            "--cluster-port", str(free_port()),
        )
    )  # fmt: skip
    with node:
        node.command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_for(
            lambda: (
                node.info("cluster").get("cluster_enabled") == "1"
                and b"cluster_state:ok" in node.command("CLUSTER", "INFO")
            ),
            10,
            "the one-node cluster to serve every slot",
        )
        engine = make_engine([node.address])
        await engine.start(handler())
        try:
            with pytest.raises(RedisUnavailable, match="configure it as redis\\+cluster://"):
                await engine.publish("c", pub(1), HISTORY)
            with pytest.raises(RedisUnavailable, match="configure it as redis\\+cluster://"):
                await engine.presence("c")
        finally:
            await engine.stop()
