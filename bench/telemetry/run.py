"""Telemetry benchmark: one replica ingesting reports of 1,000 simulated proxies, 50 scopes each, every 10 s.

One replica (a real ``python -m tether.telemetry`` process, 10 s rollup interval) on a real nats-server;
``--clients`` worker processes (this file with ``--worker``) open ``--proxies`` Report streams between them
(many streams per channel) and each stream sends a 50-scope report every ``--interval`` seconds, phases
spread evenly, numbered like a proxy's. After ``--warmup`` seconds the replica's CPU (utime + stime from
/proc) and RSS are measured for ``--duration`` seconds; reports/s is what the replica acknowledged as
accepted (its ``tether_telemetry_reports_accepted_total``).

Reference, measured in the same run: this process decodes the same serialized reports (protobuf
``ReportRequest.FromString``), as many as the replica accepted, and reports the CPU that costs per second of
the same rate: the floor any Python telemetry service pays. The replica runs with ``--identity-disabled``
(plaintext): mTLS costs once per connection, not per report. Targets: under 0.5 core, RSS < 300 MB.

    .venv/bin/python bench/telemetry/run.py [--proxies 1000] [--scopes 50] [--interval 10] [--clients 2]
                                            [--warmup 12] [--duration 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from tether.proxy.metrics import MetricsRegistry, dst_labels
from tether.proxy.reportstate import ReportState
from tether.shared.natsserver import EmbeddedNats, free_port
from tether.shared.proto.telemetry.v1 import telemetry_pb2 as pb
from tether.shared.proto.telemetry.v1 import telemetry_pb2_grpc
from tether.telemetry.testing import interval_report, scope

TARGET_CORES = 0.5
TARGET_RSS_MB = 300.0
STREAMS_PER_CHANNEL = 50


def scopes(proxy: int, count: int) -> list[pb.ScopeStats]:
    result = []
    for n in range(count):
        direction = pb.DIRECTION_INBOUND if n % 2 else pb.DIRECTION_OUTBOUND
        labels = {"authority": f"svc-{(proxy + n) % 200}.bench.svc.cluster.local:80", "tls": "true"}
        labels["client_id" if n % 2 else "dst_name"] = f"peer-{n}"
        result.append(scope(direction, labels, [(200, 0, True, [3.0] * 20), (503, -1, False, [120.0] * 2)]))
    return result


async def worker(target: str, first: int, count: int, scope_count: int, interval: float) -> None:
    channels = [
        grpc.aio.insecure_channel(target)
        for _ in range((count + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]

    async def proxy(index: int) -> None:
        number = first + index
        stub = telemetry_pb2_grpc.TelemetryStub(channels[index // STREAMS_PER_CHANNEL])
        call = stub.Report()
        labels = {"deployment": f"app-{number % 100}"}
        identity = f"app-{number % 100}.bench.serviceaccount.identity.cluster.local"
        hello = pb.ProxyHello(namespace="bench", pod=f"app-{number}", labels=labels, identity=identity)
        await call.write(pb.ReportRequest(hello=hello))
        body = scopes(number, scope_count)

        async def drain() -> None:
            while await call.read() is not grpc.aio.EOF:
                pass

        reader = asyncio.create_task(drain())
        await asyncio.sleep(interval * index / count)
        sequence = 0
        while not reader.done():
            sequence += 1
            now = time.time()
            await call.write(
                pb.ReportRequest(report=interval_report(sequence, sequence, body, now - interval, now))
            )
            await asyncio.sleep(interval)

    await asyncio.gather(*(proxy(i) for i in range(count)), return_exceptions=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


async def accepted(admin_port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = (await reader.read()).decode()
    writer.close()
    for line in data.splitlines():
        if line.startswith("tether_telemetry_reports_accepted_total "):
            return float(line.split()[1])
    return 0.0


def reference(count: int, scope_count: int) -> float:
    """CPU seconds to decode ``count`` reports of ``scope_count`` scopes (this process)."""
    payloads = [
        pb.ReportRequest(report=interval_report(1, 1, scopes(n, scope_count))).SerializeToString()
        for n in range(100)
    ]
    started = time.process_time()
    for n in range(count):
        pb.ReportRequest.FromString(payloads[n % 100])
    return time.process_time() - started


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        async with EmbeddedNats(Path(workdir) / "nats") as nats:
            grpc_port, admin_port = free_port(), free_port()
            env = {
                **os.environ,
                "TETHER_NATS_URL": nats.url,
                "TETHER_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
                "TETHER_TELEMETRY_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
                "TETHER_TELEMETRY_IDENTITY_DISABLED": "true",
                "TETHER_TELEMETRY_ROLLUP_INTERVAL": str(args.interval),
                "TETHER_LOG_LEVEL": "warning",
                "TETHER_LOG_FORMAT": "json",
            }
            log = open(Path(workdir) / "telemetry.log", "wb")  # noqa: SIM115
            replica = subprocess.Popen(
                [sys.executable, "-m", "tether.telemetry"], env=env, stdout=log, stderr=log
            )
            await asyncio.sleep(2.0)
            per = args.proxies // args.clients
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        f"127.0.0.1:{grpc_port}",
                        str(i * per),
                        str(per),
                        str(args.scopes),
                        str(args.interval),
                    ]
                )
                for i in range(args.clients)
            ]
            try:
                await asyncio.sleep(args.warmup)
                cpu0, reports0, t0 = cpu_seconds(replica.pid), await accepted(admin_port), time.monotonic()
                await asyncio.sleep(args.duration)
                cpu1, reports1, t1 = cpu_seconds(replica.pid), await accepted(admin_port), time.monotonic()
                rss, peak = rss_mb(replica.pid)
            finally:
                for process in [*workers, replica]:
                    process.terminate()
                for process in [*workers, replica]:
                    process.wait(10)
                log.close()
    elapsed = t1 - t0
    rate = (reports1 - reports0) / elapsed
    cores = (cpu1 - cpu0) / elapsed
    decode = reference(int(reports1 - reports0), args.scopes) / elapsed
    return {
        "cores_available": os.cpu_count(),
        "proxies": args.proxies,
        "scopes_per_report": args.scopes,
        "interval_s": args.interval,
        "measured_s": round(elapsed, 1),
        "reports_per_s": round(rate, 1),
        "expected_reports_per_s": round(args.proxies / args.interval, 1),
        "replica_cpu_cores": round(cores, 3),
        "replica_rss_mb": round(rss, 1),
        "replica_peak_rss_mb": round(peak, 1),
        "reference_decode_cpu_cores": round(decode, 3),
        "ratio_service_to_reference": round(cores / decode, 1) if decode else None,
        "targets": {"cpu_cores": TARGET_CORES, "rss_mb": TARGET_RSS_MB},
        "meets_targets": cores < TARGET_CORES and peak < TARGET_RSS_MB,
    }


def proxy_report_cost(scopes: int, reports: int = 1000) -> dict[str, Any]:
    """The proxy's own cost of reporting: CPU per report (snapshot and delta of its counters and the
    protobuf encoding) with ``scopes`` scopes that all changed, on the proxy's real modules, in-process."""
    registry = MetricsRegistry(idle_timeout=3600.0)
    handles = [
        registry.route(
            "outbound",
            f"svc-{index}.ns.svc.cluster.local:8080",
            dst_labels(
                namespace="ns",
                service=f"svc-{index}",
                pod=f"svc-{index}-0",
                workload_kind="deployment",
                workload_name=f"svc-{index}",
            ),
            "true",
        )
        for index in range(scopes)
    ]
    state = ReportState(0.0, max_scopes=5000)
    size = 0
    traffic = 0.0
    started = time.process_time()
    for number in range(reports):
        mark = time.process_time()
        for handle in handles:  # one request per scope per interval: every scope changes
            handle.request()
            handle.response(200, 0, 3.0)
        traffic += time.process_time() - mark
        state.take(handles)
        report = state.build(float(number))
        if report is not None:
            size = len(report.to_proto().SerializeToString())
            state.acknowledge(report.sequence)
    spent = time.process_time() - started - traffic
    return {"scopes": scopes, "cpu_us_per_report": round(spent / reports * 1e6, 1), "report_bytes": size}


def print_table(result: dict[str, Any]) -> None:
    rows = [
        (
            "reports/s (accepted / expected)",
            f"{result['reports_per_s']} / {result['expected_reports_per_s']}",
        ),
        ("replica CPU (cores)", f"{result['replica_cpu_cores']}  (target < {TARGET_CORES})"),
        (
            "replica RSS / peak (MB)",
            f"{result['replica_rss_mb']} / {result['replica_peak_rss_mb']}  (target < {TARGET_RSS_MB:g})",
        ),
        ("reference: decode only (cores)", str(result["reference_decode_cpu_cores"])),
        ("service / reference", str(result["ratio_service_to_reference"])),
        (
            "proxy: CPU per report",
            "{cpu_us_per_report} us with {scopes} scopes ({report_bytes} bytes)".format(
                **result["proxy_report_cost"]
            ),
        ),
        ("cores on this machine", str(result["cores_available"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        target, first, count, scope_count, interval = sys.argv[2:7]
        import uvloop

        uvloop.run(worker(target, int(first), int(count), int(scope_count), float(interval)))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--scopes", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=12.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--json", default="")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    outcome["proxy_report_cost"] = proxy_report_cost(arguments.scopes)
    print_table(outcome)
    print(json.dumps(outcome, indent=2))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(outcome, indent=2) + "\n")
