"""The omemo-stack demo (the README's first command).

By default it runs on a real XMPP server: ``examples/xmpp_demo.py`` starts a throw-away Prosody on
loopback (installed if missing, as the tests do; stopped by PID at the end), logs in three devices
with the ``omemo_slixmpp`` plugin, has them talk in both namespaces and runs ``omemo-chat`` against it.
Where Prosody cannot be installed or started, it says so and runs the in-memory demo instead.

The in-memory demo (``--in-memory``): three devices talk OMEMO 2 and legacy OMEMO over an in-memory
XMPP network. alice@example.org has two devices, bob@example.org one. Every device keeps its state in
its own SQLite file in the data directory (``demo-data/`` by default) and loads both backends. It shows
fingerprints, the trust decision (blind trust before verification), first contact with its automatic
reply, a conversation, one message to all devices, the XML on the wire (shortened) and timings. Run it
again and it continues from the stored sessions instead of starting over.

    python examples/demo.py [--in-memory [--data-dir DIR] [--fresh]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from omemo.message import Message
from omemo.session_manager import SessionManager
from omemo.storages import SQLiteStorage
from omemo.testing import InMemoryXMPP
from omemo.trust import BTBVTrust

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xmpp_demo  # type: ignore[import-not-found, unused-ignore]
from xmpp_demo import ServerUnavailable  # type: ignore[import-not-found, unused-ignore]

OMEMO2 = twomemo.twomemo.NAMESPACE
LEGACY = oldmemo.oldmemo.NAMESPACE
NAMES = {OMEMO2: "OMEMO 2", LEGACY: "legacy OMEMO"}
ALICE, BOB = "alice@example.org", "bob@example.org"


@dataclass
class Device:
    """One demo device: a name, its account, its session manager, storage and device id."""

    name: str
    bare_jid: str
    manager: SessionManager
    storage: SQLiteStorage
    device_id: int


def shorten_xml(element: ET.Element, width: int = 16) -> str:
    """The element as text, every long base64 text cut to ``width`` characters."""
    ET.register_namespace("", element.tag[1:].split("}")[0])
    text = ET.tostring(element, encoding="unicode")
    return re.sub(
        rf">([A-Za-z0-9+/=]{{{width + 8},}})<",
        lambda m: f">{m.group(1)[:width]}…({len(m.group(1))} chars)<",
        text,
    )


def wire_xml(message: Message) -> str:
    etree = twomemo.etree if message.namespace == OMEMO2 else oldmemo.etree
    return shorten_xml(etree.serialize_message(message))


class Timer:
    """Collects durations per operation."""

    def __init__(self) -> None:
        self.samples: Dict[str, List[float]] = {}

    def add(self, operation: str, seconds: float) -> None:
        self.samples.setdefault(operation, []).append(seconds)

    def report(self) -> None:
        print("\nTimings (this machine, SQLite storage, both backends loaded):")
        for operation, samples in self.samples.items():
            values = sorted(samples)
            median = values[len(values) // 2]
            print(f"  {operation:<44} {len(values):>3} x  median {median * 1e3:7.2f} ms")


async def open_device(network: InMemoryXMPP, data_dir: Path, name: str, bare_jid: str) -> Device:
    storage = SQLiteStorage(data_dir / f"{name}.sqlite")
    manager_class = network.session_manager_class(bare_jid, BTBVTrust)
    manager = await manager_class.create(
        [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)],
        storage,
        bare_jid,
        name,
        BTBVTrust.UNDECIDED,
    )
    # The in-memory network starts empty on every run: republish our device lists and bundles.
    await manager.ensure_data_consistency()
    own, _ = await manager.get_own_device_information()
    return Device(name, bare_jid, manager, storage, own.device_id)


async def send(
    sender: Device,
    recipients: List[str],
    text: str,
    namespace: str,
    network: InMemoryXMPP,
    timer: Timer,
    show_xml: bool = False,
) -> None:
    start = time.perf_counter()
    messages, errors = await sender.manager.encrypt(
        frozenset(recipients), {OMEMO2: text.encode(), LEGACY: text.encode()}, [namespace]
    )
    timer.add(f"encrypt ({NAMES[namespace]})", time.perf_counter() - start)
    for error in errors:
        print(f"  ! {error}")
    for message in messages:
        kex = sum(1 for _, k in message.keys if k is not None)
        extra = f", {kex} with a key exchange" if kex else ""
        print(
            f"  {sender.name} -> {', '.join(recipients)} [{NAMES[message.namespace]}]: {text!r} "
            f"({len(message.keys)} keys{extra})"
        )
        if show_xml:
            print("    on the wire: " + wire_xml(message))
        network.send(message)


async def deliver(devices: List[Device], network: InMemoryXMPP, timer: Timer) -> None:
    """Let every device read its inbox until all inboxes are empty (automatic replies included)."""
    progress = True
    while progress:
        progress = False
        for device in devices:
            for message in network.take(device.bare_jid, device.device_id):
                progress = True
                start = time.perf_counter()
                plaintext, sender, _ = await device.manager.decrypt(message)
                timer.add(f"decrypt ({NAMES[message.namespace]})", time.perf_counter() - start)
                sender_name = next(
                    (
                        d.name
                        for d in devices
                        if (d.bare_jid, d.device_id) == (sender.bare_jid, sender.device_id)
                    ),
                    f"{sender.bare_jid}/{sender.device_id}",
                )
                if plaintext is None:
                    print(
                        f"    {device.name} got an automatic empty message from {sender_name} "
                        f"[{NAMES[message.namespace]}] (completes the key exchange)"
                    )
                else:
                    print(
                        f"    {device.name} decrypted from {sender_name}: {plaintext.decode()!r} "
                        f"(sender trust: {sender.trust_level_name})"
                    )


async def show_devices(devices: List[Device]) -> None:
    print("Devices and fingerprints (Curve25519 form of the identity key, 8 groups of 8 hex):")
    for device in devices:
        own, _ = await device.manager.get_own_device_information()
        fingerprint = " ".join(device.manager.format_identity_key(own.identity_key))
        print(f"  {device.name:<8} {device.bare_jid}/{own.device_id:<11} {fingerprint}")


async def show_trust(device: Device, bare_jid: str) -> None:
    for info in sorted(await device.manager.get_device_information(bare_jid), key=lambda i: i.device_id):
        print(
            f"    {device.name} sees {bare_jid}/{info.device_id}: trust {info.trust_level_name}, "
            f"namespaces {sorted(NAMES[n] for n in info.namespaces)}"
        )


async def run(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    state_file = data_dir / "demo-state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": 0, "messages": 0}
    resumed = state["runs"] > 0
    if resumed:
        print(
            f"Continuing from the stored state in {data_dir}/ (run {state['runs'] + 1}; "
            f"{state['messages']} messages sent before). Sessions are reused: no new key exchanges.\n"
        )
    else:
        print(f"First run: creating three devices with their state in {data_dir}/\n")

    network = InMemoryXMPP()
    timer = Timer()
    start = time.perf_counter()
    devices = [
        await open_device(network, data_dir, "alice-1", ALICE),
        await open_device(network, data_dir, "alice-2", ALICE),
        await open_device(network, data_dir, "bob", BOB),
    ]
    timer.add("create() with both backends (SQLite)", (time.perf_counter() - start) / len(devices))
    alice1, alice2, bob = devices
    for device in devices:
        # Catch-up is over (there is no archive here); this also learns the contacts' device lists.
        await device.manager.after_history_sync()
        for bare_jid in (ALICE, BOB):
            await device.manager.refresh_device_lists(bare_jid)
    await show_devices(devices)
    sent = 0

    if resumed:
        print("\n1. OMEMO 2: alice-1 writes to bob again, on the stored sessions")
    else:
        print("\n1. First contact in OMEMO 2: alice-1 writes to bob (bob's key is trusted blindly, BTBV)")
    await send(alice1, [BOB], "Hi Bob, this is OMEMO 2!", OMEMO2, network, timer, show_xml=True)
    await deliver(devices, network, timer)
    await show_trust(alice1, BOB)
    sent += 1

    print("\n2. A conversation in OMEMO 2")
    for i in range(3):
        await send(bob, [ALICE], f"Hello Alice ({i + 1})", OMEMO2, network, timer, show_xml=i == 0)
        await deliver(devices, network, timer)
        await send(alice1, [BOB], f"Hello Bob ({i + 1})", OMEMO2, network, timer)
        await deliver(devices, network, timer)
        sent += 2

    print("\n3. Legacy OMEMO (eu.siacs.conversations.axolotl), as most deployed clients speak it")
    await send(bob, [ALICE], "Now in legacy OMEMO", LEGACY, network, timer, show_xml=True)
    await deliver(devices, network, timer)
    await send(alice2, [BOB], "Legacy works too", LEGACY, network, timer)
    await deliver(devices, network, timer)
    sent += 2

    print("\n4. One message to all devices: alice-2 writes to bob; alice-1 gets a copy")
    await send(alice2, [BOB], "To everyone, from my second device", OMEMO2, network, timer)
    await deliver(devices, network, timer)
    sent += 1

    timer.report()
    state["runs"] += 1
    state["messages"] += sent
    state_file.write_text(json.dumps(state))
    for device in devices:
        await device.manager.shutdown()
        device.storage.close()
    print(f"\nDone: {sent} messages this run. Run the demo again to continue from {data_dir}/.")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("demo-data"), help="where the devices keep their state"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the data directory first")
    parser.add_argument(
        "--in-memory", action="store_true", help="the in-memory demo, without an XMPP server (state kept)"
    )
    args = parser.parse_args(argv)
    if not args.in_memory:
        try:
            return real_server_demo()
        except ServerUnavailable as exc:
            print(f"No XMPP server for the demo here ({exc}): running the in-memory demo instead.\n")
    if args.fresh and args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    return asyncio.run(run(args.data_dir))


def real_server_demo() -> int:
    """Runs ``examples/xmpp_demo.py`` (imported from beside this file). Raises ServerUnavailable."""
    return int(xmpp_demo.run())


if __name__ == "__main__":
    sys.exit(main())
