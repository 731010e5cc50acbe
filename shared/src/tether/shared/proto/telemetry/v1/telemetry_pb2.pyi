import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tether.shared.proto.net.v1 import net_pb2 as _net_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_INBOUND: _ClassVar[Direction]
    DIRECTION_OUTBOUND: _ClassVar[Direction]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_INBOUND: Direction
DIRECTION_OUTBOUND: Direction

class ReportRequest(_message.Message):
    __slots__ = ("hello", "report", "tap")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    hello: ProxyHello
    report: IntervalReport
    tap: TapEvent
    def __init__(self, hello: _Optional[_Union[ProxyHello, _Mapping]] = ..., report: _Optional[_Union[IntervalReport, _Mapping]] = ..., tap: _Optional[_Union[TapEvent, _Mapping]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("tap_subscription", "ack")
    TAP_SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    tap_subscription: TapSubscription
    ack: ReportAck
    def __init__(self, tap_subscription: _Optional[_Union[TapSubscription, _Mapping]] = ..., ack: _Optional[_Union[ReportAck, _Mapping]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class ProxyHello(_message.Message):
    __slots__ = ("namespace", "pod", "labels", "proxy_version", "identity", "certificate_expiry", "instance")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pod: str
    labels: _containers.ScalarMap[str, str]
    proxy_version: str
    identity: str
    certificate_expiry: _timestamp_pb2.Timestamp
    instance: str
    def __init__(self, namespace: _Optional[str] = ..., pod: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., proxy_version: _Optional[str] = ..., identity: _Optional[str] = ..., certificate_expiry: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instance: _Optional[str] = ...) -> None: ...

class IntervalReport(_message.Message):
    __slots__ = ("start", "end", "scopes", "sequence", "first_sequence", "dropped_scopes")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    scopes: _containers.RepeatedCompositeFieldContainer[ScopeStats]
    sequence: int
    first_sequence: int
    dropped_scopes: int
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scopes: _Optional[_Iterable[_Union[ScopeStats, _Mapping]]] = ..., sequence: _Optional[int] = ..., first_sequence: _Optional[int] = ..., dropped_scopes: _Optional[int] = ...) -> None: ...

class ScopeStats(_message.Message):
    __slots__ = ("direction", "labels", "requests", "responses", "tcp_opened", "tcp_closed", "bytes_read", "bytes_written")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    TCP_OPENED_FIELD_NUMBER: _ClassVar[int]
    TCP_CLOSED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    direction: Direction
    labels: _containers.ScalarMap[str, str]
    requests: int
    responses: _containers.RepeatedCompositeFieldContainer[ResponseStats]
    tcp_opened: int
    tcp_closed: int
    bytes_read: int
    bytes_written: int
    def __init__(self, direction: _Optional[_Union[Direction, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., requests: _Optional[int] = ..., responses: _Optional[_Iterable[_Union[ResponseStats, _Mapping]]] = ..., tcp_opened: _Optional[int] = ..., tcp_closed: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_written: _Optional[int] = ...) -> None: ...

class ResponseStats(_message.Message):
    __slots__ = ("status_code", "grpc_status", "success", "count", "latency_buckets", "latency_sum_ms")
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    status_code: int
    grpc_status: int
    success: bool
    count: int
    latency_buckets: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_ms: float
    def __init__(self, status_code: _Optional[int] = ..., grpc_status: _Optional[int] = ..., success: _Optional[bool] = ..., count: _Optional[int] = ..., latency_buckets: _Optional[_Iterable[int]] = ..., latency_sum_ms: _Optional[float] = ...) -> None: ...

class TapEvent(_message.Message):
    __slots__ = ("tap_id", "source", "destination", "source_labels", "destination_labels", "direction", "stream_id", "at", "request_init", "response_init", "response_end", "headers", "source_identity", "destination_identity", "tls")
    class SourceLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DestinationLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RequestInit(_message.Message):
        __slots__ = ("method", "scheme", "authority", "path")
        METHOD_FIELD_NUMBER: _ClassVar[int]
        SCHEME_FIELD_NUMBER: _ClassVar[int]
        AUTHORITY_FIELD_NUMBER: _ClassVar[int]
        PATH_FIELD_NUMBER: _ClassVar[int]
        method: str
        scheme: str
        authority: str
        path: str
        def __init__(self, method: _Optional[str] = ..., scheme: _Optional[str] = ..., authority: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...
    class ResponseInit(_message.Message):
        __slots__ = ("status_code", "since_request_init_us")
        STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
        SINCE_REQUEST_INIT_US_FIELD_NUMBER: _ClassVar[int]
        status_code: int
        since_request_init_us: int
        def __init__(self, status_code: _Optional[int] = ..., since_request_init_us: _Optional[int] = ...) -> None: ...
    class ResponseEnd(_message.Message):
        __slots__ = ("grpc_status", "since_request_init_us", "response_bytes", "reset_error_code")
        GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
        SINCE_REQUEST_INIT_US_FIELD_NUMBER: _ClassVar[int]
        RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
        RESET_ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
        grpc_status: int
        since_request_init_us: int
        response_bytes: int
        reset_error_code: int
        def __init__(self, grpc_status: _Optional[int] = ..., since_request_init_us: _Optional[int] = ..., response_bytes: _Optional[int] = ..., reset_error_code: _Optional[int] = ...) -> None: ...
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LABELS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_LABELS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_INIT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_INIT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_END_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    source: _net_pb2.TcpAddress
    destination: _net_pb2.TcpAddress
    source_labels: _containers.ScalarMap[str, str]
    destination_labels: _containers.ScalarMap[str, str]
    direction: Direction
    stream_id: int
    at: _timestamp_pb2.Timestamp
    request_init: TapEvent.RequestInit
    response_init: TapEvent.ResponseInit
    response_end: TapEvent.ResponseEnd
    headers: _containers.ScalarMap[str, str]
    source_identity: str
    destination_identity: str
    tls: str
    def __init__(self, tap_id: _Optional[str] = ..., source: _Optional[_Union[_net_pb2.TcpAddress, _Mapping]] = ..., destination: _Optional[_Union[_net_pb2.TcpAddress, _Mapping]] = ..., source_labels: _Optional[_Mapping[str, str]] = ..., destination_labels: _Optional[_Mapping[str, str]] = ..., direction: _Optional[_Union[Direction, str]] = ..., stream_id: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_init: _Optional[_Union[TapEvent.RequestInit, _Mapping]] = ..., response_init: _Optional[_Union[TapEvent.ResponseInit, _Mapping]] = ..., response_end: _Optional[_Union[TapEvent.ResponseEnd, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ..., source_identity: _Optional[str] = ..., destination_identity: _Optional[str] = ..., tls: _Optional[str] = ...) -> None: ...

class TapSubscription(_message.Message):
    __slots__ = ("tap_id", "active", "match", "max_requests", "max_events_per_second", "expires_at", "header_names")
    TAP_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HEADER_NAMES_FIELD_NUMBER: _ClassVar[int]
    tap_id: str
    active: bool
    match: TapMatch
    max_requests: int
    max_events_per_second: float
    expires_at: _timestamp_pb2.Timestamp
    header_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tap_id: _Optional[str] = ..., active: _Optional[bool] = ..., match: _Optional[_Union[TapMatch, _Mapping]] = ..., max_requests: _Optional[int] = ..., max_events_per_second: _Optional[float] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., header_names: _Optional[_Iterable[str]] = ...) -> None: ...

class TapMatch(_message.Message):
    __slots__ = ("authority", "path_prefix", "method", "destination_namespace", "destination_service")
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    authority: str
    path_prefix: str
    method: str
    destination_namespace: str
    destination_service: str
    def __init__(self, authority: _Optional[str] = ..., path_prefix: _Optional[str] = ..., method: _Optional[str] = ..., destination_namespace: _Optional[str] = ..., destination_service: _Optional[str] = ...) -> None: ...
