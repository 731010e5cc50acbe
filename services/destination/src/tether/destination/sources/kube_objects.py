"""The parts of Kubernetes API objects the source reads, as msgspec Structs: decoding is the validation.

The API server's JSON is converted into these before anything looks at it, so an object of the wrong shape
(a port entry that is a string, ``metadata`` that is a list, a port number out of range) is rejected as one
:class:`MalformedObject` naming the field, and never raises deep inside the index. Unknown fields are
ignored; JSON ``null`` is accepted wherever the API may send it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from tether.destination.errors import DestinationError

T = TypeVar("T")

Port = Annotated[int, Meta(ge=1, le=65535)]
Name = Annotated[str, Meta(min_length=1, max_length=253)]


class MalformedObject(DestinationError, ValueError):
    """A Kubernetes object that does not have the shape the API documents."""


class _Object(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=False):
    pass


class OwnerReference(_Object, frozen=True, kw_only=True):
    kind: str = ""
    name: str = ""
    controller: bool | None = None


class ObjectMeta(_Object, frozen=True, kw_only=True):
    name: Name
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None


class ServicePortSpec(_Object, frozen=True, kw_only=True):
    name: str | None = None
    port: Port
    protocol: str | None = None


class ServiceSpec(_Object, frozen=True, kw_only=True):
    type: str | None = None
    ports: list[ServicePortSpec] | None = None
    # The API spells these "clusterIP(s)", which no renaming rule produces from the Python names.
    cluster_ip: str | None = msgspec.field(default=None, name="clusterIP")
    cluster_ips: list[str] | None = msgspec.field(default=None, name="clusterIPs")


class ServiceObject(_Object, frozen=True, kw_only=True):
    metadata: ObjectMeta
    spec: ServiceSpec | None = None


class SlicePort(_Object, frozen=True, kw_only=True):
    name: str | None = None
    port: Port | None = None
    protocol: str | None = None


class Conditions(_Object, frozen=True, kw_only=True):
    ready: bool | None = None
    terminating: bool | None = None


class TargetRef(_Object, frozen=True, kw_only=True):
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None


class SliceEndpointSpec(_Object, frozen=True, kw_only=True):
    addresses: list[Annotated[str, Meta(max_length=64)]] | None = None
    conditions: Conditions | None = None
    target_ref: TargetRef | None = None


class EndpointSliceObject(_Object, frozen=True, kw_only=True):
    metadata: ObjectMeta
    address_type: str | None = None
    ports: list[SlicePort] | None = None
    endpoints: list[SliceEndpointSpec] | None = None


class Container(_Object, frozen=True, kw_only=True):
    name: str = ""


class PodSpec(_Object, frozen=True, kw_only=True):
    containers: list[Container] | None = None
    init_containers: list[Container] | None = None
    service_account_name: str | None = None
    service_account: str | None = None


class PodObject(_Object, frozen=True, kw_only=True):
    metadata: ObjectMeta
    spec: PodSpec | None = None


class MetadataOnly(_Object, frozen=True, kw_only=True):
    metadata: ObjectMeta


def convert(obj: Mapping[str, Any] | Any, shape: type[T]) -> T:
    """``obj`` (the API's decoded JSON) as ``shape``; raises MalformedObject saying what is wrong."""
    try:
        return msgspec.convert(obj, type=shape, strict=False)
    except msgspec.ValidationError as exc:
        raise MalformedObject(str(exc)[:300]) from None
