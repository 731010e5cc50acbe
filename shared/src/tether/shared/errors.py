"""The root of every error raised by tether.shared, and the errors that end a process.

A :class:`FatalError` means the process cannot do its job. The runtime turns one into a single plain-text
line, ``tether-<component>: error: <cause>; <remedy>``, and the exit code the class names: 2 for what the
user must fix in flags, environment or files (:class:`SetupError`), 1 for everything else (a port in use,
a peer unreachable within its timeout, a critical task that failed).
"""

from __future__ import annotations

from typing import ClassVar


class TetherError(Exception):
    """Base class for errors raised by the shared library."""


class FatalError(TetherError):
    """The process cannot do its job: it reports ``cause`` and ``remedy`` on one line and exits."""

    exit_code: ClassVar[int] = 1

    def __init__(self, cause: str, remedy: str = "") -> None:
        super().__init__(f"{cause}; {remedy}" if remedy else cause)
        self.cause = cause
        self.remedy = remedy


class SetupError(FatalError):
    """An invalid flag or environment value, a missing, unreadable or invalid file, no Kubernetes config."""

    exit_code: ClassVar[int] = 2


class ConfigError(SetupError):
    """A configuration value is missing, malformed or out of range.

    The message always names the option (flag and environment variable) and what was expected.
    """


class PortInUse(FatalError):
    """A listener could not bind its address; the message names the option and the address."""


class BusError(TetherError):
    """The NATS bus failed: not connected, a request timed out, or JetStream refused an operation."""


class PermissionDenied(BusError):
    """The NATS server refused a publish or subscription: this user lacks the permission.

    Not transient: retrying cannot help until the server's configuration changes, so long-lived tasks let
    it end them (the process exits and is restarted) rather than retrying forever.
    """

    def __init__(self, operation: str, subject: str) -> None:
        super().__init__(f"NATS refused {operation} on {subject}: permission denied for this user")
        self.operation = operation
        self.subject = subject


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
