"""omemo: the python-omemo 1.0.2 public API (XEP-0384 core library), with compatible 2.x additions.

The top-level names are those python-omemo 1.0.2 exported (PROTOCOL.md section 1) plus the three the
2.x package added, ``EncryptionError``, ``SignedLabel`` and ``DeviceList`` (the same objects as in
``omemo.session_manager`` and ``omemo.types``). Other documented names live in their modules:
``omemo.message.PlainKeyMaterial``, ``omemo.session``, ``omemo.identity_key_pair``. Ready storages are
in ``omemo.storages`` (imported on demand, so that importing ``omemo`` does not import ``sqlite3``).

Version: ``__version__`` keeps the 1.0.2 shape, a dict ``{"short", "tag", "full"}`` (1.3 made it a
string), and ``project`` (removed in 1.3) is the 1.0.2-style metadata dict. Both describe this
project, not the reference package. Same objects as ``omemo.version.__version__`` and
``omemo.project.project``.
"""

from .backend import Backend, BackendException, DecryptionFailed, KeyExchangeFailed, TooManySkippedMessageKeys
from .bundle import Bundle
from .message import Content, EncryptedKeyMaterial, KeyExchange, Message
from .project import project
from .session_manager import (
    BundleDeletionFailed,
    BundleDownloadFailed,
    BundleNotFound,
    BundleUploadFailed,
    DeviceListDownloadFailed,
    DeviceListUploadFailed,
    EncryptionError,
    MessageNotForUs,
    MessageSendingFailed,
    NoEligibleDevices,
    NoSession,
    PublicDataInconsistency,
    SenderDistrusted,
    SenderNotFound,
    SessionManager,
    SessionManagerException,
    StillUndecided,
    TrustDecisionFailed,
    UnknownNamespace,
    UnknownTrustLevel,
    XMPPInteractionFailed,
)
from .storage import Just, Maybe, Nothing, NothingException, Storage, StorageException
from .types import (
    AsyncFramework,
    DeviceInformation,
    DeviceList,
    JSONType,
    OMEMOException,
    SignedLabel,
    TrustLevel,
)
from .version import __version__

__all__ = [
    "AsyncFramework",
    "Backend",
    "BackendException",
    "Bundle",
    "BundleDeletionFailed",
    "BundleDownloadFailed",
    "BundleNotFound",
    "BundleUploadFailed",
    "Content",
    "DecryptionFailed",
    "DeviceInformation",
    "DeviceList",
    "DeviceListDownloadFailed",
    "DeviceListUploadFailed",
    "EncryptedKeyMaterial",
    "EncryptionError",
    "JSONType",
    "Just",
    "KeyExchange",
    "KeyExchangeFailed",
    "Maybe",
    "Message",
    "MessageNotForUs",
    "MessageSendingFailed",
    "NoEligibleDevices",
    "NoSession",
    "Nothing",
    "NothingException",
    "OMEMOException",
    "PublicDataInconsistency",
    "SenderDistrusted",
    "SenderNotFound",
    "SessionManager",
    "SessionManagerException",
    "SignedLabel",
    "StillUndecided",
    "Storage",
    "StorageException",
    "TooManySkippedMessageKeys",
    "TrustDecisionFailed",
    "TrustLevel",
    "UnknownNamespace",
    "UnknownTrustLevel",
    "XMPPInteractionFailed",
    "__version__",
    "project",
]
