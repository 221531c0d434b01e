"""The server HTTP API resource, exercised through a real Site over StringTransport."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from rtserver.api.executor import APIExecutor
from rtserver.config import HTTPAPIConfig, from_mapping
from rtserver.core.node import Node
from rtserver.engines.memory import MemoryEngine
from rtserver.web.api import APIResource, http_status
from rtserver.web.apifast import APIFastPath
from rtserver.web.site import RTSite

KEY = "s3cret"
CONFIG = {
    "http_api": {"key": KEY},
    "channel": {"namespaces": [{"name": "hist", "history_size": 10, "history_ttl": "300s"}]},
}


@dataclass
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return orjson.loads(self.body)


class Server:
    """An API resource at ``/api`` served by a Site on an in-memory connection.

    ``fast``: rtserver's site with the API fast path (``web/apifast.py``) in front of
    twisted.web, as the server runs; otherwise a plain twisted.web Site.
    """

    def __init__(self, executor: Any, config: HTTPAPIConfig, fast: bool = False) -> None:
        self.clock = Clock()
        root = Resource()
        api = APIResource(executor, config)
        root.putChild(b"api", api)
        if fast:
            path = APIFastPath(api, "/api", config.max_request_body_size)
            limits = [("/api", config.max_request_body_size)]
            self.site: Site = RTSite(
                root, body_limits=limits, api_fast_path=path, reactor=self.clock
            )
        else:
            self.site = Site(root, reactor=self.clock)

    def open(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[Any, StringTransport]:
        """Send one request on a new connection; returns the channel and its transport."""
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        proto.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        return proto, transport

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        proto, transport = self.open(method, path, body, headers)
        response = parse(transport.value())
        proto.connectionLost(Failure(ConnectionDone()))
        return response

    def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes = b""
    ) -> Response:
        """POST with the API key (unless ``headers`` are given)."""
        if body is not None:
            raw = orjson.dumps(body)
        if headers is None:
            headers = {"X-API-Key": KEY}
        return self.request("POST", path, raw, headers)


def parse(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        assert int(headers["content-length"]) == len(body)
    return Response(int(status.split()[1]), headers, body)


def make_server(fast: bool = False, **api: Any) -> Server:
    config = from_mapping({**CONFIG, "http_api": {"key": KEY, **api}})
    clock = Clock()
    node = Node(MemoryEngine(clock), config, clock=clock)
    node.start()
    return Server(APIExecutor(node), config.http_api, fast=fast)


@pytest.fixture(params=[False, True], ids=["twisted.web", "fast path"])
def fast(request: pytest.FixtureRequest) -> bool:
    """Every API test runs through plain twisted.web and through the fast path."""
    return bool(request.param)


@pytest.fixture
def server(fast: bool) -> Server:
    return make_server(fast)


# --- authentication and HTTP rules -----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": KEY + "x"},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": "apikey wrong"},
    ],
)
def test_unauthorized(server: Server, headers: dict[str, str]) -> None:
    """Requests without the right API key get 401 with an empty body."""
    response = server.post("/api/info", {}, headers=headers)
    assert response.code == 401
    assert response.body == b""


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/info", {"X-API-Key": KEY}),
        ("/api/info", {"Authorization": f"apikey {KEY}"}),
        ("/api/info", {"Authorization": f"ApiKey {KEY}"}),
        ("/api/info", {"X-API-Key": "wrong", "Authorization": f"apikey {KEY}"}),
        (f"/api/info?api_key={KEY}", {}),
    ],
)
def test_authorized(server: Server, path: str, headers: dict[str, str]) -> None:
    """The key is accepted from X-API-Key, Authorization: apikey, or ?api_key."""
    response = server.post(path, {}, headers=headers)
    assert response.code == 200
    assert response.json()["result"]["nodes"]


def test_empty_key_refuses_everything(fast: bool) -> None:
    """With no key configured (and not insecure) every request is 401."""
    server = make_server(fast, key="")
    assert server.post("/api/info", {}, headers={}).code == 401
    assert server.post("/api/info", {}, headers={"X-API-Key": ""}).code == 401


def test_insecure_needs_no_key(fast: bool) -> None:
    """http_api.insecure serves requests without a key."""
    server = make_server(fast, key="", insecure=True)
    assert server.post("/api/info", {}, headers={}).code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_method_not_allowed(server: Server, method: str) -> None:
    """Non-POST requests get 405 with Allow: POST."""
    response = server.request(method, "/api/info", headers={"X-API-Key": KEY})
    assert response.code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("raw", [b"{", b'{"channel": "a",}', b"\xff\xfe", b"[1, 2"])
def test_malformed_json(server: Server, raw: bytes) -> None:
    """A body that is not JSON gets 400 text/plain "bad request"."""
    response = server.post("/api/publish", raw=raw)
    assert response.code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.body == b"bad request"


def test_deeper_path_not_found(server: Server) -> None:
    """Paths below a method are 404."""
    assert server.post("/api/publish/extra", {}).code == 404


# --- methods ---------------------------------------------------------------------------


def test_publish_and_history(server: Server) -> None:
    """Publish answers 200 with offset/epoch; history returns the publication."""
    response = server.post("/api/publish", {"channel": "hist:a", "data": {"x": 1}})
    assert response.code == 200
    result = response.json()["result"]
    assert result["offset"] == 1
    history = server.post("/api/history", {"channel": "hist:a", "limit": -1}).json()
    assert history == {
        "result": {
            "publications": [{"data": {"x": 1}, "offset": 1}],
            "offset": 1,
            "epoch": result["epoch"],
        }
    }


def test_empty_body_is_empty_request(server: Server) -> None:
    """An empty body counts as an empty request object."""
    response = server.post("/api/info", raw=b"")
    assert response.code == 200
    assert response.json()["result"]["nodes"]


def test_api_error_keeps_200(server: Server) -> None:
    """API errors are 200 with an error object (what cent expects)."""
    response = server.post("/api/publish", {"channel": "nope:a", "data": 1})
    assert response.code == 200
    assert response.json() == {"error": {"code": 102, "message": "unknown channel"}}


def test_unknown_method_path(server: Server) -> None:
    """An unknown method path answers error 104."""
    assert server.post("/api/teleport", {}).json()["error"]["code"] == 104


def test_batch(server: Server) -> None:
    """A batch answers top-level replies keyed by method."""
    body = {
        "commands": [
            {"publish": {"channel": "hist:a", "data": 1}},
            {"history": {"channel": "nope:a"}},
        ],
        "parallel": False,
    }
    replies = server.post("/api/batch", body).json()["replies"]
    assert replies[0]["publish"]["offset"] == 1
    assert replies[1] == {"error": {"code": 102, "message": "unknown channel"}}


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"channel": "nope:a", "data": 1}, 404, 102),
        ({"channel": "a"}, 400, 107),
    ],
)
def test_transport_error_mode(
    server: Server, params: dict[str, Any], status: int, code: int
) -> None:
    """With X-Centrifugo-Error-Mode: transport, errors become HTTP statuses."""
    headers = {"X-API-Key": KEY, "X-Centrifugo-Error-Mode": "transport"}
    response = server.post("/api/publish", params, headers=headers)
    assert response.code == status
    assert set(response.json()) == {"code", "message"}
    assert response.json()["code"] == code


def test_transport_error_mode_success(server: Server) -> None:
    """Transport error mode leaves successful responses unchanged."""
    headers = {"X-API-Key": KEY, "X-Centrifugo-Error-Mode": "transport"}
    response = server.post("/api/publish", {"channel": "a", "data": 1}, headers=headers)
    assert response.code == 200
    assert response.json() == {"result": {}}


def test_http_status_mapping() -> None:
    """Error codes map to the documented HTTP statuses."""
    assert [http_status(c) for c in (100, 102, 104, 107, 108, 112, 113, 101)] == [
        500,
        404,
        404,
        400,
        400,
        416,
        409,
        500,
    ]


# --- legacy endpoint -------------------------------------------------------------------


def test_legacy_commands(server: Server) -> None:
    """POST /api runs newline-separated commands and answers one line each."""
    body = b"\n".join(
        [
            orjson.dumps(
                {"id": 1, "method": "publish", "params": {"channel": "hist:a", "data": 1}}
            ),
            orjson.dumps({"id": 2, "method": "PRESENCE", "params": {"channel": "hist:a"}}),
            orjson.dumps({"method": 9, "params": {}}),
            orjson.dumps({"id": 4, "method": "batch", "params": {}}),
        ]
    )
    response = server.post("/api", raw=body)
    assert response.code == 200
    assert response.headers["content-type"] == "application/json"
    first, second, third, fourth = (orjson.loads(line) for line in response.body.split(b"\n"))
    assert first["id"] == 1 and first["result"]["offset"] == 1
    assert second == {"id": 2, "error": {"code": 108, "message": "not available"}}
    assert "id" not in third and third["result"]["nodes"]
    assert fourth == {"id": 4, "error": {"code": 104, "message": "method not found"}}


def test_legacy_trailing_slash(server: Server) -> None:
    """POST /api/ is the legacy endpoint too."""
    response = server.post("/api/", raw=b'{"id":7,"method":"info","params":{}}\n')
    assert orjson.loads(response.body)["id"] == 7


@pytest.mark.parametrize("raw", [b"", b"\n\n", b"{bad", b"[1]", b'{"id":"x","method":"info"}'])
def test_legacy_bad_body(server: Server, raw: bytes) -> None:
    """An empty or malformed legacy body is 400."""
    assert server.post("/api", raw=raw).code == 400


def test_legacy_needs_auth(server: Server) -> None:
    """The legacy endpoint uses the same API key check."""
    assert server.post("/api", raw=b'{"method":"info"}', headers={}).code == 401


# --- asynchronous completion -----------------------------------------------------------


class PendingExecutor:
    """An executor whose calls wait for ``release``."""

    def __init__(self) -> None:
        self.pending: Deferred[dict[str, Any]] = Deferred()

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        return await self.pending

    def release(self) -> None:
        self.pending.callback({"result": {}})


def test_late_response(fast: bool) -> None:
    """A response computed later is written when it is ready."""
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast)
    proto, transport = server.open("POST", "/api/info", b"{}")
    assert transport.value() == b""
    executor.release()
    assert parse(transport.value()).json() == {"result": {}}
    proto.connectionLost(Failure(ConnectionDone()))


def test_client_gone_before_response(fast: bool) -> None:
    """When the caller disconnects first, the late result is dropped quietly.

    Quietly: nothing written, and no failure logged (tests/conftest.py's guard).
    """
    executor = PendingExecutor()
    server = Server(executor, HTTPAPIConfig(insecure=True), fast)
    proto, transport = server.open("POST", "/api/info", b"{}")
    proto.connectionLost(Failure(ConnectionDone()))
    executor.release()
    assert transport.value() == b""


class BrokenExecutor:
    """An executor that fails outright (a bug, not an API error)."""

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        raise RuntimeError("bug")


def test_unexpected_failure_is_500_and_logged(
    fast: bool, expect_logged_failure: Callable[..., None]
) -> None:
    """A failure outside the executor's error handling is logged once and answered 500."""
    server = Server(BrokenExecutor(), HTTPAPIConfig(insecure=True), fast)
    expect_logged_failure(RuntimeError)
    response = server.post("/api/info", {}, headers={})
    assert response.code == 500
