"""A test-side Report client standing in for proxies (tests and bench/telemetry), and report builders.

Speaks ``Telemetry/Report`` with grpcio as a proxy does: a hello, then reports numbered from 1; it keeps
every report not yet acknowledged and, on :meth:`ReportClient.resend_unacknowledged` (after a reconnect to
another replica), sends them again. Nothing in a production code path imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from tether.shared.certmanager import read_token_file
from tether.shared.grpc_certify import GrpcCertify
from tether.shared.grpctls import grpc_channel_credentials
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.keygen import make_key_and_csr
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.proto.telemetry.v1 import telemetry_pb2_grpc
from tether.shared.telemetry_scopes import HISTOGRAM_LENGTH, LATENCY_BUCKETS_MS
from tether.shared.tls import KeyPair

#: (status_code, grpc_status, success, latencies in ms)
Responses = list[tuple[int, int, bool, list[float]]]


def bucket_index(latency_ms: float) -> int:
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return index
    return len(LATENCY_BUCKETS_MS)


def response(status: int, grpc_status: int, success: bool, latencies: list[float]) -> pb.ResponseStats:
    buckets = [0] * HISTOGRAM_LENGTH
    for latency in latencies:
        buckets[bucket_index(latency)] += 1
    return pb.ResponseStats(
        status_code=status,
        grpc_status=grpc_status,
        success=success,
        count=len(latencies),
        latency_buckets=buckets,
        latency_sum_ms=sum(latencies),
    )


def scope(
    direction: pb.Direction, labels: dict[str, str], responses: Responses, requests: int | None = None
) -> pb.ScopeStats:
    stats = [response(*item) for item in responses]
    total = sum(item.count for item in stats) if requests is None else requests
    return pb.ScopeStats(direction=direction, labels=labels, requests=total, responses=stats)


def interval_report(
    first: int, sequence: int, scopes: list[pb.ScopeStats], start: float = 0.0, end: float = 0.0
) -> pb.IntervalReport:
    report = pb.IntervalReport(sequence=sequence, first_sequence=first, scopes=scopes)
    report.start.FromNanoseconds(int(start * 1e9))
    report.end.FromNanoseconds(int(end * 1e9))
    return report


async def certify(
    identity: WorkloadIdentity, identity_addr: str, anchors: bytes, token_file: str, server_name: str
) -> KeyPair:
    """A certificate for ``identity`` from the real identity service, as a proxy gets one."""
    import ssl

    key = await asyncio.to_thread(make_key_and_csr, identity)
    client = GrpcCertify(identity_addr, anchors, server_name)
    try:
        issued = await client(identity, read_token_file(token_file)(), key.csr_der)
    finally:
        await client.close()
    chain = [issued.leaf_der, *issued.intermediates_der]
    return KeyPair(key.key_pem, "".join(ssl.DER_cert_to_PEM_cert(der) for der in chain).encode())


@dataclass
class ReportClient:
    """One simulated proxy's Report stream."""

    namespace: str
    pod: str
    identity: str
    labels: dict[str, str] = field(default_factory=dict)
    #: ``ProxyHello.instance``: random per simulated proxy process ("" behaves as a proxy predating it).
    instance: str = field(default_factory=lambda: secrets.token_hex(8))
    sequence: int = 0
    acked: int = 0
    unacked: dict[int, pb.IntervalReport] = field(default_factory=dict)
    acks: list[int] = field(default_factory=list)
    _channel: Any = None
    _call: Any = None
    _reader: asyncio.Task[None] | None = None
    status: grpc.StatusCode | None = None
    details: str = ""
    acked_event: asyncio.Event = field(default_factory=asyncio.Event)
    #: Every tap subscription the server sent, in order; ``on_subscription`` (if set) is called with each.
    subscriptions: list[pb.TapSubscription] = field(default_factory=list)
    on_subscription: Callable[[pb.TapSubscription], None] | None = None

    def hello(self) -> pb.ReportRequest:
        return pb.ReportRequest(
            hello=pb.ProxyHello(
                namespace=self.namespace,
                pod=self.pod,
                labels=self.labels,
                identity=self.identity,
                proxy_version="test",
                instance=self.instance,
            )
        )

    async def connect(
        self,
        target: str,
        *,
        anchors: bytes | None = None,
        pair: KeyPair | None = None,
        server_name: str = "",
        channel: Any = None,
        hello: pb.ReportRequest | None = None,
    ) -> None:
        await self.close()
        if channel is None:
            if anchors is None:
                channel = grpc.aio.insecure_channel(target)
            else:
                options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
                channel = grpc.aio.secure_channel(
                    target, grpc_channel_credentials(anchors, pair), options=options
                )
            self._channel = channel
        self.status, self.details = None, ""
        self._call = telemetry_pb2_grpc.TelemetryStub(channel).Report()
        await self._call.write(hello or self.hello())
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        call = self._call
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                if message.WhichOneof("message") == "ack":
                    sequence = message.ack.sequence
                    self.acks.append(sequence)
                    self.acked = max(self.acked, sequence)
                    for done in [s for s in self.unacked if s <= sequence]:
                        del self.unacked[done]
                    self.acked_event.set()
                elif message.WhichOneof("message") == "tap_subscription":
                    self.subscriptions.append(message.tap_subscription)
                    if self.on_subscription is not None:
                        self.on_subscription(message.tap_subscription)
        except grpc.aio.AioRpcError as exc:
            self.status, self.details = exc.code(), exc.details() or ""
            return
        with contextlib.suppress(Exception):
            self.status = await call.code()

    async def send(self, scopes: list[pb.ScopeStats], start: float = 0.0, end: float = 0.0) -> int:
        """The next report, with its own range ``[n, n]``; kept until acknowledged."""
        self.sequence += 1
        report = interval_report(self.sequence, self.sequence, scopes, start, end)
        self.unacked[self.sequence] = report
        await self.write(report)
        return self.sequence

    async def write(self, report: pb.IntervalReport) -> None:
        await self._call.write(pb.ReportRequest(report=report))

    async def send_tap(self, event: pb.TapEvent) -> None:
        await self._call.write(pb.ReportRequest(tap=event))

    async def resend_unacknowledged(self) -> None:
        for sequence in sorted(self.unacked):
            await self.write(self.unacked[sequence])

    async def wait_acked(self, sequence: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.acked < sequence:
                if self._reader is not None and self._reader.done():
                    raise AssertionError(
                        f"stream ended ({self.status}: {self.details}) before ack {sequence}"
                    )
                self.acked_event.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self.acked_event.wait()

    async def wait_ended(self, timeout: float = 10.0) -> grpc.StatusCode | None:
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.status

    async def close(self) -> None:
        if self._call is not None:
            with contextlib.suppress(Exception):
                await self._call.done_writing()
            self._call.cancel()
            self._call = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
