"""Header handling for forwarded HTTP/2 messages."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

Header = tuple[bytes, bytes]
Headers = Sequence[Header]

# Connection-specific fields (RFC 9110 §7.6.1, RFC 9113 §8.2.2) describe one hop
# and must not be forwarded. `te: trailers` is the one permitted TE value and gRPC
# servers require it, so TE is filtered by value rather than dropped.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
    }
)

#: Header the proxy adds to responses it synthesises itself.
PROXY_ERROR_HEADER = b"tether-proxy-error"

GRPC_UNAVAILABLE = 14
GRPC_CONTENT_TYPE_PREFIX = b"application/grpc"


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Return ``headers`` without connection-specific fields (the same object when none)."""
    for name, value in headers:
        if name in HOP_BY_HOP and not _is_te_trailers(name, value):
            break
    else:
        return headers
    connection_tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            connection_tokens.update(token.strip().lower() for token in value.split(b","))
    return [
        (name, value)
        for name, value in headers
        if (name not in HOP_BY_HOP or _is_te_trailers(name, value)) and name not in connection_tokens
    ]


def _is_te_trailers(name: bytes, value: bytes) -> bool:
    return name == b"te" and value.strip().lower() == b"trailers"


def request_target(headers: Headers) -> tuple[bytes, bool]:
    """The request's logical destination (:authority, else Host) and whether it is gRPC."""
    authority = b""
    host = b""
    is_grpc = False
    for name, value in headers:
        if name == b":authority":
            authority = value
        elif name == b"host":
            host = value
        elif name == b"content-type":
            is_grpc = value.startswith(GRPC_CONTENT_TYPE_PREFIX)
    return authority or host, is_grpc


def status_of(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def grpc_status_of(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def error_response(is_grpc: bool, http_status: int, message: str) -> list[Header]:
    """A complete response (sent with END_STREAM) for a request the proxy could not forward.

    gRPC clients read the status from the trailers, so they get a trailers-only
    response with UNAVAILABLE, which is what they would see for an unreachable
    server; other clients get the HTTP status.
    """
    reason = message.encode("ascii", "replace")
    if is_grpc:
        return [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(GRPC_UNAVAILABLE).encode()),
            (b"grpc-message", quote(message, safe=" ").encode("ascii")),
            (PROXY_ERROR_HEADER, reason),
        ]
    return [
        (b":status", str(http_status).encode()),
        (b"content-length", b"0"),
        (PROXY_ERROR_HEADER, reason),
    ]


#: The client's authenticated identity, as the inbound proxy tells the application.
CLIENT_ID_HEADER = b"tether-client-id"
#: Headers only the mesh itself sets: never taken from a request that arrives from outside the pod.
INTERNAL_PREFIX = b"tether-"


def without_internal(headers: Headers) -> Headers:
    """``headers`` without any ``tether-*`` field a client wrote (the same list when it wrote none)."""
    if any(name.startswith(INTERNAL_PREFIX) for name, _ in headers):
        return [(name, value) for name, value in headers if not name.startswith(INTERNAL_PREFIX)]
    return headers


def with_client_id(headers: Headers, client_id: str | None) -> Headers:
    """``headers`` without any ``tether-*`` header a client sent, plus the verified client id (if any)."""
    kept = without_internal(headers)
    if client_id is None:
        return kept
    return [*kept, (CLIENT_ID_HEADER, client_id.encode("ascii"))]
