"""Small shared types of the public API: enums, value tuples, the JSON alias and the root exception.

Everything here is part of the python-omemo 1.0.2 contract (``omemo.types``), plus two 2.x additions
for signed device labels (XEP-0384 0.9: :class:`SignedLabel` and :data:`DeviceList`).
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Tuple, Union

from typing_extensions import TypeAlias

__all__ = [
    "AsyncFramework",
    "DeviceInformation",
    "DeviceList",
    "JSONType",
    "OMEMOException",
    "SignedLabel",
    "TrustLevel",
]


@enum.unique
class AsyncFramework(enum.Enum):
    """The asynchronous frameworks the library knows how to spawn background work with."""

    ASYNCIO = "ASYNCIO"
    TWISTED = "TWISTED"


class DeviceInformation(NamedTuple):
    """What the library knows about one OMEMO device.

    Attributes:
        namespaces: the namespaces (backends) under which this device is known.
        active: per namespace, whether the device is currently listed in that namespace's device list,
            as a frozenset of ``(namespace, active)`` pairs.
        bare_jid: the bare JID of the account the device belongs to.
        device_id: the device id.
        identity_key: the device's identity key (32-byte Ed25519 public key).
        trust_level_name: the custom trust level assigned to the identity key.
        label: the optional device label.
    """

    namespaces: FrozenSet[str]
    active: FrozenSet[Tuple[str, bool]]
    bare_jid: str
    device_id: int
    identity_key: bytes
    trust_level_name: str
    label: Optional[str]


class OMEMOException(Exception):
    """Root of every exception defined by this library (except :class:`omemo.storage.NothingException`)."""


@enum.unique
class TrustLevel(enum.Enum):
    """The core trust levels that custom trust levels are evaluated to."""

    TRUSTED = "TRUSTED"
    DISTRUSTED = "DISTRUSTED"
    UNDECIDED = "UNDECIDED"


# A JSON-serialisable value. 1.0.2 spelled this as a non-recursive union nested a few levels deep; the
# recursive form (as in 1.3+) accepts every value the old one did.
JSONType: TypeAlias = Union[Mapping[str, "JSONType"], List["JSONType"], str, int, float, bool, None]


class SignedLabel(NamedTuple):
    """A device label together with its signature by the device's identity key (2.x addition).

    Attributes:
        label: the label text.
        signature: the signature over the UTF-8 encoded label, as produced by
            :meth:`omemo.backend.Backend.sign_own_label`.
    """

    label: str
    signature: bytes


#: A device list as exchanged with the XMPP hooks in 2.x: device id -> optional signed label.
DeviceList: TypeAlias = Dict[int, Optional[SignedLabel]]
