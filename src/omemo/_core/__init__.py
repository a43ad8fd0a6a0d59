"""The orchestration core of :class:`omemo.session_manager.SessionManager` (private).

The session manager is the public facade; the work is done here, one module per flow: ``state`` (the
shared state, caches, locks and the helpers every flow uses), ``encrypt``, ``decrypt``, ``devices``
(device records and trust storage), ``maintenance`` (set-up, bundle and device-list upkeep),
``rotation`` (the signed pre key rotation task), ``idle`` (the task that forgets idle contacts) and
``errors`` (the exception tree, re-exported by :mod:`omemo.session_manager`). This is the only layer
that awaits storage and XMPP hooks; it knows backends only through :class:`omemo.backend.Backend`.
"""
