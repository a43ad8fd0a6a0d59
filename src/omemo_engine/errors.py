"""The engine's exception tree.

Every failure caused by data from the network (a malformed message, a bad MAC, a bad signature, a
replay) raises a subclass of :class:`EngineError`. Messages name what was wrong and never contain
key material or plaintext. Callers (the backends) translate these into the python-omemo exceptions.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "DuplicateMessage",
    "EngineError",
    "InvalidBundleSignature",
    "InvalidKey",
    "InvalidSignature",
    "InvalidState",
    "KeyExchangeError",
    "MalformedMessage",
    "MalformedXML",
    "NoPreKeys",
    "TooManySkippedKeys",
]


class EngineError(Exception):
    """Root of all errors raised by the protocol engines."""


class InvalidKey(EngineError, ValueError):
    """A public or private key is malformed, of the wrong length, or not a valid curve point."""


class InvalidSignature(EngineError):
    """A signature did not verify."""


class MalformedMessage(EngineError, ValueError):
    """Wire bytes (protobuf, version byte, lengths) could not be parsed."""


class MalformedXML(EngineError, ValueError):
    """An XML element does not have the structure the namespace requires."""


class AuthenticationFailed(EngineError):
    """A MAC or an authentication tag did not verify, or a decrypted payload was not well-formed."""


class DuplicateMessage(EngineError):
    """A message whose key was already used (a replay or a duplicate delivery)."""


class TooManySkippedKeys(EngineError):
    """A message skips more message keys than the configured per-message limit allows."""


class KeyExchangeError(EngineError):
    """An X3DH key exchange cannot be completed (bad bundle, unknown pre key, bad signature...)."""


class InvalidBundleSignature(KeyExchangeError):
    """A bundle's signed pre key signature does not verify against its identity key."""


class NoPreKeys(KeyExchangeError):
    """A bundle has no one-time pre keys, so no key exchange can be built from it."""


class InvalidState(EngineError, ValueError):
    """A serialised engine record (ratchet state, key state) is corrupt or of an unknown version."""
