"""An in-memory "XMPP network" for testing applications (and this library) without a server.

:class:`InMemoryXMPP` plays the part of the PEP service and of message routing:

- one device list node per ``(namespace, bare_jid)`` and one bundle per
  ``(namespace, bare_jid, device_id)``, holding the backend objects as they are (no XML), or, for the
  namespaces given a :class:`BundleCodec`, the bundle's XML as published, parsed again on every download
  (so a test can publish a malformed bundle, as a buggy or foreign client would);
- one inbox per ``(bare_jid, device_id)``: a sent message lands in the inbox of every device it has
  key material for;
- failure injection (:meth:`InMemoryXMPP.fail`) and a call log (:attr:`InMemoryXMPP.calls`).

:meth:`InMemoryXMPP.session_manager_class` turns any concrete-trust :class:`SessionManager` subclass
(e.g. a policy of :mod:`omemo.trust`) into one whose XMPP hooks talk to the network as a given account::

    network = InMemoryXMPP()
    AliceManager = network.session_manager_class("alice@example.org", BTBVTrust)
    alice = await AliceManager.create([backend], storage, "alice@example.org", None, BTBVTrust.UNDECIDED)
    messages, errors = await alice.encrypt(frozenset({"bob@example.org"}), {ns: b"hi"})
    for message in messages:
        network.send(message)
    for message in network.take("bob@example.org", bob_device_id):
        plaintext, sender, _ = await bob.decrypt(message)

PEP notifications are not pushed on their own (the hooks must not call back into session managers):
managers registered with :meth:`InMemoryXMPP.subscribe` receive the device lists published since the
last call when the test awaits :meth:`InMemoryXMPP.flush_notifications`.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Tuple, Type, TypeVar, cast

from .bundle import Bundle
from .message import Message
from .session_manager import (
    BundleDeletionFailed,
    BundleDownloadFailed,
    BundleNotFound,
    BundleUploadFailed,
    DeviceListDownloadFailed,
    DeviceListUploadFailed,
    MessageSendingFailed,
    SessionManager,
    UnknownNamespace,
    XMPPInteractionFailed,
)
from .types import DeviceList

__all__ = ["OPERATIONS", "BundleCodec", "InMemoryXMPP", "InjectedFailure"]

SessionManagerT = TypeVar("SessionManagerT", bound=SessionManager)

#: The operations failures can be injected into, and the exception each raises by default.
OPERATIONS: Dict[str, Type[XMPPInteractionFailed]] = {
    "upload_bundle": BundleUploadFailed,
    "download_bundle": BundleDownloadFailed,
    "delete_bundle": BundleDeletionFailed,
    "upload_device_list": DeviceListUploadFailed,
    "download_device_list": DeviceListDownloadFailed,
    "send_message": MessageSendingFailed,
}


@dataclass
class InjectedFailure:
    """A failure rule: the next ``times`` matching calls of ``operation`` raise.

    ``None`` filters match anything; ``times=None`` never runs out.
    """

    operation: str
    namespace: Optional[str] = None
    bare_jid: Optional[str] = None
    device_id: Optional[int] = None
    times: Optional[int] = 1
    exception: Optional[Exception] = None

    def matches(self, operation: str, namespace: str, bare_jid: str, device_id: Optional[int]) -> bool:
        """Returns: whether the rule applies to a call (a ``device_id`` filter needs a device id)."""
        return (
            self.operation == operation
            and self.namespace in (None, namespace)
            and self.bare_jid in (None, bare_jid)
            and (self.device_id is None or self.device_id == device_id)
        )


class BundleCodec(Protocol):
    """The bundle half of a backend's ``etree`` module (``twomemo.etree``, ``oldmemo.etree``)."""

    def serialize_bundle(self, bundle: Any) -> ET.Element:
        """The ``<bundle>`` element of a bundle."""
        ...

    def parse_bundle(self, element: ET.Element, bare_jid: str, device_id: int) -> Any:
        """The bundle of a ``<bundle>`` element; raises ``ValueError`` for a malformed one."""
        ...


class InMemoryXMPP:
    """The in-memory network. Backend-agnostic: bundles and messages are stored as given."""

    def __init__(
        self,
        namespaces: Optional[Iterable[str]] = None,
        bundle_codecs: Optional[Mapping[str, BundleCodec]] = None,
    ) -> None:
        """Create an empty network.

        Args:
            namespaces: the namespaces the "server" knows; operations on others raise
                ``UnknownNamespace``. ``None`` (the default) accepts every namespace.
            bundle_codecs: namespace -> the backend's ``etree`` module: bundles of these namespaces
                are published as XML (:attr:`bundle_xml`) and parsed on download, as over a real server.
        """
        self.namespaces = None if namespaces is None else frozenset(namespaces)
        #: ``(namespace, bare_jid)`` -> published device list.
        self.device_lists: Dict[Tuple[str, str], DeviceList] = {}
        #: ``(namespace, bare_jid, device_id)`` -> published bundle (namespaces without a codec).
        self.bundles: Dict[Tuple[str, str, int], Bundle] = {}
        #: ``(namespace, bare_jid, device_id)`` -> published bundle XML (namespaces with a codec).
        self.bundle_xml: Dict[Tuple[str, str, int], bytes] = {}
        self._codecs: Dict[str, BundleCodec] = dict(bundle_codecs or {})
        #: ``(bare_jid, device_id)`` -> received messages, oldest first.
        self.inboxes: Dict[Tuple[str, int], List[Message]] = {}
        #: Every hook call: ``(operation, namespace, bare_jid, device_id or None)``.
        self.calls: List[Tuple[str, str, str, Optional[int]]] = []
        self._failures: List[InjectedFailure] = []
        self._subscribers: List[SessionManager] = []
        self._pending: List[Tuple[str, str]] = []

    # -- failure injection --------------------------------------------------------------------------

    def fail(
        self,
        operation: str,
        *,
        namespace: Optional[str] = None,
        bare_jid: Optional[str] = None,
        device_id: Optional[int] = None,
        times: Optional[int] = 1,
        exception: Optional[Exception] = None,
    ) -> InjectedFailure:
        """Make matching calls fail.

        Args:
            operation: one of :data:`OPERATIONS`.
            namespace: only calls in this namespace.
            bare_jid: only calls concerning this account (the owner of the node, or the recipient).
            device_id: only calls concerning this device (bundles; messages: the sender device).
            times: how many calls fail; ``None`` for all of them (until :meth:`clear_failures`).
            exception: what to raise; by default the documented exception of the operation.

        Returns:
            The rule (its ``times`` counts down).

        Raises:
            ValueError: unknown operation.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}")
        rule = InjectedFailure(operation, namespace, bare_jid, device_id, times, exception)
        self._failures.append(rule)
        return rule

    def clear_failures(self) -> None:
        """Remove every failure rule."""
        self._failures.clear()

    def _enter(self, operation: str, namespace: str, bare_jid: str, device_id: Optional[int] = None) -> None:
        self.calls.append((operation, namespace, bare_jid, device_id))
        if self.namespaces is not None and namespace not in self.namespaces:
            raise UnknownNamespace(f"the in-memory server does not know the namespace {namespace!r}")
        for rule in self._failures:
            if rule.matches(operation, namespace, bare_jid, device_id) and rule.times != 0:
                if rule.times is not None:
                    rule.times -= 1
                if rule.exception is not None:
                    raise rule.exception
                where = f"{bare_jid}" if device_id is None else f"device {device_id} of {bare_jid}"
                raise OPERATIONS[operation](f"injected failure: {operation} for {where} ({namespace})")

    # -- PEP: bundles -------------------------------------------------------------------------------

    async def upload_bundle(self, bare_jid: str, bundle: Bundle) -> None:
        """Publish a bundle as ``bare_jid`` (which must be the bundle's account).

        Raises:
            BundleUploadFailed: injected, or the bundle belongs to another account.
        """
        self._enter("upload_bundle", bundle.namespace, bare_jid, bundle.device_id)
        if bundle.bare_jid != bare_jid:
            raise BundleUploadFailed(f"{bare_jid} may not publish the bundle of {bundle.bare_jid}")
        key = (bundle.namespace, bare_jid, bundle.device_id)
        codec = self._codecs.get(bundle.namespace)
        if codec is None:
            self.bundles[key] = bundle
        else:
            self.bundle_xml[key] = ET.tostring(codec.serialize_bundle(bundle))

    async def download_bundle(self, namespace: str, bare_jid: str, device_id: int) -> Bundle:
        """Fetch a bundle (parsing its XML in the namespaces with a codec).

        Raises:
            BundleNotFound: no such bundle.
            BundleDownloadFailed: injected.
            ValueError: the published XML does not parse (the codec's error, as the ``etree`` modules
                raise it).
        """
        self._enter("download_bundle", namespace, bare_jid, device_id)
        key = (namespace, bare_jid, device_id)
        codec = self._codecs.get(namespace)
        if codec is not None and key in self.bundle_xml:
            bundle: Bundle = codec.parse_bundle(ET.fromstring(self.bundle_xml[key]), bare_jid, device_id)
            return bundle
        found = self.bundles.get(key)
        if found is None:
            raise BundleNotFound(f"no bundle of device {device_id} of {bare_jid} ({namespace})")
        return found

    async def delete_bundle(self, bare_jid: str, namespace: str, device_id: int) -> None:
        """Delete an own bundle (a missing one is fine).

        Raises:
            BundleDeletionFailed: injected.
        """
        self._enter("delete_bundle", namespace, bare_jid, device_id)
        self.bundles.pop((namespace, bare_jid, device_id), None)
        self.bundle_xml.pop((namespace, bare_jid, device_id), None)

    # -- PEP: device lists --------------------------------------------------------------------------

    async def upload_device_list(self, bare_jid: str, namespace: str, device_list: DeviceList) -> None:
        """Publish the device list of ``bare_jid`` (queued for subscribers).

        Raises:
            DeviceListUploadFailed: injected.
        """
        self._enter("upload_device_list", namespace, bare_jid)
        self.device_lists[(namespace, bare_jid)] = copy.deepcopy(dict(device_list))
        self._pending.append((namespace, bare_jid))

    async def download_device_list(self, namespace: str, bare_jid: str) -> DeviceList:
        """Fetch a device list (empty if never published).

        Raises:
            DeviceListDownloadFailed: injected.
        """
        self._enter("download_device_list", namespace, bare_jid)
        return copy.deepcopy(self.device_lists.get((namespace, bare_jid), {}))

    def subscribe(self, manager: SessionManager) -> None:
        """Register a session manager for device list notifications (see :meth:`flush_notifications`)."""
        self._subscribers.append(manager)

    async def flush_notifications(self) -> None:
        """Feed every device list published since the last flush to every subscribed manager."""
        while self._pending:
            namespace, bare_jid = self._pending.pop(0)
            device_list = self.device_lists.get((namespace, bare_jid), {})
            for manager in list(self._subscribers):
                try:
                    await manager.update_device_list(namespace, bare_jid, copy.deepcopy(device_list))
                except UnknownNamespace:
                    continue  # that manager does not load this backend

    # -- messages -----------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Route an application message to every device it has key material for (no failures)."""
        for encrypted, _ in message.keys:
            self.inboxes.setdefault((encrypted.bare_jid, encrypted.device_id), []).append(message)

    async def send_message(self, message: Message, bare_jid: str) -> None:
        """Route a library-generated message to the devices of ``bare_jid`` it has key material for.

        Raises:
            MessageSendingFailed: injected.
        """
        self._enter("send_message", message.namespace, bare_jid, message.device_id)
        for encrypted, _ in message.keys:
            if encrypted.bare_jid == bare_jid:
                self.inboxes.setdefault((bare_jid, encrypted.device_id), []).append(message)

    def inbox(self, bare_jid: str, device_id: int) -> List[Message]:
        """Returns: the (live) inbox of a device."""
        return self.inboxes.setdefault((bare_jid, device_id), [])

    def take(self, bare_jid: str, device_id: int) -> List[Message]:
        """Returns: the messages in a device's inbox, emptying it."""
        return self.inboxes.pop((bare_jid, device_id), [])

    # -- session manager binding --------------------------------------------------------------------

    def session_manager_class(
        self, bare_jid: str, base: Callable[..., SessionManagerT]
    ) -> Type[SessionManagerT]:
        """Derive a session manager class whose XMPP hooks act as ``bare_jid`` on this network.

        Args:
            bare_jid: the account the manager runs as.
            base: a subclass of :class:`SessionManager` that implements the trust hooks (typed as a
                callable only so that abstract classes type-check).

        Returns:
            The derived class; use its ``create``.
        """
        network = self

        class _Bound(base):  # type: ignore[valid-type,misc]
            @staticmethod
            async def _upload_bundle(bundle: Bundle) -> None:
                await network.upload_bundle(bare_jid, bundle)

            @staticmethod
            async def _download_bundle(namespace: str, other: str, device_id: int) -> Bundle:
                return await network.download_bundle(namespace, other, device_id)

            @staticmethod
            async def _delete_bundle(namespace: str, device_id: int) -> None:
                await network.delete_bundle(bare_jid, namespace, device_id)

            @staticmethod
            async def _upload_device_list(namespace: str, device_list: DeviceList) -> None:
                await network.upload_device_list(bare_jid, namespace, device_list)

            @staticmethod
            async def _download_device_list(namespace: str, other: str) -> DeviceList:
                return await network.download_device_list(namespace, other)

            @staticmethod
            async def _send_message(message: Message, recipient: str) -> None:
                await network.send_message(message, recipient)

        _Bound.__name__ = _Bound.__qualname__ = f"InMemory{getattr(base, '__name__', 'SessionManager')}"
        return cast(Type[SessionManagerT], _Bound)
