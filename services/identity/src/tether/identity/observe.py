"""What the identity service tells the world about each Certify: Prometheus metrics, NATS events and an
audit log line. Nothing here may carry a token, a key or a CSR."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tether.identity.ca import Authority
from tether.identity.certifier import CertifyRequest
from tether.identity.errors import Rejection
from tether.identity.issuance import IssuedLeaf
from tether.shared import subjects
from tether.shared.cloudevents import EventData
from tether.shared.events import IdentityIssued, IdentityRejected
from tether.shared.identity_names import InvalidIdentityName, WorkloadIdentity, parse_identity
from tether.shared.supervisor import SupervisedTask, TaskFactory

log = structlog.get_logger(__name__)

Publish = Callable[[str, EventData], Awaitable[None]]


class IdentityMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.issued = Counter(
            "tether_identity_certificates_issued", "Leaf certificates issued.", registry=registry
        )
        self.rejected = Counter(
            "tether_identity_certify_rejections",
            "Certify requests refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.certify_seconds = Histogram(
            "tether_identity_certify_duration_seconds",
            "Time to answer a Certify request, including token review.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.issuer_not_after = Gauge(
            "tether_identity_issuer_not_after_timestamp_seconds",
            "Expiry of the loaded issuer certificate (Unix time); 0 when none is loaded.",
            registry=registry,
        )
        self.issuer_loaded = Gauge(
            "tether_identity_issuer_loaded", "1 when a valid issuer is loaded.", registry=registry
        )
        self.issuer_reload_failures = Counter(
            "tether_identity_issuer_reload_failures",
            "Issuer file changes that could not be loaded.",
            registry=registry,
        )
        self.events_dropped = Counter(
            "tether_identity_events_dropped",
            "Events dropped because the bus was too slow.",
            registry=registry,
        )

    def authority_changed(self, authority: Authority | None) -> None:
        if authority is None:
            self.issuer_loaded.set(0)
            self.issuer_not_after.set(0)
        else:
            self.issuer_loaded.set(1)
            self.issuer_not_after.set(authority.issuer.not_after.timestamp())


class EventPublisher:
    """Publishes events in the background so Certify never waits on NATS; a bounded queue drops (and
    counts) events rather than grow without limit when the bus is down."""

    def __init__(self, publish: Publish, metrics: IdentityMetrics, max_pending: int = 10_000) -> None:
        self._publish = publish
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[str, EventData]] = asyncio.Queue(max_pending)
        self._task: SupervisedTask | None = None

    def start(self, spawn: Callable[[str, TaskFactory], SupervisedTask]) -> None:
        self._task = spawn("identity-events", self._drain)

    def emit(self, subject: str, event: EventData) -> None:
        try:
            self._queue.put_nowait((subject, event))
        except asyncio.QueueFull:
            self._metrics.events_dropped.inc()

    async def _drain(self) -> None:
        while True:
            subject, event = await self._queue.get()
            try:
                await self._publish(subject, event)
            except Exception as error:
                self._metrics.events_dropped.inc()
                log.warning("event_publish_failed", subject=subject, error_type=type(error).__name__)
            finally:
                self._queue.task_done()

    async def flush(self, timeout: float = 2.0) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            await self._task.stop()
        self._task = None


def _claimed_identity(name: str) -> str:
    # The requested name is caller-controlled: only well-formed names reach logs and events.
    try:
        return parse_identity(name).dns_name
    except InvalidIdentityName:
        return ""


class CertifyReporter:
    """The `CertifyObserver` of a running service. Create it after logging is configured: it binds its
    audit logger once, so each issuance skips structlog's per-call lazy-proxy bind."""

    def __init__(self, replica: str, metrics: IdentityMetrics, events: EventPublisher | None) -> None:
        self._replica = replica
        self._metrics = metrics
        self._events = events
        self._audit = log.bind()
        self._rejected_by_reason: dict[str, Counter] = {}

    def issued(
        self, identity: WorkloadIdentity, leaf: IssuedLeaf, authority: Authority, now: datetime
    ) -> None:
        self._metrics.issued.inc()
        self._audit.info(
            "certificate_issued",
            identity=identity.dns_name,
            serial=leaf.serial_hex,
            not_after=leaf.not_after.isoformat(),
            fingerprint_sha256=leaf.fingerprint_sha256,
        )
        if self._events is not None:
            event = IdentityIssued(
                identity=identity.dns_name,
                spiffe_id=identity.spiffe_id,
                serial=leaf.serial_hex,
                not_before=leaf.not_before,
                not_after=leaf.not_after,
                fingerprint_sha256=leaf.fingerprint_sha256,
                issuer_fingerprint_sha256=authority.issuer.fingerprint_sha256,
                replica=self._replica,
                issued_at=now,
            )
            self._events.emit(subjects.IDENTITY_ISSUED, event)

    def rejected(self, rejection: Rejection, request: CertifyRequest, now: datetime) -> None:
        reason = rejection.reason.value
        counter = self._rejected_by_reason.get(reason)
        if counter is None:
            counter = self._rejected_by_reason[reason] = self._metrics.rejected.labels(reason=reason)
        counter.inc()
        identity = _claimed_identity(request.identity)
        self._audit.warning(
            "certify_rejected",
            reason=rejection.reason.value,
            status=rejection.status,
            identity=identity,
            peer=request.peer,
        )
        if self._events is not None:
            event = IdentityRejected(
                reason=rejection.reason.value,
                status=rejection.status,
                identity=identity,
                peer=request.peer,
                replica=self._replica,
                rejected_at=now,
            )
            self._events.emit(subjects.IDENTITY_REJECTED, event)
