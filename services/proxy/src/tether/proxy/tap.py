"""Live tap on the proxy: the active tap subscriptions, their rate limits, and the events they capture.

Pure and I/O-free, time passed in: the report client applies the ``TapSubscription`` messages telemetry
sends (:meth:`Taps.apply`) and drains the captured ``TapEvent`` protobufs (:meth:`Taps.drain`); the data path
calls the three observer methods with plain values (:class:`TapObserver`). It imports nothing of the proxy
core, so it stays a leaf module.

Clocks: ``now`` is the data path's monotonic clock (the event loop's time) everywhere. :meth:`Taps.apply`
also takes the wall clock (``wall_now``, Unix seconds) to turn the subscription's absolute ``expires_at``
into a monotonic deadline, and the offset between the two clocks stamps the events' ``at``.

Rate: each tap has a token bucket at this proxy's share of the tap's rate (``max_events_per_second``,
possibly fractional). One token is one captured *request*: its ``request_init`` event and the later
``response_init`` and ``response_end`` events of the same stream ride along. The bucket holds at most
``max(1, rate)`` tokens and starts with one, so over any interval of ``T`` seconds a tap captures at most
``max(1, rate) + rate * T`` requests (0.25/s: one every 4 s on average, never two in a burst).

Cost: with no tap capturing, :meth:`Taps.request_started` is one attribute check and keeps nothing; only
captured streams are remembered (at most ``max_streams``), and :meth:`Taps.response_started` /
:meth:`Taps.finished` are one dict check when nothing is captured.

Headers: values are captured only for the names a tap asks for, never for :data:`SENSITIVE_HEADERS`
(authorization, cookie, set-cookie, proxy-authorization) nor the configured extra names, compared
case-insensitively; pseudo-headers are never copied (they are the request_init fields).
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Protocol

from tether.shared.proto.net.v1 import net_pb2
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.tap_requests import SENSITIVE_HEADERS

Address = tuple[str, int]
"""An IP literal and a port, as the proxy's connection descriptions carry them."""
HeaderPairs = Iterable[tuple[bytes | str, bytes | str]]

DEFAULT_MAX_TAPS = 16
DEFAULT_MAX_STREAMS = 10_000
DEFAULT_MAX_OUTBOX = 10_000
#: A subscription never runs longer than this past its last apply, whatever its ``expires_at`` says.
DEFAULT_MAX_LEASE_SECONDS = 30.0
#: Header names one tap may capture, and the longest captured value (characters; longer is cut).
MAX_HEADER_NAMES = 16
MAX_HEADER_VALUE = 1024
MAX_TAP_ID = 253
#: ``ResponseEnd.grpc_status`` when the stream ended without a grpc-status (as in ``ResponseStats``).
NO_GRPC_STATUS = -1

_DIRECTIONS = {
    "inbound": telemetry_pb2.DIRECTION_INBOUND,
    "outbound": telemetry_pb2.DIRECTION_OUTBOUND,
}


class TapObserver(Protocol):
    """What the data path calls for every HTTP request (both directions); :class:`Taps` is one.

    ``stream_key`` is any hashable value unique among the proxy's open streams for the stream's whole life
    (the exchange object itself, or a counter; not ``id()`` of something that may be collected early).
    ``request_started`` returns True when a tap captured the request: only then are its later phases worth
    reporting (calling them anyway is cheap and harmless).
    """

    def request_started(
        self,
        stream_key: Hashable,
        direction: str,
        method: str,
        scheme: str,
        authority: str,
        path: str,
        headers: HeaderPairs,
        source: Address | None,
        destination: Address | None,
        source_labels: Mapping[str, str],
        destination_labels: Mapping[str, str],
        source_identity: str,
        destination_identity: str,
        tls: str,
        now: float,
    ) -> bool: ...

    def response_started(self, stream_key: Hashable, status: int, now: float) -> None: ...

    def finished(
        self,
        stream_key: Hashable,
        grpc_status: int | None,
        reset_code: int | None,
        response_bytes: int,
        now: float,
    ) -> None: ...


class TokenBucket:
    """Tokens at ``rate`` per second up to ``max(1, rate)``, starting with one; ``take`` spends one."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = 1.0
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on (tokens earned so far are kept, up to the new burst)."""
        self._refill(now)
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = min(self.tokens, self.burst)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Tap:
    __slots__ = (
        "authority",
        "bucket",
        "captured",
        "deadline",
        "dst_namespace",
        "dst_service",
        "exhausted",
        "header_names",
        "max_requests",
        "method",
        "path_prefix",
        "tap_id",
    )

    def __init__(self, tap_id: str, bucket: TokenBucket) -> None:
        self.tap_id = tap_id
        self.bucket = bucket
        self.captured = 0
        self.exhausted = False
        self.deadline = 0.0
        self.max_requests = 0
        self.method = ""
        self.authority = ""
        self.path_prefix = ""
        self.dst_namespace = ""
        self.dst_service = ""
        self.header_names: frozenset[str] = frozenset()

    def matches(self, method: str, authority: str, path: str, destination_labels: Mapping[str, str]) -> bool:
        if self.method and method != self.method and method.upper() != self.method:
            return False
        if self.authority and authority.lower() != self.authority:
            return False
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if self.dst_namespace and destination_labels.get("namespace", "") != self.dst_namespace:
            return False
        return not (self.dst_service and destination_labels.get("service", "") != self.dst_service)


class _Stream:
    __slots__ = ("started", "taps", "template")

    def __init__(self, started: float, template: telemetry_pb2.TapEvent, taps: list[str]) -> None:
        self.started = started
        self.template = template
        self.taps = taps


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def tcp_address(address: Address | None) -> net_pb2.TcpAddress | None:
    """``(ip, port)`` as a ``TcpAddress``; None for anything that is not an IP literal and a valid port."""
    if address is None:
        return None
    host, port = address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv4=int(ip)), port=port)
    return net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv6=ip.packed), port=port)


def _set_time(event: telemetry_pb2.TapEvent, wall: float) -> None:
    seconds = math.floor(wall)
    event.at.seconds = seconds
    event.at.nanos = min(999_999_999, max(0, int((wall - seconds) * 1e9)))


def _micros(seconds: float) -> int:
    return max(0, int(seconds * 1_000_000))


class Taps:
    """The tap subscriptions of this proxy and the events they captured (see the module docstring).

    Counters, for the proxy's metrics: ``requests_captured`` (requests some tap captured),
    ``events_captured`` (events put in the outbox), ``rate_limited`` (a matching request a tap's bucket
    refused, counted per tap), ``outbox_dropped`` (events lost to a full outbox), ``streams_dropped``
    (captured streams forgotten because too many were open), ``subscriptions_refused`` (invalid
    subscriptions or too many taps), and the gauge :attr:`taps_active`.
    """

    def __init__(
        self,
        *,
        sensitive_headers: Iterable[str] = (),
        max_taps: int = DEFAULT_MAX_TAPS,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        max_lease: float = DEFAULT_MAX_LEASE_SECONDS,
        notify: Callable[[], None] | None = None,
    ) -> None:
        """``sensitive_headers``: names never captured besides :data:`SENSITIVE_HEADERS`. ``notify`` is
        called when the outbox goes from empty to non-empty (e.g. to wake the report client)."""
        self.sensitive_headers = SENSITIVE_HEADERS | {name.strip().lower() for name in sensitive_headers}
        self.max_taps = max_taps
        self.max_streams = max_streams
        self.max_outbox = max_outbox
        self.max_lease = max_lease
        self._notify = notify
        self._taps: dict[str, _Tap] = {}
        # The taps still capturing new requests (not exhausted): the data path's one check.
        self._capturing: tuple[_Tap, ...] = ()
        #: Some tap may capture new requests: the data path's one check before it gathers anything.
        self.capturing = False
        self._next_deadline = math.inf
        self._streams: dict[Hashable, _Stream] = {}
        self._outbox: deque[telemetry_pb2.TapEvent] = deque()
        self._wall_offset = 0.0
        self._next_stream_id = 1
        self.requests_captured = 0
        self.events_captured = 0
        self.rate_limited = 0
        self.outbox_dropped = 0
        self.streams_dropped = 0
        self.subscriptions_refused = 0

    # --- state -------------------------------------------------------------------------------------------

    @property
    def taps_active(self) -> int:
        """Taps currently capturing (a tap that reached its ``max_requests`` no longer counts)."""
        return len(self._capturing)

    @property
    def tap_ids(self) -> frozenset[str]:
        """Every subscription held, capturing or exhausted."""
        return frozenset(self._taps)

    @property
    def streams_tracked(self) -> int:
        """Captured streams whose later phases are still to be reported."""
        return len(self._streams)

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    # --- subscriptions -----------------------------------------------------------------------------------

    def apply(self, subscription: telemetry_pb2.TapSubscription, now: float, wall_now: float) -> bool:
        """Start, renew (same id: replaces match, rate, expiry and headers, keeps the count of requests
        captured so far) or stop (``active=false``) a tap. False when the subscription was refused."""
        tap_id = subscription.tap_id
        if not tap_id or len(tap_id) > MAX_TAP_ID:
            self.subscriptions_refused += 1
            return False
        if not subscription.active:
            self._stop(tap_id)
            return True
        rate = subscription.max_events_per_second
        if not (math.isfinite(rate) and rate > 0) or not subscription.HasField("expires_at"):
            self.subscriptions_refused += 1
            return False
        self._wall_offset = wall_now - now
        expires = subscription.expires_at.seconds + subscription.expires_at.nanos / 1e9
        remaining = min(self.max_lease, expires - wall_now)
        if remaining <= 0:
            self._stop(tap_id)
            return True
        tap = self._taps.get(tap_id)
        if tap is None:
            if len(self._taps) >= self.max_taps:
                self.subscriptions_refused += 1
                return False
            tap = self._taps[tap_id] = _Tap(tap_id, TokenBucket(rate, now))
        else:
            tap.bucket.set_rate(rate, now)
        match = subscription.match
        tap.deadline = now + remaining
        tap.max_requests = subscription.max_requests
        tap.exhausted = bool(tap.max_requests) and tap.captured >= tap.max_requests
        tap.method = match.method.upper()
        tap.authority = match.authority.lower()
        tap.path_prefix = match.path_prefix
        tap.dst_namespace = match.destination_namespace
        tap.dst_service = match.destination_service
        names = {name.strip().lower() for name in subscription.header_names}
        allowed = sorted(
            name for name in names if name and not name.startswith(":") and name not in self.sensitive_headers
        )
        tap.header_names = frozenset(allowed[:MAX_HEADER_NAMES])
        self._rebuild()
        return True

    def expire(self, now: float) -> None:
        """Stop every tap whose expiry has passed (also done on the data path when one is due)."""
        for tap in [tap for tap in self._taps.values() if tap.deadline <= now]:
            self._stop(tap.tap_id)

    def reset(self) -> None:
        """Forget every tap, captured stream and pending event (the report stream ended: the next replica
        re-sends the live taps)."""
        self._taps.clear()
        self._streams.clear()
        self._outbox.clear()
        self._rebuild()

    def drain(self, max_events: int | None = None) -> list[telemetry_pb2.TapEvent]:
        """Take up to ``max_events`` (all by default) captured events, oldest first."""
        outbox = self._outbox
        if max_events is None or max_events >= len(outbox):
            events = list(outbox)
            outbox.clear()
            return events
        return [outbox.popleft() for _ in range(max(0, max_events))]

    def _stop(self, tap_id: str) -> None:
        if self._taps.pop(tap_id, None) is not None:
            self._rebuild()
        # Later phases of its streams are not reported any more.
        for key, stream in list(self._streams.items()):
            if tap_id in stream.taps:
                stream.taps.remove(tap_id)
                if not stream.taps:
                    del self._streams[key]

    def _rebuild(self) -> None:
        self._capturing = tuple(tap for tap in self._taps.values() if not tap.exhausted)
        self.capturing = bool(self._capturing)
        self._next_deadline = min((tap.deadline for tap in self._taps.values()), default=math.inf)

    # --- the observer --------------------------------------------------------------------------------------

    def request_started(
        self,
        stream_key: Hashable,
        direction: str,
        method: str,
        scheme: str,
        authority: str,
        path: str,
        headers: HeaderPairs,
        source: Address | None,
        destination: Address | None,
        source_labels: Mapping[str, str],
        destination_labels: Mapping[str, str],
        source_identity: str,
        destination_identity: str,
        tls: str,
        now: float,
    ) -> bool:
        capturing = self._capturing
        if not capturing:
            return False
        if now >= self._next_deadline:
            self.expire(now)
            capturing = self._capturing
            if not capturing:
                return False
        matched: list[_Tap] = []
        for tap in capturing:
            if not tap.matches(method, authority, path, destination_labels):
                continue
            if not tap.bucket.take(now):
                self.rate_limited += 1
                continue
            matched.append(tap)
        if not matched:
            if self._streams:
                # A key reused before its stream was finished: its old phases must not leak into this one.
                self._streams.pop(stream_key, None)
            return False
        self.requests_captured += 1
        exhausted = False
        for tap in matched:
            tap.captured += 1
            if tap.max_requests and tap.captured >= tap.max_requests:
                tap.exhausted = exhausted = True
        if exhausted:
            self._rebuild()

        template = telemetry_pb2.TapEvent(
            source_labels=source_labels,
            destination_labels=destination_labels,
            direction=_DIRECTIONS.get(direction, telemetry_pb2.DIRECTION_UNSPECIFIED),
            stream_id=self._next_stream_id,
            source_identity=source_identity,
            destination_identity=destination_identity,
            tls=tls,
        )
        self._next_stream_id += 1
        source_address = tcp_address(source)
        if source_address is not None:
            template.source.CopyFrom(source_address)
        destination_address = tcp_address(destination)
        if destination_address is not None:
            template.destination.CopyFrom(destination_address)

        wanted = frozenset[str]().union(*(tap.header_names for tap in matched))
        captured = _capture_headers(headers, wanted) if wanted else {}
        for tap in matched:
            event = self._event(template, tap.tap_id, now)
            init = event.request_init
            init.method = method
            init.scheme = scheme
            init.authority = authority
            init.path = path
            for name in tap.header_names:
                value = captured.get(name)
                if value is not None:
                    event.headers[name] = value
            self._emit(event)

        streams = self._streams
        streams.pop(stream_key, None)
        while len(streams) >= self.max_streams:
            del streams[next(iter(streams))]
            self.streams_dropped += 1
        streams[stream_key] = _Stream(now, template, [tap.tap_id for tap in matched])
        return True

    def response_started(self, stream_key: Hashable, status: int, now: float) -> None:
        if not self._streams:
            return
        stream = self._streams.get(stream_key)
        if stream is None:
            return
        since = _micros(now - stream.started)
        for tap_id in stream.taps:
            event = self._event(stream.template, tap_id, now)
            event.response_init.status_code = max(0, status)
            event.response_init.since_request_init_us = since
            self._emit(event)

    def finished(
        self,
        stream_key: Hashable,
        grpc_status: int | None,
        reset_code: int | None,
        response_bytes: int,
        now: float,
    ) -> None:
        if not self._streams:
            return
        stream = self._streams.pop(stream_key, None)
        if stream is None:
            return
        since = _micros(now - stream.started)
        for tap_id in stream.taps:
            event = self._event(stream.template, tap_id, now)
            end = event.response_end
            end.grpc_status = NO_GRPC_STATUS if grpc_status is None else grpc_status
            end.since_request_init_us = since
            end.response_bytes = max(0, response_bytes)
            end.reset_error_code = reset_code or 0
            self._emit(event)

    def _event(self, template: telemetry_pb2.TapEvent, tap_id: str, now: float) -> telemetry_pb2.TapEvent:
        event = telemetry_pb2.TapEvent()
        event.CopyFrom(template)
        event.tap_id = tap_id
        _set_time(event, now + self._wall_offset)
        return event

    def _emit(self, event: telemetry_pb2.TapEvent) -> None:
        outbox = self._outbox
        if len(outbox) >= self.max_outbox:
            self.outbox_dropped += 1
            return
        was_empty = not outbox
        outbox.append(event)
        self.events_captured += 1
        if was_empty and self._notify is not None:
            self._notify()


def _capture_headers(headers: HeaderPairs, wanted: frozenset[str]) -> dict[str, str]:
    """Values of the ``wanted`` (lowercase, already allowed) headers; repeated fields joined by ", "."""
    found: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = _text(raw_name).lower()
        if name not in wanted:
            continue
        value = _text(raw_value)
        previous = found.get(name)
        value = value if previous is None else f"{previous}, {value}"
        found[name] = value[:MAX_HEADER_VALUE]
    return found
