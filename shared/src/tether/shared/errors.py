"""The root of every error raised by tether.shared."""

from __future__ import annotations


class TetherError(Exception):
    """Base class for errors raised by the shared library."""


class ConfigError(TetherError):
    """A configuration value is missing, malformed or out of range.

    The message always names the option (flag and environment variable) and what was expected.
    """


class BusError(TetherError):
    """The NATS bus failed: not connected, a request timed out, or JetStream refused an operation."""


class RevisionMismatch(BusError):
    """A key-value write expected a revision that is no longer the latest."""

    def __init__(self, bucket: str, key: str, expected: int | None) -> None:
        super().__init__(f"{bucket}/{key}: expected revision {expected} is not the latest")
        self.bucket = bucket
        self.key = key
        self.expected = expected


class InvalidValue(BusError):
    """A key-value entry holds bytes that do not decode as the expected type."""

    def __init__(self, bucket: str, key: str, revision: int, error: str) -> None:
        super().__init__(f"{bucket}/{key} at revision {revision} does not decode: {error}")
        self.bucket = bucket
        self.key = key
        self.revision = revision
