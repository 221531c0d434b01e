"""The GRPC server API of a real ``twistd -n rtserver``, through stubs generated from the schema.

Subscribers are centrifuge-python WebSocket clients (tests/pysdk.py); GRPC calls are the
blocking stubs, run in a worker thread while the SDK keeps reading.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_support import CALL_TIMEOUT, GRPCServer
from pysdk import Recorder, in_thread, name, run_scenario, sdk_client, subscribed

from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.grpcapi.proto import api_pb2_grpc

Stub = api_pb2_grpc.CentrifugoApiStub
ROOT = Path(__file__).resolve().parents[2]


def call(server: GRPCServer, stub: Stub, method: str, request: Any, **kwargs: Any) -> Any:
    """One authenticated call, bounded by CALL_TIMEOUT."""
    rpc = getattr(stub, method)
    return rpc(request, metadata=server.metadata(), timeout=CALL_TIMEOUT, **kwargs)


def test_publish_reaches_a_websocket_subscriber(grpc_server: GRPCServer, stub: Stub) -> None:
    """A GRPC Publish is delivered to a centrifuge-python subscriber, offsets as in history."""
    channel = name("grpc-ch-")
    sent = [{"n": 1, "text": "hello"}, {"n": 2, "text": "héllo"}]

    async def scenario() -> list[Any]:
        rec = Recorder()
        token = grpc_server.server.token("u1")
        async with subscribed(grpc_server.server, channel, rec, token=token):
            replies = []
            for data in sent:
                request = pb.PublishRequest(channel=channel, data=json.dumps(data).encode())
                replies.append(await in_thread(call, grpc_server, stub, "Publish", request))
            pubs = await rec.wait("publication", count=2)
            assert [p["data"] for p in pubs] == sent
            assert [p["offset"] for p in pubs] == [1, 2]
            return replies

    replies = run_scenario(scenario())
    assert [r.HasField("error") for r in replies] == [False, False]
    assert [r.result.offset for r in replies] == [1, 2]
    assert replies[0].result.epoch and replies[0].result.epoch == replies[1].result.epoch


def test_channel_state_answers_with_the_documented_shapes(
    grpc_server: GRPCServer, stub: Stub
) -> None:
    """presence, presence_stats, history, channels and info while a client is subscribed."""
    channel, user = name("grpc-state-"), name("grpc-u-")
    conn_info = {"name": "Alice"}

    async def scenario() -> str:
        rec = Recorder()
        token = grpc_server.server.token(user, info=conn_info)
        async with subscribed(grpc_server.server, channel, rec, token=token):
            client_id: str = rec.find("connected")[0]["id"]
            await in_thread(check, client_id)
            return client_id

    def check(client_id: str) -> None:
        for n in (1, 2, 3):
            request = pb.PublishRequest(channel=channel, data=b'{"n": %d}' % n,
                                        tags={"k": str(n)})
            assert not call(grpc_server, stub, "Publish", request).HasField("error")

        presence = call(grpc_server, stub, "Presence", pb.PresenceRequest(channel=channel))
        assert not presence.HasField("error")
        assert list(presence.result.presence) == [client_id]
        me = presence.result.presence[client_id]
        assert (me.user, me.client) == (user, client_id)
        assert json.loads(me.conn_info) == conn_info

        stats = call(grpc_server, stub, "PresenceStats", pb.PresenceStatsRequest(channel=channel))
        assert (stats.result.num_clients, stats.result.num_users) == (1, 1)

        history = call(grpc_server, stub, "History", pb.HistoryRequest(channel=channel, limit=-1))
        assert [json.loads(p.data) for p in history.result.publications] == [
            {"n": 1}, {"n": 2}, {"n": 3}
        ]
        assert [p.offset for p in history.result.publications] == [1, 2, 3]
        assert [dict(p.tags) for p in history.result.publications] == [
            {"k": "1"}, {"k": "2"}, {"k": "3"}
        ]
        assert history.result.offset == 3 and history.result.epoch
        since = pb.StreamPosition(offset=2, epoch=history.result.epoch)
        tail = call(grpc_server, stub, "History",
                    pb.HistoryRequest(channel=channel, limit=10, since=since))
        assert [p.offset for p in tail.result.publications] == [3]
        latest = call(grpc_server, stub, "History",
                      pb.HistoryRequest(channel=channel, limit=1, reverse=True))
        assert [p.offset for p in latest.result.publications] == [3]

        channels = call(grpc_server, stub, "Channels", pb.ChannelsRequest(pattern=channel))
        assert dict(channels.result.channels) == {channel: pb.ChannelInfo(num_clients=1)}

        info = call(grpc_server, stub, "Info", pb.InfoRequest())
        (node,) = info.result.nodes
        assert node.uid and node.name and node.version
        assert node.num_clients >= 1 and node.num_channels >= 1 and node.num_subs >= 1

        removed = call(grpc_server, stub, "HistoryRemove",
                       pb.HistoryRemoveRequest(channel=channel))
        assert not removed.HasField("error") and removed.HasField("result")
        after = call(grpc_server, stub, "History", pb.HistoryRequest(channel=channel, limit=-1))
        assert list(after.result.publications) == []
        assert (after.result.offset, after.result.epoch) == (3, history.result.epoch)

    run_scenario(scenario())


def test_batch_replies_in_order_with_per_command_errors(
    grpc_server: GRPCServer, stub: Stub
) -> None:
    """Each batch command gets its own reply: results under the command's name, or ``error``."""
    channel = name("grpc-batch-")
    request = pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel=channel, data=b'{"n":1}')),
        pb.Command(publish=pb.PublishRequest(channel=channel, data=b"{not json")),
        pb.Command(),  # what a Centrifugo PRO command looks like to rtserver
        pb.Command(history=pb.HistoryRequest(channel="nope:" + channel, limit=1)),
        pb.Command(broadcast=pb.BroadcastRequest(channels=[channel, ""], data=b"2")),
        pb.Command(history=pb.HistoryRequest(channel=channel, limit=-1)),
    ])
    response = call(grpc_server, stub, "Batch", request)
    replies = list(response.replies)
    assert len(replies) == 6
    assert replies[0].publish.offset == 1
    assert (replies[1].error.code, replies[1].error.message) == (
        107, "bad request: data must be JSON: this server is JSON-only")
    assert replies[2].error.code == 104
    assert replies[3].error.code == 102
    first, second = replies[4].broadcast.responses
    assert first.result.offset == 2 and second.error.code == 107
    assert [json.loads(p.data) for p in replies[5].history.publications] == [{"n": 1}, 2]


@pytest.mark.parametrize("parallel", [False, True])
def test_batch_of_publish_replies_in_order(
    grpc_server: GRPCServer, stub: Stub, parallel: bool
) -> None:
    """A batch of publish commands only: offsets in order, errors in place, history kept."""
    channel = name("grpc-pubs-")

    def publish(ch: str, data: bytes) -> pb.Command:
        return pb.Command(publish=pb.PublishRequest(channel=ch, data=data))

    request = pb.BatchRequest(parallel=parallel, commands=[
        publish(channel, b'{"n": 1}'), publish(channel, b"{not json"),
        publish("nope:" + channel, b"1"), publish(channel, b"2")])
    replies = list(call(grpc_server, stub, "Batch", request).replies)
    assert [r.ListFields()[0][0].name for r in replies] == [
        "publish", "error", "error", "publish"]
    assert (replies[0].publish.offset, replies[3].publish.offset) == (1, 2)
    assert replies[0].publish.epoch == replies[3].publish.epoch != ""
    assert (replies[1].error.code, replies[2].error.code) == (107, 102)
    history = call(grpc_server, stub, "History", pb.HistoryRequest(channel=channel, limit=-1))
    assert [json.loads(p.data) for p in history.result.publications] == [{"n": 1}, 2]


def test_outdated_versions_are_suppressed(grpc_server: GRPCServer, stub: Stub) -> None:
    """Publish, Broadcast and a Batch of publishes drop an outdated ``version``.

    The suppressed calls succeed with the stream's unchanged position; the subscriber
    and the history see only the accepted publications.
    """
    channel, other = name("grpc-ver-"), name("grpc-ver-other-")

    def publish(n: int, version: int, epoch: str = "a") -> pb.PublishRequest:
        return pb.PublishRequest(channel=channel, data=b'{"n": %d}' % n, version=version,
                                 version_epoch=epoch)

    def calls() -> list[tuple[int, str]]:
        positions = []
        for request in (publish(1, 2), publish(2, 1)):  # the second is outdated
            reply = call(grpc_server, stub, "Publish", request)
            assert not reply.HasField("error")
            positions.append((reply.result.offset, reply.result.epoch))
        broadcast = pb.BroadcastRequest(channels=[channel, other], data=b'{"n": 3}',
                                        version=2, version_epoch="a")
        first, second = call(grpc_server, stub, "Broadcast", broadcast).result.responses
        positions += [(first.result.offset, first.result.epoch), (second.result.offset, "")]
        batch = pb.BatchRequest(commands=[
            pb.Command(publish=publish(4, 1, "b")),  # a new version epoch: accepted
            pb.Command(publish=publish(5, 1, "b")),  # outdated again
            pb.Command(publish=publish(6, 0, "b")),  # no version: accepted
        ])
        replies = call(grpc_server, stub, "Batch", batch).replies
        positions += [(r.publish.offset, r.publish.epoch) for r in replies]
        return positions

    async def scenario() -> tuple[list[tuple[int, str]], list[Any]]:
        rec = Recorder()
        token = grpc_server.server.token("u1")
        async with subscribed(grpc_server.server, channel, rec, token=token):
            positions = await in_thread(calls)
            pubs = await rec.wait("publication", count=3)
            return positions, pubs

    positions, pubs = run_scenario(scenario())
    epoch = positions[0][1]
    assert epoch and all(e == epoch for _, e in positions if e)
    assert [o for o, _ in positions] == [1, 1, 1, 1, 2, 2, 3]
    assert [p["data"] for p in pubs] == [{"n": 1}, {"n": 4}, {"n": 6}]
    assert [p["offset"] for p in pubs] == [1, 2, 3]
    history = call(grpc_server, stub, "History", pb.HistoryRequest(channel=channel, limit=-1))
    assert [json.loads(p.data) for p in history.result.publications] == [
        {"n": 1}, {"n": 4}, {"n": 6}]
    # the other channel of the broadcast has its own stream: accepted there
    history = call(grpc_server, stub, "History", pb.HistoryRequest(channel=other, limit=-1))
    assert [json.loads(p.data) for p in history.result.publications] == [{"n": 3}]


def test_invalid_requests_return_an_error_object(grpc_server: GRPCServer, stub: Stub) -> None:
    """API errors come back in ``error`` with status OK, as in Centrifugo."""
    missing = call(grpc_server, stub, "Publish", pb.PublishRequest(channel="", data=b"1"))
    assert (missing.error.code, missing.error.message) == (
        107, "bad request: channel is required")
    assert not missing.HasField("result")

    no_data = call(grpc_server, stub, "Publish", pb.PublishRequest(channel=name("c")))
    assert (no_data.error.code, no_data.error.message) == (107, "bad request: data is required")

    unknown = call(grpc_server, stub, "History", pb.HistoryRequest(channel="nope:x"))
    assert unknown.error.code == 102

    not_available = call(grpc_server, stub, "Presence", pb.PresenceRequest(channel="ro:x"))
    assert not_available.error.code == 108

    rpc = call(grpc_server, stub, "RPC", pb.RPCRequest(method="anything"))
    assert rpc.error.code == 104

    bad_code = call(grpc_server, stub, "Disconnect", pb.DisconnectRequest(
        user="u", disconnect=pb.Disconnect(code=1000, reason="x")))
    assert bad_code.error.code == 107


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests_are_served(grpc_server: GRPCServer, stub: Stub,
                                        compression: grpc.Compression) -> None:
    """Requests grpcio's client compresses (gzip, deflate) are inflated and served."""
    channel = name("grpc-zip-")
    data = json.dumps({"text": "compressible " * 20_000}).encode()  # 260 KB, ~1 KB compressed
    reply = call(grpc_server, stub, "Publish", pb.PublishRequest(channel=channel, data=data),
                 compression=compression)
    assert not reply.HasField("error") and reply.result.offset == 1
    batch = call(grpc_server, stub, "Batch", pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel=channel, data=b'{"n":2}'))]),
        compression=compression)
    assert batch.replies[0].publish.offset == 2
    history = call(grpc_server, stub, "History", pb.HistoryRequest(channel=channel, limit=-1),
                   compression=compression)
    assert [json.loads(p.data) for p in history.result.publications] == [
        json.loads(data), {"n": 2}]


def test_transport_error_mode_from_metadata(grpc_server: GRPCServer, stub: Stub) -> None:
    """``x-centrifugo-error-mode: transport`` turns API errors into GRPC statuses."""
    metadata = [*grpc_server.metadata(), ("x-centrifugo-error-mode", "transport")]
    with pytest.raises(grpc.RpcError) as e:
        stub.Publish(pb.PublishRequest(channel=""), metadata=metadata, timeout=CALL_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "bad request: channel is required"
    with pytest.raises(grpc.RpcError) as e:
        stub.History(pb.HistoryRequest(channel="nope:x"), metadata=metadata,
                     timeout=CALL_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    ok = stub.Info(pb.InfoRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
    assert len(ok.result.nodes) == 1


@pytest.mark.parametrize("metadata", [
    [],
    [("authorization", "apikey wrong")],
    [("authorization", "wrong")],
    [("authorization", "Bearer {key}")],
    [("x-api-key", "{key}")],
])
def test_a_bad_key_is_refused(grpc_server: GRPCServer, stub: Stub,
                              metadata: list[tuple[str, str]]) -> None:
    """Without ``authorization: apikey <key>`` the call fails UNAUTHENTICATED and does nothing."""
    channel = name("grpc-refused-")
    metadata = [(k, v.format(key=grpc_server.key)) for k, v in metadata]
    with pytest.raises(grpc.RpcError) as e:
        stub.Publish(pb.PublishRequest(channel=channel, data=b"1"), metadata=metadata,
                     timeout=CALL_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    history = call(grpc_server, stub, "History", pb.HistoryRequest(channel=channel, limit=-1))
    assert list(history.result.publications) == [] and history.result.offset == 0


def test_server_side_subscribe_and_disconnect(grpc_server: GRPCServer, stub: Stub) -> None:
    """Subscribe puts a user's connection into a channel; Disconnect closes it with the code."""
    user, extra = name("grpc-u-"), name("grpc-extra-")

    async def scenario() -> None:
        rec = Recorder()
        client, _ = sdk_client(grpc_server.server, rec, token=grpc_server.server.token(user))
        try:
            await client.connect()
            await rec.wait("connected")
            reply = await in_thread(call, grpc_server, stub, "Subscribe",
                                    pb.SubscribeRequest(user=user, channel=extra))
            assert not reply.HasField("error") and reply.HasField("result")
            await rec.wait("server_subscribed", channel=extra)
            published = await in_thread(call, grpc_server, stub, "Publish",
                                        pb.PublishRequest(channel=extra, data=b'{"x":1}'))
            assert not published.HasField("error")
            (pub,) = await rec.wait("server_publication", channel=extra)
            assert pub["data"] == {"x": 1}
            request = pb.DisconnectRequest(
                user=user, disconnect=pb.Disconnect(code=4501, reason="go away"))
            reply = await in_thread(call, grpc_server, stub, "Disconnect", request)
            assert not reply.HasField("error")
            (gone,) = await rec.wait("disconnected")
            assert (gone["code"], gone["reason"]) == (4501, "go away")
        finally:
            await client.disconnect()

    run_scenario(scenario())


def test_the_documented_python_example_runs(grpc_server: GRPCServer, tmp_path: Path) -> None:
    """docs/server-api.rst's client, with stubs generated as the docs say, works as shown."""
    text = (ROOT / "docs" / "server-api.rst").read_text()
    block = text.split("# grpc-example-start\n", 1)[1].split("    # grpc-example-end", 1)[0]
    code = textwrap.dedent(block)
    placeholder = 'target, key = "localhost:10000", "<grpc_api.key>"'
    assert placeholder in code
    code = code.replace(placeholder, f"target, key = {grpc_server.target!r}, {grpc_server.key!r}")
    shutil.copy(ROOT / "rtserver" / "grpcapi" / "proto" / "api.proto", tmp_path / "api.proto")
    generate = [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                "--grpc_python_out=.", "api.proto"]
    subprocess.run(generate, cwd=tmp_path, check=True, timeout=60)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=60,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("offset 1 epoch ") and len(lines[0]) > len("offset 1 epoch ")
    assert lines[1] == "1 {'text': 'hi'}"
    assert lines[2] == "[1, 1]"
