import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tether.shared.proto.destination.v1 import destination_pb2 as _destination_pb2
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_STATUS_UNSPECIFIED: _ClassVar[CheckStatus]
    CHECK_STATUS_OK: _ClassVar[CheckStatus]
    CHECK_STATUS_WARNING: _ClassVar[CheckStatus]
    CHECK_STATUS_ERROR: _ClassVar[CheckStatus]
CHECK_STATUS_UNSPECIFIED: CheckStatus
CHECK_STATUS_OK: CheckStatus
CHECK_STATUS_WARNING: CheckStatus
CHECK_STATUS_ERROR: CheckStatus

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
    __slots__ = ("ok", "results", "status")
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    results: _containers.RepeatedCompositeFieldContainer[CheckResult]
    status: CheckStatus
    def __init__(self, ok: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ..., status: _Optional[_Union[CheckStatus, str]] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("category", "description", "ok", "hint", "status")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    category: str
    description: str
    ok: bool
    hint: str
    status: CheckStatus
    def __init__(self, category: _Optional[str] = ..., description: _Optional[str] = ..., ok: _Optional[bool] = ..., hint: _Optional[str] = ..., status: _Optional[_Union[CheckStatus, str]] = ...) -> None: ...

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
    __slots__ = ("resource", "meshed_pods", "total_pods", "identity", "proxy_version", "certificate_expiry", "last_report", "pods")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PODS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    meshed_pods: int
    total_pods: int
    identity: str
    proxy_version: str
    certificate_expiry: _timestamp_pb2.Timestamp
    last_report: _timestamp_pb2.Timestamp
    pods: _containers.RepeatedCompositeFieldContainer[Pod]
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., meshed_pods: _Optional[int] = ..., total_pods: _Optional[int] = ..., identity: _Optional[str] = ..., proxy_version: _Optional[str] = ..., certificate_expiry: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_report: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pods: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ...) -> None: ...

class Pod(_message.Message):
    __slots__ = ("name", "identity", "proxy_version", "certificate_expiry", "last_report", "reporting")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    REPORTING_FIELD_NUMBER: _ClassVar[int]
    name: str
    identity: str
    proxy_version: str
    certificate_expiry: _timestamp_pb2.Timestamp
    last_report: _timestamp_pb2.Timestamp
    reporting: bool
    def __init__(self, name: _Optional[str] = ..., identity: _Optional[str] = ..., proxy_version: _Optional[str] = ..., certificate_expiry: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_report: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reporting: _Optional[bool] = ...) -> None: ...

class StatSummaryRequest(_message.Message):
    __slots__ = ("selector", "time_window", "to")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TIME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    selector: Resource
    time_window: _duration_pb2.Duration
    to: Resource
    def __init__(self, selector: _Optional[_Union[Resource, _Mapping]] = ..., time_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., to: _Optional[_Union[Resource, _Mapping]] = ..., **kwargs) -> None: ...

class StatSummaryResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[StatRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[StatRow, _Mapping]]] = ...) -> None: ...

class StatRow(_message.Message):
    __slots__ = ("resource", "meshed_pods", "success_count", "failure_count", "time_window", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "tcp_open_connections", "total_pods", "tls_share", "request_rate", "success_rate", "request_count", "has_latency")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P95_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P99_FIELD_NUMBER: _ClassVar[int]
    TCP_OPEN_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PODS_FIELD_NUMBER: _ClassVar[int]
    TLS_SHARE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_LATENCY_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    meshed_pods: int
    success_count: int
    failure_count: int
    time_window: _duration_pb2.Duration
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    tcp_open_connections: int
    total_pods: int
    tls_share: float
    request_rate: float
    success_rate: float
    request_count: int
    has_latency: bool
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., meshed_pods: _Optional[int] = ..., success_count: _Optional[int] = ..., failure_count: _Optional[int] = ..., time_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_ms_p50: _Optional[float] = ..., latency_ms_p95: _Optional[float] = ..., latency_ms_p99: _Optional[float] = ..., tcp_open_connections: _Optional[int] = ..., total_pods: _Optional[int] = ..., tls_share: _Optional[float] = ..., request_rate: _Optional[float] = ..., success_rate: _Optional[float] = ..., request_count: _Optional[int] = ..., has_latency: _Optional[bool] = ...) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("target", "match", "max_requests", "max_events_per_second", "expires_at", "header_names")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HEADER_NAMES_FIELD_NUMBER: _ClassVar[int]
    target: Resource
    match: _telemetry_pb2.TapMatch
    max_requests: int
    max_events_per_second: float
    expires_at: _timestamp_pb2.Timestamp
    header_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target: _Optional[_Union[Resource, _Mapping]] = ..., match: _Optional[_Union[_telemetry_pb2.TapMatch, _Mapping]] = ..., max_requests: _Optional[int] = ..., max_events_per_second: _Optional[float] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., header_names: _Optional[_Iterable[str]] = ...) -> None: ...

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

class EdgesRequest(_message.Message):
    __slots__ = ("selector", "time_window")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TIME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    selector: Resource
    time_window: _duration_pb2.Duration
    def __init__(self, selector: _Optional[_Union[Resource, _Mapping]] = ..., time_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class EdgesResponse(_message.Message):
    __slots__ = ("edges",)
    EDGES_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(self, edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...) -> None: ...

class Edge(_message.Message):
    __slots__ = ("src", "dst", "client_id", "server_id", "secured", "no_tls_reason", "request_count")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SECURED_FIELD_NUMBER: _ClassVar[int]
    NO_TLS_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    src: Resource
    dst: Resource
    client_id: str
    server_id: str
    secured: bool
    no_tls_reason: str
    request_count: int
    def __init__(self, src: _Optional[_Union[Resource, _Mapping]] = ..., dst: _Optional[_Union[Resource, _Mapping]] = ..., client_id: _Optional[str] = ..., server_id: _Optional[str] = ..., secured: _Optional[bool] = ..., no_tls_reason: _Optional[str] = ..., request_count: _Optional[int] = ...) -> None: ...
