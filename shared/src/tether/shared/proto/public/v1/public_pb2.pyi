import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tether.shared.proto.destination.v1 import destination_pb2 as _destination_pb2
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ("api_version", "components")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    components: _containers.RepeatedCompositeFieldContainer[ComponentVersion]
    def __init__(self, api_version: _Optional[str] = ..., components: _Optional[_Iterable[_Union[ComponentVersion, _Mapping]]] = ...) -> None: ...

class ComponentVersion(_message.Message):
    __slots__ = ("service", "instance", "version", "ready", "last_seen")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    instance: str
    version: str
    ready: bool
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, service: _Optional[str] = ..., instance: _Optional[str] = ..., version: _Optional[str] = ..., ready: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("ok", "results")
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    results: _containers.RepeatedCompositeFieldContainer[CheckResult]
    def __init__(self, ok: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("category", "description", "ok", "hint")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    category: str
    description: str
    ok: bool
    hint: str
    def __init__(self, category: _Optional[str] = ..., description: _Optional[str] = ..., ok: _Optional[bool] = ..., hint: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("namespace", "kind", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    kind: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListWorkloadsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListWorkloadsResponse(_message.Message):
    __slots__ = ("workloads",)
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    def __init__(self, workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("resource", "meshed_pods", "total_pods", "identity")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PODS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    meshed_pods: int
    total_pods: int
    identity: str
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., meshed_pods: _Optional[int] = ..., total_pods: _Optional[int] = ..., identity: _Optional[str] = ...) -> None: ...

class StatSummaryRequest(_message.Message):
    __slots__ = ("selector", "time_window", "to")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TIME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    selector: Resource
    time_window: _duration_pb2.Duration
    to: Resource
    def __init__(self, selector: _Optional[_Union[Resource, _Mapping]] = ..., time_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., to: _Optional[_Union[Resource, _Mapping]] = ...) -> None: ...

class StatSummaryResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[StatRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[StatRow, _Mapping]]] = ...) -> None: ...

class StatRow(_message.Message):
    __slots__ = ("resource", "meshed_pods", "success_count", "failure_count", "time_window", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "tcp_open_connections")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P95_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P99_FIELD_NUMBER: _ClassVar[int]
    TCP_OPEN_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    meshed_pods: int
    success_count: int
    failure_count: int
    time_window: _duration_pb2.Duration
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    tcp_open_connections: int
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., meshed_pods: _Optional[int] = ..., success_count: _Optional[int] = ..., failure_count: _Optional[int] = ..., time_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_ms_p50: _Optional[float] = ..., latency_ms_p95: _Optional[float] = ..., latency_ms_p99: _Optional[float] = ..., tcp_open_connections: _Optional[int] = ...) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("target", "match", "max_requests")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    target: Resource
    match: _telemetry_pb2.TapMatch
    max_requests: int
    def __init__(self, target: _Optional[_Union[Resource, _Mapping]] = ..., match: _Optional[_Union[_telemetry_pb2.TapMatch, _Mapping]] = ..., max_requests: _Optional[int] = ...) -> None: ...

class EndpointsRequest(_message.Message):
    __slots__ = ("authority", "namespace")
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    authority: str
    namespace: str
    def __init__(self, authority: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class EndpointsResponse(_message.Message):
    __slots__ = ("exists", "endpoints")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    endpoints: _containers.RepeatedCompositeFieldContainer[_destination_pb2.WeightedAddr]
    def __init__(self, exists: _Optional[bool] = ..., endpoints: _Optional[_Iterable[_Union[_destination_pb2.WeightedAddr, _Mapping]]] = ...) -> None: ...
