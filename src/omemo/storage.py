"""The key-value storage interface the library persists its state through, and the ``Maybe`` type.

Theory of operation. A concrete storage implements three abstract coroutines, :meth:`Storage._load`,
:meth:`Storage._store` and :meth:`Storage._delete`, on JSON values. The base class adds an optional
in-memory cache and the typed helpers (:meth:`Storage.load_primitive`, :meth:`Storage.load_list`, ...)
that the library uses everywhere.

Copy discipline (the hot path). Values handed to :meth:`Storage.store` are validated and copied once
into a fresh plain-JSON tree (``dict``/``list``/``str``/``int``/``float``/``bool``/``None``); that tree
is what ``_store`` receives and what the cache keeps, and it is never mutated afterwards. Values leave
only through a :class:`Just`, which clones on the way out: immutable primitives are returned as they
are, lists and dicts of primitives get a shallow copy, nested structures a JSON-aware deep copy (no
``copy.deepcopy`` memo overhead). So callers can never alias cached state, and nobody pays for copies
of immutable values.
"""

from __future__ import annotations

import base64
import binascii
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Dict, Generic, List, Optional, Type, TypeVar, Union, cast

from .types import JSONType, OMEMOException

__all__ = [
    "Just",
    "Maybe",
    "Nothing",
    "NothingException",
    "Storage",
    "StorageException",
]

ValueTypeT = TypeVar("ValueTypeT")
DefaultTypeT = TypeVar("DefaultTypeT")
MappedValueTypeT = TypeVar("MappedValueTypeT")
PrimitiveTypeT = TypeVar("PrimitiveTypeT", None, float, int, str, bool)

_NoneType = type(None)
_IMMUTABLE_TYPES = frozenset({str, int, float, bool, bytes, _NoneType})
_PRIMITIVE_TYPES = frozenset({str, int, float, bool, _NoneType})


def _identity(value: Any) -> Any:
    return value


def _deep_clone(value: Any) -> Any:
    """Clone a value: JSON trees cheaply, immutable primitives not at all, anything else via deepcopy."""
    cls = type(value)
    if cls in _IMMUTABLE_TYPES:
        return value
    if cls is dict:
        return {k: v if type(v) in _IMMUTABLE_TYPES else _deep_clone(v) for k, v in value.items()}
    if cls is list:
        return [v if type(v) in _IMMUTABLE_TYPES else _deep_clone(v) for v in value]
    return copy.deepcopy(value)


def _shallow_clone(value: Any) -> Any:
    # Only used for lists/dicts whose elements were checked to be immutable primitives.
    return value.copy()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _json_clone(value: Any, key: str) -> Any:
    """Validate a value as JSON and return a fresh plain-JSON copy of it.

    Tuples become lists, other mappings become dicts, and subclasses of ``str``/``int``/``float``
    (e.g. ``IntEnum``) become the base type, exactly as a JSON round trip would turn them.

    Raises:
        TypeError: the value (or something nested in it) is not JSON-serialisable, or a mapping has
            a non-string key (JSON would silently turn it into a string).
    """
    cls = type(value)
    if cls is str or cls is int or cls is float or cls is bool or value is None:
        return value
    if cls is dict or isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(
                    f"cannot store the value for key {key!r}: mapping keys must be str, "
                    f"got {type(k).__name__}"
                )
            out[k] = _json_clone(v, key)
        return out
    if cls is list or cls is tuple:
        return [_json_clone(v, key) for v in value]
    if isinstance(value, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    hint = " (use store_bytes for bytes)" if isinstance(value, (bytes, bytearray, memoryview)) else ""
    raise TypeError(
        f"cannot store the value for key {key!r}: {type(value).__name__} is not JSON-serialisable{hint}"
    )


class NothingException(Exception):
    """Raised by :meth:`Maybe.from_just` when called on a :class:`Nothing`."""


class Maybe(ABC, Generic[ValueTypeT]):
    """A value that may be absent, distinguishing "absent" from "present and ``None``".

    ``Optional[Optional[X]]`` collapses to ``Optional[X]``; a ``Maybe[Optional[X]]`` does not. Values
    are cloned when they enter a :class:`Just` and every time they leave it, so that whatever a caller
    does with a value cannot affect stored or cached state. Immutable values are not copied.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def is_just(self) -> bool:
        """Whether this is a :class:`Just`."""

    @property
    @abstractmethod
    def is_nothing(self) -> bool:
        """Whether this is a :class:`Nothing`."""

    @abstractmethod
    def from_just(self) -> ValueTypeT:
        """Extract the value.

        Returns:
            A clone of the held value.

        Raises:
            NothingException: this is a :class:`Nothing`.
        """

    @abstractmethod
    def maybe(self, default: DefaultTypeT) -> Union[ValueTypeT, DefaultTypeT]:
        """Extract the value, or fall back to a default.

        Args:
            default: returned (as the same object, not a copy) if this is a :class:`Nothing`.

        Returns:
            A clone of the held value, or ``default``.
        """

    @abstractmethod
    def fmap(self, function: Callable[[ValueTypeT], MappedValueTypeT]) -> Maybe[MappedValueTypeT]:
        """Map the held value, if any.

        Args:
            function: applied to a clone of the held value.

        Returns:
            A new :class:`Just` of the mapped value, or a new :class:`Nothing`.
        """


class Just(Maybe[ValueTypeT]):
    """A :class:`Maybe` holding a value."""

    __slots__ = ("_clone", "_value")

    _value: ValueTypeT
    _clone: Callable[[Any], Any]

    def __init__(self, value: ValueTypeT) -> None:
        """Wrap a value.

        Args:
            value: the value; a clone of it is kept.
        """
        self._value = _deep_clone(value)
        self._clone = _deep_clone

    @classmethod
    def _wrap(cls, value: ValueTypeT, clone: Callable[[Any], Any] = _deep_clone) -> Just[ValueTypeT]:
        # Internal constructor: takes ownership of ``value`` without copying it. ``clone`` is how the
        # value is copied on the way out; callers pick the cheapest one that is still safe.
        self = cls.__new__(cls)
        self._value = value
        self._clone = clone
        return self

    @property
    def is_just(self) -> bool:
        """Always ``True``."""
        return True

    @property
    def is_nothing(self) -> bool:
        """Always ``False``."""
        return False

    def from_just(self) -> ValueTypeT:
        """Extract the value.

        Returns:
            A clone of the held value.
        """
        return cast(ValueTypeT, self._clone(self._value))

    def maybe(self, default: DefaultTypeT) -> ValueTypeT:
        """Extract the value (the default is ignored).

        Args:
            default: unused for a :class:`Just`.

        Returns:
            A clone of the held value.
        """
        return cast(ValueTypeT, self._clone(self._value))

    def fmap(self, function: Callable[[ValueTypeT], MappedValueTypeT]) -> Just[MappedValueTypeT]:
        """Map the held value.

        Args:
            function: applied to a clone of the held value.

        Returns:
            A new :class:`Just` holding (a clone of) the mapped value.
        """
        return Just(function(self._clone(self._value)))

    def __repr__(self) -> str:
        # Stored values include private keys: show only the type.
        return f"Just(<{type(self._value).__name__}>)"


class Nothing(Maybe[ValueTypeT]):
    """A :class:`Maybe` holding no value."""

    __slots__ = ()

    def __init__(self) -> None:
        """Create an empty :class:`Maybe`."""

    @property
    def is_just(self) -> bool:
        """Always ``False``."""
        return False

    @property
    def is_nothing(self) -> bool:
        """Always ``True``."""
        return True

    def from_just(self) -> ValueTypeT:
        """There is no value to extract.

        Raises:
            NothingException: always.
        """
        raise NothingException("from_just() called on a Nothing")

    def maybe(self, default: DefaultTypeT) -> DefaultTypeT:
        """Return the default.

        Args:
            default: the value to return, by reference.

        Returns:
            ``default`` itself.
        """
        return default

    def fmap(self, function: Callable[[ValueTypeT], MappedValueTypeT]) -> Nothing[MappedValueTypeT]:
        """Nothing to map; the function is not called.

        Args:
            function: unused.

        Returns:
            A new :class:`Nothing`.
        """
        return Nothing()

    def __repr__(self) -> str:
        return "Nothing()"


class StorageException(OMEMOException):
    """Raised by :class:`Storage` methods when a storage operation fails."""


# Cache marker for "known to be absent".
_ABSENT: Any = object()


def _type_error(key: str, value: Any, expected: str) -> TypeError:
    return TypeError(f"the value stored under {key!r} is a {type(value).__name__}, expected {expected}")


def _primitive_name(primitive: type) -> str:
    return "None" if primitive is _NoneType else primitive.__name__


def _check_primitive_type(primitive: Any) -> None:
    if primitive not in _PRIMITIVE_TYPES and primitive is not None:
        raise TypeError(f"primitive must be one of None, float, int, str, bool, got {primitive!r}")


class Storage(ABC):
    """A key-value store of JSON values with an optional in-memory cache (on by default).

    Keys are arbitrary strings, values anything JSON-serialisable. Subclasses implement
    :meth:`_load`, :meth:`_store` and :meth:`_delete` and must call ``super().__init__()``.

    Writes and deletions are performed before the respective coroutine returns; they are never
    deferred or cached. Arguments are treated as immutable.
    """

    # Class-level default so that a subclass which forgets super().__init__() simply runs uncached.
    __cache: Optional[Dict[str, Any]] = None
    __generation: int = 0

    def __init__(self, disable_cache: bool = False) -> None:
        """Configure caching.

        Args:
            disable_cache: turn the built-in cache off, e.g. because the implementation caches on its
                own (double caching would only waste memory).
        """
        self.__cache = None if disable_cache else {}
        self.__generation = 0

    # -- to implement -------------------------------------------------------------------------------

    @abstractmethod
    async def _load(self, key: str) -> Maybe[JSONType]:
        """Load a value.

        Args:
            key: the key identifying the value.

        Returns:
            The value stored under ``key``, or :class:`Nothing` if there is none.

        Raises:
            StorageException: any kind of storage failure.
        """

    @abstractmethod
    async def _store(self, key: str, value: JSONType) -> Any:
        """Store a value, replacing any previous value under the same key, before returning.

        Args:
            key: the key identifying the value.
            value: the value; must not be modified.

        Returns:
            Anything; the result is ignored.

        Raises:
            StorageException: any kind of storage failure.
        """

    @abstractmethod
    async def _delete(self, key: str) -> Any:
        """Delete a value, if there is one, before returning. Deleting a missing key is not an error.

        Args:
            key: the key identifying the value.

        Returns:
            Anything; the result is ignored.

        Raises:
            StorageException: any kind of storage failure.
        """

    # -- cache plumbing -----------------------------------------------------------------------------

    def _invalidate_cache(self, keys: Optional[Iterable[str]] = None) -> None:
        """Forget cached values, e.g. after a storage-level transaction was rolled back.

        Args:
            keys: the keys to forget; all of them if ``None``.
        """
        cache = self.__cache
        self.__generation += 1
        if cache is None:
            return
        if keys is None:
            cache.clear()
        else:
            for key in keys:
                cache.pop(key, None)

    def _forget_cached(self, forget: Callable[[str], bool]) -> None:
        """Drop the cached values of the keys for which ``forget`` is true, to save memory (the session
        manager does it for its idle contacts). Not a write: the storage holds the same values.

        Args:
            forget: tells, per cached key, whether to drop it.
        """
        cache = self.__cache
        if cache:
            for key in [key for key in cache if forget(key)]:
                del cache[key]

    async def __load_raw(self, key: str) -> Any:
        """The internal (uncloned, never to be mutated) value under ``key``, or ``_ABSENT``."""
        cache = self.__cache
        if cache is not None:
            raw = cache.get(key, cache)
            if raw is not cache:
                return raw
        generation = self.__generation
        result = await self._load(key)
        if isinstance(result, Just):
            raw = result._value  # same module; Just never hands this object out
        elif result.is_nothing:
            raw = _ABSENT
        else:  # a foreign Maybe implementation
            raw = result.from_just()
        # Only cache if no write happened while we were waiting for the load: the loaded value might
        # be stale otherwise.
        if cache is not None and generation == self.__generation:
            cache[key] = raw
        return raw

    # -- public API ---------------------------------------------------------------------------------

    async def load(self, key: str) -> Maybe[JSONType]:
        """Load a value.

        Args:
            key: the key identifying the value.

        Returns:
            The value, if there is one.

        Raises:
            StorageException: any kind of storage failure. Forwarded from :meth:`_load`.
        """
        raw = await self.__load_raw(key)
        if raw is _ABSENT:
            return Nothing()
        return Just._wrap(cast(JSONType, raw))

    async def store(self, key: str, value: JSONType) -> None:
        """Store a value.

        Args:
            key: the key identifying the value.
            value: the value: anything JSON-serialisable (mapping keys must be strings).

        Raises:
            TypeError: the value is not JSON-serialisable.
            StorageException: any kind of storage failure. Forwarded from :meth:`_store`.
        """
        fresh = _json_clone(value, key)
        cache = self.__cache
        self.__generation += 1
        generation = self.__generation
        if cache is not None:
            cache.pop(key, None)
        await self._store(key, fresh)
        if cache is not None:
            if generation == self.__generation:
                cache[key] = fresh
            else:  # another write raced with this one: which value won is unknown here
                cache.pop(key, None)

    async def delete(self, key: str) -> None:
        """Delete a value, if there is one.

        Args:
            key: the key identifying the value.

        Raises:
            StorageException: any kind of storage failure. Forwarded from :meth:`_delete`.
        """
        cache = self.__cache
        self.__generation += 1
        generation = self.__generation
        if cache is not None:
            cache.pop(key, None)
        await self._delete(key)
        if cache is not None:
            if generation == self.__generation:
                cache[key] = _ABSENT
            else:
                cache.pop(key, None)

    async def store_bytes(self, key: str, value: bytes) -> None:
        """Store a bytes value (as URL-safe base64 with padding).

        Args:
            key: the key identifying the value.
            value: the bytes to store.

        Raises:
            TypeError: ``value`` is not ``bytes``.
            StorageException: any kind of storage failure. Forwarded from :meth:`_store`.
        """
        if not isinstance(value, bytes):
            raise TypeError(f"store_bytes({key!r}) expects bytes, got {type(value).__name__}")
        # base64.urlsafe_b64encode without its Python layers (this runs on every session write).
        await self.store(key, binascii.b2a_base64(value, newline=False).translate(_URLSAFE).decode("ascii"))

    async def load_primitive(self, key: str, primitive: Type[PrimitiveTypeT]) -> Maybe[PrimitiveTypeT]:
        """Load a primitive value and check its type.

        ``bool`` does not count as ``int``; an ``int`` is accepted (and converted) where ``float`` is
        asked for.

        Args:
            key: the key identifying the value.
            primitive: the expected type: ``type(None)``, ``float``, ``int``, ``str`` or ``bool``.

        Returns:
            The value, if there is one.

        Raises:
            TypeError: the stored value has another type.
            StorageException: any kind of storage failure. Forwarded from :meth:`_load`.
        """
        _check_primitive_type(primitive)
        raw = await self.__load_raw(key)
        if raw is _ABSENT:
            return Nothing()
        return Just._wrap(_as_primitive(key, raw, primitive), _identity)

    async def load_bytes(self, key: str) -> Maybe[bytes]:
        """Load a value stored with :meth:`store_bytes`.

        Args:
            key: the key identifying the value.

        Returns:
            The bytes, if there is a value.

        Raises:
            TypeError: the stored value is not a URL-safe base64 string.
            StorageException: any kind of storage failure. Forwarded from :meth:`_load`.
        """
        raw = await self.__load_raw(key)
        if raw is _ABSENT:
            return Nothing()
        if type(raw) is not str:
            raise _type_error(key, raw, "a URL-safe base64 str (bytes)")
        try:
            decoded = base64.b64decode(raw, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise TypeError(f"the value stored under {key!r} is not valid URL-safe base64") from None
        return Just._wrap(decoded, _identity)

    async def load_optional(
        self, key: str, primitive: Type[PrimitiveTypeT]
    ) -> Maybe[Optional[PrimitiveTypeT]]:
        """Load a value that is ``None`` or of a primitive type.

        Args:
            key: the key identifying the value.
            primitive: the expected type when the value is not ``None``.

        Returns:
            The value, if there is one.

        Raises:
            TypeError: the stored value is neither ``None`` nor of the expected type.
            StorageException: any kind of storage failure. Forwarded from :meth:`_load`.
        """
        _check_primitive_type(primitive)
        raw = await self.__load_raw(key)
        if raw is _ABSENT:
            return Nothing()
        if raw is None:
            return Just._wrap(None, _identity)
        return Just._wrap(_as_primitive(key, raw, primitive), _identity)

    async def load_list(self, key: str, primitive: Type[PrimitiveTypeT]) -> Maybe[List[PrimitiveTypeT]]:
        """Load a list of primitive values and check the element types.

        Args:
            key: the key identifying the value.
            primitive: the expected type of every element.

        Returns:
            The list, if there is a value.

        Raises:
            TypeError: the stored value is not a list or has an element of another type.
            StorageException: any kind of storage failure. Forwarded from :meth:`_load`.
        """
        _check_primitive_type(primitive)
        raw = await self.__load_raw(key)
        if raw is _ABSENT:
            return Nothing()
        if type(raw) is not list:
            raise _type_error(key, raw, f"a list of {_primitive_name(_norm(primitive))}")
        expected = _norm(primitive)
        if not all(type(e) is expected for e in raw):
            raw = [_as_primitive(key, e, primitive) for e in raw]  # converts int -> float, or raises
        return Just._wrap(cast(List[PrimitiveTypeT], raw), _shallow_clone)

    async def load_dict(self, key: str, primitive: Type[PrimitiveTypeT]) -> Maybe[Dict[str, PrimitiveTypeT]]:
        """Load a dict of primitive values and check the key and value types.

        Args:
            key: the key identifying the value.
            primitive: the expected type of every dict value.

        Returns:
            The dict, if there is a value.

        Raises:
            TypeError: the stored value is not a dict with ``str`` keys and values of the expected type.
            StorageException: any kind of storage failure. Forwarded from :meth:`_load`.
        """
        _check_primitive_type(primitive)
        raw = await self.__load_raw(key)
        if raw is _ABSENT:
            return Nothing()
        if type(raw) is not dict:
            raise _type_error(key, raw, f"a dict of {_primitive_name(_norm(primitive))}")
        expected = _norm(primitive)
        if not all(type(k) is str and type(v) is expected for k, v in raw.items()):
            for k in raw:
                if type(k) is not str:
                    raise TypeError(f"the dict stored under {key!r} has a non-str key")
            raw = {k: _as_primitive(key, v, primitive) for k, v in raw.items()}
        return Just._wrap(cast(Dict[str, PrimitiveTypeT], raw), _shallow_clone)


def _norm(primitive: Any) -> type:
    return _NoneType if primitive is None else cast(type, primitive)


def _as_primitive(key: str, raw: Any, primitive: Any) -> Any:
    expected = _norm(primitive)
    cls = type(raw)
    if cls is expected:
        return raw
    if expected is float and cls is int:
        return float(raw)
    raise _type_error(key, raw, _primitive_name(expected))
