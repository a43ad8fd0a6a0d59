"""The PEP side of OMEMO for slixmpp: node names, publishing with publish-options (and repairing a node
that exists with another configuration), downloading items.

Nodes (XEP-0384):

- ``urn:xmpp:omemo:2``: device list ``urn:xmpp:omemo:2:devices`` (item ``current``), bundles in one node
  ``urn:xmpp:omemo:2:bundles`` (one item per device, ``max_items=max``);
- ``eu.siacs.conversations.axolotl``: device list ``eu.siacs.conversations.axolotl.devicelist`` (item
  ``current``), one node per device ``eu.siacs.conversations.axolotl.bundles:<device id>``.

Every node is ``access_model=open``, so that contacts without a presence subscription (and anyone the
user writes to) can read it.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import JID

__all__ = [
    "DEVICE_LIST_NODES",
    "NS2",
    "NSL",
    "PubSubFailure",
    "bundle_location",
    "get_items",
    "publish",
    "retract_or_delete",
]

_log = logging.getLogger("omemo_slixmpp")

NS2 = "urn:xmpp:omemo:2"
NSL = "eu.siacs.conversations.axolotl"
DEVICE_LIST_NODES: Dict[str, str] = {NS2: "urn:xmpp:omemo:2:devices", NSL: f"{NSL}.devicelist"}
_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
_PUBSUB_ERRORS = "{http://jabber.org/protocol/pubsub#errors}"


class PubSubFailure(Exception):
    """A PEP request failed; ``not_found`` tells an absent node or item from other failures."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def bundle_location(namespace: str, device_id: int) -> Tuple[str, str]:
    """Returns: the node and item id of a device's bundle."""
    if namespace == NS2:
        return f"{NS2}:bundles", str(device_id)
    return f"{NSL}.bundles:{device_id}", "current"


def _form(xmpp: Any, form_type: str, fields: Dict[str, str]) -> Any:
    form = xmpp.plugin["xep_0004"].make_form("submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for name, value in fields.items():
        form.add_field(var=f"pubsub#{name}", value=value)
    return form


def _publish_form(xmpp: Any, options: Dict[str, str]) -> Any:
    return _form(xmpp, _PUBLISH_OPTIONS, options)


def _describe(exc: Exception) -> str:
    if isinstance(exc, IqError):
        return f"{exc.iq['error']['type']}/{exc.iq['error']['condition']}: {exc.iq['error']['text']}"
    return type(exc).__name__


def _is(exc: IqError, condition: str) -> bool:
    return (
        exc.iq["error"]["condition"] == condition
        or exc.iq.xml.find(f".//{_PUBSUB_ERRORS}{condition}") is not None
    )


async def publish(xmpp: Any, node: str, item_id: str, payload: ET.Element, options: Dict[str, str]) -> None:
    """Publish ``payload`` as item ``item_id`` of the own ``node`` with publish-options ``options``.

    A server that refuses because the node exists with another configuration (``precondition-not-met``)
    gets the node reconfigured, then the publish is repeated. If it refuses ``max_items=max``, the
    publish is repeated with a number instead.

    Raises:
        PubSubFailure: the item could not be published.
    """
    pubsub = xmpp.plugin["xep_0060"]
    own = JID(xmpp.boundjid.bare)
    try:
        try:
            await pubsub.publish(
                own, node, id=item_id, payload=payload, options=_form(xmpp, _PUBLISH_OPTIONS, options)
            )
        except IqError as exc:
            if _is(exc, "precondition-not-met"):
                _log.info("reconfiguring PEP node %s (%s)", node, options)
                await pubsub.set_node_config(own, node, _form(xmpp, _NODE_CONFIG, options))
            elif options.get("max_items") == "max" and _is(exc, "not-acceptable"):
                options = {**options, "max_items": "10000"}
            else:
                raise
            await pubsub.publish(
                own, node, id=item_id, payload=payload, options=_form(xmpp, _PUBLISH_OPTIONS, options)
            )
    except (IqError, IqTimeout) as exc:
        raise PubSubFailure(f"publishing to PEP node {node} failed: {_describe(exc)}") from exc


async def get_items(xmpp: Any, jid: str, node: str, item_id: Optional[str] = None) -> List[ET.Element]:
    """The payloads of the items of ``node`` of ``jid`` (only ``item_id`` if given).

    Raises:
        PubSubFailure: the request failed (``not_found`` for an absent node or item).
    """
    pubsub = xmpp.plugin["xep_0060"]
    try:
        if item_id is None:
            iq = await pubsub.get_items(JID(jid), node)
        else:
            iq = await pubsub.get_items(JID(jid), node, item_ids=[item_id])
    except IqError as exc:
        raise PubSubFailure(
            f"fetching PEP node {node} of {jid} failed: {_describe(exc)}",
            not_found=_is(exc, "item-not-found"),
        ) from exc
    except IqTimeout as exc:
        raise PubSubFailure(f"fetching PEP node {node} of {jid} timed out") from exc
    payloads = []
    for item in iq["pubsub"]["items"]:
        if item_id is not None and item["id"] != item_id:
            continue
        payload = item.xml.find("*")
        if payload is not None:
            payloads.append(payload)
    return payloads


async def retract_or_delete(xmpp: Any, namespace: str, device_id: int) -> None:
    """Remove the own bundle of ``device_id``: its item (OMEMO 2) or its node (legacy); absent is fine.

    Raises:
        PubSubFailure: the server refused.
    """
    pubsub = xmpp.plugin["xep_0060"]
    own = JID(xmpp.boundjid.bare)
    node, item_id = bundle_location(namespace, device_id)
    try:
        if namespace == NS2:
            await pubsub.retract(own, node, item_id, notify=False)
        else:
            await pubsub.delete_node(own, node)
    except IqError as exc:
        if not _is(exc, "item-not-found"):
            raise PubSubFailure(
                f"removing the bundle of device {device_id} failed: {_describe(exc)}"
            ) from exc
    except IqTimeout as exc:
        raise PubSubFailure(f"removing the bundle of device {device_id} timed out") from exc
