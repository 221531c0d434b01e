"""Cost of the Protobuf codec on its two hot paths, against the JSON codec in the same run.

* encode: a ``pub`` push (client publication with ClientInfo and conn_info, an offset and
  a tag), the work done once per publication per wire shape in fan-out;
* decode: a frame holding one ``publish`` command, up to the ``PublishRequest`` value.

Four implementations: rtserver's JSON codec (the baseline every ratio is against), the
hand-written Protobuf codec (``encode_publication_push`` from the value, and the
schema-driven ``encode_push`` from the same dict the JSON codec takes), and the protobuf
runtime (upb) through generated classes -- centrifuge-python's ``client_pb2`` stands in
for a checked-in generated module, the messages are the same. For the runtime, decoding
is shown as the bare parse and as parse plus turning the message into the codec's
``Command`` (what the client state machine needs).

``python bench/protobuf_codec.py [--number 20000] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from rtserver.protocol import codec, protobuf
from rtserver.protocol.codec import parse_command
from rtserver.protocol.frames import ClientInfo, Command, Publication, PublishRequest

DATA = b'{"input":"hello world, this is a benchmark publication payload"}'
PUB = Publication(
    DATA,
    ClientInfo("42", "3f6c1a0e-8a4b-4c1e-9d2b-7f4f1b0a9c11", conn_info=b'{"name":"alice"}'),
    offset=123456,
    tags={"kind": "chat"},
)
CHANNEL = "chat:index"


def _runtime() -> tuple[Any, Callable[[Any], dict[str, Any]]] | None:
    try:
        from centrifuge.protocol import client_pb2
    except ImportError:
        return None

    def to_params(msg: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, value in msg.ListFields():
            if field.type == field.TYPE_MESSAGE and not field.is_repeated:
                out[field.name] = to_params(value)
            elif field.type == field.TYPE_BYTES:
                out[field.name] = orjson.Fragment(value)
            else:
                out[field.name] = value
        return out

    return client_pb2, to_params


def cases() -> dict[str, dict[str, Callable[[], object]]]:
    """Name -> {implementation: zero-argument callable doing one operation}."""
    body = PUB.to_wire()
    json_frame = orjson.dumps(
        {"publish": {"channel": CHANNEL, "data": orjson.loads(DATA)}, "id": 7}
    )
    pb_frame = protobuf.join(
        [
            protobuf._framed(
                protobuf.encode_message(
                    "Command", {"id": 7, "publish": {"channel": CHANNEL, "data": DATA}}
                )
            )
        ]
    )

    def json_decode() -> PublishRequest:
        return PublishRequest.parse(codec.decode_commands(json_frame)[0].params)

    def pb_decode() -> PublishRequest:
        return PublishRequest.parse(protobuf.decode_commands(pb_frame)[0].params)

    encode: dict[str, Callable[[], object]] = {
        "json codec.encode_push(to_wire())": lambda: codec.encode_push(
            CHANNEL, "pub", PUB.to_wire()
        ),
        "json codec.encode_push(body)": lambda: codec.encode_push(CHANNEL, "pub", body),
        "protobuf encode_publication_push(pub)": lambda: protobuf.encode_publication_push(
            CHANNEL, PUB
        ),
        "protobuf encode_push(body)": lambda: protobuf.encode_push(CHANNEL, "pub", body),
    }
    decode: dict[str, Callable[[], object]] = {
        "json decode_commands + parse": json_decode,
        "protobuf decode_commands + parse": pb_decode,
    }
    runtime = _runtime()
    if runtime is not None:
        pb2, to_params = runtime

        def upb_encode() -> bytes:
            info = PUB.info
            assert info is not None
            msg = pb2.Reply(
                push=pb2.Push(
                    channel=CHANNEL,
                    pub=pb2.Publication(
                        data=PUB.data,
                        info=pb2.ClientInfo(
                            user=info.user, client=info.client, conn_info=info.conn_info
                        ),
                        offset=PUB.offset,
                        tags=PUB.tags,
                    ),
                )
            )
            out = msg.SerializeToString()
            return protobuf._uvarint(len(out)) + out

        def upb_parse() -> object:
            length, pos = protobuf._varint(pb_frame, 0, len(pb_frame))
            return pb2.Command.FromString(pb_frame[pos : pos + length])

        def upb_decode() -> PublishRequest:
            length, pos = protobuf._varint(pb_frame, 0, len(pb_frame))
            msg = pb2.Command.FromString(pb_frame[pos : pos + length])
            cmd: Command = parse_command(to_params(msg))
            return PublishRequest.parse(cmd.params)

        assert upb_encode() == protobuf.encode_publication_push(CHANNEL, PUB)
        assert upb_decode() == pb_decode() == json_decode()
        encode["upb runtime: build message + SerializeToString"] = upb_encode
        decode["upb runtime: FromString only"] = upb_parse
        decode["upb runtime: FromString + to Command + parse"] = upb_decode
    return {"encode pub push": encode, "decode publish command": decode}


def main() -> None:
    """Time every case and print a markdown table (µs per operation, ratio to JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    table = cases()
    best: dict[tuple[str, str], float] = {}
    # repeats are the outer loop, so a change in machine load hits every implementation
    for _ in range(args.repeat):
        for operation, impls in table.items():
            for name, fn in impls.items():
                elapsed = timeit.timeit(fn, number=args.number) / args.number * 1e6
                key = (operation, name)
                best[key] = min(best.get(key, elapsed), elapsed)
    print("| operation | implementation | µs/op (min of repeats) | x JSON |")
    print("|---|---|---:|---:|")
    for operation, impls in table.items():
        baseline = best[(operation, next(iter(impls)))]
        for name in impls:
            usec = best[(operation, name)]
            print(f"| {operation} | {name} | {usec:.2f} | {usec / baseline:.2f} |")


if __name__ == "__main__":
    main()
