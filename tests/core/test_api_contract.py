"""The python-omemo 1.0.2 API contract, checked by introspection.

Provenance: the table below was written by hand from ``/work/shared/spec/omemo-api-1.0.2.txt`` (the
1.0.2 documentation): every module, class, base class and documented member, with whether it is async,
abstract, a static/class method or a property, and its parameter names and defaults. Two gaps of that
text were filled from ``PROTOCOL.md`` section 1: the bodies of ``Storage._load/_store/_delete`` and
``load/store/delete`` are missing from the text (only their index entries remain), and
``EncryptionError``'s fields are given there. The 2.x additions (PROTOCOL.md section 1) are checked
separately at the end.

``omemo.session_manager.SessionManager`` is written by another engineer; its rows fail until it lands.

Member spec syntax: ``[abstract] [async] [static|classmethod] name(params)`` for callables,
``[abstract] property name`` for properties and ``attr NAME = <python literal>`` for class attributes.
Params use Python syntax (defaults are evaluated; ``AsyncFramework`` is in scope).
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
from abc import ABC
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Generic, List, Optional, Tuple

import pytest

from omemo.types import AsyncFramework


@dataclass(frozen=True)
class Cls:
    bases: Tuple[str, ...]
    members: Tuple[str, ...] = ()
    #: NamedTuple fields, in order.
    fields: Optional[Tuple[str, ...]] = None
    #: Enum members: name -> value.
    enum_members: Optional[Dict[str, str]] = None
    #: Must be instantiable (no abstract members left).
    concrete: bool = False


BACKEND_ABSTRACT = (
    "abstract property namespace",
    "abstract async load_session(bare_jid, device_id)",
    "abstract async store_session(session)",
    "abstract async build_session_active(bare_jid, device_id, bundle, plain_key_material)",
    "abstract async build_session_passive(bare_jid, device_id, key_exchange, encrypted_key_material)",
    "abstract async encrypt_plaintext(plaintext)",
    "abstract async encrypt_empty()",
    "abstract async encrypt_key_material(session, plain_key_material)",
    "abstract async decrypt_plaintext(content, plain_key_material)",
    "abstract async decrypt_key_material(session, encrypted_key_material)",
    "abstract async signed_pre_key_age()",
    "abstract async rotate_signed_pre_key()",
    "abstract async hide_pre_key(session)",
    "abstract async delete_pre_key(session)",
    "abstract async delete_hidden_pre_keys()",
    "abstract async get_num_visible_pre_keys()",
    "abstract async generate_pre_keys(num_pre_keys)",
    "abstract async get_bundle(bare_jid, device_id)",
    "abstract async purge()",
    "abstract async purge_bare_jid(bare_jid)",
)

IKP_CONCRETE = (
    "property is_seed",
    "property is_priv",
    "as_priv()",
    "property identity_key",
)

MAYBE_CONCRETE = (
    "property is_just",
    "property is_nothing",
    "from_just()",
    "maybe(default)",
    "fmap(function)",
)

SM_EXCEPTIONS = (
    "TrustDecisionFailed",
    "StillUndecided",
    "NoEligibleDevices",
    "MessageNotForUs",
    "SenderNotFound",
    "SenderDistrusted",
    "NoSession",
    "PublicDataInconsistency",
    "UnknownTrustLevel",
    "UnknownNamespace",
    "XMPPInteractionFailed",
)
XMPP_EXCEPTIONS = (
    "BundleUploadFailed",
    "BundleDownloadFailed",
    "BundleNotFound",
    "BundleDeletionFailed",
    "DeviceListUploadFailed",
    "DeviceListDownloadFailed",
    "MessageSendingFailed",
)

CONTRACT: Dict[str, Dict[str, Cls]] = {
    "omemo.backend": {
        "Backend": Cls(
            ("ABC",),
            (
                "__init__(max_num_per_session_skipped_keys=1000, max_num_per_message_skipped_keys=None)",
                "property max_num_per_session_skipped_keys",
                "property max_num_per_message_skipped_keys",
                *BACKEND_ABSTRACT,
            ),
        ),
        "BackendException": Cls(("OMEMOException",)),
        "DecryptionFailed": Cls(("BackendException",)),
        "KeyExchangeFailed": Cls(("BackendException",)),
        "TooManySkippedMessageKeys": Cls(("BackendException",)),
    },
    "omemo.bundle": {
        "Bundle": Cls(
            ("ABC",),
            (
                "abstract property namespace",
                "abstract property bare_jid",
                "abstract property device_id",
                "abstract property identity_key",
                "abstract __eq__(other)",
                "abstract __hash__()",
            ),
        ),
    },
    "omemo.identity_key_pair": {
        "IdentityKeyPair": Cls(
            ("ABC",),
            (
                "attr LOG_TAG = 'omemo.core.identity_key_pair'",
                "async static get(storage)",
                "abstract property is_seed",
                "abstract property is_priv",
                "abstract as_priv()",
                "abstract property identity_key",
            ),
        ),
        "IdentityKeyPairPriv": Cls(
            ("IdentityKeyPair",), ("__init__(priv)", *IKP_CONCRETE, "property priv"), concrete=True
        ),
        "IdentityKeyPairSeed": Cls(
            ("IdentityKeyPair",), ("__init__(seed)", *IKP_CONCRETE, "property seed"), concrete=True
        ),
    },
    "omemo.message": {
        "Content": Cls(("ABC",), ("abstract property empty",)),
        "EncryptedKeyMaterial": Cls(("ABC",), ("abstract property bare_jid", "abstract property device_id")),
        "KeyExchange": Cls(
            ("ABC",), ("abstract property identity_key", "abstract builds_same_session(other)")
        ),
        "Message": Cls(("tuple",), fields=("namespace", "bare_jid", "device_id", "content", "keys")),
        "PlainKeyMaterial": Cls(("ABC",)),
    },
    "omemo.session": {
        "Initiation": Cls(("Enum",), enum_members={"ACTIVE": "ACTIVE", "PASSIVE": "PASSIVE"}),
        "Session": Cls(
            ("ABC",),
            (
                "abstract property namespace",
                "abstract property bare_jid",
                "abstract property device_id",
                "abstract property initiation",
                "abstract property confirmed",
                "abstract property key_exchange",
                "abstract property receiving_chain_length",
                "abstract property sending_chain_length",
            ),
        ),
    },
    "omemo.session_manager": {
        "SessionManagerException": Cls(("OMEMOException",)),
        **{name: Cls(("SessionManagerException",)) for name in SM_EXCEPTIONS if name != "NoEligibleDevices"},
        "NoEligibleDevices": Cls(("SessionManagerException",), ("__init__(bare_jids, *args)",)),
        **{name: Cls(("XMPPInteractionFailed",)) for name in XMPP_EXCEPTIONS},
        "EncryptionError": Cls(("tuple",), fields=("namespace", "bare_jid", "device_id", "exception")),
        "SessionManager": Cls(
            ("ABC",),
            (
                "attr DEVICE_ID_MIN = 1",
                "attr DEVICE_ID_MAX = 2147483647",
                "attr STALENESS_MAGIC_NUMBER = 53",
                "attr LOG_TAG = 'omemo.core'",
                "async classmethod create(backends, storage, own_bare_jid, initial_own_label,"
                " undecided_trust_level_name, signed_pre_key_rotation_period=604800,"
                " pre_key_refill_threshold=99, async_framework=AsyncFramework.ASYNCIO)",
                "async purge_backend(namespace)",
                "async purge_bare_jid(bare_jid)",
                "async ensure_data_consistency()",
                "abstract async static _upload_bundle(bundle)",
                "abstract async static _download_bundle(namespace, bare_jid, device_id)",
                "abstract async static _delete_bundle(namespace, device_id)",
                "abstract async static _upload_device_list(namespace, device_list)",
                "abstract async static _download_device_list(namespace, bare_jid)",
                "abstract async _evaluate_custom_trust_level(device)",
                "abstract async _make_trust_decision(undecided, identifier)",
                "abstract async static _send_message(message, bare_jid)",
                "async update_device_list(namespace, bare_jid, device_list)",
                "async refresh_device_list(namespace, bare_jid)",
                "async set_trust(bare_jid, identity_key, trust_level_name)",
                "async replace_sessions(device)",
                "async get_sending_chain_length(device)",
                "async set_own_label(own_label)",
                "async get_device_information(bare_jid)",
                "async get_own_device_information()",
                "static format_identity_key(identity_key)",
                "before_history_sync()",
                "async after_history_sync()",
                "async encrypt(bare_jids, plaintext, backend_priority_order=None, identifier=None)",
                "async decrypt(message)",
            ),
        ),
    },
    "omemo.storage": {
        "Maybe": Cls(
            ("ABC", "Generic"),
            (
                "abstract property is_just",
                "abstract property is_nothing",
                "abstract from_just()",
                "abstract maybe(default)",
                "abstract fmap(function)",
            ),
        ),
        "Just": Cls(("Maybe",), ("__init__(value)", *MAYBE_CONCRETE), concrete=True),
        "Nothing": Cls(("Maybe",), ("__init__()", *MAYBE_CONCRETE), concrete=True),
        "NothingException": Cls(("Exception",)),
        "Storage": Cls(
            ("ABC",),
            (
                "__init__(disable_cache=False)",
                "abstract async _load(key)",
                "abstract async _store(key, value)",
                "abstract async _delete(key)",
                "async load(key)",
                "async store(key, value)",
                "async delete(key)",
                "async store_bytes(key, value)",
                "async load_primitive(key, primitive)",
                "async load_bytes(key)",
                "async load_optional(key, primitive)",
                "async load_list(key, primitive)",
                "async load_dict(key, primitive)",
            ),
        ),
        "StorageException": Cls(("OMEMOException",)),
    },
    "omemo.types": {
        "AsyncFramework": Cls(("Enum",), enum_members={"ASYNCIO": "ASYNCIO", "TWISTED": "TWISTED"}),
        "DeviceInformation": Cls(
            ("tuple",),
            fields=(
                "namespaces",
                "active",
                "bare_jid",
                "device_id",
                "identity_key",
                "trust_level_name",
                "label",
            ),
        ),
        "OMEMOException": Cls(("Exception",)),
        "TrustLevel": Cls(
            ("Enum",),
            enum_members={"TRUSTED": "TRUSTED", "DISTRUSTED": "DISTRUSTED", "UNDECIDED": "UNDECIDED"},
        ),
    },
}

#: Top-level exports of omemo 1.0.2 (PROTOCOL.md section 1) and the module each comes from.
TOP_LEVEL: Dict[str, str] = {
    **dict.fromkeys(
        ["Backend", "BackendException", "DecryptionFailed", "KeyExchangeFailed", "TooManySkippedMessageKeys"],
        "omemo.backend",
    ),
    "Bundle": "omemo.bundle",
    **dict.fromkeys(["Content", "EncryptedKeyMaterial", "KeyExchange", "Message"], "omemo.message"),
    **dict.fromkeys(
        ["SessionManagerException", *SM_EXCEPTIONS, *XMPP_EXCEPTIONS, "SessionManager"],
        "omemo.session_manager",
    ),
    **dict.fromkeys(
        ["Just", "Maybe", "Nothing", "NothingException", "Storage", "StorageException"], "omemo.storage"
    ),
    **dict.fromkeys(
        ["AsyncFramework", "DeviceInformation", "JSONType", "OMEMOException", "TrustLevel"], "omemo.types"
    ),
    # Added by python-omemo 2.x at the top level.
    "EncryptionError": "omemo.session_manager",
    **dict.fromkeys(["SignedLabel", "DeviceList"], "omemo.types"),
}


# -- spec parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # "method" | "property" | "attr"
    is_async: bool = False
    abstract: bool = False
    static: bool = False
    classmethod: bool = False
    #: (name, default or EMPTY, is_var_positional)
    params: Tuple[Tuple[str, Any, bool], ...] = ()
    value: Any = None


EMPTY = inspect.Parameter.empty


def parse_member(spec: str) -> Member:
    words = spec.split("(", 1)[0].split()
    flags = set(words[:-1])
    if spec.startswith("attr "):
        name, value = spec[len("attr ") :].split(" = ", 1)
        return Member(name, "attr", value=ast.literal_eval(value))
    if "property" in flags:
        return Member(words[-1], "property", abstract="abstract" in flags)
    name = words[-1]
    params_src = spec[spec.index("(") + 1 : spec.rindex(")")]
    fn = ast.parse(f"def f({params_src}): pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    args = fn.args
    defaults: List[Any] = [EMPTY] * (len(args.args) - len(args.defaults)) + [
        eval(compile(ast.Expression(d), "<spec>", "eval"), {"AsyncFramework": AsyncFramework})
        for d in args.defaults
    ]
    params = tuple((a.arg, d, False) for a, d in zip(args.args, defaults, strict=True))
    if args.vararg is not None:
        params += ((args.vararg.arg, EMPTY, True),)
    return Member(
        name,
        "method",
        is_async="async" in flags,
        abstract="abstract" in flags,
        static="static" in flags,
        classmethod="classmethod" in flags,
        params=params,
    )


def _rows() -> List[Tuple[str, str, str]]:
    return [
        (module, cls_name, spec)
        for module, classes in CONTRACT.items()
        for cls_name, cls in classes.items()
        for spec in cls.members
    ]


def _get_class(module: str, name: str) -> type:
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{module}.{name} is missing"
    obj = getattr(mod, name)
    assert isinstance(obj, type), f"{module}.{name} is not a class"
    return obj


_BASE_NAMES: Dict[str, Any] = {"ABC": ABC, "Generic": Generic, "Enum": enum.Enum, "tuple": tuple}


def _resolve_base(module: str, name: str) -> Any:
    if name in _BASE_NAMES:
        return _BASE_NAMES[name]
    if name == "Exception":
        return Exception
    for mod_name in (module, "omemo.types", "omemo.backend", "omemo.session_manager", "omemo.storage"):
        mod = importlib.import_module(mod_name)
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AssertionError(f"unknown base {name}")


# -- tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"), [(m, c) for m, classes in CONTRACT.items() for c in classes], ids="{}".format
)
def test_class_and_bases(module: str, name: str) -> None:
    spec = CONTRACT[module][name]
    cls = _get_class(module, name)
    for base_name in spec.bases:
        base = _resolve_base(module, base_name)
        assert base in cls.__bases__, f"{module}.{name} bases {cls.__bases__}, expected {base_name}"
    if spec.fields is not None:
        assert getattr(cls, "_fields", None) == spec.fields
    if spec.enum_members is not None:
        assert issubclass(cls, enum.Enum)
        assert {m.name: m.value for m in cls} == spec.enum_members
    if spec.concrete:
        assert not inspect.isabstract(cls), f"{name} is still abstract"
    if "ABC" in spec.bases:
        expected_abstract = {parse_member(m).name for m in spec.members if parse_member(m).abstract}
        actual: FrozenSet[str] = getattr(cls, "__abstractmethods__", frozenset())
        # No extra abstract members: a subclass written against the contract must be instantiable.
        assert set(actual) == expected_abstract


@pytest.mark.parametrize(("module", "name", "spec"), _rows(), ids=lambda v: str(v)[:60])
def test_member(module: str, name: str, spec: str) -> None:
    cls = _get_class(module, name)
    member = parse_member(spec)
    try:
        raw = inspect.getattr_static(cls, member.name)
    except AttributeError:
        pytest.fail(f"{module}.{name}.{member.name} is missing")
    abstract_set: FrozenSet[str] = getattr(cls, "__abstractmethods__", frozenset())

    if member.kind == "attr":
        assert getattr(cls, member.name) == member.value
        return

    if member.kind == "property":
        assert isinstance(raw, property), f"{name}.{member.name} is not a property"
        assert (member.name in abstract_set) == member.abstract
        return

    if member.static:
        assert isinstance(raw, staticmethod), f"{name}.{member.name} is not a staticmethod"
        func = raw.__func__
    elif member.classmethod:
        assert isinstance(raw, classmethod), f"{name}.{member.name} is not a classmethod"
        func = raw.__func__
    else:
        assert inspect.isfunction(raw), f"{name}.{member.name} is not a plain method"
        func = raw
    assert inspect.iscoroutinefunction(func) == member.is_async, f"{name}.{member.name}: async mismatch"
    if member.name not in ("__eq__", "__hash__") or member.abstract:
        assert (member.name in abstract_set) == member.abstract, f"{name}.{member.name}: abstract mismatch"

    params = list(inspect.signature(func).parameters.values())
    if not member.static:
        params = params[1:]  # self / cls
    actual = tuple(
        (
            p.name,
            p.default,
            p.kind is inspect.Parameter.VAR_POSITIONAL,
        )
        for p in params
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    )
    assert actual == member.params, f"{name}.{member.name}: signature {actual} != {member.params}"


def test_top_level_exports() -> None:
    omemo = importlib.import_module("omemo")
    for name, module in TOP_LEVEL.items():
        assert hasattr(omemo, name), f"omemo.{name} is missing"
        assert getattr(omemo, name) is getattr(importlib.import_module(module), name)
        assert name in omemo.__all__
    assert set(omemo.__all__) == {*TOP_LEVEL, "__version__", "project"}
    # Nothing else public leaks into the namespace (e.g. ``annotations`` of a __future__ import):
    # only the exported names and the submodules.
    leaked = {
        name
        for name in dir(omemo)
        if not name.startswith("_")
        and name not in omemo.__all__
        and not inspect.ismodule(getattr(omemo, name))
    }
    assert leaked == set()
    # The 1.0.2 shapes of the metadata.
    assert set(omemo.__version__) == {"short", "tag", "full"}
    assert omemo.__version__["full"] == f"{omemo.__version__['short']}-{omemo.__version__['tag']}"
    assert importlib.import_module("omemo.version").__version__ is omemo.__version__
    assert isinstance(omemo.project, dict) and "name" in omemo.project


def test_exception_roots() -> None:
    types = importlib.import_module("omemo.types")
    storage = importlib.import_module("omemo.storage")
    for module, classes in CONTRACT.items():
        mod = importlib.import_module(module)
        for name in classes:
            obj = getattr(mod, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                if obj is storage.NothingException:
                    assert not issubclass(obj, types.OMEMOException)
                else:
                    assert issubclass(obj, types.OMEMOException), name


def test_no_eligible_devices_keeps_bare_jids() -> None:
    sm = importlib.import_module("omemo.session_manager")
    exc = sm.NoEligibleDevices(frozenset({"a@example.org"}), "message")
    assert exc.bare_jids == frozenset({"a@example.org"})


def test_encryption_error_fields() -> None:
    sm = importlib.import_module("omemo.session_manager")
    err = sm.EncryptionError("urn:xmpp:omemo:2", "a@example.org", 1, ValueError("x"))
    assert err.namespace == "urn:xmpp:omemo:2" and err.device_id == 1


# -- 2.x additions (PROTOCOL.md section 1) -----------------------------------------------------------------


ADDITIONS: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("omemo.backend", "Backend"): (
        "property supports_labels",  # NOT abstract: 1.0.2-era backends must still instantiate
        "async sign_own_label(label)",
        "async verify_label_signature(label, signature, identity_key)",
    ),
    ("omemo.session_manager", "SessionManager"): (
        "async refresh_device_lists(bare_jid)",  # 1.1.0
        "async shutdown()",  # 1.3.0
        "async clear_device_lists()",  # 2.1.0
    ),
}


@pytest.mark.parametrize(
    ("module", "name", "spec"),
    [(m, c, s) for (m, c), specs in ADDITIONS.items() for s in specs],
    ids=lambda v: str(v)[:60],
)
def test_post_102_additions(module: str, name: str, spec: str) -> None:
    test_member(module, name, spec)


def test_signed_label_types() -> None:
    types = importlib.import_module("omemo.types")
    assert types.SignedLabel._fields == ("label", "signature")
    assert types.SignedLabel("phone", b"sig") == ("phone", b"sig")
    assert hasattr(types, "DeviceList")
