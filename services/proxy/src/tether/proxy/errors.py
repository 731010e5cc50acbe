"""The proxy's exceptions."""

from __future__ import annotations


class ProxyError(Exception):
    """Root of the proxy's errors."""


class UpstreamConnectError(ProxyError):
    """An upstream connection could not be established."""

    def __init__(self, address: tuple[str, int], reason: str) -> None:
        super().__init__(f"connecting to {address[0]}:{address[1]}: {reason}")
        self.address = address
        self.reason = reason


class GrpcCallError(ProxyError):
    """A gRPC call of the proxy's own client (discovery, identity) failed; ``code`` is the gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"gRPC call failed (status {code}): {message}")
        self.code = code
        self.message = message


class AuthorityLimitError(ProxyError):
    """A new authority cannot be resolved: ``limit`` distinct authorities are already being resolved."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"proxy is already resolving its limit of {limit} distinct authorities")
        self.limit = limit
