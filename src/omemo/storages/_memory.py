"""A dict-backed :class:`~omemo.storage.Storage`, for tests, demos and short-lived sessions."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Set

from ..storage import Just, Maybe, Nothing, Storage, StorageException, _json_clone
from ..types import JSONType
from ._transaction import _TransactionSupport

__all__ = ["MemoryStorage"]

_ABSENT: Any = object()


class MemoryStorage(_TransactionSupport, Storage):
    """A storage keeping everything in a dict; nothing survives the process.

    By default values are kept as (private, never shared) Python objects. With ``serialize=True`` they
    are kept as JSON text instead, so the storage behaves exactly like a persistent one: what you load
    is what a JSON round trip gives (e.g. tuples come back as lists, ``-0.0`` stays a float), and
    every load decodes a fresh object.

    Also offers :meth:`transaction` (see :mod:`omemo.storages`) and :meth:`snapshot`.
    """

    def __init__(
        self,
        data: Optional[Mapping[str, JSONType]] = None,
        *,
        serialize: bool = False,
        disable_cache: bool = True,
    ) -> None:
        """Create the storage.

        Args:
            data: initial content, e.g. a storage dump loaded from a JSON file; it is copied.
            serialize: keep values as JSON text (see the class docstring).
            disable_cache: disable the :class:`~omemo.storage.Storage` cache. On by default here, as
                a cache in front of a dict only costs memory.

        Raises:
            TypeError: ``data`` contains a value that is not JSON-serialisable.
        """
        super().__init__(disable_cache=disable_cache)
        self.__serialize = serialize
        self.__data: Dict[str, Any] = {}
        self.__journal: Optional[Dict[str, Any]] = None
        for key, value in (data or {}).items():
            fresh = _json_clone(value, key)
            self.__data[key] = self.__encode(fresh)

    def __encode(self, value: JSONType) -> Any:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False) if self.__serialize else value

    async def _load(self, key: str) -> Maybe[JSONType]:
        raw = self.__data.get(key, _ABSENT)
        if raw is _ABSENT:
            return Nothing()
        if self.__serialize:
            try:
                raw = json.loads(raw)
            except ValueError as e:  # pragma: no cover - we only ever store json.dumps output
                raise StorageException(f"the value stored under {key!r} is not valid JSON") from e
        # The object is private to this storage (or freshly decoded) and Just clones on the way out.
        return Just._wrap(raw)

    async def _store(self, key: str, value: JSONType) -> None:
        encoded = self.__encode(value)
        await self._txn_guard(key, lambda: self.__write(key, encoded))

    async def _delete(self, key: str) -> None:
        await self._txn_guard(key, lambda: self.__write(key, _ABSENT))

    def __write(self, key: str, encoded: Any) -> None:
        journal = self.__journal
        if journal is not None and self._txn_active_here() and key not in journal:
            journal[key] = self.__data.get(key, _ABSENT)
        if encoded is _ABSENT:
            self.__data.pop(key, None)
        else:
            self.__data[key] = encoded

    # -- transactions -------------------------------------------------------------------------------

    def _txn_begin(self) -> None:
        self.__journal = {}

    def _txn_commit(self) -> None:
        self.__journal = None

    def _txn_rollback(self, touched: Set[str]) -> None:
        journal = self.__journal or {}
        self.__journal = None
        for key, previous in journal.items():
            if previous is _ABSENT:
                self.__data.pop(key, None)
            else:
                self.__data[key] = previous
        self._invalidate_cache(touched | journal.keys())

    # -- extras -------------------------------------------------------------------------------------

    def snapshot(self) -> Dict[str, JSONType]:
        """Copy the whole content, e.g. to compare it with an expected storage dump.

        Returns:
            A fresh dict mapping every key to (a copy of) its value.
        """
        if self.__serialize:
            return {key: json.loads(raw) for key, raw in self.__data.items()}
        return {key: _json_clone(value, key) for key, value in self.__data.items()}

    def __repr__(self) -> str:
        return f"MemoryStorage(<{len(self.__data)} keys>, serialize={self.__serialize})"
