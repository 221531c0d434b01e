"""Mutual TLS (``client_ca_pem``) on every server TLS object, one rtserver process.

``http_server.tls``, ``grpc_api.tls`` and ``uni_grpc.tls`` with ``client_ca_pem``: a
client without a certificate, or with one another CA signed, fails the TLS handshake;
one with a certificate of the configured CA gets served. Real parts: ``twistd -n
rtserver``, centrifuge-python over wss, requests for the HTTP API, grpcio for the GRPC
API and uni_grpc; certificates made with ``cryptography`` (tests/redisserver.py).
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from harness import Server, base_config, free_port, merge, spawn_server, stop_server
from mtls import REFUSED, https_session, make_pki, mtls_config, tls_exchange
from pysdk import ClientEvents, Recorder, bounded, name, run_scenario, subscribe
from redisserver import TLSFiles

from rtserver.grpcapi.proto import api_pb2, api_pb2_grpc, unistream_pb2_grpc
from rtserver.grpcapi.proto import unistream_pb2 as uni_pb

pytestmark = pytest.mark.interop

CALL_TIMEOUT = 10.0


@dataclass
class MTLS:
    """A running server with mutual TLS everywhere, and the certificates to test it."""

    server: Server
    good: TLSFiles  # the server's certificate and the client CA, and a client of it
    other: TLSFiles  # a client certificate of another CA
    http_port: int
    api_port: int
    uni_port: int
    grpc_key: str

    def session(self, client: TLSFiles | None) -> requests.Session:
        """An HTTPS session trusting the server, presenting ``client``'s certificate."""
        return https_session(self.good.ca_cert, client)

    def grpc_channel(self, port: int, client: TLSFiles | None) -> grpc.Channel:
        """A grpcio TLS channel to ``port`` presenting ``client``'s certificate (or none)."""
        pair: dict[str, bytes] = {}
        if client is not None:
            pair = {
                "private_key": client.client_key.read_bytes(),
                "certificate_chain": client.client_cert.read_bytes(),
            }
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.good.ca_cert.read_bytes(), **pair
        )
        # Each channel its own connection: one without a certificate must not reuse another's.
        options = [("grpc.ssl_target_name_override", "localhost"),
                   ("grpc.use_local_subchannel_pool", 1)]
        return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


@pytest.fixture(scope="module", params=["h2", "grpcio"])
def mtls(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MTLS]:
    """A server with mutual TLS on every port; the GRPC API served by each server in turn."""
    workdir = tmp_path_factory.mktemp("mtls")
    good, other = make_pki(workdir / "pki")
    secret, api_key = "mtls-" + uuid.uuid4().hex, "api-" + uuid.uuid4().hex
    grpc_key = "grpc-" + uuid.uuid4().hex
    http_port, api_port, uni_port = free_port(), free_port(), free_port()
    config = merge(
        base_config(secret, api_key),
        merge(mtls_config(good, http_port, api_port, uni_port),
              {"grpc_api": {"key": grpc_key, "server": request.param}}),
    )
    server = spawn_server(
        workdir, config, secret=secret, api_key=api_key, port=http_port, listen=(),
        health=https_session(good.ca_cert, good),
    )
    try:
        yield MTLS(server, good, other, http_port, api_port, uni_port, grpc_key)
    finally:
        stop_server(server)


def test_https_port_refuses_clients_without_a_certificate_of_the_ca(mtls: MTLS) -> None:
    """No certificate, or one of another CA: the handshake fails; the CA's: served."""
    ca = mtls.good.ca_cert
    assert tls_exchange(mtls.http_port, ca, mtls.good) == "HTTP/1.1 200 OK"
    for client in (None, mtls.other):
        outcome = tls_exchange(mtls.http_port, ca, client)
        assert outcome != "HTTP/1.1 200 OK"
        assert re.search(REFUSED, outcome), outcome


def test_http_api_needs_the_client_certificate(mtls: MTLS) -> None:
    """The HTTP API publishes with the client certificate; without, or another CA's, no."""
    body = {"channel": name("api-"), "data": {"n": 1}}
    headers = {"X-API-Key": mtls.server.api_key}
    with mtls.session(mtls.good) as session:
        reply = session.post(mtls.server.api_url + "/publish", json=body, headers=headers,
                             timeout=CALL_TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert "error" not in reply.json(), reply.json()
    for client in (None, mtls.other):
        with mtls.session(client) as session, pytest.raises(requests.exceptions.SSLError):
            session.post(mtls.server.api_url + "/publish", json=body, headers=headers,
                         timeout=CALL_TIMEOUT)


def test_websocket_clients_with_the_certificate_connect_and_receive(mtls: MTLS) -> None:
    """centrifuge-python over wss: with the certificate it gets a publication, without none.

    The client with the certificate subscribes and receives a publication; the one
    without never connects.
    """
    from centrifuge import Client

    channel = name("mtls-")

    def context(client: TLSFiles | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(mtls.good.ca_cert))
        if client is not None:
            ctx.load_cert_chain(client.client_cert, client.client_key)
        return ctx

    async def scenario() -> None:
        rec = Recorder()
        served = Client(mtls.server.ws_url, events=ClientEvents(rec, "good"),
                        token=mtls.server.token(name("u-")), ssl_context=context(mtls.good),
                        max_reconnect_delay=1.0, proxy=None)
        refused = Client(mtls.server.ws_url, events=ClientEvents(rec, "none"),
                         token=mtls.server.token(name("u-")), ssl_context=context(None),
                         max_reconnect_delay=1.0, proxy=None)
        try:
            sub = subscribe(served, channel, rec, label="good")
            await served.connect()
            await sub.subscribe()
            await bounded(sub.ready())
            with mtls.session(mtls.good) as session:
                reply = session.post(
                    mtls.server.api_url + "/publish",
                    json={"channel": channel, "data": {"n": 7}},
                    headers={"X-API-Key": mtls.server.api_key},
                    timeout=CALL_TIMEOUT,
                )
            assert reply.status_code == 200, reply.text
            got = await rec.wait("publication", client="good")
            assert got[0]["data"] == {"n": 7}
            await refused.connect()
            # TLS 1.3: the refusal (an alert) comes with the first read, the upgrade
            # response; the client retries and fails the same way.
            await rec.wait("error", client="none", count=2)
            assert not rec.find("connected", client="none")
        finally:
            await served.disconnect()
            await refused.disconnect()

    run_scenario(scenario())


def test_grpc_api_needs_the_client_certificate(mtls: MTLS) -> None:
    """The GRPC API: a call with the certificate publishes, without it fails UNAVAILABLE.

    With no certificate, or one of another CA, the handshake fails: UNAVAILABLE.
    """
    metadata = [("authorization", f"apikey {mtls.grpc_key}")]
    request = api_pb2.PublishRequest(channel=name("g-"), data=json.dumps({"n": 1}).encode())
    with mtls.grpc_channel(mtls.api_port, mtls.good) as channel:
        reply = api_pb2_grpc.CentrifugoApiStub(channel).Publish(
            request, metadata=metadata, timeout=CALL_TIMEOUT
        )
    assert not reply.HasField("error"), reply
    for client in (None, mtls.other):
        with mtls.grpc_channel(mtls.api_port, client) as channel:
            stub = api_pb2_grpc.CentrifugoApiStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.Publish(request, metadata=metadata, timeout=CALL_TIMEOUT)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value


def test_uni_grpc_needs_the_client_certificate(mtls: MTLS) -> None:
    """uni_grpc: a consumer with the certificate gets its connect push, others UNAVAILABLE.

    With no certificate, or one of another CA, the stream fails UNAVAILABLE.
    """
    token = mtls.server.token(name("u-"))
    with mtls.grpc_channel(mtls.uni_port, mtls.good) as channel:
        call = unistream_pb2_grpc.CentrifugoUniStreamStub(channel).Consume(
            uni_pb.ConnectRequest(token=token), timeout=CALL_TIMEOUT
        )
        assert next(iter(call)).HasField("connect")
        call.cancel()
    for client in (None, mtls.other):
        with mtls.grpc_channel(mtls.uni_port, client) as channel:
            call = unistream_pb2_grpc.CentrifugoUniStreamStub(channel).Consume(
                uni_pb.ConnectRequest(token=token), timeout=CALL_TIMEOUT
            )
            with pytest.raises(grpc.RpcError) as failed:
                next(iter(call))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value


def test_every_ssl_listener_gets_the_client_ca_and_a_tcp_one_is_logged(tmp_path: Path) -> None:
    """``--listen ssl:`` descriptions get the client CA; a ``tcp:`` one is logged.

    A ``tcp:`` listener is plain HTTP, which the start-up log says.
    """
    from twisted.application.service import Service
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from rtserver import config
    from rtserver.service import build

    good, _ = make_pki(tmp_path)
    cfg = config.from_mapping(
        {"http_api": {"key": "k"}, **{"http_server": mtls_config(good, 1, 2, 3)["http_server"]}}
    )
    listeners: list[tuple[str, Any]] = []

    def listener(description: str, site: Any, reactor: Any, client_ca: Any = None) -> Service:
        listeners.append((description, client_ca))
        return Service()

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "rtserver.service":
            seen.append(event["log_format"].format(**event))

    tls_listen = f"ssl:8443:privateKey={good.key}:certKey={good.cert}"
    globalLogPublisher.addObserver(observe)
    try:
        build(cfg, listen=[tls_listen, "tcp:8000"], reactor=Clock(), listener=listener)
    finally:
        globalLogPublisher.removeObserver(observe)
    (ssl_desc, ssl_ca), (tcp_desc, tcp_ca) = listeners
    assert (ssl_desc, tcp_desc, tcp_ca) == (tls_listen, "tcp:8000", None)
    assert ssl_ca is not None
    assert any("tcp:8000 is no TLS listener" in line for line in seen), seen
