"""Comparing rtserver's protobuf schemas with Centrifugo's field tables.

A table is message -> field -> (number, type), the type as ``string``, ``repeated string``,
a message name or ``map``. Each schema test (tests/grpcapi/test_schema.py,
tests/grpcapi/test_unistream_schema.py, tests/proxy/test_proxy_schema.py) keeps its own
table and its own rule for Centrifugo fields rtserver leaves out.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor

ROOT = Path(__file__).resolve().parents[1]

#: Message -> field -> (number, type).
FieldTable = dict[str, dict[str, tuple[int, str]]]

_TYPES = {v: k[5:].lower() for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}


def field_type(f: descriptor_pb2.FieldDescriptorProto) -> str:
    """The field's type as the tables spell it."""
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        kind = f.type_name.rsplit(".", 1)[-1]
        if kind.endswith("Entry"):  # map<k, v> fields are repeated nested *Entry messages
            return "map"
    else:
        kind = _TYPES[f.type]
    return f"repeated {kind}" if f.label == f.LABEL_REPEATED else kind


def message_proto(file: FileDescriptor, message: str) -> descriptor_pb2.DescriptorProto:
    """A copy of ``message`` of a generated module's ``DESCRIPTOR``, free to edit."""
    proto = descriptor_pb2.DescriptorProto()
    file.message_types_by_name[message].CopyToProto(proto)
    return proto


def declared_mismatches(
    proto: descriptor_pb2.DescriptorProto, theirs: dict[str, tuple[int, str]]
) -> list[str]:
    """Fields ``proto`` declares unlike Centrifugo's message ``theirs``.

    Another number or type than Centrifugo's, or a name Centrifugo's message lacks.
    """
    ours = {f.name: (f.number, field_type(f)) for f in proto.field}
    return [
        f"{proto.name}.{name} is {spec}, Centrifugo's is {theirs.get(name)}"
        for name, spec in ours.items()
        if theirs.get(name) != spec
    ]


def left_out(
    proto: descriptor_pb2.DescriptorProto, theirs: dict[str, tuple[int, str]]
) -> list[tuple[str, int]]:
    """Centrifugo's fields (name, number) that ``proto`` does not declare."""
    ours = {f.name for f in proto.field}
    return [(name, number) for name, (number, _) in theirs.items() if name not in ours]


def compiled_schema(proto: str, out_dir: Path) -> descriptor_pb2.FileDescriptorProto:
    """What protoc makes of ``proto`` (a path from the repository root) now."""
    from grpc_tools import protoc

    out = out_dir / (Path(proto).stem + ".desc")
    assert protoc.main(["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}",
                        str(ROOT / proto)]) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in compiled.message_type:
        _drop_json_names(message)  # protoc adds them to descriptor sets, not to modules
    return compiled


def embedded_schema(module: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    """The schema a generated ``*_pb2`` module was made from."""
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


def _drop_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for f in message.field:
        f.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)
