"""Frames to protobuf: the only place that knows the destination.v1 wire types."""

from __future__ import annotations

import ipaddress

from tether.destination.view import AddFrame, AddrKey, Frame, NoEndpointsFrame, RemoveFrame, ResolvedAddr
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.net.v1 import net_pb2

DEFAULT_WEIGHT = 10_000

KEEPALIVE = pb.Update(add=pb.WeightedAddrSet())


def tcp_address(ip: str, port: int) -> net_pb2.TcpAddress:
    parsed = ipaddress.ip_address(ip)
    if parsed.version == 4:
        address = net_pb2.IPAddress(ipv4=int(parsed))
    else:
        address = net_pb2.IPAddress(ipv6=parsed.packed)
    return net_pb2.TcpAddress(ip=address, port=port)


def weighted_addr(addr: ResolvedAddr) -> pb.WeightedAddr:
    message = pb.WeightedAddr(
        addr=tcp_address(addr.ip, addr.port), weight=DEFAULT_WEIGHT, metric_labels=dict(addr.labels)
    )
    if addr.identity:
        message.tls_identity.dns_like_identity = addr.identity
    if addr.h2:
        message.protocol_hint.h2.SetInParent()
    if addr.opaque:
        message.protocol_hint.opaque = True
    return message


def removed(keys: tuple[AddrKey, ...]) -> pb.Update:
    return pb.Update(remove=pb.AddrSet(addrs=[tcp_address(ip, port) for ip, port in keys]))


def to_update(frame: Frame) -> pb.Update:
    if isinstance(frame, AddFrame):
        return pb.Update(
            add=pb.WeightedAddrSet(
                addrs=[weighted_addr(a) for a in frame.addrs], metric_labels=dict(frame.set_labels)
            )
        )
    if isinstance(frame, RemoveFrame):
        return removed(frame.addrs)
    assert isinstance(frame, NoEndpointsFrame)
    return pb.Update(no_endpoints=pb.NoEndpoints(exists=frame.exists))


def frame_kind(frame: Frame) -> str:
    if isinstance(frame, AddFrame):
        return "add"
    if isinstance(frame, RemoveFrame):
        return "remove"
    return "no_endpoints"
