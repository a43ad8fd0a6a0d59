"""``XEP_0384``: OMEMO for slixmpp, both namespaces, on the omemo-stack core.

An adapter: stanzas in and out, PEP publishing and fetching. The protocol, the trust bookkeeping and the
XEP-0420 envelopes are :mod:`omemo`'s. The public API is that of slixmpp-omemo 2.2.0's ``XEP_0384``
(a fact this plugin matches; none of its code is used), so an application switches by changing its
import; docs/xmpp.md lists what behaves differently.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import xml.etree.ElementTree as ET
from abc import ABCMeta, abstractmethod
from collections import OrderedDict
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from enum import Enum
from typing import (
    Any,
    AsyncIterator,
    ClassVar,
    Dict,
    FrozenSet,
    List,
    Optional,
    Set,
    Tuple,
    Type,
    Union,
    cast,
)

from slixmpp.jid import JID
from slixmpp.plugins.base import BasePlugin
from slixmpp.stanza import Message as Stanza
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from oldmemo.migrations import LegacyStorage
from omemo import sce
from omemo._core.decrypt import decrypt as _core_decrypt
from omemo._core.encrypt import encrypt as _core_encrypt
from omemo.bundle import Bundle
from omemo.hygiene import HealthReport
from omemo.message import Message
from omemo.session_manager import (
    BundleDeletionFailed,
    BundleDownloadFailed,
    BundleNotFound,
    BundleUploadFailed,
    DeviceListDownloadFailed,
    DeviceListUploadFailed,
    EncryptionError,
    MessageNotForUs,
    MessageSendingFailed,
    SessionManager,
    UnknownTrustLevel,
)
from omemo.storage import Storage
from omemo.types import DeviceInformation, DeviceList, OMEMOException
from omemo.types import TrustLevel as CoreTrustLevel

from ._muc import RoomNotSuitable, Rooms, UnknownOccupant
from ._pep import (
    DEVICE_LIST_NODES,
    NS2,
    NSL,
    PubSubFailure,
    bundle_location,
    get_items,
    publish,
    retract_or_delete,
)

__all__ = ["XEP_0384", "MalformedStanza", "OwnMessage", "RoomNotSuitable", "TrustLevel", "UnknownOccupant"]

_log = logging.getLogger("omemo_slixmpp")

ETREE: Dict[str, Any] = {NS2: twomemo.etree, NSL: oldmemo.etree}
_EME = "urn:xmpp:eme:0"
_HINTS = "urn:xmpp:hints"
_DELAY = "{urn:xmpp:delay}delay"
_CARBONS = "urn:xmpp:carbons:2"
_MAM = "urn:xmpp:mam:2"
_FORWARD = "urn:xmpp:forward:0"
#: How many of the own group-chat messages are remembered to recognise their reflections, and how many
#: decrypted messages to recognise duplicate deliveries (archive and live, an archive page twice).
_REFLECTIONS = 1000
_DECRYPTED = 1000
_CLIENT = "jabber:client"
#: Children of a decrypted stanza that its result replaces: the fallback body, the delay (the result
#: gets the forwarding wrapper's or its own).
_REPLACED = {f"{{{_CLIENT}}}body", _DELAY}
#: Children of a source stanza that stay outside the OMEMO 2 envelope: addressing and threading of the
#: stanza itself, the server's ids and hints, and any OMEMO or EME element already there.
_OUTSIDE = {f"{{{_CLIENT}}}{name}" for name in ("subject", "thread", "error", "html")} | {
    "{urn:xmpp:sid:0}origin-id",
    f"{{{NS2}}}encrypted",
    f"{{{NSL}}}encrypted",
}


class MalformedStanza(OMEMOException, ValueError):
    """A stanza given to :meth:`XEP_0384.decrypt_message` is not one OMEMO message (no ``<encrypted>``
    element of a namespace in use, or several of one namespace)."""


class OwnMessage(MessageNotForUs):
    """A message this device sent, back as a copy (from an archive, or a room's reflection it no longer
    remembers): a device never holds keys for its own messages. Recent room reflections are recognised
    and returned without this error."""


class _FirstCancelled(Exception):
    """The first decryption of a message was cancelled: a duplicate waiting for it decrypts it itself."""


class TrustLevel(Enum):
    """The trust levels the plugin stores (the names slixmpp-omemo uses)."""

    TRUSTED = "TRUSTED"
    BLINDLY_TRUSTED = "BLINDLY_TRUSTED"
    UNDECIDED = "UNDECIDED"
    DISTRUSTED = "DISTRUSTED"


_CORE_LEVELS = {
    TrustLevel.TRUSTED.value: CoreTrustLevel.TRUSTED,
    TrustLevel.BLINDLY_TRUSTED.value: CoreTrustLevel.TRUSTED,
    TrustLevel.UNDECIDED.value: CoreTrustLevel.UNDECIDED,
    TrustLevel.DISTRUSTED.value: CoreTrustLevel.DISTRUSTED,
}


def _bare(jid: Union[JID, str]) -> str:
    return JID(jid).bare


def _manager_class(plugin: XEP_0384) -> Type[SessionManager]:
    """A SessionManager whose XMPP hooks talk through ``plugin``'s stream and whose trust hooks are its."""
    xmpp = plugin.xmpp

    class _Manager(SessionManager):
        @staticmethod
        async def _upload_bundle(bundle: Bundle) -> None:
            node, item_id = bundle_location(bundle.namespace, bundle.device_id)
            options = {"access_model": "open", "persist_items": "true"}
            options["max_items"] = "max" if bundle.namespace == NS2 else "1"
            try:
                await publish(xmpp, node, item_id, ETREE[bundle.namespace].serialize_bundle(bundle), options)
            except PubSubFailure as exc:
                raise BundleUploadFailed(str(exc)) from exc

        @staticmethod
        async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> Bundle:
            node, item_id = bundle_location(namespace, device_id)
            try:
                payloads = await get_items(xmpp, bare_jid, node, item_id if namespace == NS2 else None)
            except PubSubFailure as exc:
                if exc.not_found:
                    raise BundleNotFound(str(exc)) from exc
                raise BundleDownloadFailed(str(exc)) from exc
            if not payloads:
                raise BundleNotFound(f"no bundle of device {device_id} of {bare_jid} in {node}")
            bundle: Bundle = ETREE[namespace].parse_bundle(payloads[-1], bare_jid, device_id)
            return bundle

        @staticmethod
        async def _delete_bundle(namespace: str, device_id: int) -> None:
            try:
                await retract_or_delete(xmpp, namespace, device_id)
            except PubSubFailure as exc:
                raise BundleDeletionFailed(str(exc)) from exc

        @staticmethod
        async def _upload_device_list(namespace: str, device_list: DeviceList) -> None:
            element = ETREE[namespace].serialize_device_list(device_list)
            options = {"access_model": "open", "persist_items": "true", "max_items": "1"}
            try:
                await publish(xmpp, DEVICE_LIST_NODES[namespace], "current", element, options)
            except PubSubFailure as exc:
                raise DeviceListUploadFailed(str(exc)) from exc

        @staticmethod
        async def _download_device_list(namespace: str, bare_jid: str) -> DeviceList:
            try:
                payloads = await get_items(xmpp, bare_jid, DEVICE_LIST_NODES[namespace])
            except PubSubFailure as exc:
                if exc.not_found:
                    return {}
                raise DeviceListDownloadFailed(str(exc)) from exc
            device_list: DeviceList = {}
            for payload in payloads[-1:]:
                try:
                    device_list = ETREE[namespace].parse_device_list(payload)
                except ValueError as exc:
                    _log.warning("the %s device list of %s is unusable: %s", namespace, bare_jid, exc)
            return device_list

        @staticmethod
        async def _send_message(message: Message, bare_jid: str) -> None:
            stanza = _message(xmpp, {"to": bare_jid, "id": xmpp.new_id()}, "chat")
            stanza.xml.append(ETREE[message.namespace].serialize_message(message))
            stanza.xml.append(ET.Element(f"{{{_HINTS}}}store"))
            try:
                stanza.send()
            except Exception as exc:  # the stream's own errors: not connected, closed
                raise MessageSendingFailed(f"sending an OMEMO message to {bare_jid} failed: {exc!r}") from exc

        async def _evaluate_custom_trust_level(self, device: DeviceInformation) -> CoreTrustLevel:
            try:
                return _CORE_LEVELS[device.trust_level_name]
            except KeyError:
                raise UnknownTrustLevel(f"unknown trust level {device.trust_level_name!r}") from None

        async def _make_trust_decision(
            self, undecided: FrozenSet[DeviceInformation], identifier: Optional[str]
        ) -> None:
            if not plugin._btbv_enabled:
                await plugin._prompt_manual_trust(undecided, identifier)
                return
            # Blind trust before verification: new devices of an account are trusted blindly as long as
            # none of its devices was verified; after that, the user decides.
            blind: Set[DeviceInformation] = set()
            manual: Set[DeviceInformation] = set()
            for jid in {device.bare_jid for device in undecided}:
                known = await self.get_device_information(jid)
                verified = any(info.trust_level_name == TrustLevel.TRUSTED.value for info in known)
                target = manual if verified else blind
                target.update(device for device in undecided if device.bare_jid == jid)
            for device in blind:
                await self.set_trust(device.bare_jid, device.identity_key, TrustLevel.BLINDLY_TRUSTED.value)
            if blind:
                await plugin._devices_blindly_trusted(frozenset(blind), identifier)
            if manual:
                await plugin._prompt_manual_trust(frozenset(manual), identifier)

    return _Manager


class XEP_0384(BasePlugin, metaclass=ABCMeta):  # noqa: N801 - the XEP's plugin name, as slixmpp names them
    """OMEMO (XEP-0384) for slixmpp: ``urn:xmpp:omemo:2`` with XEP-0420 envelopes and the legacy
    ``eu.siacs.conversations.axolotl``, in one stanza.

    Subclass it, provide :attr:`storage`, :attr:`_btbv_enabled`, :meth:`_prompt_manual_trust` (and
    optionally :meth:`_devices_blindly_trusted`, :attr:`legacy_storage`), and register the subclass with
    ``slixmpp.plugins.register_plugin``. :class:`omemo_slixmpp.XEP_0384SQLite` is such a subclass, ready.
    The plugin fires ``omemo_initialized`` once its device lists and bundles are published.
    """

    name = "xep_0384"
    description = "XEP-0384: OMEMO Encryption (omemo-stack)"
    dependencies: ClassVar[Set[str]] = {
        "xep_0004",
        "xep_0030",
        "xep_0060",
        "xep_0163",
        "xep_0280",
        "xep_0334",
        "xep_0045",
    }
    default_config: ClassVar[Dict[str, Any]] = {
        "fallback_message": "This message is OMEMO encrypted.",
        #: How far an envelope's <time> may be from the stanza's sending time.
        "max_skew": sce.DEFAULT_MAX_SKEW,
        #: The namespaces to speak, best first (e.g. only the legacy one, for a legacy-only account).
        "namespaces": (NS2, NSL),
        #: Seconds a room's member list is used before it is read again (0: before every message, so
        #: that a member removed while offline gets no keys for the next message).
        "room_members_max_age": 0.0,
    }

    # -- what an application provides ---------------------------------------------------------------

    @property
    @abstractmethod
    def storage(self) -> Storage:
        """The storage of this account's OMEMO data."""

    @property
    def legacy_storage(self) -> Optional[LegacyStorage]:
        """Data of python-omemo < 1.0 to migrate on the first start (``None``: nothing to migrate)."""
        return None

    @property
    @abstractmethod
    def _btbv_enabled(self) -> bool:
        """Whether new devices are trusted blindly until a device of their account was verified."""

    async def _devices_blindly_trusted(
        self, blindly_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        """Told which devices were just trusted blindly (BTBV); does nothing by default."""

    @abstractmethod
    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        """Decide about undecided devices (call ``set_trust`` on the session manager with a
        :class:`TrustLevel` value); devices left undecided are not encrypted for."""

    # -- slixmpp plugin life cycle ------------------------------------------------------------------

    def plugin_init(self) -> None:
        # A subclass's own default_config replaces this one (slixmpp does not merge them): the options it
        # leaves out keep this class's defaults. They are read from self.config, not as attributes, since
        # slixmpp only maps the keys of the subclass's default_config to attributes.
        for key, value in XEP_0384.default_config.items():
            self.config.setdefault(key, value)
        self._manager: Optional[asyncio.Future[SessionManager]] = None
        #: (JID, node) subscribed to in this stream: once each, not once per message.
        self._subscribed: Set[Tuple[str, str]] = set()
        self._rooms = Rooms(self.xmpp, float(self.config["room_members_max_age"]))
        #: (room, message id) -> the content of an own group-chat message, to recognise its reflection.
        self._reflections: OrderedDict[Tuple[str, str], List[ET.Element]] = OrderedDict()
        #: (sender, namespace, what identifies the encrypted element) -> the result of its decryption.
        self._decrypted: OrderedDict[Tuple[str, str, str], Tuple[Stanza, DeviceInformation]] = OrderedDict()
        self._in_flight: Dict[Tuple[str, str, str], asyncio.Future[Tuple[Stanza, DeviceInformation]]] = {}
        self._history_depth = 0
        self._background: Set[asyncio.Future[None]] = set()
        # Empty OMEMO messages (no payload: a key exchange completed, a heartbeat) are taken care of here:
        # slixmpp's "message" event does not fire for stanzas without a body, and applications would
        # otherwise leave the sender's key exchange unconfirmed.
        for namespace in (NS2, NSL):
            self.xmpp.register_handler(
                Callback(
                    f"OMEMO empty messages ({namespace})",
                    MatchXPath(f"{{{_CLIENT}}}message/{{{namespace}}}encrypted"),
                    self._on_encrypted,
                )
            )
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("pubsub_publish", self._on_pubsub_publish)
        self.xmpp.add_event_handler("groupchat_presence", self._rooms.observe)
        self.xmpp.add_event_handler("groupchat_message", self._rooms.observe)

    def plugin_end(self) -> None:
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        self.xmpp.del_event_handler("pubsub_publish", self._on_pubsub_publish)
        self.xmpp.del_event_handler("groupchat_presence", self._rooms.observe)
        self.xmpp.del_event_handler("groupchat_message", self._rooms.observe)
        for namespace in (NS2, NSL):
            self.xmpp.remove_handler(f"OMEMO empty messages ({namespace})")
        for node in self._nodes().values():
            self.xmpp.plugin["xep_0163"].remove_interest(node)

    @property
    def _spoken(self) -> Tuple[str, ...]:
        """The namespaces this account speaks (the ``namespaces`` option)."""
        # (Also before plugin_init merged the defaults: slixmpp may run post_init first.)
        spoken: Tuple[str, ...] = tuple(self.config.get("namespaces", XEP_0384.default_config["namespaces"]))
        return spoken

    def _nodes(self) -> Dict[str, str]:
        """The device-list nodes of the namespaces spoken."""
        return {ns: node for ns, node in DEVICE_LIST_NODES.items() if ns in self._spoken}

    def post_init(self) -> None:
        for node in self._nodes().values():
            self.xmpp.plugin["xep_0163"].add_interest(node)

    def _manager_future(self) -> asyncio.Future[SessionManager]:
        if self._manager is None:
            self._manager = asyncio.get_running_loop().create_future()
        return self._manager

    async def _on_session_start(self, _event: Any) -> None:
        future = self._manager_future()
        if future.done():
            return
        try:
            storage = self.storage
            manager_class = _manager_class(self)
            if self.legacy_storage is not None:

                async def download(bare_jid: str, device_id: int) -> Any:
                    return await manager_class._download_bundle(NSL, bare_jid, device_id)

                await oldmemo.migrations.migrate(
                    self.legacy_storage,
                    storage,
                    TrustLevel.TRUSTED.value,
                    TrustLevel.UNDECIDED.value,
                    TrustLevel.DISTRUSTED.value,
                    download,
                )
            backends = {NS2: twomemo.Twomemo, NSL: oldmemo.Oldmemo}
            manager = await manager_class.create(
                [backends[namespace](storage) for namespace in self.config["namespaces"]],
                storage,
                self.xmpp.boundjid.bare,
                None,
                TrustLevel.UNDECIDED.value,
            )
            await manager.after_history_sync()
            try:
                # The server may have lost or never had what the storage says is published (a new server,
                # a restored account): republish what differs, once per start.
                await manager.ensure_data_consistency()
            except OMEMOException as exc:
                _log.warning("could not check the published OMEMO data: %s", exc)
        except Exception as exc:
            _log.exception("OMEMO could not be set up")
            future.set_exception(exc)
            return
        future.set_result(manager)
        self.xmpp.event("omemo_initialized")

    async def _on_pubsub_publish(self, stanza: Stanza) -> None:
        node = stanza["pubsub_event"]["items"]["node"]
        namespaces = [ns for ns, name in DEVICE_LIST_NODES.items() if name == node and ns in self._spoken]
        if not namespaces:
            return
        namespace, sender = namespaces[0], _bare(stanza["from"] or self.xmpp.boundjid.bare)
        payloads = [item.xml.find("*") for item in stanza["pubsub_event"]["items"]]
        payloads = [payload for payload in payloads if payload is not None]
        if not payloads:
            return
        try:
            device_list = ETREE[namespace].parse_device_list(payloads[-1])
            manager = await self.get_session_manager()
            await manager.update_device_list(namespace, sender, device_list)
        except (ValueError, OMEMOException) as exc:
            _log.warning("ignoring the %s device list of %s: %s", namespace, sender, exc)

    # -- the API of slixmpp-omemo's XEP_0384 --------------------------------------------------------

    async def get_session_manager(self) -> SessionManager:
        """The session manager of this account, once set up (after ``session_start``)."""
        return await asyncio.shield(self._manager_future())

    async def refresh_device_lists(self, jids: Set[JID], force_download: bool = False) -> None:
        """Make sure the device lists of ``jids`` are known: downloaded if nothing is known of an
        account yet, or always with ``force_download``. Subscribes to them, so that changes arrive."""
        manager = await self.get_session_manager()
        for jid in {_bare(jid) for jid in jids}:
            known = await manager.get_device_information(jid)
            for namespace, node in self._nodes().items():
                if force_download or not known:
                    try:
                        await manager.refresh_device_list(namespace, jid)
                    except (DeviceListDownloadFailed, OMEMOException) as exc:
                        _log.info("could not download the %s device list of %s: %s", namespace, jid, exc)
                await self._subscribe(jid, node)

    async def _subscribe(self, jid: str, node: str) -> None:
        if jid == self.xmpp.boundjid.bare or (jid, node) in self._subscribed:
            return
        self._subscribed.add((jid, node))
        try:
            pubsub: Any = self.xmpp.plugin["xep_0060"]
            await pubsub.subscribe(JID(jid), node)
        except Exception as exc:  # best effort: +notify covers contacts with a presence subscription
            _log.debug("could not subscribe to %s of %s: %r", node, jid, exc)

    async def get_health_report(self, jid: Union[JID, str]) -> HealthReport:
        """What stands between this account and ``jid`` for OMEMO: device lists, devices, trust, sessions,
        staleness, bundles (see ``SessionManager.get_health_report``; ``omemo.diagnostics.format_report``
        renders it). Also subscribes to the account's device lists."""
        manager = await self.get_session_manager()
        for node in self._nodes().values():
            await self._subscribe(_bare(jid), node)
        return await manager.get_health_report(_bare(jid))

    def is_encrypted(self, stanza: Stanza) -> Set[str]:
        """The namespaces of the OMEMO ``<encrypted>`` elements of ``stanza`` (empty if none)."""
        return {ns for ns in (NS2, NSL) if stanza.xml.find(f"{{{ns}}}encrypted") is not None}

    async def encrypt_message(
        self,
        stanza: Stanza,
        recipient_jids: Union[JID, Set[JID]],
        identifier: Optional[str] = None,
    ) -> Tuple[Optional[Stanza], FrozenSet[EncryptionError]]:
        """Encrypt ``stanza`` for the devices of ``recipient_jids`` (and the own other devices).

        Returns ONE stanza with an ``<encrypted>`` element per namespace the devices need (each device
        gets OMEMO 2 if it has it). OMEMO 2 carries an XEP-0420 envelope with every element of the
        stanza that belongs inside (body, chat states, markers, reactions...), so stanzas without a body
        are encrypted too; legacy carries the body only (devices that only speak legacy get nothing for
        a stanza without a body). The stanza has the store hint, EME, the source's id and origin-id,
        and a fallback body.

        Group chats (``type='groupchat'``): a recipient that is the room itself (the stanza's ``to``)
        stands for its owners, admins and members, online or not, read from the room; other JIDs are
        used as given. A member none of whose devices can be reached does not block the room: it is one
        more error, ``EncryptionError("", jid, 0, NoEligibleDevices)``. The message's content is
        remembered, so that its reflection by the room decrypts to it.

        Returns:
            The encrypted stanza (``None`` if no device could be reached), and the non-critical errors.

        Raises:
            RoomNotSuitable: a group chat that is not members-only and non-anonymous, or whose member
                list cannot be read.
            NoEligibleDevices, StillUndecided, ...: as :meth:`omemo.session_manager.SessionManager.encrypt`
                (``NoEligibleDevices`` not for group chats).
        """
        manager = await self.get_session_manager()
        recipients = {
            _bare(jid) for jid in (recipient_jids if isinstance(recipient_jids, set) else {recipient_jids})
        }
        groupchat = stanza["type"] == "groupchat"
        room = _bare(stanza["to"]) if groupchat and stanza["to"] else None
        if room is not None and room in recipients:
            recipients.discard(room)
            recipients |= await self._rooms.members(room)
        if groupchat:
            recipients.discard(self.xmpp.boundjid.bare)
        await self.refresh_device_lists({JID(jid) for jid in recipients})
        content = [copy.deepcopy(child) for child in stanza.xml if _inside(child.tag)]
        body = stanza["body"]
        to = (
            _bare(stanza["to"])
            if stanza["to"]
            else (next(iter(recipients)) if len(recipients) == 1 else None)
        )
        plaintext: Dict[str, bytes] = {}
        spoken = self.config["namespaces"]
        if content and NS2 in spoken:
            plaintext[NS2] = sce.build_envelope(content, to=to, from_=self.xmpp.boundjid.bare)
        if body and NSL in spoken:
            plaintext[NSL] = body.encode("utf-8")
        if not plaintext:
            if content:
                raise ValueError(
                    "the stanza has nothing to encrypt for the namespaces in use (it has no body, and OMEMO"
                    " 2, which encrypts the other elements, is not spoken)"
                )
            raise ValueError("the stanza has nothing to encrypt")
        order = [ns for ns in spoken if ns in plaintext]
        messages, errors = await _core_encrypt(
            manager._omemo_core,
            frozenset(recipients),
            plaintext,
            order,
            identifier,
            skip_unreachable=groupchat,
            answer_in_last_namespace=True,
        )
        if not messages:
            return None, errors
        result = self._empty_copy(stanza)
        if groupchat and not result["id"]:
            result["id"] = self.xmpp.new_id()
        for child in stanza.xml:
            if child.tag == "{urn:xmpp:sid:0}origin-id":
                result.xml.append(copy.deepcopy(child))
        for message in sorted(messages, key=lambda m: order.index(m.namespace)):
            result.xml.append(ETREE[message.namespace].serialize_message(message))
        best = min((message.namespace for message in messages), key=order.index)
        result.xml.append(ET.Element(f"{{{_EME}}}encryption", {"namespace": best, "name": "OMEMO"}))
        result.xml.append(ET.Element(f"{{{_HINTS}}}store"))
        result["body"] = self.config["fallback_message"]
        if room is not None:
            self._reflections[(room, result["id"])] = content
            while len(self._reflections) > _REFLECTIONS:
                self._reflections.popitem(last=False)
        return result, errors

    async def decrypt_message(self, stanza: Stanza) -> Tuple[Stanza, DeviceInformation]:
        """Decrypt an OMEMO stanza (OMEMO 2 preferred when it carries both namespaces).

        Accepts a message as received, a carbon copy (XEP-0280, the ``<received>``/``<sent>`` wrapper
        from the own account) or an archive result (XEP-0313, from the own archive or a room's): the
        forwarded message is decrypted. In group chats the sender is the occupant's real JID (from the
        room's presence, or for archived messages from the room's own annotation); the reflection of a
        message this device sent recently decrypts to what was sent, without touching any session.

        For OMEMO 2 the envelope's affixes are verified against the stanza (``<from>`` the sender's
        bare JID, ``<to>`` the recipient or the room, ``<time>`` against ``<delay>`` or now) before
        anything is stored, and server-processed elements found inside are dropped.

        Returns:
            A stanza with the addressing of the (forwarded) message that holds the decrypted content
            instead of the encrypted elements (no body for an empty message), with the ``<delay>`` of an
            archived or offline message; and the sending device.

        Raises:
            MalformedStanza: the stanza holds no OMEMO element of a namespace in use, or several of one;
                a carbon or archive result from someone else; or an error stanza (``type='error'``: a
                bounce of a message sent, never decrypted).
            UnknownOccupant: a room message whose sender's real JID is not known.
            OwnMessage: a copy of a message this device sent (from an archive, or a room reflection it no
                longer remembers).
            omemo.sce.SCEError: the envelope is malformed or its affixes do not match the stanza.
            Everything :meth:`omemo.session_manager.SessionManager.decrypt` raises.
        """
        if stanza["type"] == "error":
            raise MalformedStanza(
                "an error stanza returns a message that was sent, with keys for its recipients, not for"
                " this device: it is not decrypted (read its <error> for what went wrong)"
            )
        message, delay, archived_by = self._unwrap(stanza)
        manager = await self.get_session_manager()
        present = self.is_encrypted(message)
        namespaces = [ns for ns in self.config["namespaces"] if ns in present]
        if not namespaces:
            raise MalformedStanza("the stanza holds no OMEMO <encrypted> element of a namespace in use")
        for namespace in namespaces:
            if len(message.xml.findall(f"{{{namespace}}}encrypted")) > 1:
                raise MalformedStanza(f"the stanza holds more than one <encrypted> element of {namespace}")
        if message["type"] == "groupchat":
            room = _bare(message["from"])
            sender = self._rooms.sender(message, archived_by_room=archived_by == room)
        else:
            room, sender = None, _bare(message["from"] or self.xmpp.boundjid.bare)
        last: Optional[Exception] = None
        for namespace in namespaces:
            element = message.xml.find(f"{{{namespace}}}encrypted")
            assert element is not None
            key = (sender, namespace, _identity(element))
            arguments = (manager, message, delay, namespace, element, sender, room)
            try:
                return await self._decrypt_once(key, *arguments)
            except MessageNotForUs as exc:  # maybe the other element has a key for us
                last = exc
        assert last is not None
        raise last

    async def _decrypt_once(self, key: Tuple[str, str, str], *args: Any) -> Tuple[Stanza, DeviceInformation]:
        """Decrypt one encrypted element once: a duplicate delivery (archive and live, an archive page
        twice) gets the first result, also while the first decryption is still running."""
        seen = self._decrypted.get(key)
        if seen is not None:
            return copy.copy(seen[0]), seen[1]
        running = self._in_flight.get(key)
        if running is not None:
            try:
                first = await asyncio.shield(running)
            except _FirstCancelled:  # its first caller gave up: decrypt it here
                return await self._decrypt_once(key, *args)
            seen = self._decrypted.get(key, first)  # the kept copy: the first caller owns ``first``
            return copy.copy(seen[0]), seen[1]
        future: asyncio.Future[Tuple[Stanza, DeviceInformation]] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._decrypt_one(*args)
        except BaseException as exc:
            # Whoever waits for this decryption gets the same outcome (a cancellation: a retry).
            future.set_exception(_FirstCancelled() if isinstance(exc, asyncio.CancelledError) else exc)
            future.exception()  # retrieved: nobody else has to
            raise
        finally:
            del self._in_flight[key]
        self._decrypted[key] = (copy.copy(result[0]), result[1])
        while len(self._decrypted) > _DECRYPTED:
            self._decrypted.popitem(last=False)
        future.set_result(result)
        return result

    @asynccontextmanager
    async def history_sync(self) -> AsyncIterator[None]:
        """Wrap a catch-up (offline messages, an archive) in the session manager's history
        synchronisation: pre keys used during it are kept until it ends (several archived messages
        may carry the same key exchange), and the empty messages owed are sent once, at the end.
        Nested uses end with the outermost."""
        manager = await self.get_session_manager()
        self._history_depth += 1
        if self._history_depth == 1:
            manager.before_history_sync()
        try:
            yield
        finally:
            self._history_depth -= 1
            if self._history_depth == 0:
                await manager.after_history_sync()

    def _on_encrypted(self, received: StanzaBase) -> None:
        """Decrypt an empty OMEMO message (every ``<encrypted>`` without payload) as it arrives (a task
        only for those: this runs for every OMEMO stanza)."""
        if not isinstance(received, Stanza) or received.xml.get("type") == "error":
            return
        elements = [e for ns in (NS2, NSL) for e in received.xml.findall(f"{{{ns}}}encrypted")]
        if not any(_has_payload(element) for element in elements):
            task = asyncio.ensure_future(self._decrypt_empty(received))
            self._background.add(task)  # referenced until done
            task.add_done_callback(self._background.discard)

    async def _decrypt_empty(self, stanza: Stanza) -> None:
        try:
            await self.decrypt_message(stanza)
        except Exception as exc:  # logged: an empty message carries nothing a user would miss
            _log.info("an empty OMEMO message from %s could not be processed: %r", stanza["from"], exc)

    def _unwrap(self, stanza: Stanza) -> Tuple[Stanza, Optional[ET.Element], Optional[str]]:
        """The message to decrypt: ``stanza`` itself, or the message a carbon or archive result forwards.

        Returns:
            The message, its ``<delay>`` (the forwarding wrapper's, else its own, else None), and for an
            archive result the bare JID of the archive that sent it.
        """
        own = self.xmpp.boundjid.bare
        sender = _bare(stanza["from"]) if stanza["from"] else own
        for wrapper in (f"{{{_CARBONS}}}received", f"{{{_CARBONS}}}sent", f"{{{_MAM}}}result"):
            outer = stanza.xml.find(wrapper)
            if outer is None:
                continue
            forwarded = outer.find(f"{{{_FORWARD}}}forwarded")
            inner = forwarded.find(f"{{{_CLIENT}}}message") if forwarded is not None else None
            if forwarded is None or inner is None:
                raise MalformedStanza(f"a <{wrapper.split('}')[1]}> without a forwarded message")
            inner_stanza: Stanza = cast(Any, Stanza)(self.xmpp, copy.deepcopy(inner))
            if wrapper.endswith("result"):
                # The own archive, or a room's archive of its own messages.
                room_archive = inner_stanza["type"] == "groupchat" and _bare(inner_stanza["from"]) == sender
                if sender != own and not room_archive:
                    raise MalformedStanza(f"an archive result from {sender}, which is not the own archive")
                archived_by: Optional[str] = sender
            else:
                if stanza["from"] and str(stanza["from"]) != own:
                    raise MalformedStanza(f"a carbon copy from {stanza['from']}, not from the own account")
                archived_by = None
            delay = forwarded.find(_DELAY)
            return inner_stanza, delay if delay is not None else inner.find(_DELAY), archived_by
        return stanza, stanza.xml.find(_DELAY), None

    def _empty_copy(self, stanza: Stanza) -> Stanza:
        """A new message stanza with the addressing, type (``chat`` if none) and id of ``stanza``."""
        return _message(self.xmpp, stanza.xml.attrib, stanza["type"] or "chat")

    async def _decrypt_one(
        self,
        manager: SessionManager,
        stanza: Stanza,
        delay: Optional[ET.Element],
        namespace: str,
        element: ET.Element,
        sender: str,
        room: Optional[str],
    ) -> Tuple[Stanza, DeviceInformation]:
        if namespace == NS2:
            message: Message = twomemo.etree.parse_message(element, sender)
        else:
            message = await oldmemo.etree.parse_message(element, sender, self.xmpp.boundjid.bare, manager)
        content: List[ET.Element] = []
        own = self.xmpp.boundjid.bare
        if sender == own and message.device_id == manager._omemo_core.own_device_id:
            remembered = self._reflections.get((room, stanza["id"])) if room is not None else None
            if remembered is None:
                where = f"to room {room}" if room is not None else f"to {stanza['to'].bare or own}"
                raise OwnMessage(
                    f"this device sent message {stanza['id']!r} {where} (a copy from an archive or a"
                    " reflection it no longer remembers): a device holds no keys for its own messages"
                )
            content = [copy.deepcopy(child) for child in remembered]
            device = (await manager.get_own_device_information())[0]
        else:

            async def check(plaintext: Optional[bytes], _device: DeviceInformation) -> None:
                if plaintext is None:
                    return
                if namespace == NS2:
                    envelope = sce.parse_envelope(
                        plaintext,
                        expected_from=sender,
                        expected_to=room or (_bare(stanza["to"]) if stanza["to"] else own),
                        now=_sent_at(delay),
                        max_skew=self.config["max_skew"],
                        groupchat=room is not None,
                    )
                    content.extend(envelope.content)
                else:
                    body = ET.Element(f"{{{_CLIENT}}}body")
                    body.text = plaintext.decode("utf-8", errors="replace")
                    content.append(body)

            _, device, _ = await _core_decrypt(manager._omemo_core, message, check)
        result = self._empty_copy(stanza)
        for child in stanza.xml:
            if child.tag in _OUTSIDE or child.tag in _REPLACED or child.tag.startswith(f"{{{_EME}}}"):
                continue
            result.xml.append(copy.deepcopy(child))
        if delay is not None:
            result.xml.append(copy.deepcopy(delay))
        for child in content:
            result.xml.append(child)
        return result, device


def _message(xmpp: Any, attributes: Dict[str, str], type_: str) -> Stanza:
    """A new, empty message stanza with the ``to``, ``from`` and ``id`` of ``attributes`` and ``type_``
    (built from its element: slixmpp's ``make_message`` costs about three times as much)."""
    element = ET.Element(f"{{{_CLIENT}}}message", {"type": type_})
    for name in ("to", "from", "id"):
        value = attributes.get(name)
        if value:
            element.set(name, value)
    stanza: Stanza = cast(Any, Stanza)(xmpp, element)
    return stanza


def _has_payload(element: ET.Element) -> bool:
    return any(child.tag.endswith("}payload") for child in element.iter())


def _identity(element: ET.Element) -> str:
    """What tells one encrypted element from another: its payload (a random-key ciphertext), or for an
    empty message its keys. Archive and live copies of one message share it, whatever their serialisation."""
    payload = next((child.text or "" for child in element.iter() if child.tag.endswith("}payload")), None)
    if payload:
        return payload
    return "|".join(sorted(child.text or "" for child in element.iter() if child.tag.endswith("}key")))


def _inside(tag: str) -> bool:
    """Whether a child of a source stanza goes into the OMEMO 2 envelope."""
    if tag in _OUTSIDE or sce.is_server_processed(tag) or tag.startswith(f"{{{_EME}}}"):
        return False
    return not tag.startswith(f"{{{_CLIENT}}}") or tag == sce.BODY_TAG


def _sent_at(delay: Optional[ET.Element]) -> datetime:
    """When a message was sent: its XEP-0203 ``<delay>`` (offline or archived delivery), else now."""
    if delay is not None:
        stamp = delay.get("stamp", "")
        try:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if when.tzinfo is not None:
                return when
        except ValueError:
            pass
    return datetime.now(timezone.utc)
