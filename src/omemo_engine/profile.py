"""Per-namespace profiles: every constant in which the two OMEMO namespaces differ.

One X3DH and one Double Ratchet implementation serve both namespaces; a :class:`Profile` supplies
the HKDF info strings, the public-key encodings fed to signatures and to the associated data, the
order of the associated data in the MAC, and the wire codec (PROTOCOL.md sections 3 and 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import LEGACY_WIRE, OMEMO2_WIRE, WireFormat

__all__ = ["LEGACY", "OMEMO2", "Profile"]

_CURVE_TYPE = b"\x05"


@dataclass(frozen=True, slots=True)
class Profile:
    """The namespace-specific parameters of the shared engine.

    Attributes:
        name: a short name for messages and logs.
        x3dh_info: HKDF info of the X3DH shared secret.
        root_info: HKDF info of the root-chain KDF.
        message_key_info: HKDF info that expands a message key into AES key, HMAC key and IV.
        wire: the codec of ratchet messages and key exchanges.
        legacy_keys: True for the legacy namespace: public keys are signed and put into the
            associated data as ``0x05 || Curve25519``, and the MAC's associated data is always
            ``sender || recipient`` (libsignal), instead of ``initiator || responder``.
    """

    name: str
    x3dh_info: bytes
    root_info: bytes
    message_key_info: bytes
    wire: WireFormat
    legacy_keys: bool

    def encode_signed_pre_key(self, public_key: bytes) -> bytes:
        """The byte string the signed pre key's signature covers."""
        return _CURVE_TYPE + public_key if self.legacy_keys else public_key

    def encode_identity_key(self, ed25519_pub: bytes, curve25519_pub: bytes) -> bytes:
        """An identity key as it enters the associated data."""
        return _CURVE_TYPE + curve25519_pub if self.legacy_keys else ed25519_pub

    def mac_associated_data(self, ad: bytes, sender_is_initiator: bool) -> bytes:
        """The associated data fed to a message MAC.

        ``ad`` is the session's stored associated data (initiator's key first). The legacy protocol
        puts the sender's key first in the MAC input, so the responder swaps the halves.
        """
        if not self.legacy_keys or sender_is_initiator:
            return ad
        half = len(ad) // 2
        return ad[half:] + ad[:half]


#: ``urn:xmpp:omemo:2`` (XEP-0384 0.8+).
OMEMO2 = Profile(
    name="urn:xmpp:omemo:2",
    x3dh_info=b"OMEMO X3DH",
    root_info=b"OMEMO Root Chain",
    message_key_info=b"OMEMO Message Key Material",
    wire=OMEMO2_WIRE,
    legacy_keys=False,
)

#: ``eu.siacs.conversations.axolotl`` (XEP-0384 0.3, libsignal v3).
LEGACY = Profile(
    name="eu.siacs.conversations.axolotl",
    x3dh_info=b"WhisperText",
    root_info=b"WhisperRatchet",
    message_key_info=b"WhisperMessageKeys",
    wire=LEGACY_WIRE,
    legacy_keys=True,
)
