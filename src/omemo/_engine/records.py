"""The stored records of the engine backend that more than one module reads: the device's own key
state and the id constants.

The backend (:mod:`.backend`) writes and reads them; the importers of other stacks' data
(:mod:`.reference_import`, :mod:`.legacy_convert`) produce them. Stored format: the key state is one
JSON record, version 2 (version 1 still loads).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from omemo_engine.errors import InvalidState

__all__ = ["MAX_ID", "MAX_KEY_ID", "UNKNOWN_SPK_ID", "KeyState", "SignedPreKey"]

#: Largest id of the pre keys and signed pre keys we generate (1 .. 2^31 - 1, like device ids, so
#: that clients storing ids in a signed 32-bit integer read ours). Other devices' ids may be anything
#: in 0 .. 2^32 - 1 (protobuf uint32; Converse starts at 0): :data:`MAX_KEY_ID`.
MAX_ID = 2**31 - 1
#: Largest pre key / signed pre key id of another device (protobuf uint32).
MAX_KEY_ID = 2**32 - 1
#: A signed pre key id of migrated legacy sessions whose original id is unknown.
UNKNOWN_SPK_ID = -1

#: Key state records: version 1 kept every pre key as two base64 strings; version 2 packs the
#: pre keys into one base64 blob of fixed-size entries (ten times faster to load). Both are read.
_KEY_STATE_VERSION = 2
_PRE_KEY_ENTRY = struct.Struct(">I32s32s")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidState("key state record holds a non-string where base64 was expected")
    return base64.b64decode(value, validate=True)


# -- the device's own key state ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    """A signed pre key: id, private key, public key, plain Ed25519 signature, creation time."""

    key_id: int
    priv: bytes = field(repr=False)
    pub: bytes
    signature: bytes
    timestamp: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "priv": _b64(self.priv),
            "pub": _b64(self.pub),
            "sig": _b64(self.signature),
            "time": self.timestamp,
        }

    @classmethod
    def from_json(cls, data: Any) -> SignedPreKey:
        return cls(data["id"], _unb64(data["priv"]), _unb64(data["pub"]), _unb64(data["sig"]), data["time"])


@dataclass(frozen=True, slots=True)
class KeyState:
    """The device's own keys in one namespace. Immutable; changes produce a new record.

    Attributes:
        signed_pre_key: the current signed pre key.
        old_signed_pre_key: the previous one, kept one rotation period for late key exchanges.
        pre_keys: visible one-time pre keys: id -> (private, public).
        hidden_pre_keys: used but still usable pre keys (history synchronisation): id -> (priv, pub).
        next_pre_key_id: the next unused pre-key id (ids are never reused).
    """

    signed_pre_key: SignedPreKey
    old_signed_pre_key: Optional[SignedPreKey]
    pre_keys: Mapping[int, tuple[bytes, bytes]] = field(repr=False)
    hidden_pre_keys: Mapping[int, tuple[bytes, bytes]] = field(repr=False)
    next_pre_key_id: int

    def to_json(self) -> dict[str, Any]:
        def keys(mapping: Mapping[int, tuple[bytes, bytes]]) -> str:
            return _b64(b"".join(_PRE_KEY_ENTRY.pack(k, priv, pub) for k, (priv, pub) in mapping.items()))

        return {
            "version": _KEY_STATE_VERSION,
            "spk": self.signed_pre_key.to_json(),
            "old_spk": None if self.old_signed_pre_key is None else self.old_signed_pre_key.to_json(),
            "pre_keys": keys(self.pre_keys),
            "hidden": keys(self.hidden_pre_keys),
            "next_pre_key_id": self.next_pre_key_id,
        }

    @staticmethod
    def count_visible_pre_keys(data: Any) -> Optional[int]:
        """The number of visible pre keys of a record written by :meth:`to_json`, without decoding it.

        Only the length of the packed pre keys of a version-2 record is looked at (no base64 decoding,
        the costly part of :meth:`from_json`), so that a start can decide whether to refill the pre
        keys without decoding the key state. A record with repeated pre key ids (never written by this
        library) counts every entry.

        Returns:
            The number of visible pre keys, or ``None`` for a version-1 record (use :meth:`from_json`).

        Raises:
            InvalidState: the record is of an unknown version, or its pre keys are not a base64 string of
                whole entries. Other damage (a corrupt signed pre key, base64 with characters outside
                the alphabet...) passes here and raises ``InvalidState`` in :meth:`from_json`.
        """
        try:
            version = data.get("version")
            if version == 1:
                return None
            if version != _KEY_STATE_VERSION:
                raise InvalidState(f"unknown key state version {version!r}")
            text = data["pre_keys"]
            if not isinstance(text, str):
                raise InvalidState("key state record holds a non-string where base64 was expected")
            size = len(text) // 4 * 3 - text.endswith("=") - text.endswith("==")
            if len(text) % 4 or size % _PRE_KEY_ENTRY.size:
                raise ValueError("pre key blob has a partial entry")
            return size // _PRE_KEY_ENTRY.size
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InvalidState):
                raise
            raise InvalidState(f"the stored key state is corrupt ({exc.__class__.__name__})") from None

    @classmethod
    def from_json(cls, data: Any) -> KeyState:
        """Load a record written by :meth:`to_json`.

        Raises:
            InvalidState: the record is corrupt or of an unknown version.
        """
        try:
            version = data.get("version")
            if version == 1:

                def keys(mapping: Any) -> dict[int, tuple[bytes, bytes]]:
                    return {int(k): (_unb64(v[0]), _unb64(v[1])) for k, v in mapping.items()}

            elif version == _KEY_STATE_VERSION:

                def keys(mapping: Any) -> dict[int, tuple[bytes, bytes]]:
                    blob = _unb64(mapping)
                    if len(blob) % _PRE_KEY_ENTRY.size:
                        raise ValueError("pre key blob has a partial entry")
                    return {k: (priv, pub) for k, priv, pub in _PRE_KEY_ENTRY.iter_unpack(blob)}

            else:
                raise InvalidState(f"unknown key state version {version!r}")

            old = data["old_spk"]
            return cls(
                SignedPreKey.from_json(data["spk"]),
                None if old is None else SignedPreKey.from_json(old),
                keys(data["pre_keys"]),
                keys(data["hidden"]),
                int(data["next_pre_key_id"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise InvalidState(f"the stored key state is corrupt ({exc.__class__.__name__})") from None
