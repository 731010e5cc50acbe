"""Listeners that cannot bind: one error naming the option, the address and what to do."""

from __future__ import annotations

import errno
import socket

from tether.shared.config import parse_hostport
from tether.shared.errors import PortInUse

# Bind errors that no other way of binding the same address avoids.
CONCLUSIVE_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def bind_failure(option: str, addr: str, exc: OSError | None = None) -> PortInUse:
    """The error for ``option``'s address ``addr`` failing to bind; probes the address when ``exc`` is
    unknown (gRPC reports only that binding failed)."""
    if exc is None:
        exc = probe_bind(addr)
    code = exc.errno if exc is not None else None
    if code == errno.EADDRINUSE:
        return PortInUse(
            f"{option} {addr} is already in use",
            f"stop the process listening there or choose another {option}",
        )
    if code == errno.EADDRNOTAVAIL:
        return PortInUse(f"{option} {addr} is not an address of this host", f"choose another {option}")
    if code == errno.EACCES:
        return PortInUse(
            f"{option} {addr} needs privileges this process lacks", f"choose a port above 1023 for {option}"
        )
    reason = exc.strerror if exc is not None and exc.strerror else "the listener could not be created"
    return PortInUse(f"cannot listen on {option} {addr}: {reason}", f"check {option}")


def probe_bind(addr: str) -> OSError | None:
    """Try binding ``addr`` with a throwaway socket; the error it raises, if any."""
    host, port = parse_hostport(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # no IPv6 on this host, say
        return exc
    with probe:
        # As asyncio and gRPC bind their listeners: connections in TIME_WAIT do not make a port taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None
