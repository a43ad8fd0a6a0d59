"""Project metadata, exposed as ``omemo.project`` as in python-omemo 1.0.2 (removed there in 1.3)."""

from __future__ import annotations

from typing import Dict, List, Union

__all__ = ["project"]

project: Dict[str, Union[str, List[str]]] = {
    "name": "omemo-stack",
    "description": (
        "A complete, fast OMEMO (XEP-0384) implementation: drop-in omemo, twomemo and oldmemo packages on"
        " one pure protocol engine."
    ),
    "url": "",
    "year": "2026",
    "author": "The omemo-stack developers",
    "author_email": "",
    "categories": [
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Chat",
        "Topic :: Security :: Cryptography",
        "Typing :: Typed",
    ],
}
