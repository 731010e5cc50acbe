"""Destination benchmark: change-to-stream latency and memory of one replica under load.

One replica (a real ``python -m tether.destination`` process with the local source) on a real nats-server
serves 1,000 services x 10 endpoints to 2,000 concurrent Get streams (two per service) while workloads
register and deregister over NATS at a steady 100 changes/s, round-robin over the services. For every change
the latency is measured from publishing the registration to each of the service's two streams receiving the
matching add or remove (both ends timed in this process). Reports p50/p99/max, the replica's RSS and peak
RSS, as a table and as JSON.

    .venv/bin/python bench/destination/run.py [--services 1000] [--endpoints 10] [--streams 2000]
                                              [--rate 100] [--duration 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from tether.destination.model import WorkloadRegistration
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.natsserver import EmbeddedNats
from tether.shared.proto.destination.v1 import destination_pb2 as pb
from tether.shared.proto.destination.v1 import destination_pb2_grpc

TARGET_P99_MS = 100.0
TARGET_RSS_MB = 200.0
STREAMS_PER_CHANNEL = 250


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    latencies_ms = [x * 1000 for x in recorder.latencies]
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
        "latency_ms": {
            "p50": round(percentile(latencies_ms, 0.50), 2),
            "p99": round(percentile(latencies_ms, 0.99), 2),
            "max": round(max(latencies_ms, default=float("nan")), 2),
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
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
