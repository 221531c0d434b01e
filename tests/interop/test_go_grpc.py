"""The GRPC server API with grpc-go, a third gRPC stack (Go's own HTTP/2 implementation).

``go/grpc_api_client.go`` is built once per session from the Debian packages
``golang-go`` and ``golang-google-grpc-dev`` (grpc-go 1.33, sources under
/usr/share/gocode; GOPATH mode, no network). It has no generated stubs: it invokes
``/centrifugal.centrifugo.api.CentrifugoApi/<Method>`` with a codec that passes bytes
through, so requests are built and answers read here with rtserver's Python stubs. It
reads one call per line (method, hex request, metadata, deadline, gzip) and answers one
line per call; the calls of one run share one connection and run concurrently.

Every test runs against a real ``twistd -n rtserver`` with each ``grpc_api.server``.
Without Go or grpc-go the tests skip (fail when ``RTSERVER_REQUIRE_ALL`` is set, as in
CI; scripts/test.sh installs both).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gogrpc import build_go_client, go_missing
from google.protobuf.message import Message
from harness import Server, free_port, run_server
from pysdk import Recorder, in_thread, name, run_scenario, subscribed

from rtserver.grpcapi.proto import api_pb2 as pb

#: Seconds one run of the client gets.
RUN_TIMEOUT = 60.0

DEADLINE_EXCEEDED, UNAUTHENTICATED = 4, 16


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grpc-go client, built into a temporary directory once per session."""
    reason = go_missing()
    if reason:
        reason += ": the grpc-go tests need it"
        if os.environ.get("RTSERVER_REQUIRE_ALL"):
            pytest.fail(reason + " (RTSERVER_REQUIRE_ALL is set)", pytrace=False)
        pytest.skip(reason)
    try:
        return build_go_client(tmp_path_factory.mktemp("grpc-go"))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@dataclass
class Call:
    """One call of a run: what to send."""

    method: str
    request: Message
    key: str | None = None  # None: the server's key
    timeout_ms: float = 10_000.0
    gzip: bool = False
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    """What grpc-go got: a status code (0: OK) and message, or the response."""

    code: int
    message: str
    response: Any = None


@dataclass
class GoAPI:
    """The grpc-go client against one server."""

    binary: Path
    server: Server
    target: str
    key: str

    def run(self, *calls: Call) -> list[Outcome]:
        """Make ``calls`` concurrently on one connection; their outcomes, in order."""
        lines = []
        for i, c in enumerate(calls):
            metadata = {"authorization": f"apikey {self.key if c.key is None else c.key}",
                        **dict(c.metadata)}
            lines.append(json.dumps({
                "id": i, "method": c.method, "request": c.request.SerializeToString().hex(),
                "metadata": metadata, "timeout_ms": c.timeout_ms, "gzip": c.gzip}))
        done = subprocess.run([str(self.binary), self.target], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
        if done.returncode != 0:
            pytest.fail(f"grpc-go client exited {done.returncode}:\n{done.stderr}")
        answers = {a["id"]: a for a in map(json.loads, done.stdout.splitlines())}
        assert sorted(answers) == list(range(len(calls))), done.stdout
        outcomes = []
        for i, c in enumerate(calls):
            answer = answers[i]
            if "response" in answer:
                reply = getattr(pb, c.method + "Response").FromString(
                    bytes.fromhex(answer["response"]))
                outcomes.append(Outcome(0, "", reply))
            else:
                outcomes.append(Outcome(answer["code"], answer.get("message", "")))
        return outcomes

    def ok(self, *calls: Call) -> list[Any]:
        """Make ``calls``; their responses (each must succeed)."""
        outcomes = self.run(*calls)
        for c, o in zip(calls, outcomes, strict=True):
            assert o.code == 0, f"{c.method}: status {o.code} {o.message}"
        return [o.response for o in outcomes]


@pytest.fixture(scope="module", params=["grpcio", "h2"])
def grpc_go(request: pytest.FixtureRequest, go_client: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoAPI]:
    """``twistd -n rtserver`` with the GRPC API served by each ``grpc_api.server``."""
    port, key = free_port(), "grpc-" + uuid.uuid4().hex
    overrides = {"grpc_api": {"enabled": True, "address": "127.0.0.1", "port": port,
                              "key": key, "server": request.param}}
    with run_server(tmp_path_factory.mktemp("grpc-go"), overrides) as server:
        yield GoAPI(go_client, server, f"127.0.0.1:{port}", key)
        assert "Traceback" not in server.log()


def _publish(channel: str, data: bytes, **kwargs: Any) -> Call:
    return Call("Publish", pb.PublishRequest(channel=channel, data=data), **kwargs)


def _history(channel: str, **kwargs: Any) -> Call:
    return Call("History", pb.HistoryRequest(channel=channel, limit=-1), **kwargs)


def test_publish_reaches_a_websocket_subscriber_and_history(grpc_go: GoAPI) -> None:
    channel = name("go-ch-")
    sent = [{"n": 1}, {"n": 2, "text": "héllo"}]

    async def scenario() -> list[Any]:
        rec = Recorder()
        async with subscribed(grpc_go.server, channel, rec, token=grpc_go.server.token("go-u")):
            replies = []
            for data in sent:
                (reply,) = await in_thread(grpc_go.ok, _publish(channel, json.dumps(data).encode()))
                replies.append(reply)
            pubs = await rec.wait("publication", count=2)
            assert [p["data"] for p in pubs] == sent
            return replies

    replies = run_scenario(scenario())
    assert [r.result.offset for r in replies] == [1, 2]
    (history,) = grpc_go.ok(_history(channel))
    assert [json.loads(p.data) for p in history.result.publications] == sent
    assert history.result.epoch == replies[0].result.epoch != ""


def test_batch_info_bad_key_and_invalid_request(grpc_go: GoAPI) -> None:
    channel = name("go-batch-")
    batch, info, refused, invalid = grpc_go.run(
        Call("Batch", pb.BatchRequest(commands=[
            pb.Command(publish=pb.PublishRequest(channel=channel, data=f'{{"b":{n}}}'.encode()))
            for n in range(3)])),
        Call("Info", pb.InfoRequest()),
        _publish(channel, b"{}", key="wrong"),
        _publish(channel, b""),
    )
    assert [r.publish.offset for r in batch.response.replies] == [1, 2, 3]
    assert len(info.response.result.nodes) == 1
    assert (refused.code, refused.message) == (UNAUTHENTICATED, "unauthenticated")
    assert invalid.code == 0 and not invalid.response.HasField("result")
    assert (invalid.response.error.code, invalid.response.error.message) == (
        107, "bad request: data is required")
    (history,) = grpc_go.ok(_history(channel))
    assert [p.offset for p in history.result.publications] == [1, 2, 3]  # not the refused one


def test_a_request_and_an_answer_larger_than_200_kib(grpc_go: GoAPI) -> None:
    """Both cross HTTP/2 flow control (64 KiB initial windows) in several frames."""
    channel = name("go-big-")
    data = json.dumps({"text": "".join(uuid.uuid4().hex for _ in range(7000))}).encode()
    assert len(data) > 200 * 1024
    (reply,) = grpc_go.ok(_publish(channel, data))
    assert reply.result.offset == 1
    (history,) = grpc_go.ok(_history(channel))
    assert history.ByteSize() > 200 * 1024
    assert [json.loads(p.data) for p in history.result.publications] == [json.loads(data)]


def test_twenty_concurrent_calls_on_one_connection(grpc_go: GoAPI) -> None:
    channel = name("go-many-")
    replies = grpc_go.ok(*(_publish(channel, f'{{"n":{n}}}'.encode()) for n in range(20)))
    assert sorted(r.result.offset for r in replies) == list(range(1, 21))
    (history,) = grpc_go.ok(_history(channel))
    assert sorted(json.loads(p.data)["n"] for p in history.result.publications) == list(range(20))


def test_per_call_deadlines(grpc_go: GoAPI) -> None:
    """Deadlines as grpc-go sends them: grpc-timeout, a new value on every call.

    A call whose deadline has passed fails DEADLINE_EXCEEDED and is not executed (grpc-go
    sends it anyway, with ``grpc-timeout: 0n``: the server has to enforce it); the calls
    next to it on the connection are served.
    """
    channel = name("go-deadline-")
    outcomes = grpc_go.run(
        *(_publish(channel, f'{{"n":{n}}}'.encode(), timeout_ms=5000 + n) for n in range(5)),
        _publish(channel, b'{"late":true}', timeout_ms=0.001),
        Call("Info", pb.InfoRequest(), timeout_ms=3000),
    )
    assert [o.code for o in outcomes] == [0] * 5 + [DEADLINE_EXCEEDED, 0]
    (history,) = grpc_go.ok(_history(channel, timeout_ms=2000))
    assert sorted(json.loads(p.data)["n"] for p in history.result.publications) == list(range(5))


def test_gzip_compressed_requests(grpc_go: GoAPI) -> None:
    """grpc-go's gzip compressor (grpc.UseCompressor(gzip.Name)) on every request."""
    channel = name("go-gzip-")
    data = json.dumps({"text": "compressible " * 20_000}).encode()
    publish, info, batch = grpc_go.ok(
        _publish(channel, data, gzip=True),
        Call("Info", pb.InfoRequest(), gzip=True),  # an empty message, compressed
        Call("Batch", pb.BatchRequest(commands=[pb.Command(
            publish=pb.PublishRequest(channel=name("go-gzip-other-"), data=b"1"))]), gzip=True),
    )
    assert publish.result.offset == 1 and len(info.result.nodes) == 1
    assert batch.replies[0].publish.offset == 1
    (history,) = grpc_go.ok(_history(channel, gzip=True))
    assert [json.loads(p.data) for p in history.result.publications] == [json.loads(data)]
