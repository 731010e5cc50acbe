"""Identity service throughput: certificates per second over real gRPC + TLS against one replica, at
concurrency 1 and 32, compared with the raw ceiling (CSR parse + checks + token verify + leaf build + sign,
in a loop, no RPC).

The server runs in its own process as in production: under uvloop, with production JSON logging at level
info (one audit line per issuance, written to a file) and its metrics. Rate limits are raised so the
benchmark measures issuance, not refusals; the output says so.

Load comes from h2load (Debian package nghttp2-client), a C HTTP/2 client: over TLS 1.3 with ALPN h2 it
posts a pre-encoded gRPC Certify request (the 5-byte gRPC frame header, then the protobuf) to
/tether.identity.v1.Identity/Certify on one connection, 1 or 32 streams at a time, so the server does all
its per-request work while the load generator takes little of the 2 cores. h2load does not read gRPC
status (a gRPC error is still HTTP 200), so every run is checked on the server side: the issuance counter
must grow by exactly the number of requests completed, with no rejections, and the audit log must hold
one `certificate_issued` line per issuance. h2load has no CA option, so it does not authenticate the
server; before timing, a grpc.aio client that verifies the server against the trust anchors makes a
Certify call and the leaf is checked. Every h2load request carries the same CSR and token: the server
still parses, checks and verifies each, and signs a fresh leaf with a fresh serial.
The Python grpc.aio client (one channel, sharing the cores with the server) is measured too, for
comparison with earlier runs.

    .venv/bin/python bench/identity/run.py [--seconds 5] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from tether.identity.bootstrap import bootstrap
from tether.identity.ca import IssuerFiles, load_issuer, parse_trust_anchors
from tether.identity.certifier import CertifierSettings
from tether.identity.csr import validate_csr
from tether.identity.issuance import issue_leaf
from tether.identity.observe import CertifyReporter, IdentityMetrics
from tether.identity.ratelimit import BucketPolicy
from tether.identity.server import IdentityServer, ServerSettings
from tether.identity.tokens.local import LocalTokenVerifier, load_token_key, mint_token
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc

TRUST_DOMAIN = "cluster.local"
WORKLOADS = 64


def _requests(ca_dir: Path) -> list[tuple[WorkloadIdentity, bytes, bytes]]:
    """One (identity, token, CSR) per simulated proxy, generated before timing starts."""
    key = load_token_key((ca_dir / "token-signing.key").read_bytes())
    out = []
    for index in range(WORKLOADS):
        identity = WorkloadIdentity(f"sa-{index}", "bench", TRUST_DOMAIN)
        proxy_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(identity.dns_name), x509.UniformResourceIdentifier(identity.spiffe_id)]
                ),
                critical=False,
            )
            .sign(proxy_key, hashes.SHA256())
        )
        token = mint_token(key, identity, datetime.now(UTC), timedelta(hours=1))
        out.append((identity, token, csr.public_bytes(serialization.Encoding.DER)))
    return out


def raw_ceiling(ca_dir: Path, seconds: float) -> float:
    now = datetime.now(UTC)
    anchors = parse_trust_anchors((ca_dir / "ca.crt").read_bytes())
    issuer = load_issuer(
        anchors, (ca_dir / "issuer.crt").read_bytes(), (ca_dir / "issuer.key").read_bytes(), now, TRUST_DOMAIN
    )
    verifier = LocalTokenVerifier(load_token_key((ca_dir / "token-signing.key").read_bytes()), TRUST_DOMAIN)
    requests = _requests(ca_dir)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for identity, token, csr in requests:
            now = datetime.now(UTC)
            validated = validate_csr(csr, identity)
            assert verifier.verify_now(token, now) == identity
            issue_leaf(issuer, validated.public_key, identity, now)
        done += len(requests)
    return done / (time.perf_counter() - started)


SERVING_NAME = f"identity.tether.serviceaccount.identity.{TRUST_DOMAIN}"
CERTIFY_PATH = "/tether.identity.v1.Identity/Certify"
# Production defaults are 2/s per peer address and 5/s per identity (CertifierSettings); all load here
# comes from one address, so both limits are lifted to let issuance, not refusals, be measured.
BENCH_LIMIT = BucketPolicy(rate=1e9, burst=1e9)
CONCURRENCIES = (1, 32)


def _serve(ca_dir: str, log_path: str, port_queue: Any, control: Any) -> None:
    """The server process: one replica as production runs it (uvloop, JSON audit log at info)."""
    import uvloop

    from tether.shared.logging import configure
    from tether.shared.testing import RecordingSupervisor

    async def main() -> None:
        directory = Path(ca_dir)
        registry = CollectorRegistry()
        metrics = IdentityMetrics(registry)
        server = IdentityServer(
            CertifierSettings(trust_domain=TRUST_DOMAIN, identity_limit=BENCH_LIMIT, peer_limit=BENCH_LIMIT),
            ServerSettings(
                listen="127.0.0.1:0",
                files=IssuerFiles(directory / "ca.crt", directory / "issuer.crt", directory / "issuer.key"),
            ),
            LocalTokenVerifier(load_token_key((directory / "token-signing.key").read_bytes()), TRUST_DOMAIN),
            CertifyReporter("bench", metrics, None),
            metrics,
        )
        port_queue.put(await server.start(RecordingSupervisor().spawn))
        while True:
            # Polled, so the control pipe never blocks the event loop.
            if control.poll():
                if control.recv() == "stop":
                    break
                rejected = sum(
                    sample.value
                    for metric in registry.collect()
                    if metric.name == "tether_identity_certify_rejections"
                    for sample in metric.samples
                    if sample.name.endswith("_total")
                )
                issued = registry.get_sample_value("tether_identity_certificates_issued_total") or 0.0
                control.send((int(issued), int(rejected)))
            await asyncio.sleep(0.05)
        await server.stop(0)

    with open(log_path, "w") as log_file:
        configure(
            service="identity", instance="bench", version="bench", fmt="json", level="info", stream=log_file
        )
        uvloop.run(main())


def _channel(port: int, ca_dir: Path) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(root_certificates=(ca_dir / "ca.crt").read_bytes()),
        options=[("grpc.ssl_target_name_override", SERVING_NAME)],
    )


async def _check_one_certify(port: int, ca_dir: Path) -> None:
    """A verifying gRPC client gets a leaf; it must name the workload and be signed by the issuer."""
    identity, token, csr = _requests(ca_dir)[0]
    async with _channel(port, ca_dir) as channel:
        response = await identity_pb2_grpc.IdentityStub(channel).Certify(
            identity_pb2.CertifyRequest(
                identity=identity.dns_name, token=token, certificate_signing_request=csr
            ),
            timeout=10,
        )
    leaf = x509.load_der_x509_certificate(response.leaf_certificate)
    issuer = x509.load_der_x509_certificate(response.intermediate_certificates[0])
    leaf.verify_directly_issued_by(issuer)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if names.get_values_for_type(x509.DNSName) != [identity.dns_name]:
        raise SystemExit("benchmark check failed: the leaf does not name the requesting workload")


async def _python_client_rate(port: int, ca_dir: Path, concurrency: int, seconds: float) -> tuple[int, float]:
    requests = _requests(ca_dir)
    messages = [
        identity_pb2.CertifyRequest(identity=i.dns_name, token=t, certificate_signing_request=c)
        for i, t, c in requests
    ]
    async with _channel(port, ca_dir) as channel:
        stub = identity_pb2_grpc.IdentityStub(channel)
        await stub.Certify(messages[0], timeout=10)  # handshake outside the timing
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() < deadline:
                await stub.Certify(messages[index % len(messages)], timeout=10)
                done += 1
                index += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        return done, time.perf_counter() - started


def _grpc_body(ca_dir: Path) -> bytes:
    """One Certify request in gRPC's length-prefixed framing (uncompressed), as h2load posts it."""
    identity, token, csr = _requests(ca_dir)[1]
    message = identity_pb2.CertifyRequest(
        identity=identity.dns_name, token=token, certificate_signing_request=csr
    ).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _h2load(port: int, body: Path, streams: int, count: int) -> tuple[int, float, float]:
    """Sends `count` Certify requests on one TLS connection, `streams` at a time; returns the number
    completed, the elapsed seconds and h2load's own CPU seconds."""
    command = [
        "h2load", "-n", str(count), "-c", "1", "-m", str(streams), "-t", "1",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
        f"https://127.0.0.1:{port}{CERTIFY_PATH}",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "Application protocol: h2" not in output or "TLS Protocol: TLSv1.3" not in output:
        raise SystemExit(f"h2load did not speak h2 over TLS 1.3:\n{output}")
    finished = re.search(r"finished in ([\d.]+)(ms|s),", output)
    succeeded = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", output)
    if finished is None or succeeded is None:
        raise SystemExit(f"cannot read h2load output:\n{output}")
    elapsed = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return int(succeeded[1]), elapsed, cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Server:
    def __init__(self, ca_dir: Path, log_path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        port_queue = context.Queue()
        self._control, remote = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(str(ca_dir), str(log_path), port_queue, remote), daemon=True
        )
        self._process.start()
        self.port: int = port_queue.get(timeout=30)

    def counts(self) -> tuple[int, int]:
        """(certificates issued, requests rejected) so far."""
        self._control.send("stats")
        issued, rejected = self._control.recv()
        return int(issued), int(rejected)

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self._process.pid or 0)

    def stop(self) -> None:
        self._control.send("stop")
        self._process.join(10)


def _measure(server: _Server, send: Any) -> dict[str, Any]:
    """Runs `send() -> (completed, elapsed, client_cpu)` and checks every request got a certificate."""
    issued_before, rejected_before = server.counts()
    cpu_before = server.cpu_seconds()
    completed, elapsed, client_cpu = send()
    server_cpu = server.cpu_seconds() - cpu_before
    issued_after, rejected_after = server.counts()
    issued, rejected = issued_after - issued_before, rejected_after - rejected_before
    if issued != completed or rejected:
        raise SystemExit(
            f"benchmark check failed: {completed} completed, {issued} issued, {rejected} rejected"
        )
    rate = completed / elapsed
    return {
        "requests": completed,
        "certs_per_second": round(rate, 1),
        "server_cpu_cores": round(server_cpu / elapsed, 2),
        "server_cpu_us_per_cert": round(server_cpu / completed * 1e6),
        "client_cpu_us_per_cert": round(client_cpu / completed * 1e6) if client_cpu is not None else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--json-out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tether-bench-identity-") as temporary:
        ca_dir = Path(temporary)
        bootstrap(ca_dir, datetime.now(UTC), TRUST_DOMAIN)
        ceiling = raw_ceiling(ca_dir, args.seconds)
        body = ca_dir / "certify-request.grpc"
        body.write_bytes(_grpc_body(ca_dir))
        log_path = ca_dir / "identity.log"
        server = _Server(ca_dir, log_path)
        results: dict[str, dict[str, Any]] = {}
        try:
            asyncio.run(_check_one_certify(server.port, ca_dir))
            for concurrency in CONCURRENCIES:
                # A short run sizes the timed one (and warms the server); every request is counted.
                probe = _measure(server, lambda c=concurrency: _h2load(server.port, body, c, 200 * c))
                count = max(100, int(probe["certs_per_second"] * args.seconds))
                results[f"h2load_concurrency_{concurrency}"] = _measure(
                    server, lambda c=concurrency, n=count: _h2load(server.port, body, c, n)
                )
            for concurrency in CONCURRENCIES:

                def python_client(c: int = concurrency) -> tuple[int, float, None]:
                    done, elapsed = asyncio.run(_python_client_rate(server.port, ca_dir, c, args.seconds))
                    return done + 1, elapsed, None  # +1: the untimed handshake call

                result = _measure(server, python_client)
                result["certs_per_second"] = round((result["requests"] - 1) / args.seconds, 1)
                results[f"python_grpc_aio_concurrency_{concurrency}"] = result
            issued_total, _ = server.counts()
        finally:
            server.stop()
        audit_lines = sum(1 for line in log_path.read_text().splitlines() if '"certificate_issued"' in line)
        if audit_lines != issued_total:
            raise SystemExit(f"benchmark check failed: {issued_total} issued, {audit_lines} audit lines")
    for result in results.values():
        result["ratio_to_raw"] = round(result["certs_per_second"] / ceiling, 3)
    best = max(results[f"h2load_concurrency_{c}"]["certs_per_second"] for c in CONCURRENCIES)
    report = {
        "benchmark": "identity.certify",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "server": "one replica process, uvloop, JSON audit log at info, TLS 1.3, ECDSA P-256",
        "rate_limits": {
            "per_peer": "1e9/s burst 1e9",
            "per_identity": "1e9/s burst 1e9",
            "note": "raised for the benchmark",
        },
        "seconds_per_measurement": args.seconds,
        "raw_ceiling_certs_per_second": round(ceiling, 1),
        "results": results,
        "checks": {"audit_lines": audit_lines, "all_requests_issued": True, "rejections": 0},
        "targets": {"certs_per_second": 2000, "ratio_to_raw": 0.40},
        "targets_met": {"certs_per_second": best >= 2000, "ratio_to_raw": best / ceiling >= 0.40},
    }
    print(f"identity Certify throughput ({report['cores']} cores, {report['server']})")
    print("rate limits raised for the benchmark: per peer and per identity 1e9/s, burst 1e9")
    print(
        f"{'mode':<34}{'certs/s':>9}{'vs raw':>8}{'srv cores':>10}{'srv us/cert':>12}{'client us/cert':>15}"
    )
    print(f"{'raw ceiling (no RPC)':<34}{ceiling:>9.0f}{1.0:>8.2f}")
    for label, result in results.items():
        client = result["client_cpu_us_per_cert"]
        print(
            f"{label:<34}{result['certs_per_second']:>9.0f}{result['ratio_to_raw']:>8.2f}"
            f"{result['server_cpu_cores']:>10.2f}{result['server_cpu_us_per_cert']:>12}"
            f"{client if client is not None else '-':>15}"
        )
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
