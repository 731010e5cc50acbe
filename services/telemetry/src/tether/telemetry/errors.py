"""The telemetry service's errors. Foreign errors are wrapped at the boundary that meets them."""

from __future__ import annotations


class TelemetryError(Exception):
    """Root of every error raised by tether.telemetry."""


class ReportRefused(TelemetryError):
    """A report refused as a whole (INVALID_ARGUMENT), nothing of it folded; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class HelloRefused(TelemetryError):
    """A stream refused at its hello; ``code`` is the gRPC status name, ``reason`` a metric label."""

    def __init__(self, code: str, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.code = code
        self.reason = reason
        self.detail = detail
