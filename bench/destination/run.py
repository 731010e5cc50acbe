"""Destination benchmark: change-to-stream latency and memory of one replica under load.

One replica (a real ``python -m tether.destination`` process with the local source) on a real nats-server
serves 1,000 services x 10 endpoints to 2,000 concurrent Get streams (two per service) while workloads
register and deregister over NATS at a steady 100 changes/s, round-robin over the services. For every change
the latency is measured from publishing the registration to each of the service's two streams receiving the
matching add or remove (both ends timed in this process). Reports p50/p99/max, the replica's RSS and peak
RSS, as a table and as JSON.

Reference, measured in the same run once the replica has exited: the raw path a change travels without the
destination logic. This process puts the replica's own stored endpoint-set values (byte for byte, so about
the same sizes) round-robin over the same keys into a fresh JetStream KV bucket at the same rate, for
``--reference-duration`` seconds, and ``raw_watch.py``, a separate process under uvloop, receives them with
the ``tether.shared.bus`` KV watch a replica uses (values left undecoded); the latency is put -> watch
delivery. Its p50/p99/max are reported next to the service's with the ratio service / reference. The
reference has one watcher where the service fans out to two streams per change among 2,000; the targets
apply to the service only.

    .venv/bin/python bench/destination/run.py [--services 1000] [--endpoints 10] [--streams 2000]
                                              [--rate 100] [--duration 30] [--reference-duration 10]
                                              [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import msgspec

from tether.destination.model import WorkloadRegistration, service_key
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.natsserver import EmbeddedNats, free_port
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.destination.v1 import destination_pb2_grpc

TARGET_P99_MS = 100.0
TARGET_RSS_MB = 200.0
STREAMS_PER_CHANNEL = 250
REFERENCE_BUCKET = "bench_reference"


def ip_text(value: int) -> str:
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))


def write_registry(path: Path, services: int, endpoints: int) -> None:
    lines = ["services:"]
    for s in range(services):
        lines.append(
            f"  - namespace: bench\n    name: svc-{s}\n"
            "    ports: [{name: http, port: 80, target_port: 8080}]"
        )
        lines.append("    endpoints:")
        for e in range(endpoints):
            lines.append(
                f"      - {{address: 10.{s // 250}.{s % 250}.{e + 1}, labels: {{pod: svc-{s}-{e}}}}}"
            )
    path.write_text("\n".join(lines) + "\n")


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def http_ok(port: int, path: str) -> str | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
    except OSError:
        return None
    text = data.decode(errors="replace")
    return text.partition("\r\n\r\n")[2] if " 200 " in text.split("\r\n", 1)[0] else None


class Recorder:
    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, str], float] = {}
        self.latencies: list[float] = []
        self.initial = 0

    def seen(self, service: str, kind: str, ips: list[str]) -> None:
        now = time.monotonic()
        for ip in ips:
            sent = self.pending.get((service, ip, kind))
            if sent is not None:
                self.latencies.append(now - sent)


async def stream(
    stub: Any, service: str, recorder: Recorder, opened: asyncio.Event, counter: list[int]
) -> None:
    call = stub.Get(pb.GetDestination(authority=f"{service}.bench:80"))
    first = True
    async for update in call:
        kind = update.WhichOneof("update")
        if first:
            first = False
            counter[0] += 1
            if counter[0] == counter[1]:
                opened.set()
            continue
        if kind == "add" and update.add.addrs:
            recorder.seen(service, "add", [ip_text(a.addr.ip.ipv4) for a in update.add.addrs])
        elif kind == "remove":
            recorder.seen(service, "remove", [ip_text(a.ip.ipv4) for a in update.remove.addrs])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def latency_stats(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(latencies_ms, 0.50), 2),
        "p99": round(percentile(latencies_ms, 0.99), 2),
        "max": round(max(latencies_ms, default=float("nan")), 2),
    }


@dataclass
class RawResult:
    changes: int
    achieved_rate: float
    value_bytes_mean: float
    latencies_ms: list[float]


async def reference(nats_url: str, args: argparse.Namespace) -> RawResult:
    """The raw path without the destination logic: KV put here, KV watch in a separate process.

    The values are the replica's own stored endpoint sets, byte for byte, put round-robin over the same
    keys at the same rate, so the put -> watch delivery time is what NATS and a Python watch cost alone.
    """
    bus = await Bus.connect(nats_url, name="bench-reference")
    watcher: asyncio.subprocess.Process | None = None
    try:
        endpoints = await bus.kv(subjects.ENDPOINTS_BUCKET, create=False)
        values: list[tuple[str, bytes]] = []
        for s in range(args.services):
            key = service_key("bench", f"svc-{s}")
            entry = await endpoints.get(key, msgspec.Raw)
            if entry is None or entry.value is None:
                raise RuntimeError(f"the replica left no value for {key}")
            values.append((key, bytes(entry.value)))
        raw_kv = await bus.kv(REFERENCE_BUCKET)
        watcher = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("raw_watch.py")),
            nats_url,
            REFERENCE_BUCKET,
            stdout=asyncio.subprocess.PIPE,
        )
        assert watcher.stdout is not None
        received: dict[int, float] = {}
        synced = asyncio.Event()

        async def read_watcher(stdout: asyncio.StreamReader) -> None:
            async for line in stdout:
                fields = line.split()
                if fields == [b"synced"]:
                    synced.set()
                elif len(fields) == 3 and fields[0] == b"rev":
                    received[int(fields[1])] = float(fields[2])

        reader = asyncio.create_task(read_watcher(watcher.stdout))
        try:
            await asyncio.wait_for(synced.wait(), 30)
        except TimeoutError:
            raise RuntimeError("the reference watcher did not start") from None
        sent: dict[int, float] = {}
        changes = int(args.rate * args.reference_duration)
        byte_count = 0
        begin = time.monotonic()
        for n in range(changes):
            delay = begin + n / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key, value = values[n % len(values)]
            byte_count += len(value)
            started = time.monotonic()
            sent[await raw_kv.put_raw(key, value)] = started
        achieved_rate = changes / (time.monotonic() - begin)
        settle = time.monotonic()
        while not sent.keys() <= received.keys() and time.monotonic() - settle < 10:
            await asyncio.sleep(0.05)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        if watcher is not None and watcher.returncode is None:
            watcher.terminate()
            await watcher.wait()
        await bus.close()
    return RawResult(
        changes=changes,
        achieved_rate=achieved_rate,
        value_bytes_mean=byte_count / changes if changes else 0.0,
        latencies_ms=[(received[r] - t) * 1000 for r, t in sent.items() if r in received],
    )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tether-bench-destination-"))
    registry = workdir / "registry.yaml"
    write_registry(registry, args.services, args.endpoints)
    async with EmbeddedNats(workdir / "nats") as nats_server:
        grpc_port, admin_port = free_port(), free_port()
        env = {
            **os.environ,
            "TETHER_NATS_URL": nats_server.url,
            "TETHER_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
            "TETHER_LOG_FORMAT": "json",
            "TETHER_LOG_LEVEL": "warning",
            "TETHER_DESTINATION_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
            "TETHER_DESTINATION_MAX_STREAMS_PER_PEER": str(args.streams * 2),
        }
        log = (workdir / "replica.log").open("wb")
        replica = subprocess.Popen(
            [sys.executable, "-m", "tether.destination"], env=env, stdout=log, stderr=log
        )
        channels: list[grpc.aio.Channel] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            started = time.monotonic()
            while True:
                body = await http_ok(admin_port, "/metrics")
                if body and "tether_destination_leader 1.0" in body and replica.poll() is None:
                    break
                if replica.poll() is not None or time.monotonic() - started > 60:
                    raise RuntimeError(f"replica did not start; see {workdir / 'replica.log'}")
                await asyncio.sleep(0.1)
            bus = await Bus.connect(nats_server.url, name="bench")
            while True:  # wait until the leader wrote every service
                body = await http_ok(admin_port, "/metrics") or ""
                written = next(
                    (
                        line
                        for line in body.splitlines()
                        if line.startswith('tether_destination_writes_total{outcome="written"}')
                    ),
                    " 0",
                )
                if float(written.rsplit(" ", 1)[1]) >= args.services:
                    break
                await asyncio.sleep(0.1)
            startup = time.monotonic() - started

            recorder = Recorder()
            opened = asyncio.Event()
            counter = [0, args.streams]
            for i in range(args.streams):
                if i % STREAMS_PER_CHANNEL == 0:
                    channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}"))
                stub = destination_pb2_grpc.DestinationStub(channels[-1])
                service = f"svc-{i % args.services}"
                tasks.append(asyncio.create_task(stream(stub, service, recorder, opened, counter)))
            open_started = time.monotonic()
            while not opened.is_set():
                failed = [t for t in tasks if t.done()]
                if failed:
                    raise RuntimeError(
                        f"{len(failed)} streams ended early ({counter[0]} opened): {failed[0].exception()!r}"
                    )
                if time.monotonic() - open_started > 120:
                    raise RuntimeError(f"only {counter[0]} of {args.streams} streams got their first message")
                await asyncio.sleep(0.1)
            open_seconds = time.monotonic() - open_started
            idle_rss, _ = rss_mb(replica.pid)

            registered: dict[int, str] = {}
            changes = int(args.rate * args.duration)
            begin = time.monotonic()
            for n in range(changes):
                due = begin + n / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                s = n % args.services
                service = f"svc-{s}"
                if s in registered:
                    ip = registered.pop(s)
                    kind, deregister = "remove", True
                else:
                    ip = f"10.200.{(n // 250) % 250}.{n % 250 + 1}"
                    registered[s] = ip
                    kind, deregister = "add", False
                recorder.pending[(service, ip, kind)] = time.monotonic()
                await bus.publish(
                    subjects.REGISTRY_REGISTER,
                    WorkloadRegistration(
                        namespace="bench",
                        service=service,
                        instance=f"bench-{s}-{ip}",
                        address=ip,
                        port=8080,
                        ttl_seconds=3600,
                        deregister=deregister,
                    ),
                )
            achieved_rate = changes / (time.monotonic() - begin)
            expected = changes * args.streams // args.services
            settle = time.monotonic()
            while len(recorder.latencies) < expected and time.monotonic() - settle < 10:
                await asyncio.sleep(0.05)
            rss, peak = rss_mb(replica.pid)
            await bus.close()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for channel in channels:
                await channel.close()
            replica.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                replica.wait(10)
            log.close()
        # The replica has exited, so the reference has both cores as the service phase had them.
        raw = await reference(nats_server.url, args)

    latencies_ms = [x * 1000 for x in recorder.latencies]
    raw_ms = raw.latencies_ms
    service_stats, raw_stats = latency_stats(latencies_ms), latency_stats(raw_ms)
    return {
        "cores": os.cpu_count(),
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "streams": args.streams,
        "target_rate_per_s": args.rate,
        "achieved_rate_per_s": round(achieved_rate, 1),
        "changes": changes,
        "deliveries_expected": expected,
        "deliveries_measured": len(latencies_ms),
        "latency_ms": service_stats,
        "reference": {
            "path": "JetStream KV put -> KV watch in a separate process (no destination logic)",
            "changes": raw.changes,
            "achieved_rate_per_s": round(raw.achieved_rate, 1),
            "deliveries_measured": len(raw_ms),
            "value_bytes_mean": round(raw.value_bytes_mean, 1),
            "latency_ms": raw_stats,
        },
        "service_over_reference": {
            key: round(service_stats[key] / raw_stats[key], 1) if raw_stats[key] > 0 else None
            for key in ("p50", "p99", "max")
        },
        "replica_rss_mb": {
            "idle_with_streams": round(idle_rss, 1),
            "end": round(rss, 1),
            "peak": round(peak, 1),
        },
        "startup_seconds": round(startup, 2),
        "streams_open_seconds": round(open_seconds, 2),
        "targets": {"p99_ms": TARGET_P99_MS, "rss_mb": TARGET_RSS_MB},
        "meets_targets": percentile(latencies_ms, 0.99) < TARGET_P99_MS and peak < TARGET_RSS_MB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument(
        "--reference-duration", type=float, default=10.0, help="seconds of the raw KV reference"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    latency, rss = result["latency_ms"], result["replica_rss_mb"]
    rows = [
        ("cores", result["cores"]),
        ("services x endpoints", f"{result['services']} x {result['endpoints_per_service']}"),
        ("concurrent Get streams", result["streams"]),
        (
            "changes/s (target / achieved)",
            f"{result['target_rate_per_s']:g} / {result['achieved_rate_per_s']:g}",
        ),
        (
            "deliveries measured / expected",
            f"{result['deliveries_measured']} / {result['deliveries_expected']}",
        ),
        ("change-to-stream p50 ms", latency["p50"]),
        (f"change-to-stream p99 ms (target < {TARGET_P99_MS:g})", latency["p99"]),
        ("change-to-stream max ms", latency["max"]),
        ("replica RSS MB (streams open / end)", f"{rss['idle_with_streams']} / {rss['end']}"),
        (f"replica peak RSS MB (target < {TARGET_RSS_MB:g})", rss["peak"]),
        ("meets targets", result["meets_targets"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    raw, ratio = result["reference"], result["service_over_reference"]
    print(
        f"\nreference: {raw['path']}; {raw['changes']} changes at {raw['achieved_rate_per_s']:g}/s, "
        f"{raw['deliveries_measured']} measured, values {raw['value_bytes_mean']:g} B mean"
    )
    header = ("latency ms", "service", "raw reference", "service / raw")
    print(f"{header[0]:<12}{header[1]:>10}{header[2]:>16}{header[3]:>16}")
    for key in ("p50", "p99", "max"):
        factor = "n/a" if ratio[key] is None else f"{ratio[key]:g}x"
        print(f"{key:<12}{latency[key]:>10}{raw['latency_ms'][key]:>16}{factor:>16}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
