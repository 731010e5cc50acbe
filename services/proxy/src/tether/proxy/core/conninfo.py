"""What the proxy knows about one accepted connection, fixed when it was accepted.

Built by the I/O layer once (after the TLS handshake, when the proxy terminated one) and handed to the core
with the connection, so that routing, policy, metrics and tap read the same facts: where the client meant to
connect, who it is, and how it was secured. Immutable: nothing downstream can change what was observed.
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]

#: Linkerd's ``no_tls_reason`` values for connections without mesh TLS.
NO_IDENTITY = "no_identity"  # the peer spoke plaintext (an unmeshed client or server)
DISABLED = "disabled"  # identity is turned off in this proxy (--identity-disabled)
LOOPBACK = "loopback"  # the application itself, over loopback (outbound side)


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """A TLS session the proxy terminated: the peer's verified identity, the ALPN agreed, the SNI asked."""

    peer_identity: str | None
    alpn: str | None
    server_name: str


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    direction: str  # "inbound" or "outbound"
    peer: Address
    local: Address
    #: Where the client meant to connect before iptables redirected it (None: it dialled the proxy).
    original_dst: Address | None
    tls: TlsInfo | None = None
    #: Why there is no mesh TLS (see the constants above); "" when there is.
    no_tls_reason: str = NO_IDENTITY

    @property
    def client_id(self) -> str | None:
        """The authenticated identity of the client (inbound mTLS only)."""
        return self.tls.peer_identity if self.tls is not None else None

    @property
    def tls_label(self) -> str:
        """Linkerd's ``tls`` label: ``true`` for mesh TLS, else the reason there is none."""
        return "true" if self.tls is not None else self.no_tls_reason
