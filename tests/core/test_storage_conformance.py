"""One conformance suite for every ready storage (and the :class:`omemo.storage.Storage` base class).

Each test runs against MemoryStorage (plain and JSON-serialising, cache on and off) and SQLiteStorage
in ``tmp_path`` (cache on and off). Storage-specific behaviour (reopening from disk, crash safety,
closing) follows at the end.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import inspect
import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from omemo.storage import Just, Maybe, Nothing, NothingException, Storage, StorageException
from omemo.storages import MemoryStorage, PostgreSQLStorage, SQLiteStorage
from omemo.types import JSONType


@dataclass
class Env:
    kind: str
    storage: Any  # MemoryStorage | SQLiteStorage | PostgreSQLStorage: all have transaction(), snapshot()
    reopen: Callable[[], Any]
    persistent: bool
    cached: bool
    areopen: Optional[Callable[[], Awaitable[Any]]] = None

    async def reopened(self) -> Any:
        """The storage closed and opened again (persistent kinds)."""
        if self.areopen is not None:
            return await self.areopen()
        return self.reopen()


KINDS = [
    "memory",
    "memory-cached",
    "memory-json",
    "memory-json-cached",
    "sqlite",
    "sqlite-nocache",
    "sqlite-shared",
    "postgres",
    "postgres-nocache",
]
_accounts = itertools.count()


@pytest.fixture(params=KINDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    kind: str = request.param
    opened: List[SQLiteStorage] = []
    if kind.startswith("postgres"):
        import asyncpg

        server = request.getfixturevalue("postgres")
        pool = await asyncpg.create_pool(server.dsn, min_size=1, max_size=4)
        account = f"account{next(_accounts)}@example.org"
        pg_cached = kind == "postgres"
        first = await PostgreSQLStorage.open(pool, account, disable_cache=not pg_cached)
        pg_env = Env(kind, first, lambda: None, persistent=True, cached=pg_cached)

        def reopen_pg() -> Any:
            raise AssertionError("use await env.areopen()")

        async def areopen() -> Any:
            await pg_env.storage.close()
            pg_env.storage = await PostgreSQLStorage.open(pool, account, disable_cache=not pg_cached)
            return pg_env.storage

        pg_env.reopen = reopen_pg
        pg_env.areopen = areopen
        yield pg_env
        await pg_env.storage.close()
        await pool.close()
        return
    if kind.startswith("memory"):
        cached = kind.endswith("cached")
        mem = MemoryStorage(serialize="json" in kind, disable_cache=not cached)
        yield Env(kind, mem, lambda: mem, persistent=False, cached=cached)
        return
    cached = kind in ("sqlite", "sqlite-shared")
    path = tmp_path / "omemo.sqlite"
    sqlite_account: Optional[str] = "me@example.org" if kind == "sqlite-shared" else None
    if sqlite_account is not None:  # another account in the same file, with keys that would collide
        neighbour = SQLiteStorage(path, account="neighbour@example.org")
        opened.append(neighbour)
        for key in ("k", "a", "k0", "x", "/own_device_id"):
            await neighbour.store(key, "the neighbour's")

    def open_sqlite() -> SQLiteStorage:
        s = SQLiteStorage(path, account=sqlite_account, disable_cache=not cached)
        opened.append(s)
        return s

    env = Env(kind, open_sqlite(), lambda: None, persistent=True, cached=cached)

    def reopen() -> SQLiteStorage:
        env.storage.close()
        fresh = open_sqlite()
        env.storage = fresh
        return fresh

    env.reopen = reopen
    yield env
    if sqlite_account is not None:  # untouched by everything the test did
        assert opened[0].snapshot() == {
            key: "the neighbour's" for key in ("k", "a", "k0", "x", "/own_device_id")
        }
    for s in opened:
        s.close()


JSON_VALUES: List[JSONType] = [
    None,
    True,
    False,
    0,
    -7,
    2**62,
    1.5,
    -0.25,
    "",
    "plain",
    "ünïcödé ✓ \x00 \n",
    [],
    {},
    [1, "two", None, 3.0, False],
    {"a": 1, "b": [1, 2, {"c": None}], "d": {"e": {"f": "g"}}},
]


# -- Maybe / Just / Nothing ------------------------------------------------------------------------


def test_maybe_just_semantics() -> None:
    j: Maybe[int] = Just(3)
    assert j.is_just and not j.is_nothing
    assert j.from_just() == 3
    assert j.maybe(None) == 3
    assert j.fmap(lambda v: v + 1).from_just() == 4
    assert "3" not in repr(Just("secret-3"))  # values never show up in repr


def test_maybe_nothing_semantics() -> None:
    n: Maybe[int] = Nothing()
    assert n.is_nothing and not n.is_just
    with pytest.raises(NothingException):
        n.from_just()
    default: List[int] = []
    assert n.maybe(default) is default  # by reference
    called: List[int] = []
    mapped = n.fmap(called.append)
    assert mapped.is_nothing and not called
    assert not issubclass(NothingException, StorageException)


def test_just_clones_in_and_out() -> None:
    value: Dict[str, List[int]] = {"a": [1]}
    j = Just(value)
    value["a"].append(2)
    assert j.from_just() == {"a": [1]}
    out = j.from_just()
    out["a"].append(3)
    assert j.from_just() == {"a": [1]}
    assert j.maybe(None) == {"a": [1]}
    mapped = j.fmap(lambda v: v["a"])
    assert mapped.from_just() == [1]


# -- basic load / store / delete -------------------------------------------------------------------


@pytest.mark.parametrize("value", JSON_VALUES, ids=lambda v: repr(v)[:20])
async def test_roundtrip(env: Env, value: JSONType) -> None:
    await env.storage.store("k", value)
    loaded = await env.storage.load("k")
    assert loaded.is_just
    assert loaded.from_just() == value
    assert type(loaded.from_just()) is type(value)


async def test_missing_key_is_nothing_for_every_loader(env: Env) -> None:
    s = env.storage
    assert (await s.load("missing")).is_nothing
    assert (await s.load_primitive("missing", int)).is_nothing
    assert (await s.load_bytes("missing")).is_nothing
    assert (await s.load_optional("missing", str)).is_nothing
    assert (await s.load_list("missing", int)).is_nothing
    assert (await s.load_dict("missing", int)).is_nothing
    with pytest.raises(NothingException):
        (await s.load("missing")).from_just()


async def test_none_is_not_nothing(env: Env) -> None:
    await env.storage.store("k", None)
    loaded = await env.storage.load("k")
    assert loaded.is_just and loaded.from_just() is None
    assert (await env.storage.load_optional("k", int)).from_just() is None
    assert (await env.storage.load_primitive("k", type(None))).is_just


async def test_overwrite_and_delete(env: Env) -> None:
    s = env.storage
    await s.store("k", 1)
    await s.store("k", "two")
    assert (await s.load("k")).from_just() == "two"
    await s.delete("k")
    assert (await s.load("k")).is_nothing
    await s.delete("k")  # deleting a missing key is fine
    await s.delete("never-there")
    await s.store("k", [3])
    assert (await s.load("k")).from_just() == [3]


async def test_keys_are_arbitrary_strings(env: Env) -> None:
    keys = ["", "/", "/a/b/c", "a b", "ü/✓", "x" * 500, "'; DROP TABLE kv; --"]
    for i, key in enumerate(keys):
        await env.storage.store(key, i)
    for i, key in enumerate(keys):
        assert (await env.storage.load_primitive(key, int)).from_just() == i


async def test_tuples_and_mappings_are_stored_as_json(env: Env) -> None:
    class IntE(enum.IntEnum):
        ONE = 1

    await env.storage.store("t", (1, (2, 3)))
    assert (await env.storage.load("t")).from_just() == [1, [2, 3]]
    await env.storage.store("e", {"x": IntE.ONE})
    loaded = (await env.storage.load_dict("e", int)).from_just()
    assert loaded == {"x": 1} and type(loaded["x"]) is int


# -- bytes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"", b"\x00", b"\xfb\xff\xfe", bytes(range(256)), b"ab"])
async def test_bytes_roundtrip_urlsafe_base64_with_padding(env: Env, value: bytes) -> None:
    await env.storage.store_bytes("b", value)
    assert (await env.storage.load_bytes("b")).from_just() == value
    raw = (await env.storage.load_primitive("b", str)).from_just()
    assert raw == base64.urlsafe_b64encode(value).decode("ascii")
    assert "+" not in raw and "/" not in raw
    assert len(raw) % 4 == 0  # padded


async def test_bytes_of_reference_format_load(env: Env) -> None:
    # A value as the reference stores it: urlsafe alphabet, padding.
    await env.storage.store("b", "-_8=")
    assert (await env.storage.load_bytes("b")).from_just() == b"\xfb\xff"


async def test_bytes_type_errors(env: Env) -> None:
    with pytest.raises(TypeError):
        await env.storage.store_bytes("b", "not bytes")
    with pytest.raises(TypeError):
        await env.storage.store_bytes("b", bytearray(b"x"))
    await env.storage.store("b", 5)
    with pytest.raises(TypeError):
        await env.storage.load_bytes("b")
    await env.storage.store("b", "not base64 !!")
    with pytest.raises(TypeError):
        await env.storage.load_bytes("b")
    await env.storage.store("b", "abc")  # bad padding
    with pytest.raises(TypeError):
        await env.storage.load_bytes("b")


# -- typed loaders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "primitive"),
    [(None, type(None)), (1.5, float), (3, int), ("s", str), (True, bool), (False, bool)],
)
async def test_load_primitive_ok(env: Env, value: JSONType, primitive: Any) -> None:
    await env.storage.store("p", value)
    loaded = (await env.storage.load_primitive("p", primitive)).from_just()
    assert loaded == value and type(loaded) is type(value)


async def test_load_primitive_int_as_float(env: Env) -> None:
    await env.storage.store("p", 3)
    loaded = (await env.storage.load_primitive("p", float)).from_just()
    assert loaded == 3.0 and type(loaded) is float


@pytest.mark.parametrize(
    ("value", "primitive"),
    [
        (True, int),  # bool is not an int here
        (1, bool),
        (1.5, int),
        ("1", int),
        (None, str),
        (1, str),
        ([1], int),
        ({"a": 1}, str),
        (False, float),
    ],
)
async def test_load_primitive_type_errors(env: Env, value: JSONType, primitive: Any) -> None:
    await env.storage.store("p", value)
    with pytest.raises(TypeError):
        await env.storage.load_primitive("p", primitive)


async def test_load_primitive_rejects_non_primitive_type_argument(env: Env) -> None:
    await env.storage.store("p", 1)
    with pytest.raises(TypeError):
        await env.storage.load_primitive("p", bytes)
    with pytest.raises(TypeError):
        await env.storage.load_list("p", list)


async def test_load_optional(env: Env) -> None:
    s = env.storage
    await s.store("o", "x")
    assert (await s.load_optional("o", str)).from_just() == "x"
    await s.store("o", None)
    assert (await s.load_optional("o", str)).from_just() is None
    await s.store("o", 1)
    with pytest.raises(TypeError):
        await s.load_optional("o", str)
    await s.store("o", 2)
    assert (await s.load_optional("o", float)).from_just() == 2.0


async def test_load_list(env: Env) -> None:
    s = env.storage
    await s.store("l", [1, 2, 3])
    assert (await s.load_list("l", int)).from_just() == [1, 2, 3]
    await s.store("l", [])
    assert (await s.load_list("l", str)).from_just() == []
    await s.store("l", [1, 2.5])
    floats = (await s.load_list("l", float)).from_just()
    assert floats == [1.0, 2.5] and all(type(f) is float for f in floats)
    await s.store("l", [None, None])
    assert (await s.load_list("l", type(None))).from_just() == [None, None]
    for bad, primitive in [([1, "2"], int), ([True], int), ("abc", str), ({"a": 1}, int), (1, int)]:
        await s.store("l", bad)
        with pytest.raises(TypeError):
            await s.load_list("l", primitive)


async def test_load_dict(env: Env) -> None:
    s = env.storage
    await s.store("d", {"a": True, "b": False})
    assert (await s.load_dict("d", bool)).from_just() == {"a": True, "b": False}
    await s.store("d", {})
    assert (await s.load_dict("d", int)).from_just() == {}
    await s.store("d", {"x": 1})
    assert (await s.load_dict("d", float)).from_just() == {"x": 1.0}
    for bad, primitive in [({"a": 1, "b": "c"}, int), ([1], int), ("s", str), ({"a": None}, str)]:
        await s.store("d", bad)
        with pytest.raises(TypeError):
            await s.load_dict("d", primitive)


# -- bad values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"bytes", {1, 2}, object(), {1: "int key"}, {"a": [b"nested bytes"]}, {"a": {"b": {3.5: 1}}}],
    ids=["bytes", "set", "object", "int-key", "nested-bytes", "nested-float-key"],
)
async def test_store_rejects_non_json(env: Env, value: Any) -> None:
    await env.storage.store("k", "before")
    with pytest.raises(TypeError):
        await env.storage.store("k", value)
    assert (await env.storage.load("k")).from_just() == "before"


# -- aliasing ----------------------------------------------------------------------------------------


async def test_no_aliasing_of_stored_value(env: Env) -> None:
    value: Dict[str, Any] = {"list": [1, 2], "nested": {"x": [1]}}
    await env.storage.store("k", value)
    value["list"].append(3)
    value["nested"]["x"].append(2)
    value["new"] = 1
    assert (await env.storage.load("k")).from_just() == {"list": [1, 2], "nested": {"x": [1]}}


async def test_no_aliasing_of_loaded_values(env: Env) -> None:
    s = env.storage
    await s.store("k", {"list": [1, 2], "nested": {"x": [1]}})
    first = (await s.load("k")).from_just()
    assert isinstance(first, dict)
    first["list"].append(3)
    first["nested"]["x"].append(2)
    first["new"] = 1
    maybe = await s.load("k")
    assert maybe.from_just() == {"list": [1, 2], "nested": {"x": [1]}}
    # Two extractions from the same Just are independent, too.
    a = maybe.from_just()
    b = maybe.maybe(None)
    assert a is not b and isinstance(a, dict)
    a["list"].append(9)
    assert b == {"list": [1, 2], "nested": {"x": [1]}}

    await s.store("l", [1, 2])
    lst = (await s.load_list("l", int)).from_just()
    lst.append(3)
    assert (await s.load_list("l", int)).from_just() == [1, 2]

    await s.store("d", {"a": 1})
    dct = (await s.load_dict("d", int)).from_just()
    dct["b"] = 2
    assert (await s.load_dict("d", int)).from_just() == {"a": 1}


# -- cache -------------------------------------------------------------------------------------------


def _count_loads(storage: Storage) -> List[str]:
    calls: List[str] = []
    original = storage._load

    async def counting(key: str) -> Maybe[JSONType]:
        calls.append(key)
        return await original(key)

    storage._load = counting  # type: ignore[method-assign]
    return calls


async def test_cache_on_or_off(env: Env) -> None:
    s = env.storage
    await s.store("k", [1])
    calls = _count_loads(s)
    for _ in range(3):
        assert (await s.load_list("k", int)).from_just() == [1]
    assert (await s.load("missing")).is_nothing
    assert (await s.load("missing")).is_nothing
    if env.cached:
        assert calls == ["missing"]  # "k" was cached by store(); "missing" after the first miss
    else:
        assert calls == ["k", "k", "k", "missing", "missing"]


async def test_cache_follows_writes(env: Env) -> None:
    s = env.storage
    assert (await s.load("k")).is_nothing  # caches the absence
    await s.store("k", 1)
    assert (await s.load("k")).from_just() == 1
    await s.delete("k")
    assert (await s.load("k")).is_nothing
    await s.store_bytes("k", b"x")
    assert (await s.load_bytes("k")).from_just() == b"x"


class SlowDict(Storage):
    """A storage whose loads take a while, to provoke load/store races against the cache."""

    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, JSONType] = {}
        self.gate = asyncio.Event()

    async def _load(self, key: str) -> Maybe[JSONType]:
        present = key in self.data
        value = self.data.get(key)
        await self.gate.wait()
        return Just(value) if present else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


async def test_cache_not_poisoned_by_a_load_racing_a_store() -> None:
    s = SlowDict()
    s.data["k"] = "old"
    load = asyncio.create_task(s.load("k"))
    await asyncio.sleep(0)  # the load read "old" and now waits
    await s.store("k", "new")
    s.gate.set()
    assert (await load).from_just() == "old"  # that load legitimately started before the store
    assert (await s.load("k")).from_just() == "new"  # ... but it must not have cached "old"


async def test_base_class_without_super_init_runs_uncached() -> None:
    class NoInit(SlowDict):
        def __init__(self) -> None:  # deliberately no super().__init__()
            self.data = {}
            self.gate = asyncio.Event()
            self.gate.set()

    s = NoInit()
    await s.store("k", 1)
    assert (await s.load_primitive("k", int)).from_just() == 1


# -- transactions --------------------------------------------------------------------------------------


async def test_transaction_commits(env: Env) -> None:
    s = env.storage
    async with s.transaction():
        await s.store("a", 1)
        await s.store_bytes("b", b"\x01")
        await s.delete("c")
        async with s.transaction():  # nested: joins
            await s.store("d", [1])
    assert (await s.load("a")).from_just() == 1
    if env.persistent:
        await env.reopened()
    assert (await env.storage.load_bytes("b")).from_just() == b"\x01"
    assert (await env.storage.load_list("d", int)).from_just() == [1]


async def test_transaction_rolls_back_on_error(env: Env) -> None:
    s = env.storage
    await s.store("a", "old")
    await s.store("gone", 1)
    with pytest.raises(RuntimeError):
        async with s.transaction():
            await s.store("a", "new")
            await s.store("fresh", 1)
            await s.delete("gone")
            assert (await s.load("a")).from_just() == "new"  # visible inside
            raise RuntimeError("boom")
    assert (await s.load("a")).from_just() == "old"
    assert (await s.load("fresh")).is_nothing
    assert (await s.load_primitive("gone", int)).from_just() == 1
    if env.persistent:
        s = await env.reopened()
        assert (await s.load("a")).from_just() == "old"
        assert (await s.load("fresh")).is_nothing


async def test_foreign_writes_wait_for_the_transaction(env: Env) -> None:
    s = env.storage
    order: List[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        await inside.wait()
        await s.store("foreign", 1)
        order.append("foreign-stored")

    task = asyncio.create_task(writer())
    with pytest.raises(RuntimeError):
        async with s.transaction():
            await s.store("own", 1)
            inside.set()
            await asyncio.sleep(0.01)
            order.append("txn-body-done")
            release.set()
            raise RuntimeError("rollback")
    await task
    assert order == ["txn-body-done", "foreign-stored"]
    assert (await s.load("own")).is_nothing
    assert (await s.load_primitive("foreign", int)).from_just() == 1  # not rolled back with it


# -- extras ------------------------------------------------------------------------------------------


async def test_snapshot(env: Env) -> None:
    await env.storage.store("a", {"x": [1]})
    await env.storage.store_bytes("b", b"\xff")
    snap = env.storage.snapshot()
    if inspect.isawaitable(snap):
        snap = await snap
    assert snap == {"a": {"x": [1]}, "b": base64.urlsafe_b64encode(b"\xff").decode()}
    snap["a"]["x"].append(2)
    assert (await env.storage.load("a")).from_just() == {"x": [1]}


async def test_memory_storage_initial_data() -> None:
    data: Dict[str, JSONType] = {"/ikp/is_seed": True, "/x": [1, 2]}
    for serialize in (False, True):
        s = MemoryStorage(data, serialize=serialize)
        assert (await s.load_primitive("/ikp/is_seed", bool)).from_just() is True
        assert (await s.load_list("/x", int)).from_just() == [1, 2]
    with pytest.raises(TypeError):
        MemoryStorage({"k": b"bytes"})


# -- SQLite specifics ------------------------------------------------------------------------------------


async def test_sqlite_reload_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with SQLiteStorage(path) as s:
        for i, value in enumerate(JSON_VALUES):
            await s.store(f"k{i}", value)
        await s.store_bytes("bytes", b"\x00\x01")
        await s.store("deleted", 1)
        await s.delete("deleted")
    assert s.closed
    async with SQLiteStorage(str(path), disable_cache=True) as s2:
        for i, value in enumerate(JSON_VALUES):
            assert (await s2.load(f"k{i}")).from_just() == value
        assert (await s2.load_bytes("bytes")).from_just() == b"\x00\x01"
        assert (await s2.load("deleted")).is_nothing


async def test_sqlite_value_is_on_disk_once_store_returned(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    s = SQLiteStorage(path)
    try:
        await s.store("k", {"v": 1})
        # An independent connection sees it: it was committed, not buffered.
        other = sqlite3.connect(path)
        try:
            (text,) = other.execute("SELECT value FROM kv WHERE key = 'k'").fetchone()
        finally:
            other.close()
        assert json.loads(text) == {"v": 1}
        await s.delete("k")
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() is None
        finally:
            other.close()
    finally:
        s.close()


def test_sqlite_survives_a_hard_process_exit(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from omemo.storages import SQLiteStorage

        async def main():
            s = SQLiteStorage({str(path)!r})
            await s.store("k", [1, 2, 3])
            await s.store_bytes("b", b"secret")
            os._exit(0)  # no close(), no finalisers, no atexit

        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

    async def check() -> None:
        async with SQLiteStorage(path) as s:
            assert (await s.load_list("k", int)).from_just() == [1, 2, 3]
            assert (await s.load_bytes("b")).from_just() == b"secret"

    asyncio.run(check())


async def test_sqlite_closed_raises_storage_exception(tmp_path: Path) -> None:
    s = SQLiteStorage(tmp_path / "c.sqlite", disable_cache=True)
    s.close()
    s.close()  # idempotent
    for op in (lambda: s.load("k"), lambda: s.store("k", 1), lambda: s.delete("k")):
        with pytest.raises(StorageException):
            await op()
    assert "closed" in repr(s)


async def test_sqlite_corrupt_value_and_newer_format(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    SQLiteStorage(path).close()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO kv (key, value) VALUES ('bad', '{not json')")
    raw.commit()
    raw.close()
    async with SQLiteStorage(path, disable_cache=True) as s:
        with pytest.raises(StorageException):
            await s.load("bad")
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=99")
    raw.commit()
    raw.close()
    with pytest.raises(StorageException, match="format version 99"):
        SQLiteStorage(path)


def test_sqlite_uses_wal_and_rejects_bad_options(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    SQLiteStorage(path).close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    with pytest.raises(ValueError):
        SQLiteStorage(path, synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(StorageException):
        SQLiteStorage(tmp_path / "no-such-dir" / "x.sqlite")


async def test_sqlite_shared_across_tasks(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path / "t.sqlite") as s:

        async def work(i: int) -> None:
            for j in range(20):
                await s.store(f"{i}/{j}", j)
                await asyncio.sleep(0)

        await asyncio.gather(*(work(i) for i in range(5)))
        assert len(s.snapshot()) == 100


def _refuse_key(path: Path, key: str) -> None:
    """Make every write of ``key`` to the file at ``path`` fail (a trigger), as a full disk would."""
    raw = sqlite3.connect(path)
    try:
        for event in ("INSERT", "DELETE"):
            raw.execute(
                f"CREATE TRIGGER refuse_{event.lower()} BEFORE {event} ON kv"
                f" WHEN {'NEW' if event == 'INSERT' else 'OLD'}.key = '{key}'"
                " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        raw.commit()
    finally:
        raw.close()


async def test_sqlite_writes_leave_the_event_loop(tmp_path: Path) -> None:
    # The commit (and its fsync) runs on a writer thread: other tasks run meanwhile.
    async with SQLiteStorage(tmp_path / "loop.sqlite") as s:
        order: List[str] = []

        async def write() -> None:
            await s.store("k", 1)
            order.append("stored")

        async def other() -> None:
            order.append("other task")

        await asyncio.gather(write(), other())
        assert order == ["other task", "stored"]
        threads: List[str] = []
        file = s._SQLiteStorage__file  # type: ignore[attr-defined]
        original = file.apply

        def apply(units: Any) -> Any:
            threads.append(threading.current_thread().name)
            return original(units)

        file.apply = apply
        await s.store("k", 2)
        assert threads and all(name.startswith("omemo-sqlite-writer") for name in threads)


async def test_sqlite_group_commit_and_a_failing_write_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "group.sqlite"
    SQLiteStorage(path).close()
    _refuse_key(path, "refused")
    async with SQLiteStorage(path, disable_cache=True) as s:
        batches: List[int] = []
        file = s._SQLiteStorage__file  # type: ignore[attr-defined]
        original = file.apply

        def apply(units: Any) -> Any:
            batches.append(len(units))
            return original(units)

        file.apply = apply
        results = await asyncio.gather(
            *(s.store(f"k{i}", i) for i in range(40)), s.store("refused", 1), return_exceptions=True
        )
        assert all(result is None for result in results[:40])
        assert isinstance(results[40], StorageException) and "'refused'" in str(results[40])
        assert sum(batches) >= 41 and len(batches) < 41  # queued writes were committed together
        assert max(batches) > 1
        content = s.snapshot()
        assert content == {f"k{i}": i for i in range(40)}
        # A transaction with a refused write keeps none of its writes.
        with pytest.raises(StorageException, match="refused"):
            async with s.transaction():
                await s.store("in the transaction", 1)
                assert (await s.load("in the transaction")).from_just() == 1  # seen meanwhile
                await s.store("refused", 2)
        assert (await s.load("in the transaction")).is_nothing
        assert s.snapshot() == content


def test_sqlite_writes_synchronously_without_an_asyncio_loop(tmp_path: Path) -> None:
    # E.g. under Twisted: the coroutine completes without awaiting anything asyncio-specific.
    s = SQLiteStorage(tmp_path / "sync.sqlite", disable_cache=True)
    try:
        coroutine = s.store("k", [1])
        with pytest.raises(StopIteration):
            coroutine.send(None)
        assert s.snapshot() == {"k": [1]}
    finally:
        s.close()


async def test_sqlite_close_with_writes_in_flight(tmp_path: Path) -> None:
    s = SQLiteStorage(tmp_path / "closing.sqlite")
    writes = [asyncio.ensure_future(s.store(f"k{i}", i)) for i in range(20)]
    await asyncio.sleep(0)
    s.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    # Each write either committed before the close or failed with a clear error; none hangs.
    assert all(result is None or isinstance(result, StorageException) for result in results)
    async with SQLiteStorage(tmp_path / "closing.sqlite") as again:
        stored = again.snapshot()
    committed = {f"k{i}" for i, result in enumerate(results) if result is None}
    assert committed <= set(stored)


async def test_sqlite_shared_file_one_open_per_account(tmp_path: Path) -> None:
    from omemo.storages import AccountInUse

    path = tmp_path / "gateway.sqlite"
    first = SQLiteStorage(path, account="busy@example.org")
    other = SQLiteStorage(path, account="other@example.org")  # other accounts are fine
    with pytest.raises(AccountInUse, match=r"busy@example\.org"):
        SQLiteStorage(path, account="busy@example.org")
    with pytest.raises(ValueError):
        SQLiteStorage(path, account="")
    script = textwrap.dedent(
        f"""
        from omemo.storages import AccountInUse, SQLiteStorage
        try:
            SQLiteStorage({str(path)!r}, account="busy@example.org")
        except AccountInUse:
            print("in use")
        else:
            print("opened")
        SQLiteStorage({str(path)!r}, account="third@example.org").close()
        """
    )

    def run() -> str:
        command = [sys.executable, "-c", script]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    assert run() == "in use"  # another process
    await first.store("k", 1)
    first.close()
    assert run() == "opened"  # released by close
    again = SQLiteStorage(path, account="busy@example.org")
    assert (await again.load("k")).from_just() == 1
    assert "account='busy@example.org'" in repr(again)
    again.close()
    other.close()
    # A process that dies releases its accounts.
    killed = textwrap.dedent(
        f"""
        import os
        from omemo.storages import SQLiteStorage
        SQLiteStorage({str(path)!r}, account="busy@example.org")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", killed], check=True, timeout=60)
    SQLiteStorage(path, account="busy@example.org").close()


async def test_sqlite_shared_file_commits_the_accounts_together(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    storages = [SQLiteStorage(path, account=f"user{i}@example.org", disable_cache=True) for i in range(8)]
    file = storages[0]._SQLiteStorage__file  # type: ignore[attr-defined]
    assert all(s._SQLiteStorage__file is file for s in storages)  # type: ignore[attr-defined]
    batches: List[int] = []
    original = file.apply

    def apply(units: Any) -> Any:
        batches.append(len(units))
        return original(units)

    file.apply = apply
    await asyncio.gather(*(s.store(f"k{j}", [i, j]) for j in range(10) for i, s in enumerate(storages)))
    assert sum(batches) == 80 and len(batches) < 80 and max(batches) > 1
    for i, s in enumerate(storages):
        assert s.snapshot() == {f"k{j}": [i, j] for j in range(10)}
    for s in storages[:-1]:
        s.close()
    assert not file.closed  # the last account keeps the file open
    storages[-1].close()
    assert file.closed
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT count(*) FROM kv").fetchone()[0] == 80
    finally:
        raw.close()


# -- PostgreSQL --------------------------------------------------------------------------------------


async def _pool(server: Any) -> Any:
    import asyncpg

    return await asyncpg.create_pool(server.dsn, min_size=1, max_size=4)


async def test_postgres_one_open_per_account_and_the_lock_goes_with_the_process(postgres: Any) -> None:
    from omemo.storages import AccountInUse

    pool = await _pool(postgres)
    try:
        first = await PostgreSQLStorage.open(pool, "busy@example.org")
        with pytest.raises(AccountInUse, match=r"busy@example\.org"):
            await PostgreSQLStorage.open(pool, "busy@example.org")
        other = await PostgreSQLStorage.open(pool, "other@example.org")  # other accounts are fine
        # Another process cannot open it either, until this one closes it.
        script = textwrap.dedent(
            f"""
            import asyncio, asyncpg, sys
            from omemo.storages import AccountInUse, PostgreSQLStorage
            async def main():
                pool = await asyncpg.create_pool({postgres.dsn!r}, min_size=1, max_size=2)
                try:
                    s = await PostgreSQLStorage.open(pool, "busy@example.org")
                except AccountInUse:
                    print("in use")
                    return
                await s.store("from the other process", 1)
                await s.close()
                print("opened")
            asyncio.run(main())
            """
        )

        def run() -> str:
            command = [sys.executable, "-c", script]
            return subprocess.run(
                command, capture_output=True, text=True, timeout=60, check=True
            ).stdout.strip()

        assert run() == "in use"
        await first.close()
        assert run() == "opened"
        again = await PostgreSQLStorage.open(pool, "busy@example.org")
        assert (await again.load_primitive("from the other process", int)).from_just() == 1
        await again.close()
        await other.close()
    finally:
        await pool.close()


async def test_postgres_writes_are_durable_when_they_return_and_survive_a_killed_server(
    postgres: Any,
) -> None:
    pool = await _pool(postgres)
    storage = await PostgreSQLStorage.open(pool, "durable@example.org", disable_cache=True)
    try:
        await storage.store("kept", {"a": [1, 2]})
    finally:
        await storage.close()
        await pool.close()
    postgres.kill()  # a crash of the database server right after the write returned
    postgres.start()
    pool = await _pool(postgres)
    try:
        storage = await PostgreSQLStorage.open(pool, "durable@example.org")
        assert (await storage.load("kept")).from_just() == {"a": [1, 2]}
        await storage.close()
    finally:
        await pool.close()


def test_postgres_a_transaction_cut_by_a_killed_process_leaves_nothing(postgres: Any) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, asyncpg, os, signal
        from omemo.storages import PostgreSQLStorage
        async def main():
            pool = await asyncpg.create_pool({postgres.dsn!r}, min_size=1, max_size=2)
            s = await PostgreSQLStorage.open(pool, "cut@example.org")
            await s.store("before", 1)
            async with s.transaction():
                await s.store("half", 1)
                await s.store("other half", 2)
                os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
    assert result.returncode == -9

    async def check() -> None:
        pool = await _pool(postgres)
        try:
            storage = await PostgreSQLStorage.open(pool, "cut@example.org")  # the lock died with it
            assert await storage.snapshot() == {"before": 1}
            await storage.close()
        finally:
            await pool.close()

    asyncio.run(check())


async def test_postgres_bad_records_and_a_newer_schema(postgres: Any) -> None:
    pool = await _pool(postgres)
    try:
        storage = await PostgreSQLStorage.open(pool, "broken@example.org", disable_cache=True)
        await storage.store("good", 1)
        await storage.store("bad", 2)
        await pool.execute(
            "UPDATE omemo_kv SET value = '{truncat' WHERE account = $1 AND key = 'bad'", "broken@example.org"
        )
        with pytest.raises(StorageException, match=r"'broken@example\.org'.*'bad'.*not valid JSON"):
            await storage.load("bad")
        assert (await storage.load_primitive("good", int)).from_just() == 1  # the rest keeps working
        await storage.close()
        await pool.execute("INSERT INTO omemo_schema (version) VALUES (99)")
        from omemo.storages._postgresql import _POOLS

        _POOLS.clear()  # as a fresh process would: the schema is checked again
        with pytest.raises(StorageException, match="schema version 99"):
            await PostgreSQLStorage.open(pool, "broken@example.org")
        await pool.execute("DELETE FROM omemo_schema WHERE version = 99")
    finally:
        await pool.close()


async def test_postgres_group_commit_and_a_failing_write_fails_alone(postgres: Any) -> None:
    from omemo.storages._postgresql import _POOLS

    pool = await _pool(postgres)
    storages = [
        await PostgreSQLStorage.open(pool, f"group{i}@example.org", disable_cache=True) for i in range(4)
    ]  # (creates the table)
    await pool.execute(
        "CREATE OR REPLACE FUNCTION omemo_test_refuse() RETURNS trigger AS $$ BEGIN"
        " IF NEW.key = 'refused' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW;"
        " END $$ LANGUAGE plpgsql"
    )
    await pool.execute(
        "CREATE TRIGGER omemo_test_refuse BEFORE INSERT OR UPDATE ON omemo_kv"
        " FOR EACH ROW EXECUTE FUNCTION omemo_test_refuse()"
    )
    try:
        group_commit = _POOLS[id(pool)][1].group_commit
        batches: List[int] = []
        commit = group_commit._GroupCommit__commit

        async def counted(batch: Any) -> Any:
            batches.append(len(batch))
            return await commit(batch)

        group_commit._GroupCommit__commit = counted
        await asyncio.gather(*(storage.store(f"k{j}", j) for j in range(10) for storage in storages))
        assert len(batches) < 40 and max(batches) > 1  # writes of several accounts committed together
        writes = [storage.store(f"k{j}", j) for j in range(10) for storage in storages]
        writes.append(storages[0].store("refused", 1))
        writes += [storages[1].store("k0", "last"), storages[1].delete("k1")]  # the last write wins
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert all(result is None for result in results[:40] + results[41:])
        assert isinstance(results[40], StorageException)
        assert "'group0@example.org'" in str(results[40]) and "'refused'" in str(results[40])
        expected = {f"k{j}": j for j in range(10)}
        assert await storages[0].snapshot() == expected
        content = await storages[1].snapshot()
        assert content["k0"] == "last" and "k1" not in content
    finally:
        for storage in storages:
            await storage.close()  # (else the pool's close waits for the lock connection forever)
        await pool.execute("DROP TRIGGER omemo_test_refuse ON omemo_kv")
        await pool.execute("DROP FUNCTION omemo_test_refuse")
        await pool.close()
