"""Destination protobuf messages to the core's update types."""

from __future__ import annotations

import ipaddress

from tether.proxy.core.resolution import Add, Endpoint, NoEndpoints, Remove, Update
from tether.proxy.origdst import Address
from tether.shared.proto.destination.v1 import destination_pb2
from tether.shared.proto.net.v1 import net_pb2


def update_from_proto(message: destination_pb2.Update) -> Update | None:
    kind = message.WhichOneof("update")
    if kind == "add":
        endpoints = []
        for weighted in message.add.addrs:
            address = address_from_proto(weighted.addr)
            if address is None:
                continue
            identity = weighted.tls_identity.dns_like_identity or None
            endpoints.append(
                Endpoint(
                    address=address,
                    weight=weighted.weight,
                    labels=dict(weighted.metric_labels),
                    h2_hint=weighted.protocol_hint.HasField("h2"),
                    tls_identity=identity,
                    opaque=weighted.protocol_hint.opaque,
                )
            )
        return Add(endpoints, dict(message.add.metric_labels))
    if kind == "remove":
        addresses = [a for a in map(address_from_proto, message.remove.addrs) if a is not None]
        return Remove(addresses)
    if kind == "no_endpoints":
        return NoEndpoints(exists=message.no_endpoints.exists)
    return None


def address_from_proto(addr: net_pb2.TcpAddress) -> Address | None:
    if not 0 < addr.port < 65536:
        return None
    which = addr.ip.WhichOneof("ip")
    if which == "ipv4":
        return str(ipaddress.IPv4Address(addr.ip.ipv4)), addr.port
    if which == "ipv6" and len(addr.ip.ipv6) == 16:
        return str(ipaddress.IPv6Address(addr.ip.ipv6)), addr.port
    return None
