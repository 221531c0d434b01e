"""The service's site: unknown paths, body caps by path prefix, mounting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.web.resource import Resource
from web_http import Connections, parse_response, service_site

from rtserver.web.site import mount

SETTINGS = {"http_api": {"key": "k", "max_request_body_size": 100}}


@pytest.fixture
def http() -> Iterator[Connections]:
    connections = Connections()
    yield connections
    connections.close_all()


@pytest.mark.parametrize("path", [b"/connection", b"/connection/", b"/connection/nope", b"/x"])
def test_unknown_paths_are_404(http: Connections, path: bytes) -> None:
    """Inner nodes of the tree and unknown children answer 404."""
    raw = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    code, _, _ = http.request(service_site(SETTINGS), raw)
    assert code == 404


def test_inner_node_is_a_plain_text_404(http: Connections) -> None:
    """``/connection`` itself (a branch of the tree) answers a short plain-text 404."""
    raw = b"GET /connection HTTP/1.1\r\nHost: x\r\n\r\n"
    code, headers, body = http.request(service_site(SETTINGS), raw)
    assert (code, body) == (404, b"not found\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"


def test_chunked_body_over_the_cap_is_413_and_closed(http: Connections) -> None:
    """A chunked API body that grows past the cap is refused once, and the rest ignored."""
    head = b"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
    transport = http.send(service_site(SETTINGS), head, chunk, chunk, chunk, b"0\r\n\r\n")
    code, _, body = parse_response(transport.value())
    assert code == 413 and body == b"request body too large\r\n"
    assert transport.value().count(b"HTTP/1.1") == 1
    assert transport.disconnecting


def test_chunked_body_under_the_cap_is_served(http: Connections) -> None:
    """The same chunked request within the cap gets the API's answer."""
    head = b"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n"
    code, _, body = http.request(service_site(SETTINGS), head + b"2\r\n{}\r\n0\r\n\r\n")
    assert code == 200 and body.startswith(b'{"result":')


def test_mount_refuses_the_root() -> None:
    """A transport cannot be mounted at ``/`` (it would shadow every other path)."""
    with pytest.raises(ValueError, match="root"):
        mount(Resource(), "/", Resource())
