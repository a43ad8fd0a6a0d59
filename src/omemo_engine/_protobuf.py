"""Run-time protobuf descriptors for the OMEMO wire messages.

The message classes are built from a ``FileDescriptorProto`` assembled in Python at import time
instead of from ``protoc``-generated code. Generated modules are tied to the protobuf runtime that
generated them (``Protobuf Gencode/Runtime major versions mismatch``); descriptors built at run time
work with every protobuf release from 4.21 on, so installing the newest protobuf never breaks us.

All fields use proto2 semantics: "required" fields are always serialised, including zero values,
exactly as the reference implementations do, and fields are written in field-number order.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Protocol

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["FieldSpec", "PBMessage", "build_messages", "typed_class"]

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


class PBMessage(Protocol):
    """The part of protobuf's message API that the codecs use. A message's fields are declared by a
    Protocol deriving from this one, checked against the descriptor by :func:`typed_class`."""

    def HasField(self, field_name: str) -> bool: ...  # noqa: N802 - protobuf's name
    def ParseFromString(self, serialized: bytes) -> int | None: ...  # noqa: N802
    def MergeFromString(self, serialized: bytes) -> int | None: ...  # noqa: N802
    def SerializeToString(self) -> bytes: ...  # noqa: N802
    def SerializePartialToString(self) -> bytes: ...  # noqa: N802


#: The Python type a field of each protobuf type reads back as.
_PYTHON_TYPES: dict[int, type] = {
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: int,
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: bytes,
}


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


def typed_class(cls: type[Message], constructor: type) -> Any:
    """Give the run-time-built message class ``cls`` the static type ``constructor``.

    ``constructor`` is a Protocol whose ``__call__`` takes the message's fields as keyword-only
    arguments and returns a :class:`PBMessage` Protocol that declares the same fields as attributes.
    The descriptor cannot be seen by a type checker, so the two are compared here, at import time: the
    keyword names and the attribute names must both be exactly the message's field names, and every
    scalar field's declared type must be the type the protobuf runtime returns for it. The caller
    assigns the result to a variable annotated with ``constructor``.

    Raises:
        TypeError: the Protocol does not describe the message.
    """
    fields = {field.name: field for field in cls.DESCRIPTOR.fields}
    call = inspect.signature(constructor.__call__)
    keywords = [name for name, p in call.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    hints = typing.get_type_hints(constructor.__call__)
    instance_hints = typing.get_type_hints(hints["return"])
    attributes = {name: hint for name, hint in instance_hints.items() if not name.startswith("_")}
    name = cls.DESCRIPTOR.full_name
    if sorted(keywords) != sorted(fields) or sorted(attributes) != sorted(fields):
        raise TypeError(
            f"{constructor.__name__} does not describe {name}: keywords {sorted(keywords)}, "
            f"attributes {sorted(attributes)}, fields {sorted(fields)}"
        )
    for field_name, field in fields.items():
        expected = _PYTHON_TYPES.get(field.type)
        if expected is not None and (
            hints[field_name] is not expected or attributes[field_name] is not expected
        ):
            raise TypeError(
                f"{constructor.__name__}: field {name}.{field_name} reads back as {expected.__name__}"
            )
    return cls
