"""Device hygiene: what the session manager knows about the activity of each device, and stale devices.

A device that never answers keeps receiving keys forever: every message is encrypted for it (work, and
stanzas growing with every dead device), and a read-only or lost device holding the keys is a
forward-secrecy risk. The session manager therefore stops encrypting for a device that is **stale**:

- it has been sent :attr:`~omemo.session_manager.SessionManager.STALE_DEVICE_MESSAGES` messages (2,000)
  without answering; or
- it has been sent more than ``STALENESS_MAGIC_NUMBER`` messages (53: a live device would have sent an
  empty message by then) without answering, and it has been silent for
  :attr:`~omemo.session_manager.SessionManager.STALE_DEVICE_SILENCE` seconds (90 days) — since its last
  message, or since it first appeared in a device list if it never wrote.

"Messages sent without answer" is the length of the sending chain of our session with the device in the
namespace used (it restarts when the device's next message arrives), so counting costs no storage write;
the time of a device's last message is written at most once an hour per device. A stale device is skipped
by ``encrypt`` with a :class:`StaleDevice` error in its results, and reappears as soon as it writes again.
Own other devices follow the same rule. Applications can override
``SessionManager._is_stale(activity)``.
"""

from __future__ import annotations

from typing import FrozenSet, NamedTuple, Optional, Tuple

from .types import DeviceInformation, OMEMOException

__all__ = ["DeviceActivity", "DeviceHealth", "HealthReport", "NamespaceHealth", "StaleDevice"]


class DeviceActivity(NamedTuple):
    """The activity of one device, as the session manager sees it.

    Attributes:
        bare_jid: the account of the device.
        device_id: the device id.
        unanswered: per namespace in which there is a session with the device, the messages sent to it
            since its last message arrived, as ``(namespace, count)`` pairs.
        last_heard: when its last message was decrypted (Unix time; the hour is exact, not the second),
            or ``None`` if it never wrote.
        first_seen: when it first appeared in one of its account's device lists (Unix time), if known.
        stale: whether ``encrypt`` skips it (see the module docstring); for the namespace that the
            default order uses for it.
    """

    bare_jid: str
    device_id: int
    unanswered: FrozenSet[Tuple[str, int]]
    last_heard: Optional[float]
    first_seen: Optional[float]
    stale: bool

    def silent_since(self) -> Optional[float]:
        """Returns: since when the device has been silent: its last message, else its first sighting."""
        return self.last_heard if self.last_heard is not None else self.first_seen


class StaleDevice(OMEMOException):
    """The device was not encrypted for because it is stale (it stopped answering); it is encrypted for
    again as soon as one of its messages arrives. Found in the errors ``encrypt`` returns."""


class NamespaceHealth(NamedTuple):
    """One device list of an account, as downloaded for a health report.

    Attributes:
        namespace: the namespace.
        readable: whether the device list could be downloaded.
        devices: how many devices it lists (0 if unreadable).
        error: why it could not be downloaded, if so (``omemo.diagnostics.explain`` tells what to do).
    """

    namespace: str
    readable: bool
    devices: int
    error: Optional[Exception]


class DeviceHealth(NamedTuple):
    """One device of an account in a health report.

    Attributes:
        device_id: the device id.
        information: what is known of it (trust, label, namespaces), ``None`` if its identity key is not
            known (no bundle could be used yet).
        activity: its activity (sessions, silence, staleness).
        bundles: per namespace in which it is listed, ``None`` if its bundle is usable for a new
            session, else why not, as ``(namespace, error)`` pairs.
    """

    device_id: int
    information: Optional[DeviceInformation]
    activity: DeviceActivity
    bundles: Tuple[Tuple[str, Optional[Exception]], ...]


class HealthReport(NamedTuple):
    """What stands between this account and another for OMEMO (``SessionManager.get_health_report``).

    Attributes:
        bare_jid: the account.
        device_lists: one entry per loaded namespace.
        devices: one entry per device ever seen for the account, by device id.
    """

    bare_jid: str
    device_lists: Tuple[NamespaceHealth, ...]
    devices: Tuple[DeviceHealth, ...]
