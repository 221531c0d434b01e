"""uni_grpc's messages: the connect request read, pushes unframed, the hand-off bounded.

Pushes are checked by parsing them with the classes generated from unistream.proto, as a
consumer does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import cast

import orjson
import pytest
from twisted.internet.task import Clock

from rtserver.core.client import Client
from rtserver.core.writer import Payload
from rtserver.grpcapi.proto import unistream_pb2 as pb
from rtserver.grpcapi.unistream import (
    Outbox,
    UniGRPCSink,
    connect_request_json,
    push_bytes,
)
from rtserver.protocol import protobuf
from rtserver.protocol.codes import Disconnect, Unsubscribe
from rtserver.protocol.encoding import PROTOBUF
from rtserver.protocol.frames import ClientInfo, ProtocolError, Publication
from rtserver.testing import make_node


def test_connect_request_keeps_the_schema_fields() -> None:
    """Token, name, version, headers, JSON data and each sub's recovery hint."""
    request = pb.ConnectRequest(
        token="t", data=b'{"a": 1}', name="svc", version="1.0", headers={"x-k": "v"},
        subs={"news": pb.SubscribeRequest(recover=True, epoch="e", offset=7),
              "plain": pb.SubscribeRequest()},
    )
    assert orjson.loads(connect_request_json(request.SerializeToString())) == {
        "token": "t", "data": {"a": 1}, "name": "svc", "version": "1.0",
        "headers": {"x-k": "v"},
        "subs": {"news": {"recover": True, "epoch": "e", "offset": 7}, "plain": {}},
    }


def test_empty_connect_request_is_an_empty_object() -> None:
    """No token, no subs: the core decides (anonymous or refused)."""
    assert connect_request_json(b"") == b"{}"


def test_malformed_connect_request_raises() -> None:
    """A length beyond the message is a ProtocolError, never a crash."""
    with pytest.raises(ProtocolError):
        connect_request_json(b"\x0a\x05ab")


def _push(data: bytes) -> pb.Push:
    return pb.Push.FromString(push_bytes(data))


def test_publication_push_is_the_shared_pb_uni_payload_unframed() -> None:
    """The core's ``pb-uni`` publication push, without its prefix, is a unistream Push."""
    pub = Publication(data=b'{"n":1,"s":"\xc3\xa9"}', offset=5, tags={"k": "v"},
                      info=ClientInfo("u", "c", conn_info=b'{"i":1}', chan_info=b"[2]"))
    framed = protobuf.encode_publication_push("news", pub, uni=True)
    assert push_bytes(framed) == framed[1:]  # without the one-byte length prefix
    push = _push(framed)
    assert (push.channel, push.pub.data, push.pub.offset, dict(push.pub.tags)) == (
        "news", pub.data, 5, {"k": "v"})
    assert (push.pub.info.conn_info, push.pub.info.chan_info) == (b'{"i":1}', b"[2]")


def test_binary_publication_data_reaches_the_consumer_as_is() -> None:
    """Data that is not JSON (published by a Protobuf client) is sent unchanged."""
    framed = protobuf.encode_publication_push("bin", Publication(data=b"\x00\xff\n"), uni=True)
    assert _push(framed).pub.data == b"\x00\xff\n"


def test_a_long_push_has_a_multi_byte_prefix() -> None:
    """A push over 127 bytes: the whole varint prefix goes, nothing of the message."""
    pub = Publication(data=b'"' + b"x" * 300 + b'"')
    framed = protobuf.encode_publication_push("c", pub, uni=True)
    assert _push(framed).pub.data == pub.data


def test_connect_push_with_recovered_publications() -> None:
    """Subscribe results with publications; payloads are the published bytes."""
    body = {"client": "c1", "version": "v", "data": b'{"x":null}', "ping": 25,
            "session": "s1", "subs": {"news": {
                "recoverable": True, "epoch": "ep", "offset": 3, "recovered": True,
                "was_recovering": True, "positioned": True,
                "publications": [{"data": b'"a"', "offset": 2},
                                 {"data": b"null", "offset": 3}]}}}
    push = _push(protobuf.encode_push("", "connect", body, uni=True))
    assert (push.connect.client, push.connect.ping, push.connect.session) == ("c1", 25, "s1")
    assert push.connect.data == b'{"x":null}'
    sub = push.connect.subs["news"]
    assert (sub.epoch, sub.offset, sub.recovered, sub.was_recovering) == ("ep", 3, True, True)
    assert [(p.data, p.offset) for p in sub.publications] == [(b'"a"', 2), (b"null", 3)]


@pytest.mark.parametrize("kind", ["join", "leave"])
def test_join_and_leave_pushes(kind: str) -> None:
    """The ClientInfo of who joined or left."""
    info = ClientInfo("u", "c", conn_info=b"{}")
    push = _push(protobuf.encode_join_leave_push("room", kind, info, uni=True))
    got = getattr(push, kind).info
    assert (push.channel, got.user, got.client, got.conn_info) == ("room", "u", "c", b"{}")


def test_unsubscribe_subscribe_refresh_disconnect_and_ping() -> None:
    """The other pushes the core sends to unidirectional clients."""
    unsub = _push(protobuf.encode_unsubscribe("room", Unsubscribe.SERVER, uni=True))
    assert (unsub.channel, unsub.unsubscribe.code) == ("room", Unsubscribe.SERVER.code)
    sub = _push(protobuf.encode_push("room", "subscribe",
                                     {"recoverable": True, "epoch": "e", "offset": 4,
                                      "data": b"[1]"}, uni=True))
    assert (sub.subscribe.epoch, sub.subscribe.offset, sub.subscribe.data) == ("e", 4, b"[1]")
    refresh = _push(protobuf.encode_push("", "refresh", {"expires": True, "ttl": 60}, uni=True))
    assert (refresh.refresh.expires, refresh.refresh.ttl) == (True, 60)
    bye = _push(protobuf.encode_disconnect(Disconnect.SLOW, uni=True))
    assert (bye.disconnect.code, bye.disconnect.reason) == (3008, "slow")
    assert push_bytes(protobuf.PING) == b""


@pytest.mark.parametrize("data", [b"", b"\x05abc", b"\x01ab", b"\x80"])
def test_a_misframed_push_raises(data: bytes) -> None:
    """Not exactly one length-prefixed message: a ProtocolError, never a wrong message."""
    with pytest.raises(ProtocolError):
        push_bytes(data)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The stream side's event loop (the grpc.aio server's, in production)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def take(box: Outbox, loop: asyncio.AbstractEventLoop) -> tuple[list[bytes | None], bool]:
    """What the stream's coroutine takes next (bounded: a test never hangs)."""
    return loop.run_until_complete(asyncio.wait_for(box.take(), 5))


def test_outbox_is_bounded_and_asks_for_a_resume(loop: asyncio.AbstractEventLoop) -> None:
    """Over the bound ``put`` says pause; the next ``take`` says resume, once."""
    box = Outbox(loop, limit=10)
    assert box.put([b"12345"]) is False
    assert box.put([b"123456"]) is True
    assert take(box, loop) == ([b"12345", b"123456"], True)
    assert box.put([b"1"]) is False
    assert take(box, loop) == ([b"1"], False)
    box.end()
    assert box.put([b"late"]) is False
    assert take(box, loop) == ([None], False)


def test_outbox_wakes_a_waiting_stream_from_another_thread(
        loop: asyncio.AbstractEventLoop) -> None:
    """The reactor thread's put wakes the stream's coroutine waiting on its loop."""
    box = Outbox(loop)
    waiting = loop.create_task(box.take())
    loop.run_until_complete(asyncio.sleep(0))  # the coroutine now waits
    assert not waiting.done()
    putter = threading.Thread(target=box.put, args=([b"a", b"b"],))
    putter.start()
    putter.join(5)
    assert loop.run_until_complete(asyncio.wait_for(waiting, 5)) == ([b"a", b"b"], False)


class _Client:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def close(self, disconnect: Disconnect) -> None:
        self.calls.append(f"close {disconnect.code}")

    def transport_lost(self) -> None:
        self.calls.append("lost")


def test_sink_close_sends_the_disconnect_then_ends_and_cancels_after_the_grace(
        loop: asyncio.AbstractEventLoop) -> None:
    """A consumer that does not read its final pushes is cancelled after the grace."""
    clock, box, cancelled = Clock(), Outbox(loop, limit=4), []
    sink = UniGRPCSink(box, clock, lambda: cancelled.append(True), close_grace=5.0)
    client = _Client()
    sink.client = cast("Client", client)
    sink.write([Payload(protobuf.encode_publication_push("c", Publication(data=b'"abc"'),
                                                         uni=True))])
    assert client.calls == ["pause"]
    sink.close(Disconnect.SLOW)
    sink.write([Payload(protobuf.PING)])  # nothing after the close
    items, _ = take(box, loop)
    assert [pb.Push.FromString(i) if i is not None else None for i in items] == [
        pb.Push(channel="c", pub=pb.Publication(data=b'"abc"')),
        pb.Push(disconnect=pb.Disconnect(code=3008, reason="slow")), None]
    clock.advance(4.9)
    assert cancelled == []
    clock.advance(0.2)
    assert cancelled == [True]


def test_sink_lost_releases_the_client_and_the_grace_timer(
        loop: asyncio.AbstractEventLoop) -> None:
    """The RPC ended: the client is told, and no cancel follows."""
    clock, box, cancelled = Clock(), Outbox(loop), []
    sink = UniGRPCSink(box, clock, lambda: cancelled.append(True), close_grace=5.0)
    client = _Client()
    sink.client = cast("Client", client)
    sink.close(None)
    sink.lost()
    sink.resume()
    clock.advance(10)
    assert (client.calls, cancelled, clock.getDelayedCalls()) == (["lost"], [], [])


def test_misframed_push_closes_the_client_with_3004(loop: asyncio.AbstractEventLoop) -> None:
    """A payload that is not one framed message closes the connection, never sends junk."""
    sink = UniGRPCSink(Outbox(loop), Clock(), lambda: None)
    client = _Client()
    sink.client = cast("Client", client)
    sink.write([Payload(b"\x05ab")])
    assert client.calls == ["close 3004"]


def test_a_shared_payload_is_unframed_once_for_every_stream(
        loop: asyncio.AbstractEventLoop) -> None:
    """Consumers of one publication get the same bytes object (no per-stream encoding)."""
    payload = Payload(protobuf.encode_publication_push("c", Publication(data=b"1"), uni=True),
                      shared=True)
    boxes = [Outbox(loop), Outbox(loop)]
    for box in boxes:
        UniGRPCSink(box, Clock(), lambda: None).write([payload])
    (first,), _ = take(boxes[0], loop)
    (second,), _ = take(boxes[1], loop)
    assert first is second and first == payload.data[1:]


def test_a_consumer_receives_binary_publications_as_is(
        loop: asyncio.AbstractEventLoop) -> None:
    """Data that is not JSON reaches a uni_grpc client (it speaks Protobuf): no 3506."""
    node, clock = make_node({"client": {"insecure": True,
                                        "allow_anonymous_connect_without_token": True}})
    box = Outbox(loop)
    sink = UniGRPCSink(box, clock, lambda: None)
    client = node.make_client(sink, encoding=PROTOBUF)
    sink.client = client
    client.start_unidirectional(b'{"subs": {"bin": {}}}')
    clock.advance(0)
    node.publish("bin", b"\x00\xff not json")
    node.publish("bin", b'{"n": 1}')
    clock.advance(0)
    items, _ = take(box, loop)
    pushes = [pb.Push.FromString(i) for i in items if i is not None]
    assert pushes[0].HasField("connect") and "bin" in pushes[0].connect.subs
    assert [p.pub.data for p in pushes[1:]] == [b"\x00\xff not json", b'{"n": 1}']
    assert client.connected
