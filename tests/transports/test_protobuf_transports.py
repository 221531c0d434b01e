"""The Protobuf client protocol on WebSocket, HTTP-streaming and ``/emulation``; refusals.

Real loopback sockets against a live site (liveserver.Server); the wire is decoded with
the project's codec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from liveserver import Server
from rawhttp import request
from twisted.internet import reactor, task
from wsclient import ClientFactory, RecordingClient, connect

from rtserver.core.types import DisconnectControl
from rtserver.protocol import protobuf

SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True, "queue_max_size": 65536},
    "websocket": {"message_size_limit": 4096},
    "http_stream": {"enabled": True},
    "sse": {"enabled": True},
    "emulation": {"enabled": True},
    "uni_websocket": {"enabled": True},
    "sockjs": {"enabled": True},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "allow_publish_for_anonymous": True,
            "allow_publish_for_subscriber": True,
        }
    },
}


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(SETTINGS)
    yield srv
    await srv.stop()


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def commands(*objs: dict[str, Any]) -> bytes:
    """Varint-delimited Commands in one frame."""
    out = b""
    for obj in objs:
        body = protobuf.encode_message("Command", obj)
        out += uvarint(len(body)) + body
    return out


def replies(data: bytes) -> list[dict[str, Any]]:
    """The Replies of a frame or stream (complete messages only)."""
    out, pos = [], 0
    while pos < len(data):
        length, shift, start = 0, 0, pos
        while True:
            if start >= len(data):
                return out
            byte = data[start]
            start += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if start + length > len(data):
            return out
        out.append(protobuf.decode_message("Reply", data[start : start + length]))
        pos = start + length
    return out


async def next_replies(factory: ClientFactory, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        frame = await factory.frames.get().addTimeout(5, reactor)
        got += replies(frame)
    return got


async def pb_connected(
    srv: Server, url: str | None = None, **kwargs: Any
) -> tuple[ClientFactory, RecordingClient]:
    if url is None:
        url, kwargs = srv.url, {"protocols": ["centrifuge-protobuf"], **kwargs}
    factory = connect(url, **kwargs)
    proto = await factory.opened
    proto.sendMessage(
        commands({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "room"}}),
        isBinary=True,
    )
    got = await next_replies(factory, 2)
    assert got[0]["connect"]["client"] and got[1] == {"id": 2, "subscribe": {}}
    return factory, proto


@pytest.mark.parametrize(
    ("suffix", "protocols"),
    [("", ["centrifuge-protobuf"]), ("?format=protobuf", None), ("?cf_protocol=protobuf", None)],
)
@pytest_twisted.ensureDeferred
async def test_protobuf_is_negotiated_and_spoken_in_binary_frames(
    server: Server, suffix: str, protocols: list[str] | None
) -> None:
    """Subprotocol or query parameter: binary frames, varint-delimited, both ways."""
    kwargs = {"protocols": protocols} if protocols else {}
    factory, proto = await pb_connected(server, server.url + suffix, **kwargs)
    assert proto.websocket_protocol_in_use == (protocols[0] if protocols else None)
    await server.node.publish("room", b'{"text":"hi"}')
    (push,) = await next_replies(factory, 1)
    assert push == {"push": {"channel": "room", "pub": {"data": b'{"text":"hi"}'}}}
    assert factory.binary and all(factory.binary)
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_several_replies_share_one_binary_frame(server: Server) -> None:
    """Replies produced in one turn are concatenated into a single binary frame."""
    factory, proto = await pb_connected(server)
    proto.sendMessage(
        commands(
            {"id": 3, "publish": {"channel": "room", "data": b"\x01"}},
            {"id": 4, "publish": {"channel": "room", "data": b"\x02"}},
        ),
        isBinary=True,
    )
    got = await next_replies(factory, 4)
    assert {"id": 3, "publish": {}} in got and {"id": 4, "publish": {}} in got
    pubs = [r["push"]["pub"]["data"] for r in got if "push" in r]
    assert pubs == [b"\x01", b"\x02"]
    assert len(factory.binary) < 2 + 4, "replies of one turn were coalesced"
    proto.sendClose()
    await factory.closed


@pytest_twisted.ensureDeferred
async def test_text_frame_on_protobuf_closes_3501(server: Server) -> None:
    """A text frame on a Protobuf connection is a bad request."""
    factory, proto = await pb_connected(server)
    proto.sendMessage(b'{"id":3,"presence":{"channel":"room"}}')
    assert (await factory.closed)[0] == 3501


@pytest_twisted.ensureDeferred
async def test_binary_publication_closes_json_subscriber_3506(server: Server) -> None:
    """A mixed channel: JSON clients get JSON payloads; non-JSON bytes close them with 3506."""
    pb_factory, pb_proto = await pb_connected(server)
    json_factory = connect(server.url)
    json_proto = await json_factory.opened
    json_proto.send_json({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "room"}})
    got: list[Any] = []
    while len(got) < 2:
        got += await json_factory.next_messages()
    pb_proto.sendMessage(
        commands({"id": 3, "publish": {"channel": "room", "data": b'{"a": [1, 2]}'}}), isBinary=True
    )
    assert (await json_factory.next_messages())[0]["push"]["pub"]["data"] == {"a": [1, 2]}
    pb_proto.sendMessage(
        commands({"id": 4, "publish": {"channel": "room", "data": b"\xff\x00"}}), isBinary=True
    )
    assert (await json_factory.closed)[0] == 3506
    pb_data = [r["push"]["pub"]["data"] for r in await next_replies(pb_factory, 4) if "push" in r]
    assert pb_data == [b'{"a": [1, 2]}', b"\xff\x00"]
    pb_proto.sendClose()
    await pb_factory.closed


@pytest_twisted.ensureDeferred
async def test_unidirectional_websocket_refuses_protobuf(server: Server) -> None:
    """The unidirectional WebSocket is JSON only: a Protobuf handshake gets HTTP 400."""
    url = f"ws://127.0.0.1:{server.port}/connection/uni_websocket"
    factory = connect(url, protocols=["centrifuge-protobuf"])
    with pytest.raises(ConnectionError):
        await factory.opened
    await factory.closed


OCTET = {"Content-Type": "application/octet-stream"}


@pytest_twisted.ensureDeferred
async def test_http_stream_and_emulation_in_protobuf(server: Server) -> None:
    """octet-stream: varint-delimited replies on the stream, EmulationRequest bodies."""
    stream = await request(
        server.port,
        "POST",
        "/connection/http_stream",
        commands({"id": 1, "connect": {}}),
        headers=OCTET,
    )
    await stream.wait_for(b"")
    await until(lambda: bool(replies(stream.body)))
    assert stream.status == 200 and stream.headers["content-type"] == "application/octet-stream"
    connect_result = replies(stream.body)[0]["connect"]
    assert connect_result["session"] and connect_result["node"] == server.node.uid
    emulation = protobuf.encode_message(
        "EmulationRequest",
        {
            "node": connect_result["node"],
            "session": connect_result["session"],
            "data": commands({"id": 2, "subscribe": {"channel": "news"}}),
        },
    )
    emu = await request(server.port, "POST", "/emulation", emulation, headers=OCTET)
    await emu.wait_for(b"")
    assert emu.status == 204
    emu.transport.loseConnection()
    await until(lambda: {"id": 2, "subscribe": {}} in replies(stream.body))
    await server.node.publish("news", b'{"n":1}')
    await until(lambda: "push" in replies(stream.body)[-1])
    assert replies(stream.body)[-1]["push"]["pub"]["data"] == b'{"n":1}'
    await server.node.control(DisconnectControl(user="", code=3503, reason="force disconnect"))
    await stream.complete
    assert replies(stream.body)[-1] == {
        "push": {"disconnect": {"code": 3503, "reason": "force disconnect"}}
    }
    stream.transport.loseConnection()
    bad = await request(server.port, "POST", "/emulation", b"\x0a\xff", headers=OCTET)
    await bad.wait_for(b"")
    assert bad.status == 400
    bad.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_sse_and_sockjs_refuse_protobuf(server: Server) -> None:
    """SSE and SockJS are JSON only: a Protobuf request gets a clear 400."""
    sse = await request(
        server.port, "POST", "/connection/sse", commands({"id": 1, "connect": {}}), headers=OCTET
    )
    await sse.wait_for(b"protobuf")
    assert sse.status == 400 and b"not available over SSE" in sse.body
    sse.transport.loseConnection()
    for path, headers in [
        ("/connection/sockjs/info?cf_protocol=protobuf", {}),
        ("/connection/sockjs/000/abcdefgh/websocket?format=protobuf", {}),
        (
            "/connection/sockjs/websocket",
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Protocol": "centrifuge-protobuf",
            },
        ),
    ]:
        refused = await request(server.port, "GET", path, headers=headers)
        await refused.wait_for(b"SockJS")
        assert refused.status == 400
        assert b"protobuf is not available over SockJS" in refused.body
        refused.transport.loseConnection()
    info = await request(server.port, "GET", "/connection/sockjs/info")
    await info.wait_for(b"websocket")
    assert info.status == 200
    info.transport.loseConnection()


async def turn() -> None:
    await task.deferLater(reactor, 0.01, lambda: None)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` once per reactor turn (bounded by the test timeout)."""
    while not condition():
        await turn()
