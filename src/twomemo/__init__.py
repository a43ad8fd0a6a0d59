"""OMEMO 2 (``urn:xmpp:omemo:2``) backend for :mod:`omemo`, a drop-in replacement of PyPI's twomemo.

Usage::

    from twomemo import Twomemo
    backend = Twomemo(storage)

XML helpers are in :mod:`twomemo.etree`.
"""

from __future__ import annotations

from . import etree, twomemo
from .twomemo import NAMESPACE, Twomemo

__all__ = ["NAMESPACE", "Twomemo", "etree", "twomemo"]
