"""Forgetting idle contacts: the background task that keeps the memory of a session manager in
proportion to the contacts it is talking to, not to every contact it ever had.

Every :attr:`~omemo.session_manager.SessionManager.CACHE_IDLE_SECONDS` / 2 seconds the task drops
what the session manager holds in memory for the contacts not used since its previous round (see
:meth:`Core.forget_idle`): after at most ``CACHE_IDLE_SECONDS`` of silence a contact costs no RAM,
and its next message loads its records and session from the storage again (a gateway with many
accounts: thousands of sessions, few of them active at a time). A value of 0 or less turns it off.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from .state import Core

__all__ = ["forget_idle_loop"]


def forget_idle_loop(core: Core) -> Callable[[], Coroutine[Any, Any, None]]:
    """Returns: a factory of the coroutine that forgets idle contacts (for :meth:`Runtime.start`)."""

    async def loop() -> None:
        while True:
            idle = core.manager.CACHE_IDLE_SECONDS
            if idle <= 0:
                return
            await core.runtime.sleep(idle / 2)
            core.forget_idle()

    return loop
