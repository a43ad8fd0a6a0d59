"""slixmpp-omemo's published example echo client, fetched at test time (it is AGPL: never stored here).

The example is taken from slixmpp-omemo's source distribution on PyPI, pinned by its SHA-256 and cached
in ``~/.cache/omemo-stack/downloads``. The newest release, 2.2.0, ships no example (its sdist holds only
the package and one test), so the example is 2.0.0's, the last one published. slixmpp-omemo 2.1 changed
two return types that the example uses:

- ``is_encrypted`` returns a set of namespaces (empty when not encrypted) instead of a namespace or None;
- ``encrypt_message`` returns one stanza or None instead of a dict namespace -> stanza.

:func:`for_2_2` makes exactly these two edits, each checked to apply once; the tests run the result on
slixmpp-omemo 2.2.0 itself first (proving the edits are right), then on ours with only the import line
changed (:func:`with_import`).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional

__all__ = ["SDIST_SHA256", "SDIST_URL", "for_2_2", "published_example", "with_import"]

SDIST_URL = (
    "https://files.pythonhosted.org/packages/6e/ee/45ccb907eb208d2d1ca900654d8b3b9e48cc4462b244d3feb518b0610f26/"
    "slixmpp_omemo-2.0.0.tar.gz"
)
SDIST_SHA256 = "2038404c479999cb49f64253a637e976e7371990ecdfcacbc5eacf7b2f30b823"
MEMBER = "slixmpp_omemo-2.0.0/examples/echo_client.py"
IMPORT_LINE = "from slixmpp_omemo import TrustLevel, XEP_0384\n"

#: (what 2.0.0's example says, what it says on the 2.2 API): the two API changes, nothing else.
_API_CHANGES = (
    ("        if namespace is None:\n", "        if not namespace:\n"),
    (
        "        for namespace, message in messages.items():\n"
        '            message["eme"]["namespace"] = namespace\n'
        '            message["eme"]["name"] = self["xep_0380"].mechanisms[namespace]\n'
        "            message.send()\n",
        "        if messages is not None:\n            messages.send()\n",
    ),
)


def _download(cache: Path) -> bytes:
    path = cache / SDIST_URL.rsplit("/", 1)[1]
    if path.exists():
        cached = path.read_bytes()
        if hashlib.sha256(cached).hexdigest() == SDIST_SHA256:
            return cached
    with urllib.request.urlopen(SDIST_URL, timeout=60) as response:
        data: bytes = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise OSError(f"{SDIST_URL} has SHA-256 {digest}, expected {SDIST_SHA256}")
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return data


def published_example(cache: Optional[Path] = None) -> str:
    """Returns: the text of slixmpp-omemo 2.0.0's ``examples/echo_client.py``, as published (the sdist is
    cached in ``cache``, by default ``~/.cache/omemo-stack/downloads``).

    Raises:
        OSError: it could not be downloaded, or the download is not the pinned file.
    """
    cache = cache or Path.home() / ".cache" / "omemo-stack" / "downloads"
    with tarfile.open(fileobj=io.BytesIO(_download(cache)), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise OSError(f"{MEMBER} is not a file in the sdist")
        return member.read().decode("utf-8")


def for_2_2(example: str) -> str:
    """The example on slixmpp-omemo 2.2's API: the two return-type changes, each applied exactly once."""
    for old, new in _API_CHANGES:
        if example.count(old) != 1:
            raise ValueError(f"the example does not contain exactly one {old.strip().splitlines()[0]!r}")
        example = example.replace(old, new)
    return example


def with_import(example: str, module: str) -> str:
    """The example with its one import of slixmpp-omemo's plugin taken from ``module`` instead."""
    if example.count(IMPORT_LINE) != 1:
        raise ValueError("the example does not import the plugin exactly once")
    return example.replace(IMPORT_LINE, f"from {module} import TrustLevel, XEP_0384\n")
