"""Run-time protobuf descriptors for the OMEMO wire messages.

The message classes are built from a ``FileDescriptorProto`` assembled in Python at import time
instead of from ``protoc``-generated code. Generated modules are tied to the protobuf runtime that
generated them (``Protobuf Gencode/Runtime major versions mismatch``); descriptors built at run time
work with every protobuf release from 4.21 on, so installing the newest protobuf never breaks us.

All fields use proto2 semantics: "required" fields are always serialised, including zero values,
exactly as the reference implementations do, and fields are written in field-number order.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["FieldSpec", "build_messages"]

_TYPES = {
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "message": descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
}
_LABELS = {
    "required": descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED,
    "optional": descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
}

#: (name, number, label, type, message type name for "message" fields)
FieldSpec = tuple[str, int, str, str, str | None]


def build_messages(package: str, messages: dict[str, list[FieldSpec]]) -> dict[str, type[Message]]:
    """Build proto2 message classes for ``messages`` (name -> field specs) in their own pool."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}.proto", package=package, syntax="proto2"
    )
    for name, fields in messages.items():
        message = file_proto.message_type.add(name=name)
        for field_name, number, label, type_name, message_type in fields:
            field = message.field.add(
                name=field_name, number=number, label=_LABELS[label], type=_TYPES[type_name]
            )
            if message_type is not None:
                field.type_name = f".{package}.{message_type}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    classes: dict[str, type[Message]] = {}
    for name in messages:
        descriptor = pool.FindMessageTypeByName(f"{package}.{name}")
        get_class: Any = getattr(message_factory, "GetMessageClass", None)
        if get_class is None:  # pragma: no cover - protobuf < 4.22
            get_class = getattr(message_factory.MessageFactory(pool), "GetPrototype")  # noqa: B009
        classes[name] = get_class(descriptor)
    return classes
