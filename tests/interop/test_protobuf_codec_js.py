"""rtserver's Protobuf codec against centrifuge-js's (the ``centrifuge/build/protobuf`` build).

No server: ``js/protobuf_codec.mjs`` runs the SDK's own codec object in Node, encoding
commands and an ``/emulation`` body and decoding the replies rtserver encodes. Bytes are
exchanged as hex, so what is compared is exactly what would cross the wire.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import INTEROP_DIR

from rtserver.protocol import protobuf
from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import (
    ClientInfo,
    ConnectRequest,
    HistoryRequest,
    Publication,
    PublishRequest,
    RPCRequest,
    SubscribeRequest,
)

pytestmark = pytest.mark.interop

SCRIPT = INTEROP_DIR / "js" / "protobuf_codec.mjs"


def hexed(data: bytes) -> dict[str, str]:
    """Bytes as the script takes them."""
    return {"$hex": data.hex()}


def run_codec(node: str, node_modules: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to centrifuge-js's codec; its JSON answer."""
    done = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=30,
        check=False,
        cwd=node_modules.parent,
    )
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def plain(value: Any) -> Any:
    """A decoded protobufjs object without its empty defaults; bytes back to bytes."""
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        out = {k: plain(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_commands_encoded_by_centrifuge_js(node: str, node_modules: Path) -> None:
    """Every command the JS SDK encodes decodes into the request values rtserver uses."""
    commands = [
        {
            "id": 1,
            "connect": {
                "token": "jwt",
                "name": "js",
                "data": hexed(b'{"a":1}'),
                "subs": {"#42": {"recover": True, "offset": 7, "epoch": "e"}},
                "headers": {"x-app": "1"},
            },
        },
        {
            "id": 2,
            "subscribe": {
                "channel": "chat:index",
                "flag": 3,
                "positioned": True,
                "recoverable": True,
                "delta": "fossil",
                "tf": {"op": "and", "nodes": [{"key": "k", "cmp": "eq", "val": "v"}]},
            },
        },
        {"id": 3, "publish": {"channel": "chat:index", "data": hexed(b"\x00\x01\xff")}},
        {"id": 4, "history": {"channel": "c", "limit": -1, "since": {"offset": 5, "epoch": "e"}}},
        {"id": 5, "rpc": {"method": "m", "data": hexed(b"[]")}},
        {"id": 6, "presence": {"channel": "c"}},
        {"send": {"data": hexed(b"hi")}},
        {},
    ]
    frame = bytes.fromhex(run_codec(node, node_modules, {"commands": commands})["frame"])
    decoded = protobuf.decode_commands(frame)
    assert [(c.id, c.method) for c in decoded] == [
        (1, "connect"),
        (2, "subscribe"),
        (3, "publish"),
        (4, "history"),
        (5, "rpc"),
        (6, "presence"),
        (0, "send"),
        (0, None),
    ]
    connect = ConnectRequest.parse(decoded[0].params)
    assert (connect.token, connect.name, connect.data) == ("jwt", "js", b'{"a":1}')
    assert connect.headers == {"x-app": "1"}
    assert connect.subs["#42"] == SubscribeRequest("#42", recover=True, offset=7, epoch="e")
    sub = SubscribeRequest.parse(decoded[1].params)
    assert (sub.channel, sub.flag, sub.positioned, sub.recoverable) == ("chat:index", 3, True, True)
    assert decoded[1].params["tf"] == {
        "op": "and",
        "nodes": [{"key": "k", "cmp": "eq", "val": "v"}],
    }
    assert PublishRequest.parse(decoded[2].params) == PublishRequest("chat:index", b"\x00\x01\xff")
    history = HistoryRequest.parse(decoded[3].params)
    assert history.limit == -1
    assert history.since is not None and (history.since.offset, history.since.epoch) == (5, "e")
    assert RPCRequest.parse(decoded[4].params) == RPCRequest("m", b"[]")
    assert decoded[5].params == {"channel": "c"}


def test_replies_decoded_by_centrifuge_js(node: str, node_modules: Path) -> None:
    """Every reply and push rtserver encodes reads back in the JS SDK field for field."""
    info = ClientInfo("42", "c1", conn_info=b'{"n":1}')
    pub = Publication(b"\x00bin", info, offset=17, tags={"t": "1"})
    frame = protobuf.join(
        [
            protobuf.encode_reply(
                1,
                "connect",
                {
                    "client": "c1",
                    "version": "0.1",
                    "expires": True,
                    "ttl": 60,
                    "subs": {"#42": {"recoverable": True, "epoch": "e", "offset": 3}},
                    "ping": 25,
                    "pong": True,
                    "session": "s",
                    "node": "n",
                },
            ),
            protobuf.encode_reply(
                2,
                "subscribe",
                {
                    "recoverable": True,
                    "positioned": True,
                    "epoch": "e",
                    "offset": 16,
                    "recovered": True,
                    "was_recovering": True,
                    "publications": [pub.to_wire()],
                },
            ),
            protobuf.encode_reply(3, "presence", {"presence": {"c1": info.to_wire()}}),
            protobuf.encode_reply(4, "history", {"publications": [], "epoch": "e", "offset": 0}),
            protobuf.encode_error(5, Error.UNRECOVERABLE_POSITION),
            protobuf.encode_publication_push("chat", pub),
            protobuf.encode_join_leave_push("chat", "join", info),
            protobuf.encode_unsubscribe("chat", Unsubscribe.INSUFFICIENT_STATE),
            protobuf.encode_push("", "message", {"data": b'{"m":1}'}),
            protobuf.encode_disconnect(Disconnect.SHUTDOWN),
            protobuf.PING,
        ]
    )
    replies = plain(run_codec(node, node_modules, {"replies": frame.hex()})["replies"])
    wire_info = {"user": "42", "client": "c1", "conn_info": b'{"n":1}'}
    wire_pub = {"data": b"\x00bin", "info": wire_info, "offset": 17, "tags": {"t": "1"}}
    assert replies == [
        {
            "id": 1,
            "connect": {
                "client": "c1",
                "version": "0.1",
                "expires": True,
                "ttl": 60,
                "subs": {"#42": {"recoverable": True, "epoch": "e", "offset": 3}},
                "ping": 25,
                "pong": True,
                "session": "s",
                "node": "n",
            },
        },
        {
            "id": 2,
            "subscribe": {
                "recoverable": True,
                "positioned": True,
                "epoch": "e",
                "offset": 16,
                "recovered": True,
                "was_recovering": True,
                "publications": [wire_pub],
            },
        },
        {"id": 3, "presence": {"presence": {"c1": wire_info}}},
        {"id": 4, "history": {"epoch": "e"}},
        {"id": 5, "error": {"code": 112, "message": "unrecoverable position"}},
        {"push": {"channel": "chat", "pub": wire_pub}},
        {"push": {"channel": "chat", "join": {"info": wire_info}}},
        {
            "push": {
                "channel": "chat",
                "unsubscribe": {"code": 2500, "reason": "insufficient state"},
            }
        },
        {"push": {"message": {"data": b'{"m":1}'}}},
        {"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}},
        {},
    ]


def test_emulation_body_encoded_by_centrifuge_js(node: str, node_modules: Path) -> None:
    """The JS SDK's Protobuf ``/emulation`` body gives node, session and its commands."""
    commands = protobuf.encode_message("Command", {"id": 2, "subscribe": {"channel": "a"}})
    data = protobuf.join([protobuf._framed(commands), protobuf.PING])
    request = {"emulation": {"node": "n1", "session": "s1", "data": hexed(data)}}
    body = bytes.fromhex(run_codec(node, node_modules, request)["body"])
    node_id, session, inner = protobuf.decode_emulation_request(body)
    assert (node_id, session, inner) == ("n1", "s1", data)
