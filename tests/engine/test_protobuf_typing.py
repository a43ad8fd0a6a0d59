"""The static types given to the run-time-built protobuf classes are checked against their descriptors."""

from __future__ import annotations

from typing import Protocol

import pytest

from omemo_engine._protobuf import PBMessage, build_messages, typed_class

_CLASSES = build_messages(
    "omemo_stack.test_typing",
    {"Pair": [("number", 1, "required", "uint32", None), ("blob", 2, "optional", "bytes", None)]},
)
_PAIR = _CLASSES["Pair"]


class _Pair(PBMessage, Protocol):
    number: int
    blob: bytes


class _PairClass(Protocol):
    def __call__(self, *, number: int = ..., blob: bytes = ...) -> _Pair: ...


class _MissingKeyword(Protocol):
    def __call__(self, *, number: int = ...) -> _Pair: ...


class _Short(PBMessage, Protocol):
    number: int


class _MissingAttribute(Protocol):
    def __call__(self, *, number: int = ..., blob: bytes = ...) -> _Short: ...


class _WrongKeywordType(Protocol):
    def __call__(self, *, number: bytes = ..., blob: bytes = ...) -> _Pair: ...


class _WrongAttributeType(PBMessage, Protocol):
    number: int
    blob: int


class _WrongAttribute(Protocol):
    def __call__(self, *, number: int = ..., blob: bytes = ...) -> _WrongAttributeType: ...


def test_a_matching_protocol_types_the_class() -> None:
    pair: _PairClass = typed_class(_PAIR, _PairClass)
    message = pair(number=7, blob=b"x")
    assert message.number == 7
    assert message.blob == b"x"
    assert message.HasField("blob")


@pytest.mark.parametrize(
    "shape",
    [_MissingKeyword, _MissingAttribute, _WrongKeywordType, _WrongAttribute],
    ids=["missing keyword", "missing attribute", "wrong keyword type", "wrong attribute type"],
)
def test_a_protocol_that_does_not_describe_the_message_is_refused(shape: type) -> None:
    with pytest.raises(TypeError, match=r"omemo_stack\.test_typing\.Pair"):
        typed_class(_PAIR, shape)
