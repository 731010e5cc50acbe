"""Output in the shapes Linkerd users read: tables, tap lines, check sections (pure functions)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tether.shared.proto.net.v1 import net_pb2
from tether.shared.proto.public.v1 import public_pb2
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.stat_rows import stat_row

MISSING = "-"
OK, WARNING, ERROR = "\u221a", "\u203c", "\u00d7"  # Linkerd's marks: square root, double exclamation, times


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, three spaces apart, as ``linkerd viz stat`` prints them."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in [headers, *rows]
    ]
    return "\n".join(lines)


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def address(addr: net_pb2.TcpAddress) -> str:
    which = addr.ip.WhichOneof("ip")
    if which == "ipv4":
        return f"{ipaddress.IPv4Address(addr.ip.ipv4)}:{addr.port}"
    if which == "ipv6":
        return f"[{ipaddress.IPv6Address(addr.ip.ipv6)}]:{addr.port}"
    return f"?:{addr.port}"


def ip(addr: net_pb2.TcpAddress) -> str:
    return address(addr).rsplit(":", 1)[0].strip("[]")


# --- stat -----------------------------------------------------------------------------------------------


def _latency(row: public_pb2.StatRow, value: float) -> str:
    return f"{round(value)}ms" if row.has_latency else MISSING


def stat_cells(row: public_pb2.StatRow) -> dict[str, str]:
    responses = row.success_count + row.failure_count
    traffic = row.request_count > 0 or responses > 0
    return {
        "NAMESPACE": row.resource.namespace,
        "NAME": row.resource.name,
        "MESHED": f"{row.meshed_pods}/{row.total_pods}",
        "SUCCESS": f"{100 * row.success_rate:.2f}%" if responses else MISSING,
        "RPS": f"{row.request_rate:.1f}rps" if traffic else MISSING,
        "LATENCY_P50": _latency(row, row.latency_ms_p50),
        "LATENCY_P95": _latency(row, row.latency_ms_p95),
        "LATENCY_P99": _latency(row, row.latency_ms_p99),
        "TCP_CONN": str(row.tcp_open_connections) if traffic or row.tcp_open_connections else MISSING,
        "MTLS": f"{100 * row.tls_share:.2f}%" if row.request_count else MISSING,
    }


STAT_COLUMNS = ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN")


def stat_table(rows: Sequence[public_pb2.StatRow], *, all_namespaces: bool, wide: bool) -> str:
    columns = [*(("NAMESPACE",) if all_namespaces else ()), *STAT_COLUMNS, *(("MTLS",) if wide else ())]
    cells = [stat_cells(row) for row in rows]
    return table(columns, [[c[name] for name in columns] for c in cells])


def stat_json(rows: Sequence[public_pb2.StatRow]) -> list[dict[str, Any]]:
    return [stat_row(row) for row in rows]


# --- edges ----------------------------------------------------------------------------------------------


def edges_table(edges: Sequence[public_pb2.Edge], *, wide: bool) -> str:
    columns = ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED", *(("CLIENT_ID", "SERVER_ID") if wide else ())]
    rows = []
    for edge in edges:
        secured = OK if edge.secured else f"{ERROR} ({edge.no_tls_reason})" if edge.no_tls_reason else ERROR
        row = [edge.src.name, edge.dst.name, edge.src.namespace, edge.dst.namespace, secured]
        if wide:
            row += [edge.client_id or MISSING, edge.server_id or MISSING]
        rows.append(row)
    return table(columns, rows)


# --- endpoints ------------------------------------------------------------------------------------------


def endpoints_table(response: public_pb2.EndpointsResponse, *, wide: bool) -> str:
    columns = ["NAMESPACE", "IP", "PORT", "POD", "SERVICE", *(("WEIGHT", "IDENTITY") if wide else ())]
    rows = []
    for endpoint in response.endpoints:
        labels = endpoint.metric_labels
        row = [
            labels.get("namespace", MISSING),
            ip(endpoint.addr),
            str(endpoint.addr.port),
            labels.get("pod", MISSING),
            labels.get("service", MISSING),
        ]
        if wide:
            identity = endpoint.tls_identity.dns_like_identity if endpoint.HasField("tls_identity") else ""
            row += [str(endpoint.weight or 10000), identity or MISSING]
        rows.append(row)
    return table(columns, rows)


# --- tap ------------------------------------------------------------------------------------------------


def _grpc_status(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


def tap_line(event: telemetry_pb2.TapEvent) -> str:
    ident = f"id={event.stream_id}"
    phase = event.WhichOneof("phase")
    if phase == "request_init":
        proxy = "in" if event.direction == telemetry_pb2.DIRECTION_INBOUND else "out"
        init = event.request_init
        return (
            f"req {ident} proxy={proxy} src={address(event.source)} dst={address(event.destination)} "
            f"tls={event.tls or 'false'} :method={init.method} :authority={init.authority} :path={init.path}"
        )
    if phase == "response_init":
        return (
            f"rsp {ident} :status={event.response_init.status_code} "
            f"latency={event.response_init.since_request_init_us}µs"
        )
    if phase == "response_end":
        end = event.response_end
        parts = [f"end {ident}"]
        if end.reset_error_code:
            parts.append(f"reset-error={end.reset_error_code}")
        elif end.grpc_status >= 0:
            parts.append(f"grpc-status={_grpc_status(end.grpc_status)}")
        parts += [f"duration={end.since_request_init_us}µs", f"response-length={end.response_bytes}B"]
        return " ".join(parts)
    return f"??? {ident}"


# --- check ----------------------------------------------------------------------------------------------

MARKS: dict[int, str] = {
    public_pb2.CHECK_STATUS_OK: OK,
    public_pb2.CHECK_STATUS_WARNING: WARNING,
    public_pb2.CHECK_STATUS_ERROR: ERROR,
}


def check_status(result: public_pb2.CheckResult) -> int:
    if result.status != public_pb2.CHECK_STATUS_UNSPECIFIED:
        return int(result.status)
    return public_pb2.CHECK_STATUS_OK if result.ok else public_pb2.CHECK_STATUS_ERROR


def check_text(response: public_pb2.CheckResponse) -> str:
    sections: dict[str, list[public_pb2.CheckResult]] = {}
    for result in response.results:
        sections.setdefault(result.category or "checks", []).append(result)
    lines: list[str] = []
    for category, results in sections.items():
        lines += [category, "-" * len(category)]
        for result in results:
            status = check_status(result)
            lines.append(f"{MARKS.get(status, ERROR)} {result.description}")
            if status != public_pb2.CHECK_STATUS_OK and result.hint:
                lines.append(f"    {result.hint}")
        lines.append("")
    failed = (
        any(check_status(r) == public_pb2.CHECK_STATUS_ERROR for r in response.results) or not response.ok
    )
    lines.append(f"Status check results are {ERROR if failed else OK}")
    return "\n".join(lines)
