"""``<proxy>.http.tls``: HTTPS proxy backends with their own CA, client certificate, name.

Real parts: two ``backend.py`` processes serving HTTPS with certificates of a test CA
(one also requires a client certificate of that CA: mutual TLS), ``twistd -n rtserver``
with one named proxy per TLS setup, each behind an RPC namespace, and centrifuge-python
calling ``<namespace>:whoami``. A verified backend answers; a failed handshake fails the
call as an unreachable backend does: error 100 to the client and one log line naming the
TLS reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from centrifuge import Client, ReplyError
from harness import Server, run_server
from mtls import make_pki
from proxy_support import Backend
from pysdk import bounded, run_scenario
from redisserver import TLSFiles

from rtserver import config

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _tls(**fields: Any) -> dict[str, Any]:
    return {"http": {"tls": {"enabled": True, **fields}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, TLSFiles]]:
    workdir = tmp_path_factory.mktemp("proxy-https")
    good, other = make_pki(workdir / "pki")
    plain = Backend(tls=[good.cert, good.key])
    mutual = Backend(tls=[good.cert, good.key, good.ca_cert])
    client_cert = {"cert_pem": str(good.client_cert), "key_pem": str(good.client_key)}
    proxies = {
        # name: (backend, proxy keys)
        "good": (plain, _tls(server_ca_pem=str(good.ca_cert))),
        "wrongca": (plain, _tls(server_ca_pem=str(other.ca_cert))),
        "system": (plain, {}),  # no http.tls: the system's trust store knows no test CA
        "skip": (plain, _tls(server_ca_pem=str(other.ca_cert), insecure_skip_verify=True)),
        "named": (plain, _tls(server_ca_pem=str(good.ca_cert), server_name="localhost")),
        "wrongname": (plain, _tls(server_ca_pem=str(good.ca_cert), server_name="example.org")),
        "mutual": (mutual, _tls(server_ca_pem=str(good.ca_cert), **client_cert)),
        "nocert": (mutual, _tls(server_ca_pem=str(good.ca_cert))),
    }
    overrides = {
        "proxies": [
            {"name": proxy, "endpoint": f"{backend.url}/rpc", "timeout": "3s", **keys}
            for proxy, (backend, keys) in proxies.items()
        ],
        "rpc": {
            "namespaces": [
                {"name": proxy, "proxy_enabled": True, "proxy_name": proxy} for proxy in proxies
            ]
        },
    }
    try:
        with run_server(workdir, overrides) as server:
            yield server, good
    finally:
        plain.close()
        mutual.close()


def rpc(server: Server, *methods: str) -> list[Any]:
    """Call each method in turn on one connection: its data, or the ReplyError's code."""

    async def scenario() -> list[Any]:
        client = Client(server.ws_url, token=server.token("tess"), proxy=None)
        await client.connect()
        out: list[Any] = []
        try:
            await bounded(client.ready())
            for method in methods:
                try:
                    out.append((await bounded(client.rpc(method, {"n": 1}))).data)
                except ReplyError as e:
                    out.append(e.code)
        finally:
            await client.disconnect()
        return out

    return run_scenario(scenario())


def failures(server: Server, proxy: str) -> list[str]:
    return [
        line
        for line in server.log(tail=10**7).splitlines()
        if re.search(rf"proxy {proxy}: rpc for client \S+ failed", line)
    ]


@pytest.mark.parametrize("proxy", ["good", "skip", "named", "mutual"])
def test_verified_backend_answers(setup: tuple[Server, TLSFiles], proxy: str) -> None:
    """Own CA; no verification; the name checked against server_name; mutual TLS."""
    server, _ = setup
    (data,) = rpc(server, f"{proxy}:whoami")
    assert data["user"] == "tess" and data["echo"] == {"n": 1}
    assert failures(server, proxy) == []


@pytest.mark.parametrize(
    ("proxy", "reason"),
    [
        ("wrongca", "certificate verify failed"),
        ("system", "certificate verify failed"),
        ("wrongname", "not valid for the name connected to"),
        ("nocert", "certificate required"),
    ],
)
def test_failed_handshake_is_an_unreachable_backend(
    setup: tuple[Server, TLSFiles], proxy: str, reason: str
) -> None:
    """Error 100 (temporary) to the client, one log line with the TLS reason per call."""
    server, _ = setup
    assert rpc(server, f"{proxy}:whoami") == [100]
    (line,) = failures(server, proxy)
    assert "TLS handshake failed" in line and reason in line, line


def test_a_client_certificate_is_not_lent_to_another_proxy(
    setup: tuple[Server, TLSFiles],
) -> None:
    """Two proxies to one backend, one with a client certificate: separate connections.

    After ``mutual`` leaves a kept-alive connection (made with the certificate),
    ``nocert`` still fails: it never gets that connection.
    """
    server, _ = setup
    before = len(failures(server, "nocert"))
    answers = rpc(server, "mutual:whoami", "nocert:whoami", "mutual:whoami")
    assert answers[0]["user"] == answers[2]["user"] == "tess"
    assert answers[1] == 100
    assert len(failures(server, "nocert")) == before + 1


def test_a_pem_that_does_not_load_stops_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    data = {
        "rpc": {"proxy": {"endpoint": "https://127.0.0.1:1/rpc",
                          **_tls(server_ca_pem=str(bad))}},
    }
    with pytest.raises(config.ConfigError, match=r"rpc\.proxy\.http\.tls\.server_ca_pem"):
        config.from_mapping(data)
