"""Ready-made :class:`~omemo.storage.Storage` implementations.

- :class:`MemoryStorage`: a dict, optionally JSON-serialising every value (for tests and demos).
- :class:`SQLiteStorage`: one SQLite file (WAL journal) per account, or, with ``account=``, one file
  shared by many accounts of the process; every write is committed (and, by default, synced to disk)
  before the coroutine returns, on a writer thread; an account open twice raises :class:`AccountInUse`.
- :class:`PostgreSQLStorage`: one account of many in a PostgreSQL database, sharing an asyncpg pool
  (extra ``omemo-stack[postgres]``); every write is committed before it returns, transactions are
  database transactions, and an account open in another process raises :class:`AccountInUse`.

All offer, beyond the :class:`~omemo.storage.Storage` API:

- ``async with storage.transaction(): ...`` groups the writes of the current task into one atomic
  unit: committed when the block ends normally, rolled back (cache included) when it raises. Writes
  of other tasks wait until the block has ended; nested blocks join the outer one; reads see the
  writes made so far. This is optional API: code that must work with any storage can check
  ``hasattr(storage, "transaction")``.
- ``snapshot()`` returns a copy of the whole content as a dict.

:class:`SQLiteStorage` is also an async context manager (``async with SQLiteStorage(path) as s:``)
and has :meth:`SQLiteStorage.close`. :class:`PostgreSQLStorage` is opened with ``await
PostgreSQLStorage.open(pool, account)``, closed with ``await storage.close()``, and its ``snapshot()`` is a
coroutine.
"""

from __future__ import annotations

from ._errors import AccountInUse
from ._memory import MemoryStorage
from ._postgresql import PostgreSQLStorage
from ._sqlite import SQLiteStorage

__all__ = ["AccountInUse", "MemoryStorage", "PostgreSQLStorage", "SQLiteStorage"]
