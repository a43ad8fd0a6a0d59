# SPDX-License-Identifier: MIT
"""Check a real-clients corpus directory with omemo_engine's XML codecs and compare with artifacts.json.

Usage: /work/main/.venv/bin/python check_corpus.py CORPUS_DIR
Prints one line per artifact: OK, or FAIL with the exact exception / mismatch.
"""

from __future__ import annotations

import base64
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from omemo_engine import xml_legacy, xml_omemo2

LEGACY = "eu.siacs.conversations.axolotl"
OMEMO2 = "urn:xmpp:omemo:2"
CODEC = {LEGACY: xml_legacy, OMEMO2: xml_omemo2}
ELEMENT = {
    ("bundle", LEGACY): "bundle",
    ("bundle", OMEMO2): "bundle",
    ("devicelist", LEGACY): "list",
    ("devicelist", OMEMO2): "devices",
    ("message", LEGACY): "encrypted",
    ("message", OMEMO2): "encrypted",
}


def find(root: ET.Element, ns: str, local: str) -> ET.Element:
    tag = f"{{{ns}}}{local}"
    if root.tag == tag:
        return root
    found = root.find(f".//{tag}")
    if found is None:
        raise LookupError(f"no <{local} xmlns='{ns}'> in file")
    return found


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check(path: Path, exp: dict) -> list[str]:
    kind = exp["kind"]
    if kind not in ("bundle", "devicelist", "message"):
        # publish IQs: check their payload with the codec too
        payload_exp = None
        kind = "bundle" if kind.startswith("bundle") else "devicelist"
        ns = LEGACY if exp["node"].startswith(LEGACY) else OMEMO2
    else:
        ns = exp["namespace"]
        payload_exp = exp
    codec = CODEC[ns]
    root = ET.parse(path).getroot()
    el = find(root, ns, ELEMENT[(kind, ns)])
    problems: list[str] = []
    if kind == "bundle":
        b = codec.parse_bundle(el)
        if payload_exp:
            ik = b.identity_key if ns == OMEMO2 else bytes([5]) + b.identity_key
            if b64(ik) != exp["identity_key"]:
                problems.append("identity key differs")
            if b.signed_pre_key_id != exp["signed_pre_key_id"]:
                problems.append(f"spk id {b.signed_pre_key_id} != {exp['signed_pre_key_id']}")
            if [k.pre_key_id for k in b.pre_keys] != exp["pre_key_ids"]:
                problems.append("pre key ids differ")
    elif kind == "devicelist":
        ids = codec.parse_device_list(el)
        ids = [getattr(i, "device_id", i) for i in ids]
        if payload_exp and sorted(ids) != sorted(exp["device_ids"]):
            problems.append(f"device ids {ids} != {exp['device_ids']}")
    else:
        m = codec.parse_message(el)
        if m.sender_device_id != exp["sender_device_id"]:
            problems.append("sid differs")
        if [k.device_id for k in m.keys] != exp["recipient_device_ids"]:
            problems.append(f"rids {[k.device_id for k in m.keys]} != {exp['recipient_device_ids']}")
        if [k.kex for k in m.keys] != [k["prekey"] for k in exp["keys"]]:
            problems.append("prekey/kex flags differ")
        if (m.payload is not None) != exp["has_payload"]:
            problems.append("payload presence differs")
    return problems


def main(corpus: Path) -> int:
    data = json.loads((corpus / "artifacts.json").read_text())
    bad = 0
    for name, exp in data["artifacts"].items():
        try:
            problems = check(corpus / name, exp)
        except Exception as e:  # report exactly
            print(f"FAIL {name}: {type(e).__module__}.{type(e).__name__}: {e}")
            bad += 1
            continue
        if problems:
            print(f"FAIL {name}: " + "; ".join(problems))
            bad += 1
        else:
            print(f"OK   {name}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
