"""Explained failures: every exception of ``decrypt`` and every per-device error of ``encrypt`` mapped to
a typed :class:`Reason`, with what it means and what to do.

    try:
        plaintext, device, _ = await manager.decrypt(message)
    except OMEMOException as exc:
        diagnosis = explain(exc)
        print(diagnosis.reason.value, diagnosis.meaning, diagnosis.advice, sep="\\n")

    messages, errors = await manager.encrypt(...)
    for error in errors:
        print(error.bare_jid, error.device_id, explain(error.exception).advice)

:data:`REASONS` holds the texts; docs/diagnostics.md shows them as a table (a test checks that the two
agree). Integrations (``omemo_slixmpp``) raise subclasses of these exceptions or plain ``ValueError`` for
malformed stanzas, which map to the nearest reason.
"""

from __future__ import annotations

import enum
import time
from typing import Dict, NamedTuple, Optional, Tuple, Type

from ._core.errors import (
    BundleDownloadFailed,
    BundleNotFound,
    BundleRejected,
    DeviceListDownloadFailed,
    EncryptionError,
    MessageNotForUs,
    NoEligibleDevices,
    NoSession,
    PublicDataInconsistency,
    SenderDistrusted,
    SenderNotFound,
    StillUndecided,
    UnknownNamespace,
)
from .backend import (
    BundleSignatureInvalid,
    BundleWithoutPreKeys,
    DecryptionFailed,
    DuplicateMessage,
    KeyExchangeFailed,
    MessageAuthenticationFailed,
    MessageKeyReused,
    SessionDamaged,
    SessionOutOfStep,
    TooManySkippedMessageKeys,
    UnknownPreKey,
)
from .hygiene import HealthReport, StaleDevice
from .sce import SCEError

__all__ = ["REASONS", "Diagnosis", "Reason", "explain", "explain_encryption_error", "format_report"]


@enum.unique
class Reason(enum.Enum):
    """Why a message could not be decrypted, or a device not encrypted for."""

    NOT_FOR_THIS_DEVICE = "not-for-this-device"
    NO_SESSION = "no-session"
    UNKNOWN_PRE_KEY = "unknown-pre-key"
    KEY_EXCHANGE_FAILED = "key-exchange-failed"
    TOO_MANY_SKIPPED = "too-many-skipped"
    DUPLICATE = "duplicate"
    RESTORED_BACKUP = "restored-backup"
    AUTHENTICATION_FAILED = "authentication-failed"
    SESSION_DAMAGED = "session-damaged"
    DECRYPTION_FAILED = "decryption-failed"
    SENDER_DISTRUSTED = "sender-distrusted"
    SENDER_UNKNOWN = "sender-unknown"
    IDENTITY_MISMATCH = "identity-mismatch"
    ENVELOPE_REFUSED = "envelope-refused"
    BUNDLE_SIGNATURE_INVALID = "bundle-signature-invalid"
    BUNDLE_WITHOUT_PRE_KEYS = "bundle-without-pre-keys"
    BUNDLE_NOT_FOUND = "bundle-not-found"
    BUNDLE_REJECTED = "bundle-rejected"
    BUNDLE_DOWNLOAD_FAILED = "bundle-download-failed"
    DEVICE_LIST_UNREADABLE = "device-list-unreadable"
    STALE_DEVICE = "stale-device"
    NO_ELIGIBLE_DEVICES = "no-eligible-devices"
    STILL_UNDECIDED = "still-undecided"
    UNKNOWN_NAMESPACE = "unknown-namespace"
    MALFORMED = "malformed"
    OTHER = "other"


class Diagnosis(NamedTuple):
    """An explained failure.

    Attributes:
        reason: the typed reason.
        meaning: what it means, in a sentence.
        advice: what to do about it.
        detail: the exception's own message (which device, which key, which field).
    """

    reason: Reason
    meaning: str
    advice: str
    detail: str


#: Per reason: (what it means, what to do).
REASONS: Dict[Reason, Tuple[str, str]] = {
    Reason.NOT_FOR_THIS_DEVICE: (
        "The message carries no key for this device: the sender did not know this device (its device"
        " list was not current), or chose not to encrypt for it (distrusted, or stale), or it is a copy of"
        " a message this device sent.",
        "Nothing to recover. Make sure this device is in the own device list (ensure_data_consistency)"
        " and readable by the sender; the sender's next message reaches it once the sender knows it.",
    ),
    Reason.NO_SESSION: (
        "There is no session with the sending device, and the message does not start one (it is not a"
        " key exchange): the session was lost here (storage reset, forget_device) or never existed.",
        "Call replace_sessions for the device: it builds a new session and tells the sender, whose later"
        " messages then decrypt. This message cannot be recovered.",
    ),
    Reason.UNKNOWN_PRE_KEY: (
        "The key exchange names a pre key or signed pre key this device no longer has: it was already"
        " used (a second key exchange on the same pre key, often after a restore) or rotated out long ago.",
        "Call replace_sessions for the device so that it builds a new session from the current bundle."
        " Wrap catch-ups in history synchronisation: used pre keys are then kept until it ends.",
    ),
    Reason.KEY_EXCHANGE_FAILED: (
        "A key exchange could not be completed (a malformed or unusable key in it or in the bundle).",
        "Call replace_sessions for the device; if the device's bundle is at fault, it must republish it.",
    ),
    Reason.TOO_MANY_SKIPPED: (
        "The message would skip more message keys than allowed: many messages of the sender never arrived"
        " here (offline storage or archive lost them), or the session is out of step.",
        "Fetch the missing messages first (archive) if they exist; otherwise call replace_sessions.",
    ),
    Reason.DUPLICATE: (
        "The message's key was already used: a duplicate delivery (archive and live, a page fetched twice),"
        " a replay, or a message older than the skipped keys kept.",
        "Nothing to do for a duplicate: it was decrypted before. Deduplicate by stanza id or origin id.",
    ),
    Reason.RESTORED_BACKUP: (
        "A device's state and ours are out of step: it sent a message with a message key already used for"
        " another message (it went back to an older backup), or its messages keep failing authentication"
        " (one side restored an older backup over newer state).",
        "Call replace_sessions for the device: new sessions are built and announced. Messages sent in the"
        " meantime cannot be recovered. If nobody restored a backup, treat it as an attack on that device.",
    ),
    Reason.AUTHENTICATION_FAILED: (
        "The message's authentication did not verify: it was altered on the way, or the session here is"
        " not the one the sender used (one side restored an older backup over newer state).",
        "If it repeats for one device, call replace_sessions for it (after a backup restore, for every"
        " device); a single failure can also be tampering and needs nothing but a warning.",
    ),
    Reason.SESSION_DAMAGED: (
        "The stored session with the device cannot be read: its record was changed or cut outside the"
        " library (by hand, a disk or copy error). The detail names its storage key; the other sessions"
        " are not affected.",
        "Call replace_sessions for the device: a new session replaces the damaged one and is announced."
        " Messages encrypted with the damaged session cannot be recovered; check the storage's disk.",
    ),
    Reason.DECRYPTION_FAILED: (
        "Decryption failed for a backend-specific reason (malformed key material or payload).",
        "Check the detail; if it repeats for one device, call replace_sessions for it.",
    ),
    Reason.SENDER_DISTRUSTED: (
        "The sending device's identity key is distrusted here, so its messages are refused.",
        "If the distrust was a mistake, change the trust level (set_trust) after verifying the fingerprint.",
    ),
    Reason.SENDER_UNKNOWN: (
        "The sending device is not in its account's device list, or its identity key is unknown and none"
        " of its bundles could be downloaded and used.",
        "The sender's device lists or bundles are not readable here (access model) or not published: ask"
        " the contact to check its OMEMO publication; diagnose the contact for details.",
    ),
    Reason.IDENTITY_MISMATCH: (
        "The device's public data contradicts itself: a key exchange or bundle carries another identity"
        " key than the one known for the device id.",
        "Treat it as suspicious: verify the device's fingerprint out of band before trusting anything it"
        " sends; if the device was reinstalled with the same id, forget_device and verify the new one.",
    ),
    Reason.ENVELOPE_REFUSED: (
        "The OMEMO 2 envelope (XEP-0420) does not fit the stanza: malformed, or its <to>/<from> name other"
        " JIDs, or its <time> is too far from the stanza's; nothing was stored.",
        "Do not show it as from the sender. If <time> is the problem, check both clocks (max_skew).",
    ),
    Reason.BUNDLE_SIGNATURE_INVALID: (
        "The device's bundle has a signed pre key whose signature does not verify: broken or forged.",
        "No session is built from it. The device (its owner) must republish its bundle; until then it is"
        " reached in its other namespace, if any.",
    ),
    Reason.BUNDLE_WITHOUT_PRE_KEYS: (
        "The device's bundle has no one-time pre keys left, so no new session can be built with it.",
        "The device must come online to publish new pre keys; until then it cannot be reached for a first"
        " message.",
    ),
    Reason.BUNDLE_NOT_FOUND: (
        "The device is listed but has no bundle published (or it is not readable from here).",
        "The device must republish its bundle; if it is long gone, remove it from the device list"
        " (own devices: propose_own_device_cleanup).",
    ),
    Reason.BUNDLE_REJECTED: (
        "The device's bundle was downloaded but cannot be used (it does not parse, or it is another"
        " device's or namespace's bundle).",
        "The device must republish a valid bundle; the detail names the field.",
    ),
    Reason.BUNDLE_DOWNLOAD_FAILED: (
        "Downloading the device's bundle failed: a network or server error, or its node is not readable"
        " from here (some servers answer 'forbidden' for a node that does not exist).",
        "Retry later; if it persists, check that the bundle node is readable (access model open).",
    ),
    Reason.DEVICE_LIST_UNREADABLE: (
        "The account's device list could not be downloaded: often its node is restricted to contacts"
        " with a presence subscription (access model presence or roster).",
        "Ask the contact to publish OMEMO nodes with access model open, or subscribe to each other's"
        " presence.",
    ),
    Reason.STALE_DEVICE: (
        "The device stopped answering (see omemo.hygiene), so it was not encrypted for.",
        "Nothing, if the device is gone (own devices: propose_own_device_cleanup). It is encrypted for again"
        " as soon as one of its messages arrives.",
    ),
    Reason.NO_ELIGIBLE_DEVICES: (
        "A recipient has no device that can be encrypted for: no devices published, all distrusted,"
        " stale, or unreachable (the detail lists them).",
        "Diagnose the recipient: its device list and bundles must be published and readable.",
    ),
    Reason.STILL_UNDECIDED: (
        "Some recipient devices are still undecided after the trust decision.",
        "Decide their trust (set_trust) or enable blind trust before verification.",
    ),
    Reason.UNKNOWN_NAMESPACE: (
        "The message or operation is for a namespace whose backend is not loaded.",
        "Load the backend of that namespace, or ignore messages in it.",
    ),
    Reason.MALFORMED: (
        "The message or stanza is malformed (the detail names the element or field).",
        "Nothing to recover: the sender's software produced it, or it was altered.",
    ),
    Reason.OTHER: (
        "An unexpected failure.",
        "See the detail; please report it if it is not an error of the application's own hooks.",
    ),
}

#: Most specific first.
_MAPPING: Tuple[Tuple[Type[BaseException], Reason], ...] = (
    (MessageNotForUs, Reason.NOT_FOR_THIS_DEVICE),
    (NoSession, Reason.NO_SESSION),
    (UnknownPreKey, Reason.UNKNOWN_PRE_KEY),
    (BundleSignatureInvalid, Reason.BUNDLE_SIGNATURE_INVALID),
    (BundleWithoutPreKeys, Reason.BUNDLE_WITHOUT_PRE_KEYS),
    (KeyExchangeFailed, Reason.KEY_EXCHANGE_FAILED),
    (TooManySkippedMessageKeys, Reason.TOO_MANY_SKIPPED),
    (MessageKeyReused, Reason.RESTORED_BACKUP),
    (SessionOutOfStep, Reason.RESTORED_BACKUP),
    (DuplicateMessage, Reason.DUPLICATE),
    (MessageAuthenticationFailed, Reason.AUTHENTICATION_FAILED),
    (SessionDamaged, Reason.SESSION_DAMAGED),
    (DecryptionFailed, Reason.DECRYPTION_FAILED),
    (SenderDistrusted, Reason.SENDER_DISTRUSTED),
    (SenderNotFound, Reason.SENDER_UNKNOWN),
    (PublicDataInconsistency, Reason.IDENTITY_MISMATCH),
    (SCEError, Reason.ENVELOPE_REFUSED),
    (BundleRejected, Reason.BUNDLE_REJECTED),
    (BundleNotFound, Reason.BUNDLE_NOT_FOUND),
    (BundleDownloadFailed, Reason.BUNDLE_DOWNLOAD_FAILED),
    (DeviceListDownloadFailed, Reason.DEVICE_LIST_UNREADABLE),
    (StaleDevice, Reason.STALE_DEVICE),
    (NoEligibleDevices, Reason.NO_ELIGIBLE_DEVICES),
    (StillUndecided, Reason.STILL_UNDECIDED),
    (UnknownNamespace, Reason.UNKNOWN_NAMESPACE),
    (ValueError, Reason.MALFORMED),
)


def explain(exception: BaseException) -> Diagnosis:
    """Returns: the diagnosis of an exception raised by ``decrypt`` or ``encrypt`` (or found in the
    errors ``encrypt`` returns, or raised by an integration such as ``omemo_slixmpp``)."""
    reason = next((reason for kind, reason in _MAPPING if isinstance(exception, kind)), Reason.OTHER)
    meaning, advice = REASONS[reason]
    return Diagnosis(reason, meaning, advice, str(exception) or type(exception).__name__)


def explain_encryption_error(error: EncryptionError) -> Diagnosis:
    """Returns: the diagnosis of one per-device error of ``encrypt``, naming the device."""
    found = explain(error.exception)
    where = (
        f"{error.bare_jid} as a whole"
        if error.device_id == 0
        else f"device {error.device_id} of {error.bare_jid} ({error.namespace})"
    )
    return found._replace(detail=f"{where}: {found.detail}")


def _when(seconds: Optional[float], now: float) -> str:
    if seconds is None:
        return "never"
    days = (now - seconds) / 86400
    return f"{days:.0f} days ago" if days >= 1 else "today"


def format_report(report: HealthReport, now: Optional[float] = None) -> str:
    """Returns: a health report (``SessionManager.get_health_report``) as text, one finding a line, each
    problem with its reason and what to do."""
    now = time.time() if now is None else now
    lines = [f"OMEMO health of {report.bare_jid}"]
    for entry in report.device_lists:
        if entry.readable:
            lines.append(f"  device list {entry.namespace}: {entry.devices} device(s)")
        else:
            assert entry.error is not None
            diagnosis = explain(entry.error)
            reason = diagnosis.reason.value
            lines.append(f"  device list {entry.namespace}: NOT READABLE ({reason}): {diagnosis.advice}")
    if not report.devices:
        lines.append("  no devices known")
    for device in report.devices:
        info, found = device.information, device.activity
        trust = info.trust_level_name if info is not None else "identity unknown"
        label = f" {info.label!r}" if info is not None and info.label else ""
        counts = sorted(found.unanswered)
        sessions = ", ".join(f"{ns}: {count} unanswered" for ns, count in counts) or "no session"
        state = "STALE" if found.stale else "active"
        heard = _when(found.last_heard, now)
        summary = f"{trust}, {state}, last message {heard}, {sessions}"
        lines.append(f"  device {device.device_id}{label}: {summary}")
        for namespace, problem in device.bundles:
            if problem is None:
                lines.append(f"    bundle {namespace}: usable")
            else:
                diagnosis = explain(problem)
                lines.append(f"    bundle {namespace}: {diagnosis.reason.value}: {diagnosis.advice}")
    return "\n".join(lines)
