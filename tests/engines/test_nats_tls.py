"""The NATS broker over TLS and with several servers, on real ``nats-server`` processes.

The certificates come from a test CA made in the test (``redisserver.make_tls``:
``cryptography``). What a user sees:

* two nodes exchange publications and control messages through a server that requires
  TLS (``tls://`` URL or ``broker.nats.tls.enabled``; the server's first INFO is
  plaintext, TLS starts before CONNECT);
* a server certificate the node cannot verify (another CA, another name, the system's
  trust store when the server requires TLS the configuration does not enable), a server
  that does not offer TLS to a node configured for it, or a server asking for a client
  certificate the node does not have: the node stays unhealthy, logs one warning that
  says why (no traceback) and keeps retrying, so it connects once the server is fixed;
* mutual TLS (``--tlsverify``) with ``cert_pem``/``key_pem``;
* several URLs: the node starts on the first server that answers and moves on to the
  next when its server dies, resubscribing there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from contract import NO_HISTORY, RecordingHandler, pub
from nats_support import make_broker, warnings_logged
from natsserver import NatsServer, require_nats_server
from redis_support import handler, until
from redisserver import TLSFiles, make_tls

from rtserver.config import ClientTLSConfig
from rtserver.core.types import DisconnectControl
from rtserver.engines.nats import NatsBroker


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate."""
    return make_tls(tmp_path)


@pytest.fixture
def other_ca(tmp_path: Path) -> TLSFiles:
    """Certificates of another CA (which the node's ``server_ca_pem`` does not trust)."""
    (tmp_path / "other").mkdir()
    return make_tls(tmp_path / "other")


@pytest.fixture
def tls_server(tls_files: TLSFiles) -> Iterator[NatsServer]:
    require_nats_server()
    with NatsServer(tls=tls_files) as server:
        yield server


def _tls(files: TLSFiles, **options: Any) -> ClientTLSConfig:
    return ClientTLSConfig(enabled=True, server_ca_pem=str(files.ca_cert), **options)


async def _started(broker: NatsBroker) -> RecordingHandler:
    recorder = handler()
    await broker.start(recorder)
    return recorder


async def _exchange(a: NatsBroker, b: NatsBroker, rb: RecordingHandler, n: int) -> None:
    """A publication and a control message from ``a`` reach ``b``."""
    await b.subscribe("room")
    await a.publish("room", pub(n), NO_HISTORY)
    control = DisconnectControl(user="u", code=3503, reason=f"tls {n}")
    await a.publish_control(control)
    await until(lambda: control in rb.controls, what="the control message on b")
    await until(lambda: pub(n).data in [p.data for _, p in rb.publications],
                what=f"publication {n} on b")


@pytest_twisted.ensureDeferred
async def test_two_nodes_exchange_over_tls(tls_server: NatsServer, tls_files: TLSFiles) -> None:
    """tls:// + the test CA: publications and control messages cross over TLS."""
    prefix = "tls"
    a = make_broker(tls_server.url, prefix, tls=_tls(tls_files))
    b = make_broker(tls_server.url, prefix, tls=_tls(tls_files))
    await _started(a)
    rb = await _started(b)
    try:
        assert a.healthy and b.healthy
        await _exchange(a, b, rb, 1)
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_nats_url_with_tls_enabled(tls_server: NatsServer, tls_files: TLSFiles) -> None:
    """``broker.nats.tls.enabled`` turns TLS on for a nats:// URL too (as Centrifugo)."""
    url = f"nats://127.0.0.1:{tls_server.port}"
    a = make_broker(url, "plainurl", tls=_tls(tls_files))
    b = make_broker(url, "plainurl", tls=_tls(tls_files))
    await _started(a)
    rb = await _started(b)
    try:
        await _exchange(a, b, rb, 2)
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_server_name_and_insecure_skip_verify(
    tls_server: NatsServer, tls_files: TLSFiles
) -> None:
    """The certificate must name ``server_name`` (default: the URL host) unless skipped."""
    named = make_broker(tls_server.url, tls=_tls(tls_files, server_name="localhost"))
    wrong = make_broker(tls_server.url, tls=_tls(tls_files, server_name="nats.example"))
    skip = make_broker(
        tls_server.url, tls=ClientTLSConfig(enabled=True, insecure_skip_verify=True)
    )
    with warnings_logged() as warnings:
        for broker in (named, wrong, skip):
            await _started(broker)
    try:
        assert named.healthy and skip.healthy and not wrong.healthy
        assert warnings == [
            f"nats link to {tls_server.url}: TLS handshake failed: the server's certificate "
            "is not valid for the name connected to"
        ]
    finally:
        for broker in (named, wrong, skip):
            await broker.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_ca_is_refused_then_retried(
    tls_files: TLSFiles, other_ca: TLSFiles
) -> None:
    """A certificate of another CA: unhealthy, one clear warning, retried until it fits."""
    server = NatsServer(binary=require_nats_server(), tls=other_ca).start()
    broker = make_broker(server.url, tls=_tls(tls_files))
    try:
        with warnings_logged() as warnings:
            await _started(broker)
            assert not broker.healthy
            attempts = broker.link._attempt
            await until(lambda: broker.link._attempt > attempts + 1, what="more attempts")
        assert warnings == [
            f"nats link to {server.url}: TLS handshake failed: certificate verify failed"
        ]
        # The same port now serves a certificate of the CA the node trusts.
        server.stop()
        server.tls = tls_files
        server.start()
        await until(lambda: broker.healthy, timeout=10.0, what="healthy after the fix")
    finally:
        await broker.stop()
        server.stop()


@pytest.mark.parametrize(
    ("scheme", "why"),
    [
        ("nats", "the server requires TLS; broker.nats.tls is not enabled"),
        ("tls", "broker.nats.tls is not enabled"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_tls_without_broker_nats_tls(
    tls_server: NatsServer, scheme: str, why: str
) -> None:
    """No broker.nats.tls: TLS is verified with the system's trust store; the log says so.

    With a nats:// URL TLS starts because the server requires it, as the official clients
    do; the test CA is not in the system's store, so the node says why it cannot connect
    and what is missing.
    """
    url = f"{scheme}://127.0.0.1:{tls_server.port}"
    broker = make_broker(url)
    try:
        with warnings_logged() as warnings:
            await _started(broker)
        assert not broker.healthy
        assert warnings == [
            f"nats link to {url}: TLS handshake failed: certificate verify failed ({why}, so "
            "its certificate was checked against the system's trust store)"
        ]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_tls_configured_but_the_server_is_plain(tls_files: TLSFiles) -> None:
    """tls:// to a server without TLS: nothing sent in the clear, a warning, retried."""
    server = NatsServer(binary=require_nats_server(), user="derek", password="pw").start()
    broker = make_broker(f"tls://derek:pw@127.0.0.1:{server.port}", tls=_tls(tls_files))
    try:
        with warnings_logged() as warnings:
            await _started(broker)
        assert not broker.healthy
        assert warnings == [
            f"nats link to tls://127.0.0.1:{server.port}: TLS is configured "
            "(broker.nats.tls or a tls:// URL) but the server does not offer it"
        ]
        server.stop()
        server.tls = tls_files
        server.start()
        await until(lambda: broker.healthy, timeout=10.0, what="healthy once TLS is served")
    finally:
        await broker.stop()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_mutual_tls(tls_files: TLSFiles) -> None:
    """--tlsverify: a node without a client certificate is refused, one with it works."""
    require_nats_server()
    with NatsServer(tls=tls_files, verify=True) as server:
        anonymous = make_broker(server.url, tls=_tls(tls_files))
        mtls = _tls(tls_files, cert_pem=str(tls_files.client_cert),
                    key_pem=str(tls_files.client_key))
        a = make_broker(server.url, "mtls", tls=mtls)
        b = make_broker(server.url, "mtls", tls=mtls)
        try:
            with warnings_logged() as warnings:
                await _started(anonymous)
                await until(lambda: bool(warnings), what="the refusal logged")
            assert not anonymous.healthy
            assert len(warnings) == 1 and "TLS handshake failed: " in warnings[0], warnings
            assert "certificate" in warnings[0]
            await _started(a)
            rb = await _started(b)
            assert a.healthy and b.healthy
            await _exchange(a, b, rb, 3)
        finally:
            for broker in (anonymous, a, b):
                await broker.stop()


# --- several servers ---------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def two_servers() -> AsyncIterator[list[NatsServer]]:
    """Two independent nats-servers (no NATS cluster between them)."""
    binary = require_nats_server()
    servers = [NatsServer(binary=binary).start(), NatsServer(binary=binary).start()]
    yield servers
    for server in servers:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_first_reachable_server_is_used(two_servers: list[NatsServer]) -> None:
    """A dead first URL is skipped at start: the node starts healthy on the second."""
    first, second = two_servers
    first.kill()
    broker = make_broker(f"{first.url}, {second.url}")
    try:
        await _started(broker)
        assert broker.healthy and broker.link.address.port == second.port
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_failover_to_the_next_server(two_servers: list[NatsServer]) -> None:
    """The first server dies for good: both nodes move to the second and resubscribe."""
    first, second = two_servers
    url = f"{first.url},{second.url}"
    a, b = make_broker(url, "failover"), make_broker(url, "failover")
    await _started(a)
    rb = await _started(b)
    try:
        assert a.link.address.port == first.port and b.link.address.port == first.port
        await _exchange(a, b, rb, 1)
        first.kill()
        await until(lambda: a.healthy and b.healthy and a.link.address.port == second.port
                    and b.link.address.port == second.port,
                    timeout=10.0, what="both nodes on the second server")
        await a.publish("room", pub(2), NO_HISTORY)  # b's subscription was sent again
        control = DisconnectControl(user="u", code=3503, reason="after failover")
        await a.publish_control(control)
        await until(lambda: control in rb.controls, what="control after failover")
        await until(lambda: len(rb.publications) == 2, what="publication after failover")
        assert [p.data for _, p in rb.publications] == [pub(1).data, pub(2).data]
        # The second dies too and the first comes back: the nodes wrap around to it.
        first.start()
        second.kill()
        await until(lambda: a.healthy and b.healthy and a.link.address.port == first.port
                    and b.link.address.port == first.port,
                    timeout=10.0, what="both nodes back on the first server")
        await a.publish("room", pub(3), NO_HISTORY)
        await until(lambda: len(rb.publications) == 3, what="publication after wrapping")
    finally:
        await a.stop()
        await b.stop()
