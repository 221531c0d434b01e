"""uni_grpc against a real ``twistd -n rtserver``, with stubs generated from the schema.

A consumer calls ``CentrifugoUniStream/Consume`` with a JWT and reads ``Push`` messages:
the connect push first, publications of its server-side subscriptions, pings, and a
disconnect as the final push before the stream ends.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from harness import Server, free_port, run_server

from rtserver.grpcapi.proto import unistream_pb2 as pb
from rtserver.grpcapi.proto import unistream_pb2_grpc

#: Bound of one stream in the tests (seconds).
STREAM_TIMEOUT = 15.0


class UniServer:
    """A running rtserver with uni_grpc on ``target``."""

    def __init__(self, server: Server, target: str) -> None:
        self.server = server
        self.target = target

    def consume(self, channel: grpc.Channel, token: str, **request: Any) -> Any:
        """Open a stream; returns the call (an iterator of ``Push``, cancellable)."""
        stub = unistream_pb2_grpc.CentrifugoUniStreamStub(channel)
        return stub.Consume(pb.ConnectRequest(token=token, **request), timeout=STREAM_TIMEOUT)

    def api(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A server API call over HTTP; returns the ``result``."""
        response = requests.post(f"{self.server.api_url}/{method}", json=params, timeout=10,
                                 headers={"X-API-Key": self.server.api_key})
        response.raise_for_status()
        body = response.json()
        assert "error" not in body, body
        result: dict[str, Any] = body["result"]
        return result

    def publish(self, channel: str, data: Any) -> dict[str, Any]:
        """Publish ``data`` to ``channel`` through the HTTP API."""
        return self.api("publish", {"channel": channel, "data": data})

    def clients(self) -> int:
        """Connections on the (only) node."""
        return int(self.api("info", {})["nodes"][0].get("num_clients", 0))


def uni_overrides(port: int, **client: Any) -> dict[str, Any]:
    """Config enabling uni_grpc on loopback ``port``; ``client`` settings merged in."""
    return {"uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": port},
            "client": {"ping_interval": "1s", "pong_timeout": "500ms", **client}}


@pytest.fixture(scope="module")
def uni(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UniServer]:
    """A server with uni_grpc (pings every second)."""
    port = free_port()
    with run_server(tmp_path_factory.mktemp("uni"), uni_overrides(port)) as server:
        yield UniServer(server, f"127.0.0.1:{port}")


@pytest.fixture
def channel(uni: UniServer) -> Iterator[grpc.Channel]:
    """A fresh plaintext channel to uni_grpc."""
    with grpc.insecure_channel(uni.target) as ch:
        yield ch


def pushes(call: Any) -> Iterator[Any]:
    """The stream's pushes without pings (empty ``Push`` messages)."""
    for push in call:
        if push.ByteSize():
            yield push


def next_pub(stream: Iterator[Any]) -> Any:
    """The next publication push, past join/leave pushes."""
    for push in stream:
        if not (push.HasField("join") or push.HasField("leave")):
            assert push.HasField("pub"), push
            return push
    raise AssertionError("the stream ended")


def chan(prefix: str) -> str:
    """A channel name unique to the test."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_token_channels_and_subs_receive_api_publications(
    uni: UniServer, channel: grpc.Channel
) -> None:
    """Connect push first (with both subscriptions), then publications of each channel."""
    from_token, from_request = chan("tok"), chan("req")
    token = uni.server.token("alice", channels=[from_token])
    call = uni.consume(channel, token, subs={from_request: pb.SubscribeRequest()})
    stream = pushes(call)
    first = next(stream)
    assert first.HasField("connect")
    assert first.connect.client and first.connect.session
    assert set(first.connect.subs) == {from_token, from_request}
    assert first.connect.ping == 1
    joins = [next(stream), next(stream)]  # join_leave with force_push_join_leave is on
    assert sorted((p.channel, p.join.info.user) for p in joins) == sorted(
        [(from_token, "alice"), (from_request, "alice")])
    assert all(p.join.info.client == first.connect.client for p in joins)
    uni.publish(from_token, {"n": 1})
    uni.publish(from_request, {"text": "héllo"})
    got = [next(stream), next(stream)]
    assert [(p.channel, json.loads(p.pub.data)) for p in got] == [
        (from_token, {"n": 1}), (from_request, {"text": "héllo"})]
    assert got[0].pub.offset == 1
    call.cancel()


def test_pings_arrive_as_empty_pushes(uni: UniServer, channel: grpc.Channel) -> None:
    """With client.ping_interval 1s an empty Push arrives after the connect push."""
    call = uni.consume(channel, uni.server.token("bob"))
    it = iter(call)
    assert next(it).HasField("connect")
    assert next(it).ByteSize() == 0
    call.cancel()


def test_recovery_after_reconnect_gets_what_was_missed(
    uni: UniServer, channel: grpc.Channel
) -> None:
    """A consumer reconnecting with recover/offset/epoch receives the missed publications."""
    name = chan("rec")  # history and force_recovery on channels without namespace
    token = uni.server.token("carol")
    call = uni.consume(channel, token, subs={name: pb.SubscribeRequest()})
    stream = pushes(call)
    sub = next(stream).connect.subs[name]
    uni.publish(name, {"n": 1})
    seen = next_pub(stream)
    assert json.loads(seen.pub.data) == {"n": 1}
    call.cancel()
    uni.publish(name, {"n": 2})
    uni.publish(name, {"n": 3})
    again = uni.consume(channel, token, subs={
        name: pb.SubscribeRequest(recover=True, offset=seen.pub.offset, epoch=sub.epoch)})
    result = next(pushes(again)).connect.subs[name]
    assert result.recovered and result.was_recovering
    assert [json.loads(p.data) for p in result.publications] == [{"n": 2}, {"n": 3}]
    assert [p.offset for p in result.publications] == [2, 3]
    again.cancel()


def test_disconnect_is_the_final_push_then_the_stream_ends(
    uni: UniServer, channel: grpc.Channel
) -> None:
    """An API disconnect arrives as a disconnect push, then the stream ends with OK."""
    user = "dave-" + uuid.uuid4().hex[:6]
    call = uni.consume(channel, uni.server.token(user))
    stream = pushes(call)
    assert next(stream).HasField("connect")
    uni.api("disconnect", {"user": user, "disconnect": {"code": 4321, "reason": "bye"}})
    last = next(stream)
    assert (last.disconnect.code, last.disconnect.reason) == (4321, "bye")
    assert list(stream) == []
    assert call.code() == grpc.StatusCode.OK


def test_bad_token_is_refused_with_a_disconnect_push(
    uni: UniServer, channel: grpc.Channel
) -> None:
    """A token signed with another key: disconnect 3500, then the end of the stream."""
    import jwt

    forged = jwt.encode({"sub": "mallory"}, "another-secret-of-enough-length-32b", "HS256")
    got = list(pushes(uni.consume(channel, forged)))
    assert [(p.disconnect.code, p.disconnect.reason) for p in got] == [(3500, "invalid token")]


def test_malformed_request_fails_without_a_client(uni: UniServer, channel: grpc.Channel) -> None:
    """Bytes that are no ConnectRequest: status INTERNAL, as grpc-go answers them."""
    method = channel.unary_stream(
        "/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume")
    with pytest.raises(grpc.RpcError) as info:
        list(method(b"\x0a\xff", timeout=STREAM_TIMEOUT))
    assert info.value.code() == grpc.StatusCode.INTERNAL


def test_slow_consumer_is_cut_with_3008(tmp_path: Path) -> None:
    """A consumer that stops reading is disconnected once client.queue_max_size fills."""
    port = free_port()
    overrides = uni_overrides(port, queue_max_size=65536)
    with run_server(tmp_path, overrides) as server, \
            grpc.insecure_channel(f"127.0.0.1:{port}",
                                  options=[("grpc.http2.bdp_probe", 0)]) as ch:
        uni = UniServer(server, f"127.0.0.1:{port}")
        name = chan("slow")
        call = uni.consume(ch, server.token("erin"), subs={name: pb.SubscribeRequest()})
        stream = pushes(call)
        assert next(stream).HasField("connect")
        assert uni.clients() == 1
        blob = "x" * 30000
        for _ in range(400):  # 12 MB at most; the consumer reads nothing meanwhile
            uni.publish(name, {"blob": blob})
            if uni.clients() == 0:
                break
        assert uni.clients() == 0
        rest = list(stream)  # reading again within the close grace: the final push arrives
        assert (rest[-1].disconnect.code, rest[-1].disconnect.reason) == (3008, "slow")
        assert sum(p.HasField("pub") for p in rest) > 1  # what was queued before the cut


def test_stream_cap_and_shutdown_drain(tmp_path: Path) -> None:
    """Beyond max_concurrent_streams: RESOURCE_EXHAUSTED; SIGTERM: 3001 push, then the end."""
    port = free_port()
    overrides = uni_overrides(port)
    overrides["uni_grpc"]["max_concurrent_streams"] = 1
    with run_server(tmp_path, overrides) as server, \
            grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        uni = UniServer(server, f"127.0.0.1:{port}")
        call = uni.consume(ch, server.token("frank"))
        stream = pushes(call)
        assert next(stream).HasField("connect")
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(uni.consume(ch, server.token("grace"))))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        server.process.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert [(p.disconnect.code, p.disconnect.reason) for p in rest] == [(3001, "shutdown")]
        assert call.code() == grpc.StatusCode.OK
        assert server.process.wait(timeout=10) in (0, -signal.SIGTERM)


def test_cancelled_consumer_is_released(uni: UniServer, channel: grpc.Channel) -> None:
    """A consumer that cancels its call leaves the node's connections (and presence)."""
    name = chan("gone")
    user = "gina-" + uuid.uuid4().hex[:6]
    call = uni.consume(channel, uni.server.token(user), subs={name: pb.SubscribeRequest()})
    assert next(pushes(call)).HasField("connect")
    assert [c["user"] for c in uni.api("presence", {"channel": name})["presence"].values()] \
        == [user]
    call.cancel()
    deadline = time.monotonic() + 5  # across processes, the API is the only way to look
    while uni.api("presence", {"channel": name})["presence"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uni.api("presence", {"channel": name})["presence"] == {}


def test_tls_and_max_receive_message_size(tmp_path: Path) -> None:
    """uni_grpc over TLS; a connect request over max_receive_message_size is refused."""
    from test_options import _self_signed

    cert, key, cert_pem = _self_signed(tmp_path)
    port = free_port()
    overrides = uni_overrides(port)
    overrides["uni_grpc"].update(max_receive_message_size=1024, tls={
        "enabled": True, "cert_pem_file": str(cert), "key_pem_file": str(key)})
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
    with run_server(tmp_path, overrides) as server, \
            grpc.secure_channel(f"127.0.0.1:{port}", credentials) as ch:
        uni = UniServer(server, f"127.0.0.1:{port}")
        call = uni.consume(ch, server.token("hank"))
        assert next(pushes(call)).connect.client
        call.cancel()
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(uni.consume(ch, server.token("hank"), name="x" * 2000)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
