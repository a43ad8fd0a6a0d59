"""Legacy OMEMO (``eu.siacs.conversations.axolotl``) backend for :mod:`omemo`, a drop-in replacement
of PyPI's oldmemo.

Usage::

    from oldmemo import Oldmemo
    backend = Oldmemo(storage)

XML helpers are in :mod:`oldmemo.etree`; migration of pre-1.0 python-omemo data in
:mod:`oldmemo.migrations`.
"""

from __future__ import annotations

from . import etree, oldmemo
from .oldmemo import NAMESPACE, Oldmemo

__all__ = ["NAMESPACE", "Oldmemo", "etree", "oldmemo"]
