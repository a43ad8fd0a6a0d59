# SPDX-License-Identifier: MIT
"""Generate the omemo-dr / nbxmpp corpus (run by hand, see ../README.md).

Drives omemo-dr's own OMEMOSessionManager (its KeyHelper generates identity, device id, signed pre
key and pre keys) with the configuration Gajim uses, and serialises every element with nbxmpp's own
builders (nbxmpp.modules.omemo._make_bundle / _make_devicelist / create_omemo_message /
get_key_transport_message, nbxmpp.modules.pubsub._make_publish_request), exactly as Gajim's OMEMO
module calls them. Only the storage is ours: a small in-memory implementation of omemo_dr's Store
interface (Gajim uses an SQLite one with the same contract).

Usage: <venv with omemo-dr + nbxmpp>/bin/python generate.py OUTDIR
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from base64 import b64encode
from importlib.metadata import version
from pathlib import Path

from nbxmpp.modules.omemo import (
    _make_bundle,
    _make_devicelist,
    create_omemo_message,
    get_key_transport_message,
)
from nbxmpp.modules.pubsub import _make_publish_request
from nbxmpp.namespaces import Namespace
from nbxmpp.protocol import Message
from nbxmpp.structs import OMEMOBundle as NbxmppBundle
from nbxmpp.structs import OMEMOMessage as NbxmppMessage
from omemo_dr.const import NS_OMEMO_TMP, OMEMOTrust
from omemo_dr.exceptions import KeyExchangeMessage
from omemo_dr.protocol.prekeywhispermessage import PreKeyWhisperMessage
from omemo_dr.protocol.whispermessage import WhisperMessage
from omemo_dr.session_manager import OMEMOSessionManager
from omemo_dr.state.prekeyrecord import PreKeyRecord
from omemo_dr.state.sessionrecord import SessionRecord
from omemo_dr.state.signedprekeyrecord import SignedPreKeyRecord
from omemo_dr.state.store import Store
from omemo_dr.structs import IdentityInfo, OMEMOConfig

# The configuration Gajim passes (gajim/common/modules/omemo.py).
GAJIM_CONFIG = OMEMOConfig(
    default_prekey_amount=100,
    min_prekey_amount=80,
    spk_archive_seconds=86400 * 15,
    spk_cycle_seconds=86400,
    unacknowledged_count=2000,
)

# The stanza children Gajim keeps when it encrypts (ALLOWED_TAGS in gajim/common/modules/omemo.py).
GAJIM_ALLOWED_TAGS = [
    ("request", Namespace.RECEIPTS),
    ("active", Namespace.CHATSTATES),
    ("gone", Namespace.CHATSTATES),
    ("inactive", Namespace.CHATSTATES),
    ("paused", Namespace.CHATSTATES),
    ("composing", Namespace.CHATSTATES),
    ("markable", Namespace.CHATMARKERS),
    ("no-store", Namespace.HINTS),
    ("store", Namespace.HINTS),
    ("no-copy", Namespace.HINTS),
    ("no-permanent-store", Namespace.HINTS),
    ("replace", Namespace.CORRECT),
    ("thread", None),
    ("origin-id", Namespace.SID),
]

# Publish options Gajim/nbxmpp use for both nodes (nbxmpp OMEMO.set_bundle / set_devicelist, public=True).
PUBLISH_OPTIONS = {"pubsub#persist_items": "true", "pubsub#access_model": "open"}


class MemoryStore(Store):
    """In-memory omemo_dr Store; identities are trusted blindly (Gajim's default before verification)."""

    def __init__(self) -> None:
        self.device_id: int | None = None
        self.identity = None
        self.identities: dict[tuple[str, bytes], OMEMOTrust] = {}
        self.pre_keys: dict[int, bytes] = {}
        self.max_pre_key_id: int | None = None
        self.signed_pre_keys: dict[int, tuple[bytes, int]] = {}
        self.sessions: dict[tuple[str, int], bytes] = {}
        self.active: dict[tuple[str, int], bool] = {}

    def set_our_identity(self, device_id, identity_key_pair):
        self.device_id = device_id
        self.identity = identity_key_pair

    def get_identity_key_pair(self):
        return self.identity

    def get_our_device_id(self):
        return self.device_id

    def save_identity(self, recipient_id, identity_key):
        self.identities.setdefault((recipient_id, identity_key.serialize()), OMEMOTrust.BLIND)

    def delete_identity(self, recipient_id, identity_key):
        self.identities.pop((recipient_id, identity_key.serialize()), None)

    def is_trusted_identity(self, recipient_id, identity_key):
        return True

    def set_trust(self, recipient_id, identity_key, trust):
        self.identities[(recipient_id, identity_key.serialize())] = trust

    def set_identity_last_seen(self, recipient_id, identity_key):
        pass

    def get_identity_infos(self, recipient_ids) -> list[IdentityInfo]:
        return []

    def get_pre_key_count(self):
        return len(self.pre_keys)

    def load_pre_key(self, pre_key_id):
        return PreKeyRecord.from_bytes(self.pre_keys[pre_key_id])

    def load_pending_pre_keys(self):
        return [PreKeyRecord.from_bytes(r) for _, r in sorted(self.pre_keys.items())]

    def get_current_pre_key_id(self):
        return self.max_pre_key_id

    def store_pre_key(self, pre_key_id, pre_key_record):
        self.pre_keys[pre_key_id] = pre_key_record.serialize()
        self.max_pre_key_id = max(self.max_pre_key_id or 0, pre_key_id)

    def contains_pre_key(self, pre_key_id):
        return pre_key_id in self.pre_keys

    def remove_pre_key(self, pre_key_id):
        self.pre_keys.pop(pre_key_id, None)

    def load_signed_pre_key(self, signed_pre_key_id):
        return SignedPreKeyRecord.from_bytes(self.signed_pre_keys[signed_pre_key_id][0])

    def load_signed_pre_keys(self):
        return [SignedPreKeyRecord.from_bytes(r) for r, _ in self.signed_pre_keys.values()]

    def store_signed_pre_key(self, signed_pre_key_id, signed_pre_key_record):
        self.signed_pre_keys[signed_pre_key_id] = (signed_pre_key_record.serialize(), int(time.time()))

    def contains_signed_pre_key(self, signed_pre_key_id):
        return signed_pre_key_id in self.signed_pre_keys

    def get_current_signed_pre_key_id(self):
        # the newest one (Gajim: ORDER BY timestamp DESC)
        return max(self.signed_pre_keys, key=lambda i: self.signed_pre_keys[i][1])

    def get_signed_pre_key_timestamp(self, signed_pre_key_id):
        return self.signed_pre_keys[signed_pre_key_id][1]

    def remove_old_signed_pre_keys(self, timestamp):
        current = self.get_current_signed_pre_key_id()
        for i, (_, ts) in list(self.signed_pre_keys.items()):
            if ts < timestamp and i != current:
                del self.signed_pre_keys[i]

    def remove_signed_pre_key(self, signed_pre_key_id):
        self.signed_pre_keys.pop(signed_pre_key_id, None)

    def load_session(self, recipient_id, device_id):
        data = self.sessions.get((recipient_id, device_id))
        return SessionRecord(serialized=data) if data is not None else SessionRecord()

    def store_session(self, recipient_id, device_id, session_record):
        self.sessions[(recipient_id, device_id)] = session_record.serialize()

    def contains_session(self, recipient_id, device_id):
        return (recipient_id, device_id) in self.sessions

    def get_inactive_sessions_keys(self, recipient_id):
        return []

    def delete_session(self, recipient_id, device_id):
        self.sessions.pop((recipient_id, device_id), None)

    def delete_all_sessions(self, recipient_id):
        for key in [k for k in self.sessions if k[0] == recipient_id]:
            del self.sessions[key]

    def get_active_device_tuples(self):
        return [k for k, v in self.active.items() if v]

    def get_trust_for_identity(self, recipient_id, identity_key):
        return self.identities.get((recipient_id, identity_key.serialize()))

    def get_unacknowledged_count(self, recipient_id, device_id):
        return 0

    def set_active_state(self, address, devicelist):
        for key in [k for k in self.active if k[0] == address]:
            self.active[key] = key[1] in devicelist
        for device in devicelist:
            self.active[(address, device)] = True

    def set_inactive(self, address, device_id):
        self.active[(address, device_id)] = False

    def is_trusted(self, recipient_id, device_id):
        # Gajim: the identity of this device is VERIFIED or BLIND
        return self.contains_session(recipient_id, device_id)

    def needs_init(self):
        return self.device_id is None


# ---- helpers -------------------------------------------------------------------------------------


def to_nbxmpp_bundle(bundle) -> NbxmppBundle:
    """omemo_dr's OMEMOBundle -> nbxmpp's OMEMOBundle (same fields; Gajim passes omemo_dr's directly)."""
    return NbxmppBundle(
        spk=bundle.spk,
        spk_signature=bundle.spk_signature,
        ik=bundle.ik,
        otpks=bundle.otpks,
        device_id=bundle.device_id,
        namespace=bundle.namespace,
    )


def parse_back_bundle(node, device_id: int):
    """What Gajim does with a fetched bundle: nbxmpp's own parser (request_bundle)."""
    from nbxmpp.modules.omemo import _parse_bundle
    from nbxmpp.simplexml import XML2Node

    # re-parse the serialised XML, as it would arrive in a PEP <item>
    item = XML2Node(f"<item id='current'>{node}</item>")
    return _parse_bundle(item, device_id)


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def decode_protobuf(buf: bytes) -> dict[int, list]:
    """Minimal protobuf decoder (varint and length-delimited fields), independent of omemo_dr."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            length, pos = varint(buf, pos)
            value = buf[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def describe_key(data: bytes, prekey: bool) -> dict:
    """Decode a <key> payload: PreKeyWhisperMessage (field numbers of WhisperTextProtocol.proto) or WhisperMessage."""
    version = data[0]
    if prekey:  # PreKeyWhisperMessage: version byte, protobuf
        outer = decode_protobuf(data[1:])
        inner = decode_protobuf(outer[4][0][1:-8])  # version byte, protobuf, 8-byte MAC
        info = {
            "type": "PreKeySignalMessage",
            "version_byte": version,
            "registration_id": outer.get(5, [None])[0],
            "pre_key_id": outer.get(1, [None])[0],
            "signed_pre_key_id": outer.get(6, [None])[0],
            "base_key": b64encode(outer[2][0]).decode(),
            "identity_key": b64encode(outer[3][0]).decode(),
            "inner_counter": inner.get(2, [0])[0],
            "inner_previous_counter": inner.get(3, [0])[0],
        }
        pk = PreKeyWhisperMessage.from_bytes(data)  # cross-check with omemo_dr's own parser
        assert (pk.get_pre_key_id(), pk.get_signed_pre_key_id()) == (
            info["pre_key_id"],
            info["signed_pre_key_id"],
        )
        return info
    inner = decode_protobuf(data[1:-8])
    WhisperMessage.from_bytes(data)
    return {
        "type": "SignalMessage",
        "version_byte": version,
        "counter": inner.get(2, [0])[0],
        "previous_counter": inner.get(3, [0])[0],
        "ratchet_key": b64encode(inner[1][0]).decode(),
    }


def message_expectation(omemo_message, recipients: dict[int, str]) -> dict:
    keys = []
    for rid, (data, prekey) in omemo_message.keys.items():
        entry = {"rid": rid, "recipient": recipients[rid], "prekey": prekey}
        entry.update(describe_key(data, prekey))
        keys.append(entry)
    return {
        "sender_device_id": omemo_message.sid,
        "recipient_device_ids": [k["rid"] for k in keys],
        "iv_length": len(omemo_message.iv),
        "has_payload": omemo_message.payload is not None,
        "payload_length": None if omemo_message.payload is None else len(omemo_message.payload),
        "keys": keys,
    }


def gajim_chat_stanza(to: str, text: str) -> Message:
    """The plaintext stanza Gajim's Message.build_message_stanza makes for a 1:1 chat message."""
    stanza = Message(to=to, body=text, typ="chat")
    message_id = str(uuid.uuid4())
    stanza.setID(message_id)
    stanza.setOriginID(message_id)
    stanza.setReceiptRequest()
    stanza.setTag("active", namespace=Namespace.CHATSTATES)
    stanza.setMarkable()
    return stanza


def encrypted_chat(manager: OMEMOSessionManager, to: str, text: str):
    omemo_message = manager.encrypt(to, text, groupchat=False)
    assert omemo_message is not None
    nb = NbxmppMessage(
        sid=omemo_message.sid, iv=omemo_message.iv, keys=omemo_message.keys, payload=omemo_message.payload
    )
    stanza = gajim_chat_stanza(to, text)
    create_omemo_message(stanza, nb, node_whitelist=GAJIM_ALLOWED_TAGS)
    return omemo_message, stanza


def key_transport(manager: OMEMOSessionManager, to: str, devices: list[int]):
    omemo_message = manager.encrypt_key_transport(to, devices)
    assert omemo_message is not None
    nb = NbxmppMessage(sid=omemo_message.sid, iv=omemo_message.iv, keys=omemo_message.keys, payload=None)
    return omemo_message, get_key_transport_message("chat", to, nb)


def bundle_expectation(bundle) -> dict:
    return {
        "namespace": NS_OMEMO_TMP,
        "device_id": bundle.device_id,
        "signed_pre_key_id": bundle.spk["id"],
        "signed_pre_key": b64encode(bundle.spk["key"]).decode(),
        "signed_pre_key_signature": b64encode(bundle.spk_signature).decode(),
        "identity_key": b64encode(bundle.ik).decode(),
        "pre_key_ids": [k["id"] for k in bundle.otpks],
    }


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    alice_jid, bob_jid = "alice@localhost", "bob@localhost"
    alice = OMEMOSessionManager(alice_jid, MemoryStore(), GAJIM_CONFIG)
    alice2 = OMEMOSessionManager(alice_jid, MemoryStore(), GAJIM_CONFIG)
    bob = OMEMOSessionManager(bob_jid, MemoryStore(), GAJIM_CONFIG)
    names = {alice.get_our_device(): "alice", alice2.get_our_device(): "alice2", bob.get_our_device(): "bob"}
    artifacts: dict[str, dict] = {}

    def write(name: str, node, expectation: dict, comment: str | None = None) -> None:
        text = str(node)
        (out / name).write_text(text + "\n", encoding="utf-8")
        artifacts[name] = expectation

    # --- bundles (set_bundle: backend.get_bundle(NS) -> nbxmpp _make_bundle, published at item 'current')
    bundles = {}
    for who, manager in (("alice", alice), ("alice2", alice2), ("bob", bob)):
        bundle = manager.get_bundle(NS_OMEMO_TMP)
        bundles[who] = bundle
        node = _make_bundle(to_nbxmpp_bundle(bundle))
        exp = {"kind": "bundle", "element": "bundle", **bundle_expectation(bundle)}
        write(f"bundle-{who}.xml", node, exp)
    bob_device = bob.get_our_device()
    publish = _make_publish_request(
        f"{Namespace.OMEMO_TEMP_BUNDLE}:{bob_device}",
        _make_bundle(to_nbxmpp_bundle(bundles["bob"])),
        "current",
        PUBLISH_OPTIONS,
        None,
    )
    write(
        "publish-bundle-bob.xml",
        publish,
        {
            "kind": "bundle-publish-iq",
            "node": f"{Namespace.OMEMO_TEMP_BUNDLE}:{bob_device}",
            "item_id": "current",
            "payload": "bundle-bob.xml",
        },
    )

    # --- device lists (Gajim's set_devicelist: {our device} | known ones -> nbxmpp _make_devicelist)
    alice_devices = {alice.get_our_device(), alice2.get_our_device()}
    write(
        "devicelist-alice.xml",
        _make_devicelist(alice_devices),
        {
            "kind": "devicelist",
            "element": "list",
            "namespace": NS_OMEMO_TMP,
            "device_ids": sorted(alice_devices),
            "order_not_significant": True,
        },
    )
    write(
        "devicelist-bob.xml",
        _make_devicelist({bob_device}),
        {"kind": "devicelist", "element": "list", "namespace": NS_OMEMO_TMP, "device_ids": [bob_device]},
    )
    write(
        "publish-devicelist-alice.xml",
        _make_publish_request(
            Namespace.OMEMO_TEMP_DL, _make_devicelist(alice_devices), "current", PUBLISH_OPTIONS, None
        ),
        {
            "kind": "devicelist-publish-iq",
            "node": Namespace.OMEMO_TEMP_DL,
            "item_id": "current",
            "payload": "devicelist-alice.xml",
        },
    )

    # --- alice learns the device lists and fetches the bundles (Gajim: request_bundle -> nbxmpp
    # _parse_bundle -> backend.build_session), then sends a key transport message to each new device.
    alice.update_devicelist(bob_jid, [bob_device])
    alice.update_devicelist(alice_jid, sorted(alice_devices))
    alice.build_session(
        bob_jid, parse_back_bundle(_make_bundle(to_nbxmpp_bundle(bundles["bob"])), bob_device)
    )
    alice.build_session(
        alice_jid,
        parse_back_bundle(_make_bundle(to_nbxmpp_bundle(bundles["alice2"])), alice2.get_our_device()),
    )
    alice2.update_devicelist(alice_jid, sorted(alice_devices))
    bob.update_devicelist(alice_jid, [alice.get_our_device()])

    kt, kt_stanza = key_transport(alice, bob_jid, [bob_device])
    exp = {
        "kind": "message",
        "element": "encrypted",
        "namespace": NS_OMEMO_TMP,
        "stanza": "message",
        "key_transport": True,
        **message_expectation(kt, names),
    }
    write("message-keytransport.xml", kt_stanza, exp)
    try:
        bob.decrypt_message(kt, alice_jid)
        raise AssertionError("expected KeyExchangeMessage")
    except KeyExchangeMessage:
        pass

    # --- alice's first chat message: still PreKeySignalMessages (no reply received yet) to bob and alice2
    text1 = "Hello Bob, this is omemo-dr (Gajim's OMEMO library)."
    m1, m1_stanza = encrypted_chat(alice, bob_jid, text1)
    exp = {
        "kind": "message",
        "element": "encrypted",
        "namespace": NS_OMEMO_TMP,
        "stanza": "message",
        "key_transport": False,
        "plaintext": text1,
        **message_expectation(m1, names),
    }
    write("message-keyexchange.xml", m1_stanza, exp)
    assert bob.decrypt_message(m1, alice_jid)[0] == text1
    assert alice2.decrypt_message(m1, alice_jid)[0] == text1

    # --- bob replies: a normal SignalMessage
    text2 = "Hi Alice, reply from a second omemo-dr device."
    m2, m2_stanza = encrypted_chat(bob, alice_jid, text2)
    exp = {
        "kind": "message",
        "element": "encrypted",
        "namespace": NS_OMEMO_TMP,
        "stanza": "message",
        "key_transport": False,
        "plaintext": text2,
        **message_expectation(m2, names),
    }
    write("message-reply.xml", m2_stanza, exp)
    assert alice.decrypt_message(m2, bob_jid)[0] == text2

    # --- alice's follow-up: normal to bob, still a key exchange to alice2 (which never answered)
    text3 = "Follow-up on the established session."
    m3, m3_stanza = encrypted_chat(alice, bob_jid, text3)
    exp = {
        "kind": "message",
        "element": "encrypted",
        "namespace": NS_OMEMO_TMP,
        "stanza": "message",
        "key_transport": False,
        "plaintext": text3,
        **message_expectation(m3, names),
    }
    write("message-followup.xml", m3_stanza, exp)
    assert bob.decrypt_message(m3, alice_jid)[0] == text3
    assert alice2.decrypt_message(m3, alice_jid)[0] == text3

    meta = {
        "generator": "generate/generate.py",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {p: version(p) for p in ("omemo-dr", "nbxmpp", "protobuf", "cryptography")},
        "devices": {v: k for k, v in names.items()},
        "jids": {"alice": alice_jid, "alice2": alice_jid, "bob": bob_jid},
        "note": "ids are as omemo-dr generated them; no private keys in this file",
    }
    (out / "artifacts.json").write_text(json.dumps({"about": meta, "artifacts": artifacts}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
