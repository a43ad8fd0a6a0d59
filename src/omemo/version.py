"""The version of the ``omemo`` package, in the dict shape python-omemo 1.0.2 used.

python-omemo 1.0.2 exposed ``__version__`` as ``{"short", "tag", "full"}`` (1.3 turned it into a plain
string). We keep the 1.0.2 shape, as the contract we follow is 1.0.2's; the values are this project's
own version (the ``omemo-stack`` distribution), not the reference's.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["__version__"]

__version__: Dict[str, str] = {
    "short": "0.1.0",
    "tag": "alpha",
    "full": "0.1.0-alpha",
}
