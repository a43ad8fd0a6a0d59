"""Pure OMEMO protocol engines shared by the ``twomemo`` and ``oldmemo`` backends.

Nothing in this package performs I/O, awaits, or reads the clock or the system RNG on its own: all
randomness and time are parameters (defaulting to :func:`os.urandom` only at the outermost entry
points). See ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

__all__: list[str] = []
