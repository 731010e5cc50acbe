"""The identity service's exceptions. Each rejection carries a stable reason code (used in metrics and
events) and a message for the caller; the gRPC status is chosen at the server edge from the class."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from tether.shared.errors import SetupError


class Reason(StrEnum):
    """Why a Certify request was refused. Stable: used as a metric label and in events."""

    REQUEST_TOO_LARGE = "request_too_large"
    INVALID_IDENTITY = "invalid_identity"
    CSR_MALFORMED = "csr_malformed"
    CSR_BAD_SIGNATURE = "csr_bad_signature"
    CSR_KEY_TYPE = "csr_key_type"
    CSR_DNS_SAN = "csr_dns_san"
    CSR_COMMON_NAME = "csr_common_name"
    CSR_IP_SAN = "csr_ip_san"
    CSR_EMAIL_SAN = "csr_email_san"
    CSR_URI_SAN = "csr_uri_san"
    CSR_OTHER_SAN = "csr_other_san"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVIEW_FAILED = "token_review_failed"
    IDENTITY_MISMATCH = "identity_mismatch"
    RATE_LIMITED = "rate_limited"
    ISSUER_UNAVAILABLE = "issuer_unavailable"


class IdentityError(Exception):
    """Root of the identity service's errors."""


class ConfigurationError(IdentityError, SetupError):
    """The service cannot start with the given configuration or files (the process exits 2)."""


class IssuerLoadError(IdentityError):
    """The trust anchors or issuer files are missing, malformed, or do not chain."""


class Rejection(IdentityError):
    """A Certify request is refused; `reason` is stable, `message` is safe to show to the caller."""

    reason: Reason
    # The gRPC status name the server edge answers with.
    status: ClassVar[str] = "UNKNOWN"

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidRequest(Rejection):
    """The request breaks a rule (malformed CSR, wrong SANs, oversized...): INVALID_ARGUMENT."""

    status = "INVALID_ARGUMENT"


class Unauthenticated(Rejection):
    """The token could not be authenticated: UNAUTHENTICATED."""

    status = "UNAUTHENTICATED"


class PermissionDenied(Rejection):
    """The token is authentic but for another identity: PERMISSION_DENIED."""

    status = "PERMISSION_DENIED"


class RateLimited(Rejection):
    """The caller is over its rate limit: RESOURCE_EXHAUSTED."""

    status = "RESOURCE_EXHAUSTED"


class IssuerUnavailable(Rejection):
    """No valid issuer is loaded, or the token reviewer could not be reached: UNAVAILABLE."""

    status = "UNAVAILABLE"
