"""XML (``xml.etree.ElementTree``) helpers of the ``urn:xmpp:omemo:2`` backend.

Thin adapters between :mod:`omemo_engine.xml_omemo2` (structure, base64, strict and tolerant
parsing) and the python-omemo API objects of :mod:`twomemo.twomemo`. Parsers raise
:class:`omemo_engine.errors.MalformedXML` or :class:`omemo_engine.errors.MalformedMessage` (both
``ValueError`` subclasses) for input they cannot use, naming the element, attribute or field.
"""

from __future__ import annotations

import logging
from typing import Dict, FrozenSet, List, Optional, Tuple, Union
from xml.etree.ElementTree import Element

from omemo.message import EncryptedKeyMaterial, KeyExchange, Message
from omemo.types import SignedLabel
from omemo_engine import xml_omemo2 as codec
from omemo_engine.errors import MalformedXML

from .twomemo import (
    NAMESPACE,
    BundleImpl,
    ContentImpl,
    EncryptedKeyMaterialImpl,
    KeyExchangeImpl,
)

__all__ = [
    "parse_bundle",
    "parse_device_list",
    "parse_message",
    "serialize_bundle",
    "serialize_device_list",
    "serialize_message",
]


_log = logging.getLogger(__name__)


def _log_left_out(problems: List[str]) -> None:
    for problem in problems:
        _log.info("device list: %s", problem)


def serialize_device_list(device_list: Dict[int, Optional[Union[SignedLabel, str]]]) -> Element:
    """Build a ``<devices>`` element.

    Args:
        device_list: device id -> signed label (or ``None``). A plain ``str`` label (python-omemo
            1.0.2 style) is written without a signature, so XEP-0384 0.9 receivers ignore it.

    Returns:
        The element.
    """
    entries: List[codec.DeviceListEntry] = []
    for device_id, label in device_list.items():
        if isinstance(label, SignedLabel):
            entries.append(
                codec.DeviceListEntry(device_id=device_id, label=label.label, label_signature=label.signature)
            )
        else:
            entries.append(codec.DeviceListEntry(device_id=device_id, label=label))
    return codec.build_device_list(entries)


def parse_device_list(element: Element) -> Dict[int, Optional[SignedLabel]]:
    """Parse a ``<devices>`` element.

    A label without a (well-formed) ``labelsig`` is dropped (XEP-0384 0.9: it MUST be ignored); the
    signature itself is verified by the core against the device's identity key.

    Raises:
        MalformedXML: the element is not a valid device list. A ``<device>`` with a missing or invalid
            id is left out (and logged) instead: one bad entry must not hide the other devices.
    """
    problems: List[str] = []
    entries = codec.parse_device_list(element, problems)
    _log_left_out(problems)
    return {
        entry.device_id: (
            SignedLabel(entry.label, entry.label_signature)
            if entry.label is not None and entry.label_signature is not None
            else None
        )
        for entry in entries
    }


def serialize_bundle(bundle: BundleImpl) -> Element:
    """Build a ``<bundle>`` element."""
    return codec.build_bundle(
        codec.Bundle(
            signed_pre_key_id=bundle.signed_pre_key_id,
            signed_pre_key=bundle.signed_pre_key,
            signed_pre_key_signature=bundle.signed_pre_key_signature,
            identity_key=bundle.identity_key,
            pre_keys=tuple(codec.PreKey(pre_key_id=i, pub=pub) for i, pub in bundle.pre_keys.items()),
        )
    )


def parse_bundle(element: Element, bare_jid: str, device_id: int) -> BundleImpl:
    """Parse a ``<bundle>`` element of the device ``device_id`` of ``bare_jid``.

    The signature is not checked here (building a session does that).

    Raises:
        MalformedXML: the element is not a valid bundle.
    """
    parsed = codec.parse_bundle(element)
    return BundleImpl(
        bare_jid,
        device_id,
        parsed.identity_key,
        parsed.signed_pre_key_id,
        parsed.signed_pre_key,
        parsed.signed_pre_key_signature,
        {pk.pre_key_id: pk.pub for pk in parsed.pre_keys},
    )


def serialize_message(message: Message) -> Element:
    """Build an ``<encrypted>`` element from a message produced by this backend."""
    keys: List[codec.EncryptedKey] = []
    for encrypted, kex in message.keys:
        assert isinstance(encrypted, EncryptedKeyMaterialImpl)
        data = encrypted.encrypted_message
        if kex is not None:
            assert isinstance(kex, KeyExchangeImpl)
            data = kex.serialize(data)
        keys.append(
            codec.EncryptedKey(
                bare_jid=encrypted.bare_jid, device_id=encrypted.device_id, data=data, kex=kex is not None
            )
        )
    content = message.content
    assert isinstance(content, ContentImpl)
    return codec.build_message(
        codec.EncryptedMessage(
            sender_device_id=message.device_id,
            keys=tuple(keys),
            payload=None if content.empty else content.ciphertext,
        )
    )


_KEY_EXCHANGE_FIRST_BYTE = b"\x08"


def parse_message(element: Element, bare_jid: str) -> Message:
    """Parse an ``<encrypted>`` element sent by ``bare_jid``.

    A ``<key>`` is a key exchange if its ``kex`` attribute is true, or if its bytes are an
    ``OMEMOKeyExchange`` (QXmpp omits the attribute on all but the first message of a session).

    Raises:
        MalformedXML: the element is not a valid OMEMO 2 message, or a key exchange in it does not
            parse.
    """
    parsed = codec.parse_message(element)
    keys: List[Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]] = []
    for key in parsed.keys:
        # QXmpp (Kaidan) sets kex='true' only on the first message of a session and sends the next
        # ones, still OMEMOKeyExchanges until the session is acknowledged, without it (as Converse does,
        # the bytes decide: an OMEMOKeyExchange starts with field 1, a varint, tag 0x08; an
        # OMEMOAuthenticatedMessage with field 1, bytes, tag 0x0a). docs/real-clients.md.
        if key.kex or key.data[:1] == _KEY_EXCHANGE_FIRST_BYTE:
            try:
                kex, data = KeyExchangeImpl.parse(key.data)
            except ValueError as exc:
                raise MalformedXML(
                    f"<key rid='{key.device_id}'> of <keys jid='{key.bare_jid}'>: invalid key exchange: {exc}"
                ) from None
            keys.append((EncryptedKeyMaterialImpl(key.bare_jid, key.device_id, data), kex))
        else:
            keys.append((EncryptedKeyMaterialImpl(key.bare_jid, key.device_id, key.data), None))
    frozen: FrozenSet[Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]] = frozenset(keys)
    return Message(NAMESPACE, bare_jid, parsed.sender_device_id, ContentImpl(parsed.payload or b""), frozen)
