"""The GRPC server API on the reactor (``grpc_api.server: h2``) with Node's @grpc/grpc-js.

grpc-js is a second, independent gRPC stack (Node's HTTP/2, nghttp2 underneath) next to
grpcio (tests/grpcapi): it loads rtserver's ``api.proto`` at run time and calls a real
``twistd -n rtserver``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import NodeScenario, Server, free_port, run_server

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "rtserver" / "grpcapi" / "proto" / "api.proto"
JS = Path(__file__).resolve().parent / "js" / "grpc_api.mjs"


@pytest.fixture(scope="module")
def grpc_h2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, str]]:
    """``twistd -n rtserver`` with the GRPC API on the reactor, on a free loopback port."""
    port, key = free_port(), "grpc-" + uuid.uuid4().hex
    overrides = {"grpc_api": {"enabled": True, "address": "127.0.0.1", "port": port,
                              "key": key, "server": "h2"}}
    with run_server(tmp_path_factory.mktemp("grpc-js"), overrides) as server:
        assert "HTTP/2 on the reactor" in server.log()
        yield server, port, key


def test_grpc_js_calls_publish_batch_history_info(
    node: str, node_modules: Path, grpc_h2_server: tuple[Server, int, str]
) -> None:
    if not (node_modules / "@grpc" / "grpc-js" / "package.json").is_file():
        pytest.fail("@grpc/grpc-js is missing: run npm ci --prefix tests/interop",
                    pytrace=False)
    server, port, key = grpc_h2_server
    channel = "chat:grpc-js-" + uuid.uuid4().hex[:8]
    js = NodeScenario(node, JS, {"GRPC_TARGET": f"127.0.0.1:{port}", "GRPC_KEY": key,
                                 "PROTO": str(PROTO), "CHANNEL": channel}, 30.0)
    try:
        events = js.finish(timeout=40.0)
    finally:
        js.close()
    seen = {key: value for event in events for key, value in event.items()}
    assert seen["publish"]["offset"] == 1 and seen["publish"]["epoch"]
    assert seen["bad_key"]["status"] == 16  # UNAUTHENTICATED
    assert seen["invalid"] == {"code": 107, "message": "bad request: data is required"}
    assert seen["large_publish"] == {"offset": 2}
    assert seen["batch"] == [{"offset": 3}, {"offset": 4}, {"offset": 5}]
    history = seen["history"]
    assert [p["offset"] for p in history] == [1, 2, 3, 4, 5]
    assert history[1]["size"] > 200 * 1024 and seen["history_equal"] is True
    assert seen["info"] == {"nodes": 1}
    assert seen["concurrent"] == 20
    assert "Traceback" not in server.log()
