"""grpc.aio servers, built the same way by every service."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from tether.shared.listen import CONCLUSIVE_BIND_ERRORS, bind_failure, probe_bind

# Keep idle client connections alive through NAT/conntrack, and let clients ping on idle streams.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # gRPC sets SO_REUSEPORT by default: a second process on the same port would silently share it.
    ("grpc.so_reuseport", 0),
]


async def start_grpc_server(
    addr: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    option: str = "--grpc-addr",
    credentials: grpc.ServerCredentials | None = None,
    extra_options: list[tuple[str, int]] | None = None,
    maximum_concurrent_rpcs: int | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on ``addr`` (port 0 picks a free one); returns the server and its port.

    A listener that cannot bind raises PortInUse naming ``option`` and the address.
    """
    server = grpc.aio.server(
        options=SERVER_OPTIONS + (extra_options or []), maximum_concurrent_rpcs=maximum_concurrent_rpcs
    )
    register(server)
    # A port we can tell is taken fails here, before grpcio tries it: gRPC core would first print its own
    # error line (plain text, even with --log-format json) above the process's one failure line.
    taken = probe_bind(addr)
    if taken is not None and taken.errno in CONCLUSIVE_BIND_ERRORS:
        raise bind_failure(option, addr, taken)
    try:
        port = (
            server.add_secure_port(addr, credentials)
            if credentials is not None
            else server.add_insecure_port(addr)
        )
    except RuntimeError:  # grpcio: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise bind_failure(option, addr)
    await server.start()
    return server, port
