"""Exceptions shared by the ready storages."""

from __future__ import annotations

from ..storage import StorageException

__all__ = ["AccountInUse"]


class AccountInUse(StorageException):
    """The account is open in another process (or another storage object) already."""
