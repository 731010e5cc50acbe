"""What the destination service stores on NATS and publishes about it, and helpers over it.

The payload Structs live in tether.shared.events with every other bus message: ``EndpointSet`` is the value
of key ``<namespace>.<service>`` in the JetStream key-value bucket ``tether_endpoints``;
``EndpointsChanged`` is the diff event published on ``tether.v1.endpoints.<namespace>.<service>``.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from tether.shared.events import (
    Endpoint,
    EndpointsChanged,
    EndpointSet,
    Origin,
    ProtocolHint,
    ServicePort,
    Workload,
    WorkloadRegistration,
)

__all__ = [
    "Endpoint",
    "EndpointSet",
    "EndpointsChanged",
    "Origin",
    "ProtocolHint",
    "ServicePort",
    "Workload",
    "WorkloadRegistration",
    "decode_endpoint_set",
    "diff_endpoints",
    "encode",
    "service_key",
]


def service_key(namespace: str, service: str) -> str:
    return f"{namespace}.{service}"


def diff_endpoints(
    before: Iterable[Endpoint], after: Iterable[Endpoint]
) -> tuple[tuple[Endpoint, ...], tuple[str, ...]]:
    """(added-or-changed, removed addresses) taking ``before`` to ``after``."""
    old = {e.address: e for e in before}
    new = {e.address: e for e in after}
    added = tuple(e for address, e in sorted(new.items()) if old.get(address) != e)
    removed = tuple(sorted(address for address in old if address not in new))
    return added, removed


_set_decoder = msgspec.json.Decoder(EndpointSet)
_encoder = msgspec.json.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_endpoint_set(data: bytes) -> EndpointSet:
    """Decodes a bucket value; raises msgspec.DecodeError / ValidationError on garbage."""
    return _set_decoder.decode(data)
