"""XML (``xml.etree.ElementTree``) helpers of the ``eu.siacs.conversations.axolotl`` backend.

Thin adapters between :mod:`omemo_engine.xml_legacy` (structure, base64, strict and tolerant
parsing) and the python-omemo API objects of :mod:`oldmemo.oldmemo`, plus the legacy identity-key
sign-bit handling (PROTOCOL.md 4.5): a bundle carries the Curve25519 identity key and the Ed25519
sign bit in the top bit of the signed pre key's signature; a key exchange carries only the
Curve25519 key, so :func:`parse_message` takes the sign bit from the sender's identity key known to
the session manager.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, FrozenSet, List, Optional, Tuple, Union
from xml.etree.ElementTree import Element

from omemo.message import EncryptedKeyMaterial, KeyExchange, Message
from omemo.types import SignedLabel
from omemo_engine import xeddsa
from omemo_engine import xml_legacy as codec
from omemo_engine.errors import InvalidKey, MalformedXML

from .oldmemo import (
    NAMESPACE,
    BundleImpl,
    ContentImpl,
    EncryptedKeyMaterialImpl,
    KeyExchangeImpl,
)

if TYPE_CHECKING:
    from omemo.session_manager import SessionManager

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
    """Build a ``<list>`` element. Legacy device lists have no labels: labels are dropped."""
    return codec.build_device_list(device_list)


def parse_device_list(element: Element) -> Dict[int, Optional[SignedLabel]]:
    """Parse a ``<list>`` element (every label is ``None``).

    Raises:
        MalformedXML: the element is not a valid device list. A ``<device>`` with a missing or invalid
            id is left out (and logged) instead: one bad entry must not hide the other devices.
    """
    problems: List[str] = []
    device_ids = codec.parse_device_list(element, problems)
    _log_left_out(problems)
    return dict.fromkeys(device_ids)


def serialize_bundle(bundle: BundleImpl) -> Element:
    """Build a ``<bundle>`` element (identity key in Curve25519 form, sign bit in the signature)."""
    identity_curve = bundle.engine_bundle.identity_key_curve or xeddsa.ed25519_pub_to_curve25519_pub(
        bundle.identity_key
    )
    return codec.build_bundle(
        codec.Bundle(
            signed_pre_key_id=bundle.signed_pre_key_id,
            signed_pre_key=bundle.signed_pre_key,
            signed_pre_key_signature=xeddsa.embed_sign_bit(
                bundle.signed_pre_key_signature, bundle.identity_key
            ),
            identity_key=identity_curve,
            pre_keys=tuple(codec.PreKey(pre_key_id=i, pub=pub) for i, pub in bundle.pre_keys.items()),
        )
    )


def parse_bundle(element: Element, bare_jid: str, device_id: int) -> BundleImpl:
    """Parse a ``<bundle>`` element of the device ``device_id`` of ``bare_jid``.

    The Ed25519 identity key is rebuilt from the Curve25519 key and the sign bit in the last byte of
    the signature, and that bit is cleared before the signature is used. This reads bundles of
    libsignal clients (natural sign bit there) and of strict XEdDSA clients (sign bit 0) alike.

    Raises:
        MalformedXML: the element is not a valid bundle.
    """
    parsed = codec.parse_bundle(element)
    signature, sign_bit = xeddsa.extract_sign_bit(parsed.signed_pre_key_signature)
    try:
        identity_key = xeddsa.curve25519_pub_to_ed25519_pub(parsed.identity_key, sign_bit)
    except InvalidKey as exc:
        raise MalformedXML(f"<bundle>/<identityKey>: {exc}") from None
    return BundleImpl(
        bare_jid,
        device_id,
        identity_key,
        parsed.signed_pre_key_id,
        parsed.signed_pre_key,
        signature,
        {pk.pre_key_id: pk.pub for pk in parsed.pre_keys},
        identity_key_curve=parsed.identity_key,
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
        keys.append(codec.EncryptedKey(device_id=encrypted.device_id, data=data, kex=kex is not None))
    content = message.content
    assert isinstance(content, ContentImpl)
    return codec.build_message(
        codec.EncryptedMessage(
            sender_device_id=message.device_id,
            keys=tuple(keys),
            iv=content.initialization_vector,
            payload=None if content.empty else content.ciphertext,
        )
    )


async def parse_message(
    element: Element, sender_bare_jid: str, own_bare_jid: str, session_manager: SessionManager
) -> Message:
    """Parse an ``<encrypted>`` element sent by ``sender_bare_jid``.

    Legacy headers do not name the recipients' JIDs: every key is attributed to ``own_bare_jid``. If
    the message contains a key exchange, the sign bit of the sender's identity key is looked up
    through ``session_manager`` (refreshing the sender's device list once if the device is unknown).

    Raises:
        MalformedXML: the element is not a valid legacy message, or a key exchange in it does not parse.
        omemo.session_manager.SenderNotFound: the message contains a key exchange and the sending
            device is not known even after a device-list refresh.
    """
    parsed = codec.parse_message(element)
    sign_bit: Optional[bool] = None
    keys: List[Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]] = []
    for key in parsed.keys:
        if key.kex:
            if sign_bit is None:
                sign_bit = await _sender_sign_bit(session_manager, sender_bare_jid, parsed.sender_device_id)
            try:
                kex, data = KeyExchangeImpl.parse(key.data, sign_bit)
            except ValueError as exc:
                raise MalformedXML(f"<key rid='{key.device_id}'>: invalid key exchange: {exc}") from None
            keys.append((EncryptedKeyMaterialImpl(own_bare_jid, key.device_id, data), kex))
        else:
            keys.append((EncryptedKeyMaterialImpl(own_bare_jid, key.device_id, key.data), None))
    content = ContentImpl(parsed.payload or b"", parsed.iv or b"")
    if parsed.payload is None or parsed.iv is None:
        content = ContentImpl(b"", parsed.iv or b"")
    frozen: FrozenSet[Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]] = frozenset(keys)
    return Message(NAMESPACE, sender_bare_jid, parsed.sender_device_id, content, frozen)


async def _sender_sign_bit(session_manager: SessionManager, bare_jid: str, device_id: int) -> bool:
    from omemo.session_manager import SenderNotFound

    for refresh in (False, True):
        if refresh:
            await session_manager.refresh_device_list(NAMESPACE, bare_jid)
        for info in await session_manager.get_device_information(bare_jid):
            if info.device_id == device_id:
                return xeddsa.ed25519_pub_sign_bit(info.identity_key)
    raise SenderNotFound(
        f"device {device_id} of {bare_jid} ({NAMESPACE}) sent a key exchange but is not in its device "
        "list (even after a refresh), so its identity key is unknown"
    )
