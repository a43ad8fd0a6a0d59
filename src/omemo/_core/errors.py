"""The exception tree of :mod:`omemo.session_manager` (re-exported there; documented there).

The classes live in this private module so that the private helper modules of the session manager can
raise them without importing :mod:`omemo.session_manager` (which imports the helpers). Their
``__module__`` is set to the public module, so reprs, tracebacks and pickling show the documented
location.

Every exception the session manager raises carries an actionable message that names the bare JID, the
device id and the namespace involved where they are known, and never contains key material or
plaintext.
"""

from __future__ import annotations

from typing import FrozenSet, NamedTuple

from ..types import OMEMOException

__all__ = [
    "BundleDeletionFailed",
    "BundleDownloadFailed",
    "BundleNotFound",
    "BundleRejected",
    "BundleUploadFailed",
    "DeviceListDownloadFailed",
    "DeviceListUploadFailed",
    "EncryptionError",
    "MessageNotForUs",
    "MessageSendingFailed",
    "NoEligibleDevices",
    "NoSession",
    "PublicDataInconsistency",
    "SenderDistrusted",
    "SenderNotFound",
    "SessionManagerException",
    "StillUndecided",
    "TrustDecisionFailed",
    "UnknownNamespace",
    "UnknownTrustLevel",
    "XMPPInteractionFailed",
]

_PUBLIC_MODULE = "omemo.session_manager"


class SessionManagerException(OMEMOException):
    """Parent type of every exception specific to :class:`~omemo.session_manager.SessionManager`."""


class TrustDecisionFailed(SessionManagerException):
    """Raised by ``SessionManager._make_trust_decision`` when the queried decision failed.

    Indirectly raised by :meth:`~omemo.session_manager.SessionManager.encrypt`.
    """


class StillUndecided(SessionManagerException):
    """Raised by ``encrypt`` when devices are still undecided after ``_make_trust_decision`` returned."""


class NoEligibleDevices(SessionManagerException):
    """Raised by ``encrypt`` when some recipient has no device that qualifies for encryption.

    Reasons include distrust, bundle download failures, failed key exchanges and recipients that do not
    advertise any OMEMO device.
    """

    def __init__(self, bare_jids: FrozenSet[str], *args: object) -> None:
        """Create the exception.

        Args:
            bare_jids: the bare JIDs none of whose devices were eligible; available as ``bare_jids``.
            *args: the usual exception arguments (the message). A message naming the JIDs is generated
                when none is given.
        """
        if not args:
            args = (f"no device eligible for encryption for: {', '.join(sorted(bare_jids))}",)
        super().__init__(*args)
        self.bare_jids = bare_jids


class MessageNotForUs(SessionManagerException):
    """Raised by ``decrypt`` when the message carries no key material for this device."""


class SenderNotFound(SessionManagerException):
    """Raised by ``decrypt`` when the public information of the sending device could not be obtained."""


class SenderDistrusted(SessionManagerException):
    """Raised by ``decrypt`` when the identity key of the sending device is explicitly distrusted."""


class NoSession(SessionManagerException):
    """Raised by ``decrypt`` when there is no session with the sender and the message builds none."""


class PublicDataInconsistency(SessionManagerException):
    """Raised when the public data of a device contradicts itself (e.g. two different identity keys)."""


class UnknownTrustLevel(SessionManagerException):
    """Raised by ``_evaluate_custom_trust_level`` for an unknown custom trust level name.

    Indirectly raised by the encryption and decryption flows.
    """


class UnknownNamespace(SessionManagerException):
    """Raised when the namespace of an operation is unknown or its backend is not currently loaded."""


class XMPPInteractionFailed(SessionManagerException):
    """Parent type of every exception related to network/XMPP interactions."""


class BundleUploadFailed(XMPPInteractionFailed):
    """Raised by ``_upload_bundle``, and indirectly by various methods of the session manager."""


class BundleDownloadFailed(XMPPInteractionFailed):
    """Raised by ``_download_bundle`` on a technical failure, and indirectly by various methods."""


class BundleRejected(BundleDownloadFailed):
    """A bundle was downloaded but cannot be used: it does not parse (a field out of range, a key of the
    wrong length...), or it is not the bundle of the device it was asked for.

    Raised by :meth:`~omemo.session_manager.SessionManager.get_device_information`'s downloads (and so
    reported by ``encrypt`` as an :class:`EncryptionError`) in place of the parser's ``ValueError`` that
    ``_download_bundle`` let through. The message names the namespace, the account, the device, and
    the field and reason the parser gave. An XMPP layer may raise it itself from ``_download_bundle``.
    A subclass of :class:`BundleDownloadFailed`, so code written against python-omemo catches it.
    """


class BundleNotFound(XMPPInteractionFailed):
    """Raised by ``_download_bundle`` when the bundle does not exist, and indirectly by various methods."""


class BundleDeletionFailed(XMPPInteractionFailed):
    """Raised by ``_delete_bundle``, and indirectly by ``purge_backend``."""


class DeviceListUploadFailed(XMPPInteractionFailed):
    """Raised by ``_upload_device_list``, and indirectly by various methods of the session manager."""


class DeviceListDownloadFailed(XMPPInteractionFailed):
    """Raised by ``_download_device_list``, and indirectly by various methods of the session manager."""


class MessageSendingFailed(XMPPInteractionFailed):
    """Raised by ``_send_message``, and indirectly by various methods of the session manager."""


class EncryptionError(NamedTuple):
    """A non-critical error that made ``encrypt`` skip one recipient device.

    Returned (never raised) by :meth:`~omemo.session_manager.SessionManager.encrypt` next to the messages,
    so that callers can tell the user which device could not be reached and why.
    """

    #: The namespace of the backend that was to be used for the device.
    namespace: str
    #: The bare JID of the skipped device.
    bare_jid: str
    #: The id of the skipped device.
    device_id: int
    #: Why the device was skipped, e.g. ``BundleNotFound`` or ``KeyExchangeFailed``.
    exception: Exception


for _cls in (
    SessionManagerException,
    TrustDecisionFailed,
    StillUndecided,
    NoEligibleDevices,
    MessageNotForUs,
    SenderNotFound,
    SenderDistrusted,
    NoSession,
    PublicDataInconsistency,
    UnknownTrustLevel,
    UnknownNamespace,
    XMPPInteractionFailed,
    BundleUploadFailed,
    BundleDownloadFailed,
    BundleRejected,
    BundleNotFound,
    BundleDeletionFailed,
    DeviceListUploadFailed,
    DeviceListDownloadFailed,
    MessageSendingFailed,
    EncryptionError,
):
    _cls.__module__ = _PUBLIC_MODULE
del _cls
