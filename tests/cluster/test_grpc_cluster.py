"""The GRPC server API of node B acts on clients of node A (Redis engine, real processes)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from harness import free_port, merge, spawn_server, stop_server
from pysdk import Recorder, in_thread, name, run_scenario, subscribed

from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.grpcapi.proto import api_pb2_grpc

CALL_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 20.0


def test_grpc_api_on_node_b_reaches_subscribers_on_node_a(
    tmp_path: Path, redis_url: str, cluster_config: Any
) -> None:
    """Publish, presence, channels and info through B's GRPC API see A's subscriber."""
    config, secret, api_key = cluster_config(redis_url)
    grpc_port, grpc_key = free_port(), "g-" + uuid.uuid4().hex
    a = spawn_server(tmp_path, {**config, "node": {"name": "a"}}, secret=secret,
                     api_key=api_key, log_name="node-a.log")
    b_config = merge(config, {"node": {"name": "b"}, "grpc_api": {
        "enabled": True, "address": "127.0.0.1", "port": grpc_port, "key": grpc_key}})
    try:
        b = spawn_server(tmp_path, b_config, secret=secret, api_key=api_key,
                         log_name="node-b.log")
    except BaseException:
        stop_server(a)
        raise
    metadata = [("authorization", f"apikey {grpc_key}")]
    channel, user = name("grpc-cluster-"), name("u-")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as grpc_channel:
            stub = api_pb2_grpc.CentrifugoApiStub(grpc_channel)

            def call(method: str, request: Any) -> Any:
                return getattr(stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT)

            deadline = time.monotonic() + CLUSTER_TIMEOUT
            while sorted(n.name for n in call("Info", pb.InfoRequest()).result.nodes) != [
                "a", "b"
            ]:
                assert time.monotonic() < deadline, "B's GRPC info never listed both nodes"
                time.sleep(0.1)

            async def scenario() -> None:
                rec = Recorder()
                async with subscribed(a, channel, rec, token=a.token(user)):
                    client_id = rec.find("connected")[0]["id"]
                    for n in (1, 2):
                        request = pb.PublishRequest(channel=channel, data=b'{"n":%d}' % n)
                        reply = await in_thread(call, "Publish", request)
                        assert not reply.HasField("error") and reply.result.offset == n
                    got = await rec.wait("publication", count=2)
                    assert [e["data"] for e in got] == [{"n": 1}, {"n": 2}]
                    presence = await in_thread(call, "Presence",
                                               pb.PresenceRequest(channel=channel))
                    assert list(presence.result.presence) == [client_id]
                    assert presence.result.presence[client_id].user == user
                    channels = await in_thread(call, "Channels",
                                               pb.ChannelsRequest(pattern=channel))
                    assert channels.result.channels[channel].num_clients == 1

            run_scenario(scenario())
    finally:
        stop_server(b)
        stop_server(a)
