"""What the proxy knows about one accepted connection, fixed when it was accepted.

Built by the I/O layer once (after the TLS handshake, when the proxy terminated one) and handed to the core
with the connection, so that routing, policy, metrics and tap read the same facts: where the client meant to
connect, who it is, and how it was secured. Immutable: nothing downstream can change what was observed.
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]

#: Linkerd's ``no_tls_reason`` values, for connections without mesh TLS (labelled ``tls="no_identity"``).
NO_TLS_FROM_REMOTE = "no_tls_from_remote"  # an unmeshed client spoke plaintext to us
NOT_PROVIDED_BY_DISCOVERY = "not_provided_by_service_discovery"  # destination gave the endpoint no identity
LOOPBACK = "loopback"  # the proxy's own application (its outbound clients, the inbound target)
#: Identity turned off in this proxy (--identity-disabled): labelled ``tls="disabled"``, no reason.
DISABLED = "disabled"

Labels = tuple[tuple[str, str], ...]


def tls_labels(peer_label: str, identity: str | None, no_tls_reason: str) -> tuple[Labels, str]:
    """The TLS labels of a series, Linkerd's way: ``tls`` plus ``client_id``/``server_id`` (``peer_label``)
    when there is mesh TLS, else ``no_tls_reason`` (none when identity is disabled altogether)."""
    if identity:
        return ((peer_label, identity),), "true"
    if no_tls_reason == DISABLED:
        return (), DISABLED
    return (("no_tls_reason", no_tls_reason),), "no_identity"


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
    no_tls_reason: str = NO_TLS_FROM_REMOTE
    #: Whether ``original_dst`` is an address of this pod (inbound): a packet for another host that reached
    #: the pod is redirected all the same, and must not be relayed there as if the pod had sent it.
    original_dst_is_local: bool = True
    #: The ``host:port`` of an HTTP ``CONNECT`` the application sent its outbound proxy (a tunnel request),
    #: routed like an opaque connection to that authority; None for every other connection.
    connect_authority: bytes | None = None

    @property
    def client_id(self) -> str | None:
        """The authenticated identity of the client (inbound mTLS only)."""
        return self.tls.peer_identity if self.tls is not None else None

    def metric_labels(self) -> tuple[Labels, str]:
        """``(labels, tls)`` for this connection's series (the client's identity as ``client_id``)."""
        return tls_labels("client_id", self.client_id, self.no_tls_reason if self.tls is None else "")
