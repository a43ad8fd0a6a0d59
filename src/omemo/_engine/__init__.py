"""The one backend implementation on :mod:`omemo_engine`, shared by ``twomemo`` and ``oldmemo`` (private).

``backend`` adapts the engine to the :class:`omemo.backend.Backend` contract and owns the stored state;
``records`` holds the stored key-state records and the id constants; ``reference_import`` converts the
records of the reference backends (python-omemo 1.x/2.x) and ``legacy_convert`` those of python-omemo
< 1.0, for :mod:`oldmemo.migrations`.
"""
