"""The background signed pre key rotation of the session manager (PROTOCOL.md 5.2 step 5, 6.4).

The loop checks every loaded backend: a signed pre key at least one rotation period old is rotated and
the bundle republished. It then sleeps until the next rotation is due, plus :data:`SLACK` seconds so
that it wakes up after, not just before, that moment (the ages are whole seconds).

When publishing the rotated bundle fails, the upload is retried after 60 s, and the delay doubles with
every further failure up to one hour. (The reference resets the delay inside its retry loop, so it never
grows; PROTOCOL.md 6.4.) Any other error is logged and the backend is looked at again after the slack,
so one bad backend neither kills the task nor makes it spin. Cancellation (``shutdown``) is never
swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..backend import Backend
from .errors import BundleUploadFailed
from .state import Core

__all__ = ["RETRY_DELAY_INITIAL", "RETRY_DELAY_MAX", "SLACK", "rotation_loop", "upload_with_retry"]

_log = logging.getLogger("omemo.core")

#: Seconds added to every sleep, so that the loop wakes up when the rotation is already due.
SLACK = 60
#: First delay before retrying a failed bundle upload, in seconds.
RETRY_DELAY_INITIAL = 60
#: Upper bound of the (doubling) retry delay, in seconds.
RETRY_DELAY_MAX = 3600


async def upload_with_retry(core: Core, backend: Backend) -> None:
    """Publish a backend's bundle, retrying on ``BundleUploadFailed`` with a doubling delay."""
    delay = RETRY_DELAY_INITIAL
    while True:
        try:
            await core.upload_bundle(backend)
            return
        except BundleUploadFailed:
            _log.warning("bundle upload after signed pre key rotation failed; retrying in %d s", delay)
        await core.runtime.sleep(delay)
        delay = min(delay * 2, RETRY_DELAY_MAX)


async def _check_backend(core: Core, backend: Backend) -> int:
    """Rotate the signed pre key of one backend if due.

    Returns:
        The number of seconds until its next rotation is due.
    """
    period = core.rotation_period
    age = await backend.signed_pre_key_age()
    if age < period:
        return period - age
    async with core.backend_locks.hold(backend.namespace):
        # Re-check under the lock: a concurrent caller may have rotated already.
        if await backend.signed_pre_key_age() >= period:
            _log.info("rotating the signed pre key of %s", backend.namespace)
            await backend.rotate_signed_pre_key()
            core.dirty_bundles.add(backend.namespace)
    await upload_with_retry(core, backend)
    return period


def rotation_loop(core: Core) -> Callable[[], Coroutine[Any, Any, None]]:
    """Returns: a factory of the rotation coroutine (for :meth:`Runtime.start`)."""

    async def loop() -> None:
        while True:
            soonest = core.rotation_period
            for backend in list(core.backends):
                try:
                    soonest = min(soonest, await _check_backend(core, backend))
                except Exception as exc:
                    if core.runtime.is_cancellation(exc):
                        raise
                    _log.warning(
                        "signed pre key rotation of %s failed (%s); will retry",
                        backend.namespace,
                        type(exc).__name__,
                    )
                    soonest = 0
            await core.runtime.sleep(max(soonest, 0) + SLACK)

    return loop
