"""The bootstrap Job's failures: each is one line naming the cause and what to do, then a non-zero exit."""

from __future__ import annotations

from tether.identity.errors import IdentityError
from tether.shared.errors import FatalError, SetupError


class BootstrapError(IdentityError, FatalError):
    """Root of the Job's failures (exit 1 unless a subclass says otherwise)."""


class Unreachable(BootstrapError):
    """The Kubernetes API did not answer."""


class ApiFailure(BootstrapError):
    """The Kubernetes API answered with something the Job cannot proceed from."""


class Forbidden(BootstrapError, SetupError):
    """RBAC refused a request (403) or the credentials were not accepted (401): exit 2, fix the setup."""


class Inconsistent(BootstrapError):
    """Objects exist that do not belong together (NATS credentials the server does not know, or the reverse).

    Not repaired automatically: the only safe repair issues new credentials, which every component and the
    NATS servers must then be restarted with, so an operator decides.
    """
