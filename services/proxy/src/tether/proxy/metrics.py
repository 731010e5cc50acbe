"""The proxy's metrics, named and labelled like Linkerd's proxy so its dashboards and queries work.

Built for the data path: it looks a label set up once per stream or connection (``registry.route(...)``,
``registry.tcp(...)``) and then bumps plain integers on the returned handle. Nothing here locks, reads a
clock or formats text until a scrape calls ``render(now)``.

Bounds: at most ``max_series`` route and ``max_series`` TCP label sets; lookups beyond that share one
catch-all handle per direction (``authority="overflow"``) and count ``proxy_metrics_overflow_total``.
A label set whose counters have not moved for ``idle_timeout`` seconds (judged at each ``expire(now)`` /
``render(now)``, so time is always passed in) is dropped, unless it has requests in flight or connections
open. A dropped handle is marked ``expired``; a holder must look the label set up again to keep counting.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from tether.shared.telemetry_scopes import LATENCY_BUCKETS_MS

Labels = tuple[tuple[str, str], ...]
"""A series' extra labels in rendering order, e.g. ``(("dst_namespace", "ns"), ("dst_service", "web"))``."""

OVERFLOW_AUTHORITY = "overflow"
GRPC_OK = 0

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"tls", "status_code", "grpc_status", "classification", "error", "errno", "le"})
_LE_LABELS = (*(f'le="{bound}"' for bound in LATENCY_BUCKETS_MS), 'le="+Inf"')


def escape_label_value(value: str) -> str:
    """Escape a label value for the Prometheus text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)


def dst_labels(
    *,
    namespace: str = "",
    service: str = "",
    pod: str = "",
    workload_kind: str = "",
    workload_name: str = "",
    extra: Mapping[str, str] | None = None,
) -> Labels:
    """Destination labels as Linkerd names them: dst_namespace, dst_service, dst_pod, dst_<kind>.

    Empty values are left out; ``workload_kind="Deployment"`` yields ``dst_deployment``.
    """
    pairs = [("dst_namespace", namespace), ("dst_service", service), ("dst_pod", pod)]
    if workload_kind:
        pairs.append(("dst_" + workload_kind.lower(), workload_name))
    pairs.extend((extra or {}).items())
    return tuple((name, value) for name, value in pairs if value)


def classify(status_code: int, grpc_status: int | None) -> str:
    """``failure`` for 5xx or a non-OK grpc-status, ``success`` otherwise."""
    if status_code >= 500 or (grpc_status is not None and grpc_status != GRPC_OK):
        return "failure"
    return "success"


def _format_number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class LatencyHistogram:
    """Non-cumulative bucket counts (the last is +Inf); cumulated only when rendered."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value_ms: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_MS, value_ms)] += 1
        self.total += value_ms
        self.count += 1

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        total = cls()
        for histogram in histograms:
            total.counts = [a + b for a, b in zip(total.counts, histogram.counts, strict=True)]
            total.total += histogram.total
            total.count += histogram.count
        return total

    def render(self, name: str, labels: str, out: list[str]) -> None:
        running = 0
        prefix = f"{name}_bucket{{{labels},"
        for le, count in zip(_LE_LABELS, self.counts, strict=True):
            running += count
            out.append(f"{prefix}{le}}} {running}")
        out.append(f"{name}_sum{{{labels}}} {_format_number(self.total)}")
        out.append(f"{name}_count{{{labels}}} {self.count}")


class _Series:
    """Idle tracking shared by both handle kinds; only the registry reads these fields."""

    __slots__ = ("_active_at", "_last_activity", "direction", "expired", "labels", "pairs")

    def __init__(self, labels: str, direction: str = "", pairs: Labels = ()) -> None:
        self.labels = labels
        #: The same labels, structured (``direction`` apart, ``tls`` included): what reports are scoped by.
        self.direction = direction
        self.pairs = pairs
        self.expired = False
        self._last_activity = -1
        self._active_at: float | None = None

    def activity(self) -> int:
        raise NotImplementedError

    def busy(self) -> bool:
        raise NotImplementedError

    def idle_for(self, now: float) -> float:
        """Seconds since the counters last moved, as observed by successive calls."""
        activity = self.activity()
        if activity != self._last_activity or self._active_at is None or self.busy():
            self._last_activity = activity
            self._active_at = now
        return now - self._active_at


class RouteHandle(_Series):
    """HTTP counters of one label set: request_total, response_total, response_latency_ms."""

    __slots__ = ("errors", "failure_latency", "latencies", "requests", "responses")

    def __init__(self, labels: str, direction: str = "", pairs: Labels = ()) -> None:
        super().__init__(labels, direction, pairs)
        self.requests = 0
        self.responses: dict[tuple[int, int | None], int] = {}
        #: Per (status, grpc-status), like ``responses``; /metrics merges them per status code.
        self.latencies: dict[tuple[int, int | None], LatencyHistogram] = {}
        self.errors: dict[str, int] = {}
        self.failure_latency: LatencyHistogram | None = None

    def request(self) -> None:
        self.requests += 1

    def response(self, status_code: int, grpc_status: int | None, latency_ms: float) -> None:
        """A response finished; ``grpc_status`` from trailers (or headers), None when not gRPC;
        ``latency_ms`` from the request's headers to the response's first byte (its headers)."""
        key = (status_code, grpc_status)
        responses = self.responses
        responses[key] = responses.get(key, 0) + 1
        histogram = self.latencies.get(key)
        if histogram is None:
            histogram = self.latencies[key] = LatencyHistogram()
        histogram.observe(latency_ms)

    def failed(self, error: str, elapsed_ms: float = 0.0) -> None:
        """The stream ended without a response (reset, peer gone) ``elapsed_ms`` after its request: a
        failure. /metrics has no latency for it; reports count it at that time (``failure_latency``)."""
        self.errors[error] = self.errors.get(error, 0) + 1
        if self.failure_latency is None:
            self.failure_latency = LatencyHistogram()
        self.failure_latency.observe(elapsed_ms)

    def activity(self) -> int:
        return self.requests + sum(self.responses.values()) + sum(self.errors.values())

    def busy(self) -> bool:
        return self.requests > sum(self.responses.values()) + sum(self.errors.values())


class TcpHandle(_Series):
    """TCP counters of one label set: opens, closes, bytes read and written."""

    __slots__ = ("close_errors", "closes", "opens", "read_bytes", "write_bytes")

    def __init__(self, labels: str, direction: str = "", pairs: Labels = ()) -> None:
        super().__init__(labels, direction, pairs)
        self.opens = 0
        self.closes = 0
        self.read_bytes = 0
        self.write_bytes = 0
        self.close_errors: dict[str, int] = {}

    def opened(self) -> None:
        self.opens += 1

    def read(self, n: int) -> None:
        self.read_bytes += n

    def wrote(self, n: int) -> None:
        self.write_bytes += n

    def closed(self, errno: str = "") -> None:
        """A connection closed; ``errno`` names the error (e.g. ``ECONNRESET``) when it failed."""
        if errno:
            self.close_errors[errno] = self.close_errors.get(errno, 0) + 1
        else:
            self.closes += 1

    @property
    def open_connections(self) -> int:
        return self.opens - self.closes - sum(self.close_errors.values())

    def activity(self) -> int:
        return self.opens + self.closes + self.read_bytes + self.write_bytes + sum(self.close_errors.values())

    def busy(self) -> bool:
        return self.open_connections > 0


KeyT = TypeVar("KeyT")
SeriesT = TypeVar("SeriesT", bound=_Series)
RouteKey = tuple[str, str, str, Labels, str]
TcpKey = tuple[str, str, str, Labels]


class MetricsRegistry:
    """All of one proxy's HTTP and TCP series."""

    def __init__(self, *, max_series: int = 2000, idle_timeout: float = 600.0) -> None:
        self.max_series = max_series
        self.idle_timeout = idle_timeout
        self._routes: dict[RouteKey, RouteHandle] = {}
        self._tcp: dict[TcpKey, TcpHandle] = {}
        self._overflow_routes: dict[str, RouteHandle] = {}
        self._overflow_tcp: dict[tuple[str, str], TcpHandle] = {}
        self._overflowed = {"route": 0, "tcp": 0}
        self._collectors: list[Callable[[], str]] = []

    def route(
        self, direction: str, authority: str, labels: Labels = (), tls: str = "", protocol: str = ""
    ) -> RouteHandle:
        """The handle for one HTTP label set; cheap enough to call once per stream. ``protocol`` (the
        client's: ``h2`` or ``http/1.1``) is a label when given."""
        key = (direction, authority, tls, labels, protocol)
        handle = self._routes.get(key)
        if handle is not None:
            return handle
        if len(self._routes) >= self.max_series:
            self._overflowed["route"] += 1
            return self._overflow_route(direction)
        pairs: Labels = (("authority", authority), *labels, *((("protocol", protocol),) if protocol else ()))
        handle = self._routes[key] = RouteHandle(
            _series_labels((("direction", direction), *pairs), tls), direction, _with_tls(pairs, tls)
        )
        return handle

    def tcp(self, direction: str, peer: str, labels: Labels = (), tls: str = "") -> TcpHandle:
        """The handle for one TCP label set; ``peer`` is ``src`` (accepted) or ``dst`` (dialled)."""
        key = (direction, peer, tls, labels)
        handle = self._tcp.get(key)
        if handle is not None:
            return handle
        if len(self._tcp) >= self.max_series:
            self._overflowed["tcp"] += 1
            return self._overflow_connection(direction, peer)
        handle = self._tcp[key] = TcpHandle(
            _series_labels((("direction", direction), ("peer", peer), *labels), tls),
            direction,
            _with_tls((("peer", peer), *labels), tls),
        )
        return handle

    def _overflow_route(self, direction: str) -> RouteHandle:
        handle = self._overflow_routes.get(direction)
        if handle is None:
            labels = (("direction", direction), ("authority", OVERFLOW_AUTHORITY))
            handle = self._overflow_routes[direction] = RouteHandle(
                format_labels(labels), direction, labels[1:]
            )
        return handle

    def _overflow_connection(self, direction: str, peer: str) -> TcpHandle:
        handle = self._overflow_tcp.get((direction, peer))
        if handle is None:
            labels = (("direction", direction), ("peer", peer), ("authority", OVERFLOW_AUTHORITY))
            handle = self._overflow_tcp[(direction, peer)] = TcpHandle(
                format_labels(labels), direction, labels[1:]
            )
        return handle

    def add_collector(self, collector: Callable[[], str]) -> None:
        """Append another component's already-rendered text (ending in a newline) to every scrape."""
        self._collectors.append(collector)

    def route_handles(self) -> list[RouteHandle]:
        """Every live HTTP series, the overflow ones included (what /metrics renders)."""
        return [*self._routes.values(), *self._overflow_routes.values()]

    def tcp_handles(self) -> list[TcpHandle]:
        """Every live TCP series, the overflow ones included."""
        return [*self._tcp.values(), *self._overflow_tcp.values()]

    @property
    def series_count(self) -> int:
        return len(self._routes) + len(self._tcp)

    def expire(self, now: float) -> int:
        """Drop label sets idle for ``idle_timeout`` seconds at monotonic time ``now``; returns how many."""
        return (
            _expire(self._routes, now, self.idle_timeout)
            + _expire(self._tcp, now, self.idle_timeout)
            + _expire(self._overflow_routes, now, self.idle_timeout)
            + _expire(self._overflow_tcp, now, self.idle_timeout)
        )

    def render(self, now: float) -> str:
        """Expire idle series, then the whole registry in Prometheus text format 0.0.4."""
        self.expire(now)
        routes = self.route_handles()
        conns = self.tcp_handles()
        out: list[str] = []
        _header(out, "request_total", "counter", "Total count of HTTP requests.")
        out.extend(f"request_total{{{h.labels}}} {h.requests}" for h in routes)
        _header(out, "response_total", "counter", "Total count of HTTP responses.")
        for h in routes:
            for (status, grpc), count in sorted(h.responses.items(), key=_response_order):
                grpc_label = "" if grpc is None else f',grpc_status="{grpc}"'
                classification = classify(status, grpc)
                out.append(
                    f'response_total{{{h.labels},status_code="{status}"{grpc_label},'
                    f'classification="{classification}"}} {count}'
                )
            for error, count in sorted(h.errors.items()):
                out.append(
                    f'response_total{{{h.labels},classification="failure",'
                    f'error="{escape_label_value(error)}"}} {count}'
                )
        _header(
            out,
            "response_latency_ms",
            "histogram",
            "Elapsed times between a request's headers and its response's first byte.",
        )
        for h in routes:
            for status, histogram in sorted(_by_status(h.latencies).items()):
                histogram.render("response_latency_ms", f'{h.labels},status_code="{status}"', out)
        _header(out, "tcp_open_total", "counter", "Total count of opened connections.")
        out.extend(f"tcp_open_total{{{c.labels}}} {c.opens}" for c in conns)
        _header(out, "tcp_open_connections", "gauge", "Number of currently-open connections.")
        out.extend(f"tcp_open_connections{{{c.labels}}} {c.open_connections}" for c in conns)
        _header(out, "tcp_read_bytes_total", "counter", "Total count of bytes read from peers.")
        out.extend(f"tcp_read_bytes_total{{{c.labels}}} {c.read_bytes}" for c in conns)
        _header(out, "tcp_write_bytes_total", "counter", "Total count of bytes written to peers.")
        out.extend(f"tcp_write_bytes_total{{{c.labels}}} {c.write_bytes}" for c in conns)
        _header(out, "tcp_close_total", "counter", "Total count of closed connections.")
        for c in conns:
            out.append(f'tcp_close_total{{{c.labels},errno=""}} {c.closes}')
            out.extend(
                f'tcp_close_total{{{c.labels},errno="{escape_label_value(errno)}"}} {count}'
                for errno, count in sorted(c.close_errors.items())
            )
        _header(
            out, "proxy_metrics_overflow_total", "counter", "Lookups of new label sets beyond the series cap."
        )
        out.extend(
            f'proxy_metrics_overflow_total{{family="{family}"}} {n}' for family, n in self._overflowed.items()
        )
        text = "\n".join(out) + "\n"
        return text + "".join(collector() for collector in self._collectors)


def _expire(table: dict[KeyT, SeriesT], now: float, idle_timeout: float) -> int:
    idle = [key for key, handle in table.items() if handle.idle_for(now) >= idle_timeout]
    for key in idle:
        table.pop(key).expired = True
    return len(idle)


def _with_tls(pairs: Labels, tls: str) -> Labels:
    return (*pairs, ("tls", tls)) if tls else pairs


def _by_status(latencies: Mapping[tuple[int, int | None], LatencyHistogram]) -> dict[int, LatencyHistogram]:
    """One histogram per status code (grpc-statuses merged), as Linkerd labels response_latency_ms."""
    groups: dict[int, list[LatencyHistogram]] = {}
    for (status, _), histogram in latencies.items():
        groups.setdefault(status, []).append(histogram)
    return {
        status: group[0] if len(group) == 1 else LatencyHistogram.merged(group)
        for status, group in groups.items()
    }


def _series_labels(pairs: tuple[tuple[str, str], ...], tls: str) -> str:
    seen: set[str] = set()
    for name, _ in pairs:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {name!r}")
        if name in seen or name in _RESERVED_LABELS:
            raise ValueError(f"label {name!r} is repeated or reserved for the registry")
        seen.add(name)
    return format_labels((*pairs, ("tls", tls)) if tls else pairs)


def _response_order(item: tuple[tuple[int, int | None], int]) -> tuple[int, int]:
    (status, grpc), _ = item
    return status, -1 if grpc is None else grpc


def _header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
