"""The destination a connection had before iptables redirected it to the proxy."""

from __future__ import annotations

import errno
import socket
from typing import Protocol

Address = tuple[str, int]

# From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


class SocketLike(Protocol):
    family: int

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...

    def getsockname(self) -> tuple[str, int] | tuple[str, int, int, int]: ...


def original_destination(sock: SocketLike) -> Address | None:
    """SO_ORIGINAL_DST of an accepted socket, or None when it was not redirected."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = int.from_bytes(raw[2:4], "big")
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = int.from_bytes(raw[2:4], "big")
            host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        local = sock.getsockname()
    except OSError:
        return None
    if (host, port) == (local[0], local[1]):
        return None
    return host, port


class LocalAddresses:
    """Whether an address is one of this network namespace's own: the kernel lets a socket bind to exactly
    those (no pod sets ``ip_nonlocal_bind``). Addresses found local are remembered (a pod keeps its
    addresses); the others are asked again, so a stream of foreign destinations grows nothing."""

    def __init__(self, remembered: int = 64) -> None:
        self._local: set[str] = set()
        self._remembered = remembered

    def __call__(self, host: str) -> bool:
        if host in self._local:
            return True
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((host, 0))
        except OSError as error:
            if error.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
                return False
            raise
        if len(self._local) < self._remembered:
            self._local.add(host)
        return True
