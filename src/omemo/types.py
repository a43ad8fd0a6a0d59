"""Small shared types of the public API: enums, value tuples, the JSON alias and the root exception.

Everything here is part of the python-omemo 1.0.2 contract (``omemo.types``), plus two 2.x additions
for signed device labels (XEP-0384 0.9: :class:`SignedLabel` and :data:`DeviceList`).
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, Mapping, NamedTuple, Optional, Sequence, Tuple, TypeAlias, Union

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


# A JSON-serialisable value. 1.0.2 used a loose non-recursive union, 1.3 the recursive
# ``Union[Mapping[str, JSONType], List[JSONType], ...]``. We use the recursive form with ``Sequence`` in
# place of ``List``: ``List`` is invariant, so under the 1.3 spelling ``storage.store(key, [1, 2])``
# with a ``list[int]`` variable does not type-check, while everything the 1.3 alias accepts is still
# accepted here. (Tuples are stored as lists, as JSON does. The price: ``bytes`` is a ``Sequence[int]``
# and so type-checks; ``Storage.store`` rejects it at run time, pointing to ``store_bytes``.)
JSONType: TypeAlias = Union[Mapping[str, "JSONType"], Sequence["JSONType"], str, int, float, bool, None]


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
