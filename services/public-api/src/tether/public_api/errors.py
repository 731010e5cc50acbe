"""The public API's root exception, and the refusal of a caller."""

from __future__ import annotations

from typing import Literal

import grpc

from tether.shared.errors import TetherError

#: How a request was decided, as the tap audit event says it.
Decision = Literal["allowed", "denied", "unauthenticated", "unavailable"]


class PublicApiError(TetherError):
    """Base class of the public API's errors."""


class Refused(PublicApiError):
    """The caller may not do this (or it cannot be told now): the gRPC status and message to answer."""

    def __init__(self, decision: Decision, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.decision: Decision = decision
        self.code = code
        self.message = message
