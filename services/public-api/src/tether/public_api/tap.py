"""Tap: publish a TapRequest on NATS, renew it every 2 s, stream the TapEvents back as the proto TapEvent,
drop what exceeds the requested rate, and cancel the tap when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import msgspec

from tether.public_api.queries import check_label, invalid
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.events import Workload
from tether.shared.proto.net.v1 import net_pb2
from tether.shared.proto.public.v1 import public_pb2
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.tap_requests import (
    MAX_HEADER_NAMES,
    MAX_TAP_RATE,
    RENEW_INTERVAL_SECONDS,
    TapAddress,
    TapEvent,
    TapFilter,
    TapRequest,
    TapTarget,
)

DEFAULT_RATE = 100.0
_DIRECTIONS = {
    "inbound": telemetry_pb2.DIRECTION_INBOUND,
    "outbound": telemetry_pb2.DIRECTION_OUTBOUND,
    "unspecified": telemetry_pb2.DIRECTION_UNSPECIFIED,
}


async def validate_tap(request: public_pb2.TapRequest, context: grpc.aio.ServicerContext) -> TapRequest:
    """The NATS TapRequest (action start) for ``request``; INVALID_ARGUMENT naming the field otherwise."""
    if not request.HasField("target"):
        await invalid(context, "target: required (namespace, kind and name)")
    target = request.target
    if not target.namespace:
        await invalid(context, "target.namespace: required")
    await check_label(context, "target.namespace", target.namespace)
    if not target.name:
        await invalid(context, "target.name: required")
    if not target.kind:
        await invalid(context, "target.kind: required (pod, service or a workload kind such as deployment)")
    rate = request.max_events_per_second or DEFAULT_RATE
    if not 0 < rate <= MAX_TAP_RATE:
        await invalid(context, f"max_events_per_second: must be above 0 and at most {MAX_TAP_RATE:g}")
    if len(request.header_names) > MAX_HEADER_NAMES:
        await invalid(context, f"header_names: at most {MAX_HEADER_NAMES}")
    expires = None
    if request.HasField("expires_at"):
        expires = request.expires_at.ToDatetime(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            await invalid(context, "expires_at: in the past")
    try:
        if target.kind == "pod":
            tap_target = TapTarget(namespace=target.namespace, pod=target.name)
        elif target.kind == "service":
            tap_target = TapTarget(namespace=target.namespace, service=target.name)
        else:
            tap_target = TapTarget(namespace=target.namespace, workload=Workload(target.kind, target.name))
        tap_target = msgspec.convert(msgspec.to_builtins(tap_target), TapTarget)
    except (msgspec.ValidationError, ValueError) as exc:
        await invalid(context, f"target: {exc}")
    m = request.match
    raw = {
        "action": "start",
        "tap_id": "tap-" + secrets.token_hex(8),
        "target": msgspec.to_builtins(tap_target),
        "match": msgspec.to_builtins(
            TapFilter(
                method=m.method,
                authority=m.authority,
                path_prefix=m.path_prefix,
                destination_namespace=m.destination_namespace,
                destination_service=m.destination_service,
            )
        ),
        "max_events_per_second": rate,
        "max_requests": request.max_requests,
        "header_names": [h.lower() for h in request.header_names],
        "expires_at": expires.isoformat() if expires is not None else None,
    }
    try:
        return msgspec.convert(raw, TapRequest)
    except msgspec.ValidationError as exc:
        # msgspec names the path, e.g. "at `$.match.method`" or "at `$.header_names[0]`".
        text = str(exc)
        field = text.split("`$.", 1)[1].split("`", 1)[0] if "`$." in text else "request"
        await invalid(context, f"{field}: {text.split(' - at ', 1)[0]}")
    raise AssertionError("unreachable")


def _address(value: TapAddress | None) -> net_pb2.TcpAddress | None:
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(value.ip)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv4=int(ip)), port=value.port)
    return net_pb2.TcpAddress(ip=net_pb2.IPAddress(ipv6=ip.packed), port=value.port)


def to_proto(event: TapEvent) -> telemetry_pb2.TapEvent:
    out = telemetry_pb2.TapEvent(
        tap_id=event.tap_id,
        source_labels=event.source_labels,
        destination_labels=event.destination_labels,
        direction=_DIRECTIONS[event.direction],
        stream_id=event.stream_id,
        headers=event.headers,
        source_identity=event.source_identity,
        destination_identity=event.destination_identity,
        tls=event.tls,
    )
    out.at.FromDatetime(event.at)
    source, destination = _address(event.source), _address(event.destination)
    if source is not None:
        out.source.CopyFrom(source)
    if destination is not None:
        out.destination.CopyFrom(destination)
    if event.request_init is not None:
        r = event.request_init
        out.request_init.CopyFrom(
            telemetry_pb2.TapEvent.RequestInit(
                method=r.method, scheme=r.scheme, authority=r.authority, path=r.path
            )
        )
    elif event.response_init is not None:
        out.response_init.CopyFrom(
            telemetry_pb2.TapEvent.ResponseInit(
                status_code=event.response_init.status_code,
                since_request_init_us=event.response_init.since_request_init_us,
            )
        )
    elif event.response_end is not None:
        e = event.response_end
        out.response_end.CopyFrom(
            telemetry_pb2.TapEvent.ResponseEnd(
                grpc_status=e.grpc_status,
                since_request_init_us=e.since_request_init_us,
                response_bytes=e.response_bytes,
                reset_error_code=e.reset_error_code,
            )
        )
    return out


class RateGate:
    """Admits requests at most ``rate`` per second (a token bucket holding one second's worth); the later
    phases of a dropped request are dropped with it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = time.monotonic()
        self.dropped = 0

    def admit(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False


async def run_tap(
    bus: Bus, tap: TapRequest, request: public_pb2.TapRequest
) -> AsyncIterator[telemetry_pb2.TapEvent]:
    queue: asyncio.Queue[TapEvent] = asyncio.Queue(maxsize=10_000)

    async def on_event(event: TapEvent, _subject: str) -> None:
        if event.tap_id == tap.tap_id:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    subscription = await bus.subscribe(subjects.tap_events(tap.tap_id), TapEvent, on_event)

    async def renew() -> None:
        renewal = msgspec.structs.replace(tap, action="renew")
        while True:
            await asyncio.sleep(RENEW_INTERVAL_SECONDS)
            await bus.publish(subjects.TAP_REQUESTS, renewal)

    renewer: asyncio.Task[None] | None = None
    gate = RateGate(tap.max_events_per_second)
    admitted: set[tuple[str, str, int]] = set()
    ended = 0
    deadline = tap.expires_at.timestamp() if tap.expires_at is not None else None
    try:
        await bus.publish(subjects.TAP_REQUESTS, tap)
        renewer = asyncio.create_task(renew())
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                event = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return
            key = (event.namespace, event.pod, event.stream_id)
            if event.request_init is not None:
                if request.max_requests and len(admitted) >= request.max_requests:
                    continue
                if not gate.admit():
                    continue
                admitted.add(key)
            elif key not in admitted:
                continue
            yield to_proto(event)
            if event.response_end is not None:
                ended += 1
                if request.max_requests and ended >= request.max_requests:
                    return
    finally:
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        with contextlib.suppress(Exception):
            await bus.publish(subjects.TAP_REQUESTS, TapRequest(action="cancel", tap_id=tap.tap_id))
        await subscription.unsubscribe()
