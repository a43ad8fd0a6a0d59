"""The public names of ``twomemo`` and ``oldmemo`` that third-party code uses (drop-in compatibility).

Names, module paths, base classes, constructor and function signatures (parameter names, defaults,
coroutine-ness) as listed in /work/shared/spec/PROTOCOL.md and the issue "Backends". Behaviour is
tested elsewhere; here a rename or a changed default fails loudly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import oldmemo
import oldmemo.etree
import oldmemo.oldmemo
import omemo
import omemo.backend
import omemo.bundle
import omemo.message
import omemo.session
import twomemo
import twomemo.etree
import twomemo.twomemo
from omemo.storages import MemoryStorage

PACKAGES: dict[str, tuple[ModuleType, ModuleType, ModuleType, str, str]] = {
    "twomemo": (twomemo, twomemo.twomemo, twomemo.etree, "Twomemo", "urn:xmpp:omemo:2"),
    "oldmemo": (oldmemo, oldmemo.oldmemo, oldmemo.etree, "Oldmemo", "eu.siacs.conversations.axolotl"),
}

IMPL_BASES = {
    "BundleImpl": omemo.bundle.Bundle,
    "ContentImpl": omemo.message.Content,
    "EncryptedKeyMaterialImpl": omemo.message.EncryptedKeyMaterial,
    "KeyExchangeImpl": omemo.message.KeyExchange,
    "PlainKeyMaterialImpl": omemo.message.PlainKeyMaterial,
    "SessionImpl": omemo.session.Session,
}

parametrize_packages = pytest.mark.parametrize("name", list(PACKAGES))


def params(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    """(name, default) of every parameter, ``inspect.Parameter.empty`` for no default."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


EMPTY = inspect.Parameter.empty


@parametrize_packages
def test_backend_class_and_namespace(name: str) -> None:
    package, module, _, class_name, namespace = PACKAGES[name]
    cls = getattr(module, class_name)
    assert getattr(package, class_name) is cls
    assert namespace == module.NAMESPACE
    assert issubclass(cls, omemo.backend.Backend) and issubclass(cls, omemo.Backend)
    assert not inspect.isabstract(cls)
    assert cls(MemoryStorage()).namespace == namespace
    assert class_name in module.__all__ and "NAMESPACE" in module.__all__


def test_namespace_constants() -> None:
    assert twomemo.twomemo.NAMESPACE == "urn:xmpp:omemo:2"
    assert oldmemo.oldmemo.NAMESPACE == "eu.siacs.conversations.axolotl"


@parametrize_packages
def test_constructor_signature(name: str) -> None:
    _, module, _, class_name, _ = PACKAGES[name]
    cls = getattr(module, class_name)
    assert params(cls) == [
        ("storage", EMPTY),
        ("max_num_per_session_skipped_keys", 1000),
        ("max_num_per_message_skipped_keys", None),
    ]
    storage = MemoryStorage()
    backend = cls(storage=storage, max_num_per_session_skipped_keys=10, max_num_per_message_skipped_keys=5)
    assert (backend.max_num_per_session_skipped_keys, backend.max_num_per_message_skipped_keys) == (10, 5)
    backend = cls(storage, 20, 20)
    assert (backend.max_num_per_session_skipped_keys, backend.max_num_per_message_skipped_keys) == (20, 20)


@parametrize_packages
def test_impl_classes(name: str) -> None:
    _, module, _, _, _ = PACKAGES[name]
    for impl, base in IMPL_BASES.items():
        cls = getattr(module, impl)
        assert issubclass(cls, base), impl
        assert not inspect.isabstract(cls), impl
        assert impl in module.__all__


def _base_methods() -> dict[str, Callable[..., Any]]:
    return {
        n: m
        for n, m in inspect.getmembers(omemo.backend.Backend, predicate=inspect.isfunction)
        if not n.startswith("_")
    }


@parametrize_packages
def test_backend_methods_match_the_base_class(name: str) -> None:
    """Every Backend method exists with the base class's parameter names and coroutine-ness."""
    _, module, _, class_name, _ = PACKAGES[name]
    cls = getattr(module, class_name)
    base_methods = _base_methods()
    expected = {
        "load_session", "store_session", "build_session_active", "build_session_passive",
        "encrypt_plaintext", "encrypt_empty", "encrypt_key_material", "decrypt_plaintext",
        "decrypt_key_material", "signed_pre_key_age", "rotate_signed_pre_key", "hide_pre_key",
        "delete_pre_key", "delete_hidden_pre_keys", "get_num_visible_pre_keys", "generate_pre_keys",
        "get_bundle", "purge", "purge_bare_jid", "sign_own_label", "verify_label_signature",
    }  # fmt: skip
    assert expected <= set(base_methods)
    for method_name, base in base_methods.items():
        implementation = getattr(cls, method_name)
        assert [p for p, _ in params(implementation)] == [p for p, _ in params(base)], method_name
        assert inspect.iscoroutinefunction(implementation) == inspect.iscoroutinefunction(base), method_name
    for prop in ("namespace", "supports_labels", "max_num_per_session_skipped_keys",
                 "max_num_per_message_skipped_keys"):  # fmt: skip
        assert isinstance(inspect.getattr_static(cls, prop), property), prop


def test_supports_labels_values() -> None:
    assert twomemo.Twomemo(MemoryStorage()).supports_labels is True
    assert oldmemo.Oldmemo(MemoryStorage()).supports_labels is False


@parametrize_packages
def test_etree_function_signatures(name: str) -> None:
    _, _, etree, _, _ = PACKAGES[name]
    assert params(etree.serialize_device_list) == [("device_list", EMPTY)]
    assert params(etree.parse_device_list) == [("element", EMPTY)]
    assert params(etree.serialize_bundle) == [("bundle", EMPTY)]
    assert params(etree.parse_bundle) == [("element", EMPTY), ("bare_jid", EMPTY), ("device_id", EMPTY)]
    assert params(etree.serialize_message) == [("message", EMPTY)]
    for function in ("serialize_device_list", "parse_device_list", "serialize_bundle", "parse_bundle",
                     "serialize_message", "parse_message"):  # fmt: skip
        assert function in etree.__all__
    for function in ("serialize_device_list", "parse_device_list", "serialize_bundle", "parse_bundle",
                     "serialize_message"):  # fmt: skip
        assert not inspect.iscoroutinefunction(getattr(etree, function)), function


def test_parse_message_signatures() -> None:
    assert params(twomemo.etree.parse_message) == [("element", EMPTY), ("bare_jid", EMPTY)]
    assert not inspect.iscoroutinefunction(twomemo.etree.parse_message)
    assert params(oldmemo.etree.parse_message) == [
        ("element", EMPTY),
        ("sender_bare_jid", EMPTY),
        ("own_bare_jid", EMPTY),
        ("session_manager", EMPTY),
    ]
    assert inspect.iscoroutinefunction(oldmemo.etree.parse_message)


def test_package_exports() -> None:
    for package, module_names in ((twomemo, ("etree", "twomemo")), (oldmemo, ("etree", "oldmemo"))):
        for module_name in module_names:
            assert module_name in package.__all__
            assert isinstance(getattr(package, module_name), ModuleType)


def test_twomemo_value_classes() -> None:
    impl = twomemo.twomemo
    empty = impl.ContentImpl.make_empty()
    assert isinstance(empty, impl.ContentImpl) and empty.empty and empty.ciphertext == b""
    content = impl.ContentImpl(ciphertext=b"\x01" * 16)
    assert content.ciphertext == b"\x01" * 16 and not content.empty
    key_material = impl.PlainKeyMaterialImpl(key=b"k" * 32, auth_tag=b"t" * 16)
    assert (key_material.key, key_material.auth_tag) == (b"k" * 32, b"t" * 16)
    assert impl.PlainKeyMaterialImpl(b"k" * 32, b"").auth_tag == b""
    assert "k" * 8 not in repr(key_material)  # no secrets in repr


def test_oldmemo_value_classes() -> None:
    impl = oldmemo.oldmemo
    empty = impl.ContentImpl.make_empty()
    assert isinstance(empty, impl.ContentImpl) and empty.empty and empty.ciphertext == b""
    assert len(empty.initialization_vector) == 12
    content = impl.ContentImpl(ciphertext=b"\x01" * 5, initialization_vector=b"\x02" * 12)
    assert (content.ciphertext, content.initialization_vector) == (b"\x01" * 5, b"\x02" * 12)
    assert not content.empty
    key_material = impl.PlainKeyMaterialImpl(key=b"k" * 16, auth_tag=b"t" * 16)
    assert (key_material.key, key_material.auth_tag) == (b"k" * 16, b"t" * 16)
    assert "k" * 8 not in repr(key_material)


def test_exceptions_used_by_backends() -> None:
    for exception in (omemo.DecryptionFailed, omemo.KeyExchangeFailed, omemo.TooManySkippedMessageKeys):
        assert issubclass(exception, omemo.BackendException)
        assert issubclass(exception, omemo.OMEMOException)
    assert omemo.backend.DecryptionFailed is omemo.DecryptionFailed
    assert not issubclass(omemo.TooManySkippedMessageKeys, omemo.DecryptionFailed)
