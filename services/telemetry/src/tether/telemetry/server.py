"""The ``Telemetry/Report`` gRPC service (grpc.aio): one handler per proxy stream, feeding the core.

* mTLS: the handshake requires a client certificate chaining to the mesh's trust anchors (no certificate:
  the handshake fails, the client sees UNAVAILABLE). The hello's identity must be the certificate's
  (PERMISSION_DENIED otherwise, UNAUTHENTICATED when the certificate names no mesh identity), and its
  namespace and ``serviceaccount`` label must be the identity's.
* One stream per proxy (identity and pod): a newer stream **replaces** the older one, which ends with
  ABORTED. A proxy reconnecting over a connection the old one still holds half-open must not be locked out.
* Reports are validated and folded; a report refused as a whole ends the stream with INVALID_ARGUMENT.
  Refusals and dropped scopes are logged once per stream per rollup interval.
* Acknowledgements go out only after the publisher published the rollup that holds the report. A stream's
  first message is ``ReportAck`` of what any replica already published of this proxy process (0: nothing;
  :mod:`tether.telemetry.resume`), so that a proxy moving here does not resend what was counted elsewhere.
* ``max_stream_age`` (:mod:`tether.shared.streamage`): past its jittered age a stream stops folding reports
  (those that arrive are left unacknowledged: the proxy resends them on its next stream), waits until
  everything it folded is published and acknowledged (the next rollup interval at most), then ends with
  status OK. The proxy reconnects at once on a new connection, perhaps to another replica, and nothing is
  lost or counted twice: no range this replica folded is left unacknowledged when the proxy moves.
* Tap (:mod:`tether.telemetry.taprelay`): a stream's opening and end are told to the tap relay, the
  subscriptions it sends go down the stream (the latest per tap, ahead of acknowledgements), and the
  ``TapEvent`` messages the proxy sends are handed to it to check and publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from tether.shared.identity_names import InvalidIdentityName, parse_identity
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.proto.telemetry.v1 import telemetry_pb2_grpc
from tether.shared.streamage import stream_deadline
from tether.telemetry.aggregate import Aggregator
from tether.telemetry.errors import HelloRefused, ReportRefused
from tether.telemetry.metrics import TelemetryMetrics
from tether.telemetry.model import Hello, ProxyKey, check_hello, validate_report

if TYPE_CHECKING:
    from tether.telemetry.resume import PublishedRanges
    from tether.telemetry.taprelay import TapRelay

log = structlog.get_logger(__name__)

SHUTDOWN_MESSAGE = "telemetry replica shutting down; reconnect to another replica"
#: How long a new stream waits, at a replica's start, for the rollups published before it to be read back.
RESUME_WAIT = 5.0


def peer_identity(context: Any) -> str | None:
    """The mesh identity (DNS SAN) of the verified client certificate, or None."""
    auth = context.auth_context() or {}
    for raw in auth.get("x509_subject_alternative_name", ()):
        name = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        with contextlib.suppress(InvalidIdentityName):
            parse_identity(name)
            return name
    return None


class Session:
    """One open stream: the latest acknowledgement to send, and whether it must end."""

    __slots__ = (
        "ack",
        "closing",
        "deadline",
        "ended",
        "folded",
        "hello",
        "log",
        "logged_at",
        "subscriptions",
        "suppressed",
        "wake",
    )

    def __init__(self, hello: Hello, deadline: float = math.inf) -> None:
        self.hello = hello
        self.ack = 0
        #: The highest sequence this stream folded (its acknowledgement may still be to come).
        self.folded = 0
        #: When the stream reaches its maximum age (event loop time), and whether it is past it.
        self.deadline = deadline
        self.closing = False
        #: Tap subscriptions to send, the latest per tap id (a newer one replaces one not sent yet).
        self.subscriptions: dict[str, pb.TapSubscription] = {}
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.wake = asyncio.Event()
        self.logged_at = -1e18
        self.suppressed = 0
        self.log = log.bind(identity=hello.proxy.identity, pod=hello.proxy.pod)

    def acknowledge(self, sequence: int) -> None:
        if sequence > self.ack:
            self.ack = sequence
            self.wake.set()

    def subscribe(self, subscription: pb.TapSubscription) -> None:
        self.subscriptions.pop(subscription.tap_id, None)
        self.subscriptions[subscription.tap_id] = subscription
        self.wake.set()

    def end(self, code: grpc.StatusCode, message: str) -> None:
        self.ended = (code, message)
        self.wake.set()


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServicer):
    def __init__(
        self,
        core: Aggregator,
        metrics: TelemetryMetrics,
        *,
        mtls: bool,
        hello_timeout: float,
        log_interval: float,
        clock: Any = time.time,
        taps: TapRelay | None = None,
        max_stream_age: float = 0.0,
        rng: random.Random | None = None,
        published: PublishedRanges | None = None,
    ) -> None:
        self._core = core
        self.published = published
        self.taps = taps
        self._metrics = metrics
        self._mtls = mtls
        self._hello_timeout = hello_timeout
        self._log_interval = log_interval
        self._clock = clock
        self.sessions: dict[ProxyKey, Session] = {}
        self._draining = False
        self._max_age = max_stream_age
        self._rng = rng or random.Random()

    def acknowledge(self, acks: dict[ProxyKey, int]) -> None:
        for proxy, sequence in acks.items():
            session = self.sessions.get(proxy)
            if session is not None:
                session.acknowledge(sequence)

    def send_subscription(self, proxy: ProxyKey, subscription: pb.TapSubscription) -> bool:
        """Queue a tap subscription for ``proxy``'s open stream; False when it has none."""
        session = self.sessions.get(proxy)
        if session is None or session.ended is not None:
            return False
        session.subscribe(subscription)
        return True

    def drain(self) -> None:
        """Ends every stream with UNAVAILABLE (proxies reconnect elsewhere) and refuses new ones."""
        self._draining = True
        for session in list(self.sessions.values()):
            session.end(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)

    async def _refuse(self, context: Any, code: grpc.StatusCode, reason: str, detail: str) -> None:
        self._metrics.streams_refused.labels(reason).inc()
        log.warning(
            "report_stream_refused", reason=reason, status=code.name, detail=detail[:200], peer=context.peer()
        )
        await context.abort(code, detail)

    async def Report(self, request_iterator: AsyncIterator[pb.ReportRequest], context: Any) -> None:
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
        identity = None
        if self._mtls:
            identity = peer_identity(context)
            if identity is None:
                await self._refuse(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no_identity",
                    "no mesh identity in the client certificate",
                )
        try:
            first = await asyncio.wait_for(context.read(), self._hello_timeout)
        except TimeoutError:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no_hello", "no hello in time")
            return
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("message") != "hello":
            await self._refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "no_hello", "the first message must be a hello"
            )
        try:
            hello = check_hello(first.hello, identity)
        except HelloRefused as exc:
            await self._refuse(context, getattr(grpc.StatusCode, exc.code), exc.reason, exc.detail)
            return
        session = Session(hello, stream_deadline(asyncio.get_running_loop().time(), self._max_age, self._rng))
        previous = self.sessions.get(hello.proxy)
        if previous is not None:
            self._metrics.streams_replaced.inc()
            previous.end(grpc.StatusCode.ABORTED, "replaced by a newer Report stream of the same proxy")
        self.sessions[hello.proxy] = session
        self._core.open_stream(hello, self._clock())
        self._metrics.streams_open.inc()
        session.log.info("report_stream_opened", workload=f"{hello.workload.kind}/{hello.workload.name}")
        try:
            resume = await self._resume_point(hello)
            await context.write(pb.ReportResponse(ack=pb.ReportAck(sequence=resume)))
            if self.taps is not None:
                await self.taps.proxy_connected(hello.proxy, first.hello)
            await self._serve(session, context, resume)
        finally:
            self._metrics.streams_open.dec()
            if self.sessions.get(hello.proxy) is session:
                del self.sessions[hello.proxy]
                if self.taps is not None:
                    await self.taps.proxy_disconnected(hello.proxy)

    async def _resume_point(self, hello: Hello) -> int:
        """The highest sequence of this proxy process already in a published rollup, by any replica."""
        resume = self._core.published_high(hello.proxy, hello.instance)
        published = self.published
        if published is not None and hello.instance:
            if not published.synced.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(published.synced.wait(), RESUME_WAIT)
            resume = max(resume, published.high(hello.proxy, hello.instance))
        return resume

    def _expired(self, session: Session, sent: int) -> bool:
        """Whether the stream is past its age and everything it folded was acknowledged: it ends."""
        if session.closing and sent >= session.folded:
            self._metrics.streams_expired.inc()
            session.log.debug("report_stream_expired", acknowledged=sent)
            return True
        return False

    async def _serve(self, session: Session, context: Any, sent: int = 0) -> None:
        loop = asyncio.get_running_loop()
        reading: asyncio.Future[Any] = asyncio.ensure_future(context.read())
        waking: asyncio.Future[Any] = asyncio.ensure_future(session.wake.wait())
        try:
            while True:
                timeout = None
                if not session.closing:
                    remaining = session.deadline - loop.time()
                    if remaining <= 0:
                        session.closing = True
                        if self._expired(session, sent):
                            return
                    elif not math.isinf(remaining):
                        timeout = remaining
                await asyncio.wait({reading, waking}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if waking.done():
                    session.wake.clear()
                    waking = asyncio.ensure_future(session.wake.wait())
                    if session.ended is not None:
                        code, message = session.ended
                        await context.abort(code, message)
                    while session.subscriptions:
                        tap_id = next(iter(session.subscriptions))
                        subscription = session.subscriptions.pop(tap_id)
                        await context.write(pb.ReportResponse(tap_subscription=subscription))
                    if session.ack > sent:
                        sent = session.ack
                        await context.write(pb.ReportResponse(ack=pb.ReportAck(sequence=sent)))
                        self._metrics.acks_sent.inc()
                    if self._expired(session, sent):
                        return
                if reading.done():
                    message = reading.result()
                    if message is grpc.aio.EOF:
                        return
                    reading = asyncio.ensure_future(context.read())
                    await self._handle(session, message, context)
        finally:
            for pending in (reading, waking):
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _handle(self, session: Session, message: pb.ReportRequest, context: Any) -> None:
        kind = message.WhichOneof("message")
        if kind == "tap":
            if self.taps is None:
                self._metrics.tap_events_refused.labels("not_subscribed").inc()
            else:
                await self.taps.tap_event(session.hello.proxy, session.hello.workload.namespace, message.tap)
            return
        if kind != "report":
            self._metrics.reports_refused.labels("unexpected_hello").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "one hello per stream, first")
        try:
            report = validate_report(message.report, message.report.SerializeToString())
        except ReportRefused as exc:
            self._metrics.reports_refused.labels(exc.reason).inc()
            self._note(session, "report_refused", reason=exc.reason, detail=exc.detail[:200])
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        if session.closing:
            # Past its age: folded here, this report's acknowledgement could be lost with the stream; it is
            # resent (merged) on the proxy's next stream instead.
            self._metrics.reports_deferred.inc()
            return
        for reason, count in report.rejected.items():
            self._metrics.scopes_dropped.labels(reason).inc(count)
        if report.rejected:
            self._note(session, "scopes_dropped", reasons=report.rejected, sequence=report.last)
        folded = self._core.fold(session.hello.proxy, report, self._clock())
        if folded.outcome == "overlap":
            self._metrics.reports_refused.labels("overlap").inc()
            self._note(session, "report_refused", reason="overlap", first=report.first, sequence=report.last)
        elif folded.outcome == "duplicate":
            self._metrics.reports_ignored.inc()
        else:
            self._metrics.reports_accepted.inc()
        if folded.outcome != "overlap":
            session.folded = max(session.folded, report.last)
        if folded.ack is not None:
            session.acknowledge(folded.ack)

    def _note(self, session: Session, event: str, **fields: Any) -> None:
        """One log line per stream per interval; the lines held back are counted in the next one."""
        now = time.monotonic()
        if now - session.logged_at < self._log_interval:
            session.suppressed += 1
            return
        session.log.warning(event, suppressed=session.suppressed, **fields)
        session.logged_at = now
        session.suppressed = 0
