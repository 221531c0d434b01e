"""``http_api.error_mode: transport`` on a real server: every API error as an HTTP status.

Real parts: ``twistd -n rtserver`` and requests. Both ways a request is answered are
covered: the fast path (a plain keep-alive ``POST /api/<method>``) and twisted.web (the
key in ``?api_key=``, which the fast path leaves to twisted.web).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness import Server, run_server

from rtserver import config

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("error-mode")
    with run_server(workdir, {"http_api": {"error_mode": "transport"}}) as running:
        yield running


def _post(server: Server, method: str, body: object, *, query_key: bool) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        if query_key:
            url, headers = f"{server.api_url}/{method}?api_key={server.api_key}", {}
        else:
            url, headers = f"{server.api_url}/{method}", {"X-API-Key": server.api_key}
        return session.post(url, json=body, headers=headers, timeout=5.0)


@pytest.mark.parametrize("query_key", [False, True], ids=["fast-path", "twisted-web"])
def test_errors_are_http_statuses_without_the_header(server: Server, query_key: bool) -> None:
    """No ``X-Centrifugo-Error-Mode`` header: errors still come as 404/400 statuses."""
    unknown = _post(server, "publish", {"channel": "nope:a", "data": 1}, query_key=query_key)
    assert unknown.status_code == 404
    assert unknown.json() == {"code": 102, "message": "unknown channel"}
    missing = _post(server, "publish", {"channel": "a"}, query_key=query_key)
    assert missing.status_code == 400
    assert missing.json()["code"] == 107
    ok = _post(server, "publish", {"channel": "a", "data": 1}, query_key=query_key)
    assert ok.status_code == 200
    assert "offset" in ok.json()["result"]


def test_the_sdk_sees_a_transport_error(server: Server) -> None:
    """``cent`` (Centrifugo's Python API client) gets its transport error, not an API one."""
    import cent

    with pytest.raises(cent.CentTransportError) as raised:
        server.publish("nope:a", {"x": 1})
    assert raised.value.status_code == 404


def test_other_values_stop_the_server() -> None:
    """As Centrifugo, only ``transport`` (or nothing) is accepted."""
    with pytest.raises(config.ConfigError, match=r"http_api\.error_mode: 'custom'"):
        config.from_mapping({"http_api": {"key": "k", "error_mode": "custom"}})
    assert config.from_mapping({"http_api": {"key": "k"}}).http_api.error_mode == ""
