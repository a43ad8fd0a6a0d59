"""Scale benchmark: many accounts with many sessions in one process, on each storage.

Usage (from the repository root)::

    .venv/bin/python benchmarks/scale_bench.py                       # 10, 100 and 1,000 accounts
    .venv/bin/python benchmarks/scale_bench.py --accounts 1000 --storages postgres --json scale.json
    .venv/bin/python benchmarks/scale_bench.py --quick               # smoke run: 12 accounts, 200 messages

What a gateway does, in one process and one event loop: ``--accounts`` accounts, each a
``SessionManager`` with both backends (OMEMO 2 and legacy) on its own storage object, each with
``--contacts`` contacts (the other accounts at distance 1 to 5 on each side of a ring, so every account
has 10 sessions and every session has its partner in the process; 10 accounts have 9 contacts each).
Messages are OMEMO 2 (the sessions are OMEMO 2 sessions). The transport is ``omemo.testing.InMemoryXMPP``:
no XMPP, so what is measured is the OMEMO stack and its storage.

Storages (``--storages``):

- ``memory``: ``MemoryStorage`` per account, the baseline the others are compared with;
- ``sqlite``: ``SQLiteStorage`` per account, one file each, ``synchronous=FULL`` (every write durable
  before it returns, the default), on the disk under ``--dir`` (default: a temporary directory in
  /var/tmp, not a tmpfs);
- ``sqlite-shared``: ``SQLiteStorage(path, account=...)``: every account in one file (group commit
  across the accounts), otherwise as ``sqlite``;
- ``postgres``: ``PostgreSQLStorage`` per account on one asyncpg pool (``--pool`` connections) to a
  throw-away PostgreSQL with fsync on (``tests/postgres/server.py``, ``durable=True``), or ``--dsn``.

Phases per storage and size, with what is printed:

1. ``create()`` of every account for the first time (keys generated, bundles published): seconds per
   account.
2. Sessions: every account sends one message to each of its contacts that does not have a session with it
   yet; the contact decrypts it (the key exchange) and its automatic empty answer is decrypted (the session
   is confirmed both ways). Storage bytes per session: the bytes of the session records (key and value)
   in the storage; and the whole database per account (SQLite: the files after a checkpoint; PostgreSQL:
   ``pg_total_relation_size``; memory: the JSON of every record). ``setup_ram_bytes_per_session``: what
   stays allocated of everything this phase allocated (``tracemalloc``; includes the new pre keys).
3. Steady state: ``--messages`` messages, each from a random account to a random contact of it (encrypt,
   then decrypt by the contact), ``--concurrency`` at a time: messages per second (wall clock),
   latency of a message (encrypt + decrypt, median and p99), and the event loop's steps (p99 and max of
   the time one callback ran: while one runs, nothing else in the process does, no XMPP connection is
   served; each message starts as a step of its own, as if it had just arrived from the network).
4. Start-up: every storage closed and opened again, every account's ``create()`` again (existing
   accounts, as after a restart): seconds per account. Then RAM per session: every session is used
   once each way, and what stays allocated of everything allocated since the restart (``tracemalloc``:
   the caches of the storage, the session manager and the backends, and SQLite's page cache), divided by
   the sessions, is measured twice: right after the use (``RAM warm``: every session in use) and after
   two rounds of the session managers' task that forgets idle contacts (``RAM idle``: every contact
   silent for ``CACHE_IDLE_SECONDS``, 10 minutes by default; the rounds are run directly instead of
   waiting). For ``memory`` (no restart) both are the set-up figure, which includes the records.

``--json FILE`` saves everything. The goals of the storage issue: steady-state messages per second of
each persistent storage within 2x of ``memory`` at 1,000 accounts, RAM per idle session under 2 KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:  # the throw-away PostgreSQL of the tests
    sys.path.insert(0, str(TESTS))

import oldmemo  # noqa: E402
import twomemo  # noqa: E402
from omemo.storage import Storage  # noqa: E402
from omemo.storages import MemoryStorage, SQLiteStorage  # noqa: E402
from omemo.testing import InMemoryXMPP  # noqa: E402
from omemo.trust import BTBVTrust  # noqa: E402

NS2 = twomemo.twomemo.NAMESPACE
STORAGES = ("memory", "sqlite", "sqlite-shared", "postgres")
SESSION_MARK = "/session/"  # in the backends' session record keys: /<profile>/session/<jid>/<device>


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def jid(index: int) -> str:
    return f"user{index:05d}@gateway.example"


def contacts_of(index: int, accounts: int, contacts: int) -> List[int]:
    """The ring neighbours of ``index``: distance 1, 2, ... on each side, ``contacts`` in all at most."""
    found: List[int] = []
    for distance in range(1, contacts // 2 + 1):
        for other in ((index + distance) % accounts, (index - distance) % accounts):
            if other != index and other not in found:
                found.append(other)
    return found[:contacts]


@dataclass
class Result:
    storage: str
    accounts: int
    sessions: int = 0
    create_s_per_account: float = 0.0
    restart_create_s_per_account: float = 0.0
    sessions_s: float = 0.0
    ram_bytes_per_session: float = 0.0
    ram_warm_bytes_per_session: float = 0.0
    setup_ram_bytes_per_session: float = 0.0
    rss_bytes_per_session: float = 0.0
    session_record_bytes: float = 0.0
    storage_bytes_per_account: float = 0.0
    messages: int = 0
    messages_per_s: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    cpu_ms_per_message: float = 0.0
    loop_cpu_ms_per_message: float = 0.0
    stall_ms_p99: float = 0.0
    stall_ms_max: float = 0.0
    heartbeats: int = 0
    notes: List[str] = field(default_factory=list)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StorageKind:
    """Opens and measures the storages of one kind."""

    name = "memory"
    disable_cache = False  # the Storage read cache of the persistent storages (--no-storage-cache)

    async def start(self) -> None:
        pass

    async def open(self, account: str) -> Storage:
        return MemoryStorage()

    async def close(self, storage: Storage) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def measure(self, storages: Dict[str, Storage]) -> Tuple[float, float]:
        """Returns: (bytes of the session records in all, bytes of the whole storage in all)."""
        sessions = total = 0
        for storage in storages.values():
            for key, value in storage.snapshot().items():  # type: ignore[attr-defined]
                size = len(key) + len(json.dumps(value, separators=(",", ":")))
                total += size
                if SESSION_MARK in key:
                    sessions += size
        return sessions, total


class SQLiteKind(StorageKind):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def start(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)

    async def open(self, account: str) -> Storage:
        return SQLiteStorage(self.directory / f"{account}.db", disable_cache=self.disable_cache)

    async def close(self, storage: Storage) -> None:
        assert isinstance(storage, SQLiteStorage)
        storage.close()

    async def stop(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    async def measure(self, storages: Dict[str, Storage]) -> Tuple[float, float]:
        sessions, _ = await super().measure(storages)
        for path in self.directory.glob("*.db"):  # fold the WAL into the file: sizes are comparable
            connection = sqlite3.connect(path)
            try:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                connection.close()
        total = sum(path.stat().st_size for path in self.directory.iterdir())
        return sessions, total


class SharedSQLiteKind(SQLiteKind):
    name = "sqlite-shared"

    async def open(self, account: str) -> Storage:
        return SQLiteStorage(self.directory / "gateway.db", account=account, disable_cache=self.disable_cache)


class PostgresKind(StorageKind):
    name = "postgres"

    def __init__(self, dsn: Optional[str], pool_size: int) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.server: Any = None
        self.pool: Any = None

    async def start(self) -> None:
        import asyncpg

        if self.dsn is None:
            from postgres.server import PostgreSQL  # type: ignore[import-not-found, unused-ignore]

            self.server = PostgreSQL(durable=True)
            self.server.start()
            dsn = self.server.dsn
        else:
            dsn = self.dsn
        self.pool = await asyncpg.create_pool(dsn, min_size=2, max_size=self.pool_size)
        async with self.pool.acquire() as connection:
            await connection.execute("DROP TABLE IF EXISTS omemo_kv, omemo_schema")

    async def open(self, account: str) -> Storage:
        from omemo.storages import PostgreSQLStorage

        return await PostgreSQLStorage.open(self.pool, account, disable_cache=self.disable_cache)

    async def close(self, storage: Storage) -> None:
        await storage.close()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.server is not None:
            self.server.close()

    async def measure(self, storages: Dict[str, Storage]) -> Tuple[float, float]:
        async with self.pool.acquire() as connection:
            await connection.execute("VACUUM ANALYZE omemo_kv")
            sessions = await connection.fetchval(
                "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0) FROM omemo_kv"
                " WHERE key LIKE $1",
                f"%{SESSION_MARK}%",
            )
            total = await connection.fetchval("SELECT pg_total_relation_size('omemo_kv')")
        return float(sessions), float(total)


async def create_account(net: InMemoryXMPP, account: str, storage: Storage) -> Any:
    backends: List[Any] = [twomemo.Twomemo(storage), oldmemo.Oldmemo(storage)]
    cls: Any = net.session_manager_class(account, BTBVTrust)
    return await cls.create(backends, storage, account, None, BTBVTrust.UNDECIDED)


async def device_of(manager: Any) -> int:
    own, _ = await manager.get_own_device_information()
    return int(own.device_id)


class LoopWatch:
    """Times every step the event loop runs (each callback: a task running until its next real wait).

    While one step runs, nothing else in the process does: no XMPP connection is served. Done by wrapping
    ``asyncio.Handle._run`` while the watch is on (a ``perf_counter`` pair per step).
    """

    def __init__(self) -> None:
        self.steps: List[float] = []
        self._original: Any = None

    def start(self) -> None:
        original = self._original = asyncio.events.Handle._run
        steps = self.steps

        def timed(handle: asyncio.events.Handle) -> None:
            start = time.perf_counter()
            original(handle)
            steps.append(time.perf_counter() - start)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign, assignment]

    def stop(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]


async def drain(net: InMemoryXMPP, managers: Dict[str, Any], devices: Dict[str, int]) -> int:
    """Decrypts every message waiting in the in-memory network (automatic answers); returns how many."""
    count = 0
    while True:
        pending = [
            (account, message) for account in managers for message in net.take(account, devices[account])
        ]
        if not pending:
            return count
        for account, message in pending:
            await managers[account].decrypt(message)
            count += 1


async def one_message(sender: Any, receiver: Any, recipient: str, text: bytes) -> float:
    start = time.perf_counter()
    messages, errors = await sender.encrypt(frozenset({recipient}), {NS2: text}, backend_priority_order=[NS2])
    if errors or len(messages) != 1:
        raise RuntimeError(f"encrypt to {recipient}: {errors}")
    (message,) = messages
    plaintext, _, _ = await receiver.decrypt(message)
    if plaintext != text:
        raise RuntimeError("decrypted to another text")
    return time.perf_counter() - start


async def run_case(kind: StorageKind, accounts: int, args: argparse.Namespace) -> Result:
    result = Result(kind.name, accounts)
    rng = random.Random(args.seed)
    names = [jid(index) for index in range(accounts)]
    neighbours = {
        names[i]: [names[j] for j in contacts_of(i, accounts, args.contacts)] for i in range(accounts)
    }
    await kind.start()
    try:
        net = InMemoryXMPP()
        storages: Dict[str, Storage] = {}
        managers: Dict[str, Any] = {}
        start = time.perf_counter()
        for name in names:
            storages[name] = await kind.open(name)
            managers[name] = await create_account(net, name, storages[name])
        result.create_s_per_account = (time.perf_counter() - start) / accounts
        devices = {name: await device_of(manager) for name, manager in managers.items()}
        for manager in managers.values():
            await manager.after_history_sync()

        # 2. Sessions.
        gc.collect()
        rss_before = rss_bytes()
        tracemalloc.start()
        start = time.perf_counter()
        paired = set()
        for name in names:
            for other in neighbours[name]:
                if (other, name) in paired:
                    continue
                paired.add((name, other))
                messages, errors = await managers[name].encrypt(
                    frozenset({other}), {NS2: b"hello"}, backend_priority_order=[NS2]
                )
                if errors:
                    raise RuntimeError(f"first message {name} -> {other}: {errors}")
                for message in messages:
                    net.send(message)
                await drain(net, managers, devices)
        result.sessions_s = time.perf_counter() - start
        result.sessions = 2 * len(paired)
        gc.collect()
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        gc.collect()
        result.setup_ram_bytes_per_session = traced / result.sessions
        result.rss_bytes_per_session = (rss_bytes() - rss_before) / result.sessions
        session_bytes, total_bytes = await kind.measure(storages)
        result.session_record_bytes = session_bytes / result.sessions
        result.storage_bytes_per_account = total_bytes / accounts

        # 3. Steady state.
        plan = []
        for _ in range(args.messages):
            sender = rng.choice(names)
            plan.append((sender, rng.choice(neighbours[sender])))
        latencies: List[float] = []
        queue = iter(enumerate(plan))

        async def worker() -> None:
            for number, (sender, receiver) in queue:
                await asyncio.sleep(0)  # each message arrives on its own, as from the network
                latencies.append(
                    await one_message(managers[sender], managers[receiver], receiver, b"message %d" % number)
                )

        watch = LoopWatch()
        watch.start()
        start, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        finally:
            watch.stop()
        elapsed = time.perf_counter() - start
        result.cpu_ms_per_message = (time.process_time() - cpu) / len(plan) * 1e3
        result.loop_cpu_ms_per_message = (time.thread_time() - loop_cpu) / len(plan) * 1e3
        result.messages = len(plan)
        result.messages_per_s = len(plan) / elapsed
        result.latency_ms_p50 = statistics.median(latencies) * 1e3
        result.latency_ms_p99 = percentile(latencies, 0.99) * 1e3
        result.stall_ms_p99 = percentile(watch.steps, 0.99) * 1e3
        result.stall_ms_max = max(watch.steps) * 1e3
        result.heartbeats = await drain(net, managers, devices)

        # 4. Start-up of existing accounts.
        if kind.name != "memory":
            for name in names:
                await managers[name].shutdown()
                await kind.close(storages[name])
            start = time.perf_counter()
            for name in names:
                storages[name] = await kind.open(name)
                managers[name] = await create_account(net, name, storages[name])
            result.restart_create_s_per_account = (time.perf_counter() - start) / accounts
            # RAM per session: what stays allocated after every session of the restarted process was
            # used once each way (loaded into the caches) and went idle.
            for manager in managers.values():
                await manager.after_history_sync()
            gc.collect()
            tracemalloc.start()
            for first, second in sorted(paired):
                await one_message(managers[first], managers[second], second, b"once more")
                await one_message(managers[second], managers[first], first, b"and back")
            await drain(net, managers, devices)
            net.calls.clear()  # the fake network's call log is no part of the sessions
            gc.collect()
            result.ram_warm_bytes_per_session = tracemalloc.get_traced_memory()[0] / result.sessions
            for _ in range(2):  # what the forgetting task does every CACHE_IDLE_SECONDS / 2
                for manager in managers.values():
                    manager._omemo_core.forget_idle()
            gc.collect()
            result.ram_bytes_per_session = tracemalloc.get_traced_memory()[0] / result.sessions
            tracemalloc.stop()
        else:  # the storage is the RAM: the figure of the set-up phase (it includes the records)
            result.ram_bytes_per_session = result.setup_ram_bytes_per_session
            result.ram_warm_bytes_per_session = result.setup_ram_bytes_per_session
        for name in names:
            await managers[name].shutdown()
            await kind.close(storages[name])
    finally:
        await kind.stop()
    return result


def print_table(results: List[Result]) -> None:
    header = (
        f"{'storage':<13} {'accounts':>8} {'sessions':>8} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'cpu ms':>6} {'loop ms':>7} {'stall p99':>9} {'stall max':>9}"
        f" {'RAM warm':>8} {'RAM idle':>8} {'rec B':>6} {'DB/acct':>8}"
        f" {'create s':>8} {'restart s':>9}"
    )
    print(header)
    for r in results:
        print(
            f"{r.storage:<13} {r.accounts:>8} {r.sessions:>8} {r.messages_per_s:>7.0f}"
            f" {r.latency_ms_p50:>7.2f} {r.latency_ms_p99:>7.2f}"
            f" {r.cpu_ms_per_message:>6.2f} {r.loop_cpu_ms_per_message:>7.2f}"
            f" {r.stall_ms_p99:>9.2f} {r.stall_ms_max:>9.2f}"
            f" {r.ram_warm_bytes_per_session:>8.0f} {r.ram_bytes_per_session:>8.0f}"
            f" {r.session_record_bytes:>6.0f}"
            f" {r.storage_bytes_per_account:>8.0f}"
            f" {r.create_s_per_account:>8.4f} {r.restart_create_s_per_account:>9.4f}"
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", default="10,100,1000", help="comma-separated account counts")
    parser.add_argument("--contacts", type=int, default=10)
    parser.add_argument("--storages", default=",".join(STORAGES))
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=10, help="PostgreSQL pool size")
    parser.add_argument("--dsn", default=None, help="an existing PostgreSQL (its omemo tables are dropped!)")
    parser.add_argument("--dir", default=None, help="where the SQLite files go (default under /var/tmp)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument(
        "--no-storage-cache", action="store_true", help="open SQLite and PostgreSQL with disable_cache=True"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 accounts, 200 messages")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.accounts, args.messages = "12", 200
    kinds: List[StorageKind] = []
    directory = Path(args.dir or tempfile.mkdtemp(prefix="omemo-scale-", dir="/var/tmp"))
    for name in args.storages.split(","):
        if name == "memory":
            kinds.append(StorageKind())
        elif name == "sqlite":
            kinds.append(SQLiteKind(directory / "sqlite"))
        elif name == "sqlite-shared":
            kinds.append(SharedSQLiteKind(directory / "sqlite-shared"))
        elif name == "postgres":
            kinds.append(PostgresKind(args.dsn, args.pool))
        else:
            parser.error(f"unknown storage {name!r}")
        kinds[-1].disable_cache = args.no_storage_cache and name != "memory"
    results: List[Result] = []
    try:
        for accounts in (int(n) for n in args.accounts.split(",")):
            for kind in kinds:
                result = asyncio.run(run_case(kind, accounts, args))
                results.append(result)
                print_table([result])
                sys.stdout.flush()
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    print()
    print_table(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                    "commit": subprocess.run(
                        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
                    ).stdout.strip(),
                    "args": vars(args),
                    "results": [r.__dict__ for r in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
