# SPDX-License-Identifier: MIT
"""Build omemo_c_gen.c against Debian's libomemo-c, run it, and wrap its output in XML (see ../README.md).

Usage: python3 generate.py OUTDIR      (needs gcc, pkg-config, libomemo-c-dev, libssl-dev; stdlib only)

Legacy elements are serialised the way Dino's xmpp-vala StanzaNode.to_xml writes the nodes Dino's
OMEMO plugin builds (single-quoted attributes, attributes in insertion order, `<x/>` for empty
elements, no whitespace). OMEMO 2 elements are shaped by hand after XEP-0384 0.8: Dino has no
OMEMO 2 code; libomemo-c only provides the cryptography.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
LEGACY = "eu.siacs.conversations.axolotl"
OMEMO2 = "urn:xmpp:omemo:2"


def run_generator(version: int) -> dict:
    exe = Path(tempfile.gettempdir()) / "omemo_c_gen"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libomemo-c"], check=True, capture_output=True, text=True
    ).stdout.split()
    subprocess.run(
        ["gcc", "-O1", "-o", str(exe), str(HERE / "omemo_c_gen.c"), *flags, "-lcrypto"], check=True
    )
    lines = subprocess.run(
        [str(exe), str(version)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    out: dict = {"devices": {}, "pk": {}}
    for line in lines:
        parts = line.split(" ")
        if parts[0] == "device":
            out["devices"][parts[1]] = int(parts[2])
        elif ".pk." in parts[0]:
            who, _, pid = parts[0].split(".")
            out["pk"].setdefault(who, []).append((int(pid), parts[1]))
        else:
            out[parts[0]] = parts[1]
    return out


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def pb(buf: bytes) -> dict[int, list]:
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            n, pos = varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def describe(data: bytes, version: int, kex: bool) -> dict:
    """Decode a <key> ourselves: WhisperTextProtocol.proto (legacy) or OMEMO.proto (XEP-0384 0.8)."""
    if version < 4:
        if kex:
            f = pb(data[1:])
            inner = pb(f[4][0][1:-8])
            return {
                "type": "PreKeySignalMessage",
                "version_byte": data[0],
                "registration_id": f.get(5, [None])[0],
                "pre_key_id": f.get(1, [None])[0],
                "signed_pre_key_id": f.get(6, [None])[0],
                "base_key": b64(f[2][0]),
                "identity_key": b64(f[3][0]),
                "inner_counter": inner.get(2, [0])[0],
                "inner_previous_counter": inner.get(3, [0])[0],
            }
        inner = pb(data[1:-8])
        return {
            "type": "SignalMessage",
            "version_byte": data[0],
            "counter": inner.get(2, [0])[0],
            "previous_counter": inner.get(3, [0])[0],
            "ratchet_key": b64(inner[1][0]),
        }
    if kex:
        f = pb(data)
        auth = pb(f[5][0])
        msg = pb(auth[2][0])
        return {
            "type": "OMEMOKeyExchange",
            "pre_key_id": f[1][0],
            "signed_pre_key_id": f[2][0],
            "ik": b64(f[3][0]),
            "ek": b64(f[4][0]),
            "mac_length": len(auth[1][0]),
            "inner_n": msg[1][0],
            "inner_pn": msg[2][0],
        }
    auth = pb(data)
    msg = pb(auth[2][0])
    return {
        "type": "OMEMOAuthenticatedMessage",
        "mac_length": len(auth[1][0]),
        "n": msg[1][0],
        "pn": msg[2][0],
        "dh_pub": b64(msg[3][0]),
    }


def bundle_xml(g: dict, who: str, version: int) -> str:
    pks = g["pk"][who]
    if version < 4:  # Dino's StreamModule.publish_bundles
        pre = "".join(f"<preKeyPublic preKeyId='{i}'>{k}</preKeyPublic>" for i, k in pks)
        return (
            f"<bundle xmlns='{LEGACY}'><signedPreKeyPublic signedPreKeyId='{g[who + '.spk_id']}'>{g[who + '.spk']}"
            f"</signedPreKeyPublic><signedPreKeySignature>{g[who + '.spks']}</signedPreKeySignature>"
            f"<identityKey>{g[who + '.ik']}</identityKey><prekeys>{pre}</prekeys></bundle>"
        )
    pre = "".join(f"<pk id='{i}'>{k}</pk>" for i, k in pks)
    return (
        f"<bundle xmlns='{OMEMO2}'><spk id='{g[who + '.spk_id']}'>{g[who + '.spk']}</spk><spks>{g[who + '.spks']}"
        f"</spks><ik>{g[who + '.ik']}</ik><prekeys>{pre}</prekeys></bundle>"
    )


def message_xml(g: dict, name: str, sender: str, recipient: str, to_jid: str, version: int, kex: bool) -> str:
    sid, rid = g["devices"][sender], g["devices"][recipient]
    data = g[f"{name}.key.data"]
    if version < 4:  # Dino: EncryptionData.get_encrypted_node (iv first, keys appended after it), EME, body
        key = f"<key rid='{rid}'{' prekey=' + chr(39) + 'true' + chr(39) if kex else ''}>{data}</key>"
        enc = (
            f"<encrypted xmlns='{LEGACY}'><header sid='{sid}'><iv>{g[name + '.iv']}</iv>{key}</header>"
            f"<payload>{g[name + '.payload']}</payload></encrypted>"
        )
        return (
            f"<message xmlns='jabber:client' id='{uuid.uuid4()}' to='{to_jid}' type='chat'>"
            f"<body>{escape('[This message is OMEMO encrypted]')}</body>{enc}"
            f"<encryption xmlns='urn:xmpp:eme:0' namespace='{LEGACY}' name='OMEMO'/>"
            f"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
    key = f"<key rid='{rid}'{' kex=' + chr(39) + 'true' + chr(39) if kex else ''}>{data}</key>"
    return (
        f"<message xmlns='jabber:client' id='{uuid.uuid4()}' to='{to_jid}' type='chat'>"
        f"<encrypted xmlns='{OMEMO2}'><header sid='{sid}'><keys jid='{to_jid}'>{key}</keys></header></encrypted>"
        f"<encryption xmlns='urn:xmpp:eme:0' namespace='{OMEMO2}' name='OMEMO'/><store xmlns='urn:xmpp:hints'/>"
        f"</message>"
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, dict] = {}
    about_devices = {}
    jids = {"alice": "alice@localhost", "bob": "bob@localhost"}
    for version, tag, ns in ((3, "legacy", LEGACY), (4, "omemo2", OMEMO2)):
        g = run_generator(version)
        about_devices[tag] = g["devices"]
        for who in ("alice", "bob"):
            name = f"bundle-{tag}-{who}.xml"
            (out / name).write_text(bundle_xml(g, who, version) + "\n")
            artifacts[name] = {
                "kind": "bundle",
                "namespace": ns,
                "device_id": g["devices"][who],
                "signed_pre_key_id": int(g[who + ".spk_id"]),
                "signed_pre_key": g[who + ".spk"],
                "signed_pre_key_signature": g[who + ".spks"],
                "identity_key": g[who + ".ik"],
                "pre_key_ids": [i for i, _ in g["pk"][who]],
                "pre_key_ids_from": "Dino's generate_pre_keys (random start, consecutive)"
                if who == "alice"
                else "libomemo-c signal_protocol_key_helper_generate_pre_keys (random start)",
            }
            name = f"devicelist-{tag}-{who}.xml"
            dev = g["devices"][who]
            xml = (
                f"<list xmlns='{LEGACY}'><device id='{dev}'/></list>"
                if version < 4
                else f"<devices xmlns='{OMEMO2}'><device id='{dev}'/></devices>"
            )
            (out / name).write_text(xml + "\n")
            artifacts[name] = {"kind": "devicelist", "namespace": ns, "device_ids": [dev]}
        if version < 4:  # Dino publishes its bundle at item id '1' (StreamModule.publish_bundles)
            bob = g["devices"]["bob"]
            iq = (
                f"<iq xmlns='jabber:client' type='set' id='{uuid.uuid4()}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                f"<publish node='{LEGACY}.bundles:{bob}'><item id='1'>{bundle_xml(g, 'bob', 3)}</item></publish></pubsub></iq>"
            )
            (out / "publish-bundle-legacy-bob.xml").write_text(iq + "\n")
            artifacts["publish-bundle-legacy-bob.xml"] = {
                "kind": "bundle-publish-iq",
                "node": f"{LEGACY}.bundles:{bob}",
                "item_id": "1",
                "payload": "bundle-legacy-bob.xml",
            }
        for name, sender, recipient, what in (
            ("m1", "alice", "bob", "keyexchange"),
            ("m2", "bob", "alice", "reply"),
            ("m3", "alice", "bob", "followup"),
        ):
            kex = g[f"{name}.key.type"] == "3"
            data = base64.b64decode(g[f"{name}.key.data"])
            key = {
                "rid": g["devices"][recipient],
                "recipient": recipient,
                "prekey": kex,
                **describe(data, version, kex),
            }
            if kex:
                assert key["pre_key_id"] == int(g["kex.chosen_pre_key"]), "kex names another pre key"
                assert key["signed_pre_key_id"] == int(g["bob.spk_id"])
            fname = f"message-{tag}-{what}.xml"
            (out / fname).write_text(
                message_xml(g, name, sender, recipient, jids[recipient], version, kex) + "\n"
            )
            artifacts[fname] = {
                "kind": "message",
                "namespace": ns,
                "sender_device_id": g["devices"][sender],
                "recipient_device_ids": [key["rid"]],
                "has_payload": version < 4,
                "roundtrip_decrypted_by_libomemo_c": g.get(f"{name}.key.roundtrip") == "ok",
                "keys": [key],
            }
    about = {
        "generator": "generate/generate.py + generate/omemo_c_gen.c",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "library": "libomemo-c 0.5.0 (Debian 12 libomemo-c-dev 0.5.0-4), crypto provider OpenSSL 3.0",
        "devices": about_devices,
        "jids": jids,
        "note": "no private keys in this file",
    }
    (out / "artifacts.json").write_text(json.dumps({"about": about, "artifacts": artifacts}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
