"""The decryption flow of :meth:`omemo.session_manager.SessionManager.decrypt` (PROTOCOL.md 5.6).

Decryption is transactional: the session is decrypted (or passively built) in memory, the payload is
decrypted, and only when the key material authenticated, the payload decrypted and the sender passed
the trust check is anything persisted: the session together with the pre key consumption (hide during
history synchronisation, delete otherwise) and refill, in one storage transaction where the storage
offers one; then the bundle publication and the automatic empty message (sent now, or queued during
history synchronisation). A failure before the commit leaves the storage exactly as it was, so the
same message can be retried.

Everything after the store is best effort: the plaintext is returned even when the bundle upload or
the empty message fails (both are logged and retried later), since raising at that point would lose a
message whose session state has already advanced.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Awaitable, Callable, List, Optional, Tuple

from ..backend import (
    BackendException,
    DecryptionFailed,
    DuplicateMessage,
    KeyExchangeFailed,
    MessageAuthenticationFailed,
    MessageKeyReused,
    SessionOutOfStep,
    TooManySkippedMessageKeys,
)
from ..bundle import Bundle
from ..message import EncryptedKeyMaterial, KeyExchange, Message, PlainKeyMaterial
from ..session import Initiation, Session
from ..types import DeviceInformation, TrustLevel
from .errors import (
    DeviceListDownloadFailed,
    MessageNotForUs,
    NoSession,
    PublicDataInconsistency,
    SenderDistrusted,
    SenderNotFound,
    UnknownNamespace,
)
from .hygiene import note_heard
from .state import Core, describe

__all__ = ["decrypt"]

_log = logging.getLogger("omemo.core")


def _own_key(core: Core, message: Message) -> Tuple[EncryptedKeyMaterial, Optional[KeyExchange]]:
    for encrypted, key_exchange in message.keys:
        if encrypted.bare_jid == core.own_bare_jid and encrypted.device_id == core.own_device_id:
            return encrypted, key_exchange
    addressed = sorted({(encrypted.bare_jid, encrypted.device_id) for encrypted, _ in message.keys})
    listed = ", ".join(f"{device_id} of {jid}" for jid, device_id in addressed[:20])
    more = f" and {len(addressed) - 20} more" if len(addressed) > 20 else ""
    raise MessageNotForUs(
        f"the {message.namespace} message from device {message.device_id} of {message.bare_jid} carries no"
        f" key for this device ({core.own_device_id} of {core.own_bare_jid}); it is for: "
        f"{listed or 'nobody'}{more}"
    )


def _with_context(exc: BackendException, who: str) -> BackendException:
    """The backend exception to raise, with a message that names the sending device.

    The documented classes themselves are re-created with that message (the original becomes the
    ``__cause__``). A backend-specific subclass is kept as it is, so that callers catching it still do;
    it gets the context as a note (Python 3.11+).
    """
    message = f"decrypting the message from {who} failed: {exc}"
    if type(exc) in (TooManySkippedMessageKeys, KeyExchangeFailed, DecryptionFailed, DuplicateMessage):
        return type(exc)(message)
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(message)
    return exc


#: How many decrypted messages (their key material) the session manager remembers, to tell a duplicate
#: delivery from a device that reuses a message key (restored from a backup).
REMEMBERED_MESSAGES = 4096


def _fingerprint(encrypted: EncryptedKeyMaterial) -> Optional[bytes]:
    data = getattr(encrypted, "encrypted_message", None)  # our backends' wire bytes; others: no detection
    return hashlib.sha256(data).digest() if isinstance(data, bytes) else None


def _remember_decrypted(
    core: Core, device: Tuple[str, str, int], encrypted: EncryptedKeyMaterial, session: Session
) -> None:
    """Remember a decrypted message, and whether every message of the device's current receiving chain
    was decrypted while running (only then can an unknown message with a used key be told from a
    duplicate of a message decrypted before a restart)."""
    fingerprint = _fingerprint(encrypted)
    if fingerprint is None:
        return
    core.decrypted_messages[fingerprint] = device
    while len(core.decrypted_messages) > REMEMBERED_MESSAGES:
        core.decrypted_messages.popitem(last=False)
    length = session.receiving_chain_length or 0
    previous = core.chain_lengths.get(device)
    if length == 1 or (previous is not None and length < previous):
        core.whole_chains.add(device)  # the chain started while running
    elif previous is None:
        core.whole_chains.discard(device)  # first seen in the middle of a chain
    core.chain_lengths[device] = length


def _restored_backup(
    core: Core, device: Tuple[str, str, int], encrypted: EncryptedKeyMaterial, exc: Exception, who: str
) -> Optional[Exception]:
    """A failure that shows a restored backup, where it can be told: a message key used again for another
    message than the one we decrypted with it (the sender went back in time), or authentication failing
    for several messages in a row from one device (the two sessions differ)."""
    if isinstance(exc, DuplicateMessage):
        fingerprint = _fingerprint(encrypted)
        if fingerprint is None or fingerprint in core.decrypted_messages or device not in core.whole_chains:
            return None  # a true duplicate, or nothing to compare with
        return MessageKeyReused(
            f"{who} sent a message with a message key already used for another message: its state was"
            " restored from an older backup (or someone replays altered messages); it cannot be decrypted."
            " The device must replace its session with this one (replace_sessions here does it from our side)"
        )
    if isinstance(exc, MessageAuthenticationFailed) and not isinstance(exc, SessionOutOfStep):
        fingerprint = _fingerprint(encrypted)
        if fingerprint is not None and core.decrypted_messages.get(fingerprint) == device:
            # A copy of a message decrypted while running, from a receiving chain the ratchet has since
            # dropped (an archive page fetched again): a duplicate, not a sign of sessions out of step.
            return DuplicateMessage(
                f"{who} sent this message before and it was decrypted then (a duplicate delivery of a"
                " message from an older chain); nothing was changed"
            )
        failures = core.auth_failures[device] = core.auth_failures.get(device, 0) + 1
        if failures >= 2:
            return SessionOutOfStep(
                f"{failures} messages in a row from {who} failed authentication: the sessions are out of"
                " step, typically because one side restored an older backup (a forger could cause this too)."
                " Call replace_sessions for the device"
            )
    return None


async def sender_information(core: Core, namespace: str, bare_jid: str, device_id: int) -> DeviceInformation:
    """The device information of a message's sender, refreshing its device list once if needed.

    Raises:
        SenderNotFound: the device is not listed even after a refresh, or its identity key is unknown and
            none of its bundles can be downloaded and used (the message says which, per namespace).
    """
    known = await core.known_device(bare_jid, device_id)
    if known is not None:
        if (namespace, True) in known.active or (namespace, bare_jid) in core.namespace_lookups:
            return known
        # A message in a namespace the device is not known to use (its device list there was never
        # seen): look once, so that a reply in the same namespace can reach it. Best effort, and only
        # once per account and namespace (a peer must not make every message cost a download).
        core.namespace_lookups.add((namespace, bare_jid))
        try:
            await core.refresh_device_list(namespace, bare_jid)
        except (DeviceListDownloadFailed, UnknownNamespace) as exc:
            _log.info("could not download the %s device list of %s: %s", namespace, bare_jid, exc)
        return await core.known_device(bare_jid, device_id) or known
    who = describe(namespace, bare_jid, device_id)
    if device_id not in await core.devices.device_ids(bare_jid):
        try:
            await core.refresh_device_list(namespace, bare_jid)
        except (DeviceListDownloadFailed, UnknownNamespace) as exc:
            raise SenderNotFound(
                f"{who} is unknown and its device list could not be downloaded: {exc}"
            ) from exc
        if device_id not in await core.devices.device_ids(bare_jid):
            raise SenderNotFound(f"{who} is not listed in its account's device list")
    record = await core.devices.load(bare_jid, device_id)
    if record.identity_key is None:
        namespaces = record.namespaces if namespace in record.namespaces else (namespace, *record.namespaces)
        failures: List[str] = []
        found = await core.fetch_identity_key(
            bare_jid, device_id, namespaces, prefer=namespace, failures=failures
        )
        if found is None:
            found = await _identity_key_from_other_namespaces(core, bare_jid, device_id, namespaces, failures)
        if found is None:
            raise SenderNotFound(
                f"{who} is in its account's device list, but its identity key is unknown and none of its"
                f" bundles could be used ({'; '.join(failures) or 'no namespace to download one from'})"
            )
        record = await core.devices.load(bare_jid, device_id)
    return await core.make_information(bare_jid, device_id, record)


async def _identity_key_from_other_namespaces(
    core: Core, bare_jid: str, device_id: int, tried: Tuple[str, ...], failures: List[str]
) -> Optional[Tuple[bytes, Bundle]]:
    """Look for the device in the device lists of the namespaces not tried yet, and for its identity key
    in their bundles: one unusable bundle must not hide a device that another namespace lists."""
    for other in core.namespaces():
        if other in tried:
            continue
        try:
            await core.refresh_device_list(other, bare_jid)
        except (DeviceListDownloadFailed, UnknownNamespace) as exc:
            failures.append(f"{other}: device list: {type(exc).__name__}: {exc}")
    record = await core.devices.load(bare_jid, device_id)
    listed = tuple(ns for ns in record.namespaces if ns not in tried)
    if not listed:
        return None
    return await core.fetch_identity_key(bare_jid, device_id, listed, failures=failures)


async def decrypt(
    core: Core,
    message: Message,
    check: Optional[Callable[[Optional[bytes], DeviceInformation], Awaitable[None]]] = None,
    within_commit: Optional[Callable[[Optional[bytes], DeviceInformation], Awaitable[None]]] = None,
) -> Tuple[Optional[bytes], DeviceInformation, PlainKeyMaterial]:
    """See :meth:`omemo.session_manager.SessionManager.decrypt`.

    ``check`` (for integrations such as omemo_slixmpp) sees the plaintext and the sender before anything
    is stored; an exception it raises propagates and leaves the storage as it was, like a bad MAC.
    """
    namespace, bare_jid, device_id = message.namespace, message.bare_jid, message.device_id
    try:
        backend = core.backend(namespace)
    except UnknownNamespace as exc:
        who = describe(namespace, bare_jid, device_id)
        raise UnknownNamespace(f"cannot decrypt the message from {who}: {exc}") from exc
    encrypted, key_exchange = _own_key(core, message)
    if core.dirty_bundles:
        await core.flush_dirty_bundles()

    async with core.session_locks.hold((namespace, bare_jid, device_id)):
        device = await sender_information(core, namespace, bare_jid, device_id)
        if await core.evaluate(device) is TrustLevel.DISTRUSTED:
            who = describe(namespace, bare_jid, device_id)
            raise SenderDistrusted(f"the identity key of {who} is distrusted")

        try:
            session: Session
            if key_exchange is None:
                existing = await backend.load_session(bare_jid, device_id)
                if existing is None:
                    who = describe(namespace, bare_jid, device_id)
                    raise NoSession(f"no session with {who}, and the message does not initiate one")
                session = existing
                plain_key_material = await backend.decrypt_key_material(session, encrypted)
            else:
                if key_exchange.identity_key != device.identity_key:
                    who = describe(namespace, bare_jid, device_id)
                    raise PublicDataInconsistency(
                        f"the key exchange from {who} carries another identity key than the device's bundle"
                    )
                existing = await backend.load_session(bare_jid, device_id)
                if (
                    existing is not None
                    and existing.initiation is Initiation.PASSIVE
                    and existing.key_exchange.builds_same_session(key_exchange)
                ):
                    session = existing
                    plain_key_material = await backend.decrypt_key_material(session, encrypted)
                else:
                    session, plain_key_material = await backend.build_session_passive(
                        bare_jid, device_id, key_exchange, encrypted
                    )

            if message.content.empty:
                plaintext = None
                # A backend that can tell (ours) refuses an empty message whose key material was made
                # for a payload: the payload was removed, and the message would be lost silently.
                check_empty = getattr(backend, "check_empty_message", None)
                if check_empty is not None:
                    check_empty(message.content, plain_key_material)
            else:
                plaintext = await backend.decrypt_plaintext(message.content, plain_key_material)
        except (TooManySkippedMessageKeys, KeyExchangeFailed, DecryptionFailed) as exc:
            who = describe(namespace, bare_jid, device_id)
            restored = _restored_backup(core, (namespace, bare_jid, device_id), encrypted, exc, who)
            if restored is not None:
                raise restored from exc
            wrapped = _with_context(exc, who)
            if wrapped is exc:
                raise
            raise wrapped from exc
        core.auth_failures.pop((namespace, bare_jid, device_id), None)
        _remember_decrypted(core, (namespace, bare_jid, device_id), encrypted, session)

        if check is not None:
            await check(plaintext, device)

        # Every check passed: commit. An empty message owed right now is encrypted first, so that the
        # session is stored once, with both the received message and the sent one.
        # Staleness prevention: a receiving chain that passes the magic number owes an empty message,
        # which makes the peer ratchet (and so start a new chain) when it reads it. python-omemo owes one
        # for every further message until the peer's new chain arrives, which under load answers every
        # message in flight; one per magic-number messages is enough (a second one if the first was lost).
        sending = session.sending_chain_length  # what we sent it unread, before an owed empty message
        receiving, magic = session.receiving_chain_length, core.manager.STALENESS_MAGIC_NUMBER
        stale = receiving is not None and receiving > magic and receiving % magic == 1
        owed = key_exchange is not None or stale
        prepared = (
            await core.prepare_empty_message(backend, session) if owed and not core.history_sync else None
        )
        handover: Optional[Callable[[], Awaitable[None]]] = None
        if within_commit is not None:

            async def handover() -> None:
                await within_commit(plaintext, device)

        await core.commit_decryption(backend, session, key_exchange is not None, handover)
        # Answer the device in the namespace it writes in (integrations prefer it). Best effort, outside the
        # transaction: losing it in a crash only loses a preference.
        record = await core.devices.load(bare_jid, device_id)
        if plaintext is not None and record.last_namespace != namespace:
            await core.devices.store_last_namespace(bare_jid, device_id, namespace)
            record = await core.devices.load(bare_jid, device_id)
        await note_heard(core, namespace, session, sending, record)
        if owed:
            who = describe(namespace, bare_jid, device_id)
            _log.debug("owing an empty message to %s (key exchange: %s)", who, key_exchange is not None)
            await core.owe_empty_message(backend, session, prepared)
    return plaintext, device, plain_key_material
