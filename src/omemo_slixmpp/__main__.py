"""``python -m omemo_slixmpp``: the ``omemo-chat`` command line client (see :mod:`omemo_slixmpp.cli`)."""

from .cli import main

raise SystemExit(main())
