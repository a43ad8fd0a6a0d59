"""The :class:`omemo.backend.Backend` base class: skipped-key limits, label defaults, exceptions.

Regression for PROTOCOL.md 6.1: the reference rejects every explicit non-zero per-message limit
(``x or 0 > y`` precedence bug); we implement the documented rule.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import pytest

from omemo.backend import (
    Backend,
    BackendException,
    DecryptionFailed,
    KeyExchangeFailed,
    TooManySkippedMessageKeys,
)
from omemo.bundle import Bundle
from omemo.message import Content, EncryptedKeyMaterial, KeyExchange, PlainKeyMaterial
from omemo.session import Session
from omemo.types import OMEMOException


class Backend102(Backend):
    """A backend written against 1.0.2: implements exactly the 1.0.2 abstract members, no label API."""

    @property
    def namespace(self) -> str:
        return "urn:example:test"

    async def load_session(self, bare_jid: str, device_id: int) -> Optional[Session]:
        return None

    async def store_session(self, session: Session) -> None:
        pass

    async def build_session_active(
        self, bare_jid: str, device_id: int, bundle: Bundle, plain_key_material: PlainKeyMaterial
    ) -> Tuple[Session, EncryptedKeyMaterial]:
        raise KeyExchangeFailed("not in this test")

    async def build_session_passive(
        self,
        bare_jid: str,
        device_id: int,
        key_exchange: KeyExchange,
        encrypted_key_material: EncryptedKeyMaterial,
    ) -> Tuple[Session, PlainKeyMaterial]:
        raise KeyExchangeFailed("not in this test")

    async def encrypt_plaintext(self, plaintext: bytes) -> Tuple[Content, PlainKeyMaterial]:
        raise NotImplementedError

    async def encrypt_empty(self) -> Tuple[Content, PlainKeyMaterial]:
        raise NotImplementedError

    async def encrypt_key_material(
        self, session: Session, plain_key_material: PlainKeyMaterial
    ) -> EncryptedKeyMaterial:
        raise NotImplementedError

    async def decrypt_plaintext(self, content: Content, plain_key_material: PlainKeyMaterial) -> bytes:
        raise DecryptionFailed("not in this test")

    async def decrypt_key_material(
        self, session: Session, encrypted_key_material: EncryptedKeyMaterial
    ) -> PlainKeyMaterial:
        raise DecryptionFailed("not in this test")

    async def signed_pre_key_age(self) -> int:
        return 0

    async def rotate_signed_pre_key(self) -> None:
        pass

    async def hide_pre_key(self, session: Session) -> bool:
        return False

    async def delete_pre_key(self, session: Session) -> bool:
        return False

    async def delete_hidden_pre_keys(self) -> None:
        pass

    async def get_num_visible_pre_keys(self) -> int:
        return 0

    async def generate_pre_keys(self, num_pre_keys: int) -> None:
        pass

    async def get_bundle(self, bare_jid: str, device_id: int) -> Bundle:
        raise NotImplementedError

    async def purge(self) -> None:
        pass

    async def purge_bare_jid(self, bare_jid: str) -> None:
        pass


@pytest.mark.parametrize(
    ("per_session", "per_message", "expected"),
    [
        (1000, None, (1000, 1000)),
        (1000, 500, (1000, 500)),  # rejected by the reference (PROTOCOL.md 6.1)
        (1000, 1000, (1000, 1000)),  # rejected by the reference (PROTOCOL.md 6.1)
        (1000, 1, (1000, 1)),
        (0, 0, (0, 0)),
        (0, None, (0, 0)),
        (1, 1, (1, 1)),
        (5, None, (5, 5)),
    ],
)
def test_valid_limits(per_session: int, per_message: Optional[int], expected: Tuple[int, int]) -> None:
    backend = Backend102(per_session, per_message)
    assert (backend.max_num_per_session_skipped_keys, backend.max_num_per_message_skipped_keys) == expected


def test_default_limits() -> None:
    backend = Backend102()
    assert backend.max_num_per_session_skipped_keys == 1000
    assert backend.max_num_per_message_skipped_keys == 1000
    by_keyword = Backend102(max_num_per_session_skipped_keys=10, max_num_per_message_skipped_keys=3)
    assert by_keyword.max_num_per_message_skipped_keys == 3


@pytest.mark.parametrize(
    ("per_session", "per_message", "match"),
    [
        (1000, 1001, "between 1 and"),  # more per message than per session
        (1000, 0, "between 1 and"),  # 0 only if the per-session limit is 0
        (0, 1, "must be 0"),
        (0, 5, "must be 0"),
        (-1, None, "must not be negative"),
        (10, -1, "must not be negative"),
    ],
)
def test_invalid_limits(per_session: int, per_message: Optional[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Backend102(per_session, per_message)


@pytest.mark.parametrize(("per_session", "per_message"), [(1.5, None), ("10", None), (10, 2.0), (True, None)])
def test_limit_types(per_session: Any, per_message: Any) -> None:
    with pytest.raises(TypeError):
        Backend102(per_session, per_message)


async def test_label_methods_default_to_unsupported() -> None:
    backend = Backend102()
    assert backend.supports_labels is False
    with pytest.raises(NotImplementedError):
        await backend.sign_own_label("phone")
    with pytest.raises(NotImplementedError):
        await backend.verify_label_signature("phone", b"\x00" * 64, b"\x00" * 32)


def test_label_members_are_not_abstract() -> None:
    assert not {"supports_labels", "sign_own_label", "verify_label_signature"} & Backend.__abstractmethods__


def test_incomplete_backend_cannot_be_instantiated() -> None:
    class Incomplete(Backend):
        pass

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_exception_tree() -> None:
    assert issubclass(BackendException, OMEMOException)
    for cls in (DecryptionFailed, KeyExchangeFailed, TooManySkippedMessageKeys):
        assert issubclass(cls, BackendException)
