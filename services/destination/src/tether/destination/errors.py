"""The destination service's errors. Foreign errors are wrapped at the boundary that meets them."""

from __future__ import annotations


class DestinationError(Exception):
    """Root of every error raised by tether.destination."""


class InvalidRequest(DestinationError):
    """A Get request the server refuses outright (empty or oversized fields): INVALID_ARGUMENT."""


class RegistryFileError(DestinationError):
    """The local registry file is invalid; ``line`` is 1-based (0 when the whole file is at fault)."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class SourceError(DestinationError):
    """A discovery source (Kubernetes API, registry) failed; the caller backs off and retries."""
