"""Security: what the mesh refuses, each while the shop serves a steady load that must not notice.

* plaintext to a service whose inbound policy is ``all-authenticated`` (redis) is refused, by Service
  address and by pod address; books' own mTLS connections to it keep working;
* a client certificate claiming web's identity from a CA the mesh does not trust is refused by books'
  inbound proxy (mallory's genuine certificate is accepted, and named as mallory); a server answering with
  another workload's certificate for a name discovery gave is refused by the caller's outbound proxy;
* web's inbound proxy relays only to web's application: not to a listener on the pod's loopback, not to
  the proxy's own ports, and not elsewhere because a request names another authority — plaintext or mTLS;
* identity refuses mallory's token for web's name (and no token, and a forged token), but serves mallory's;
* every component's NATS credentials, used for what another component may do, are refused by nats-server,
  and the endpoint bucket is unchanged;
* every TLS listener of the mesh — identity, destination and telemetry's gRPC servers (grpcio, made TLS 1.3
  only by ``tether.shared``) and the proxies' inbound ports — refuses a TLS 1.2 client.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import PROXY_CONTAINER, Cluster, ManualEndpoint, Pod, identity_of
from e2e_load import SteadyLoad, steady_load
from e2e_mesh import BOOKS_PORT, REDIS_PORT, SECRET_PORT, SHOP, WEB_PORT, Mesh
from e2e_scenarios import scenario_record
from mesh_pods import inside, sample

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
ROGUE = [sys.executable, str(HERE / "e2e_rogue.py")]
NATSPROBE = [sys.executable, str(HERE / "e2e_natsprobe.py")]
RATE = 10.0
TOKEN = "/var/run/secrets/tether.io/serviceaccount/token"
ANCHORS = "/var/run/tether/identity/ca.crt"


class Guarded:
    """The shop's steady load around one security test; :meth:`finish` stops it, records the scenario and
    asserts that the legitimate traffic saw no failure."""

    def __init__(self, load: SteadyLoad, record: Any) -> None:
        self.load, self.record = load, record

    def finish(self, title: str, **measured: float) -> None:
        self.load.wait_requests(len(self.load.outcomes()) + 10)
        summary = self.load.stop()
        rec = scenario_record(self.record, title)
        rec.traffic(summary.sent, summary.failed)
        for name, value in measured.items():
            rec.measure(name, value)
        assert summary.failed == 0, summary.describe()


@pytest.fixture
def guarded(healthy_mesh: Mesh, record: Any) -> Iterator[Guarded]:
    with steady_load(healthy_mesh.cluster, healthy_mesh.client, rate=RATE, name="security") as load:
        load.wait_requests(10)
        yield Guarded(load, record)


def _json(cluster: Cluster, pod: Pod, argv: list[str], container: str = "") -> dict[str, Any]:
    done = cluster.exec_run(pod, argv, container=container)
    assert done.returncode == 0, f"{argv} in {pod.name} exited {done.returncode}: {done.stdout}{done.stderr}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _curl(cluster: Cluster, pod: Pod, url: str, *headers: str) -> tuple[int, str]:
    argv = ["curl", "-sS", "-m", "5", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", url]
    for header in headers:
        argv += ["-H", header]
    done = cluster.exec_run(pod, argv)
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), body


def test_plaintext_refused_by_all_authenticated(healthy_mesh: Mesh, guarded: Guarded) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    before = cluster.metrics(mesh.redis)
    targets = [f"redis.{SHOP}.svc.cluster.local", mesh.redis.ip]
    for host in targets:
        done = cluster.exec_run(
            mesh.plain, ["redis-cli", "-h", host, "-p", str(REDIS_PORT), "ping"], timeout=20
        )
        assert "PONG" not in done.stdout, (
            f"plaintext from {mesh.plain.name} to {host} was answered: {done.stdout}"
        )
    # The application's side: redis itself answers (on its loopback), and books reaches it over mTLS.
    inside = cluster.exec_run(mesh.redis, ["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "ping"])
    assert inside.stdout.strip() == "PONG"
    after = cluster.metrics(mesh.redis)
    refused = sample(after, "inbound_connections_refused_total", reason="identity_required")
    refused -= sample(before, "inbound_connections_refused_total", reason="identity_required")
    assert refused == len(targets), f"redis' proxy refused {refused} plaintext connections of {len(targets)}"
    guarded.finish("Security: plaintext refused", refused_connections=refused)


def _foreign_certificate(directory: Path, identity: str) -> tuple[Path, Path]:
    """A client certificate naming ``identity`` (DNS and SPIFFE SANs, as the mesh's), from a CA of its own."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC) - timedelta(minutes=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root.identity.cluster.local")])
    sa, namespace = identity.split(".")[:2]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(identity),
                    x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/{namespace}/sa/{sa}"),
                ]
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "forged-cert.pem", directory / "forged-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _genuine_certificate(cluster: Cluster, pod: Pod) -> tuple[Path, Path]:
    """The pod's own mesh certificate, asked for with its own token from its proxy's container."""
    out = pod.directory / "rogue-cert"
    out.mkdir(exist_ok=True)
    import os

    os.chown(out, 2102, 2102)
    answer = _json(
        cluster,
        pod,
        [
            *ROGUE,
            "certify",
            "--identity",
            identity_of(pod.workload, SHOP),
            "--token-file",
            TOKEN,
            "--trust-anchors",
            ANCHORS,
            "--out",
            str(out),
        ],
        container=PROXY_CONTAINER,
    )
    assert answer["code"] == "OK", answer
    return out / "cert.pem", out / "key.pem"


def test_forged_identities_refused(healthy_mesh: Mesh, guarded: Guarded) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    books = mesh.books[0]
    books_identity = identity_of("books", SHOP)
    # A client claiming web's identity with a certificate the mesh did not issue.
    forged = _foreign_certificate(mesh.plain.directory, identity_of("web", SHOP))
    before = cluster.metrics(books)
    client = [*ROGUE, "tls-client", "--host", books.ip, "--port", str(BOOKS_PORT), "--sni", books_identity]
    refused = _json(cluster, mesh.plain, [*client, "--cert", str(forged[0]), "--key", str(forged[1])])
    assert not refused["answered"], refused
    nameless = _json(cluster, mesh.plain, client)
    assert not nameless["answered"], nameless
    # The control: mallory's own certificate is accepted, and books' proxy names the caller mallory.
    genuine = _genuine_certificate(cluster, mesh.mallory)
    accepted = _json(
        cluster,
        mesh.mallory,
        [*client, "--cert", str(genuine[0]), "--key", str(genuine[1])],
        container=PROXY_CONTAINER,
    )
    assert accepted["answered"], accepted
    assert accepted["client_id"] == identity_of("mallory", SHOP), accepted
    after = cluster.metrics(books)
    refusals = sample(after, "inbound_connections_refused_total") - sample(
        before, "inbound_connections_refused_total"
    )
    assert refusals >= 2, f"books' proxy refused {refusals} of the 2 forged connections"
    mallory_in = sample(after, "request_total", direction="inbound", client_id=identity_of("mallory", SHOP))
    assert mallory_in >= 1, "books' proxy did not name mallory as the caller"
    # A server presenting another workload's certificate: discovery says vault's endpoint is at mallory's
    # address with vault's identity; what answers there holds mallory's certificate.
    cluster.add_service(
        {
            "kind": "Service",
            "metadata": {"name": "vault", "namespace": SHOP},
            "spec": {"ports": [{"name": "main", "port": 8443, "targetPort": 8443}]},
        }
    )
    rogue_record = mesh.mallory.directory / "rogue-server.jsonl"
    server = cluster.exec(
        mesh.mallory,
        [
            *ROGUE,
            "serve-tls",
            "--port",
            "8443",
            "--cert",
            str(genuine[0]),
            "--key",
            str(genuine[1]),
            "--record",
            str(rogue_record),
        ],
        log_name="rogue-server",
    )
    try:
        cluster.set_endpoints(
            SHOP,
            "vault",
            [
                ManualEndpoint(
                    mesh.mallory.ip, identity_of("vault", SHOP), {"pod": "vault-0", "serviceaccount": "vault"}
                )
            ],
        )
        cluster.wait_endpoints(f"vault.{SHOP}.svc.cluster.local:8443", [(mesh.mallory.ip, 8443)])
        mismatches = sample(cluster.metrics(mesh.client), "proxy_identity_mismatch_total", peer="endpoint")
        status, body = _curl(cluster, mesh.client, f"http://vault.{SHOP}.svc.cluster.local:8443/")
        assert status >= 500 or status == 0, f"the client got {status} from the rogue server: {body[:200]}"
        now = sample(cluster.metrics(mesh.client), "proxy_identity_mismatch_total", peer="endpoint")
        assert now > mismatches, "the client's proxy did not count the identity mismatch"
        served = (
            [json.loads(line) for line in rogue_record.read_text().splitlines()]
            if rogue_record.exists()
            else []
        )
        # The rogue got the caller's HTTP/2 preface and SETTINGS at most: never a request (HEADERS).
        assert served and all(1 not in entry.get("frame_kinds", []) for entry in served), served
    finally:
        server.popen.terminate()
        server.popen.wait(10)
        cluster.set_endpoints(SHOP, "vault", [])
    guarded.finish(
        "Security: forged identities refused",
        refused_connections=refusals,
        identity_mismatches=now - mismatches,
    )


def test_inbound_relays_only_to_its_application(healthy_mesh: Mesh, guarded: Guarded) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    web = mesh.web
    before = cluster.metrics(web)
    # The pod keeps its secret listener to itself: its own loopback answers it.
    status, body = _curl(cluster, web, f"http://127.0.0.1:{SECRET_PORT}/")
    assert status == 200 and "secret" in body
    for caller in (mesh.plain, mesh.mallory):  # plaintext, and through mallory's proxy over mTLS
        status, body = _curl(cluster, caller, f"http://{web.ip}:{SECRET_PORT}/")
        assert "secret" not in body and status != 200, (
            f"{caller.name} reached web's loopback listener: {status}"
        )
        status, body = _curl(cluster, caller, f"http://{web.ip}:4140/")
        assert status == 403, (
            f"{caller.name} → {web.ip}:4140 (the outbound port) answered {status}: {body[:200]}"
        )
        # The inbound port itself (a redirect to itself leaves no original destination): refused too.
        status, body = _curl(cluster, caller, f"http://{web.ip}:4143/")
        assert status == 403, f"{caller.name} → {web.ip}:4143 answered {status}: {body[:200]}"
    # Naming another service does not make web's proxy go there: web's application answers. Plaintext, and
    # over mTLS straight to web's inbound listener (mallory's own outbound proxy would route by the name).
    redis_authority = f"redis.{SHOP}.svc.cluster.local:{REDIS_PORT}"
    status, body = _curl(cluster, mesh.plain, f"http://{web.ip}:{WEB_PORT}/echo", f"Host: {redis_authority}")
    assert status == 200 and json.loads(body)["pod"] == web.name, (status, body[:200])
    genuine = _genuine_certificate(cluster, mesh.mallory)
    answer = _json(
        cluster,
        mesh.mallory,
        [
            *ROGUE,
            "tls-client",
            "--host",
            web.ip,
            "--port",
            str(WEB_PORT),
            "--sni",
            identity_of("web", SHOP),
            "--cert",
            str(genuine[0]),
            "--key",
            str(genuine[1]),
            "--get",
            "--path",
            "/echo",
            "--authority",
            redis_authority,
        ],
        container=PROXY_CONTAINER,
    )
    assert answer["answered"] and json.loads(answer["body"])["pod"] == web.name, answer
    after = cluster.metrics(web)
    refused = sample(after, "proxy_inbound_proxy_port_refused_total") - sample(
        before, "proxy_inbound_proxy_port_refused_total"
    )
    assert refused >= 4, f"web's proxy refused {refused} requests for its own ports, not 4"
    guarded.finish("Security: inbound relays only to its application", proxy_port_refused=refused)


def test_identity_for_another_name_refused(healthy_mesh: Mesh, guarded: Guarded) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    identities = mesh.control_pods("tether-identity")
    before = sum(
        sample(cluster.metrics(p, "identity"), "tether_identity_certify_rejections_total") for p in identities
    )
    certify = [*ROGUE, "certify", "--trust-anchors", ANCHORS]
    web_name, mallory_name = identity_of("web", SHOP), identity_of("mallory", SHOP)
    attempts = {
        "another name": ["--identity", web_name, "--token-file", TOKEN],
        "no token": ["--identity", mallory_name, "--no-token"],
        "forged token": ["--identity", web_name, "--token", _forged_token("web")],
    }
    for what, argv in attempts.items():
        answer = _json(cluster, mesh.mallory, [*certify, *argv], container=PROXY_CONTAINER)
        assert answer["code"] in ("PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_ARGUMENT"), (what, answer)
        if what == "another name":
            assert answer["code"] == "PERMISSION_DENIED", answer
    own = _json(
        cluster,
        mesh.mallory,
        [*certify, "--identity", mallory_name, "--token-file", TOKEN],
        container=PROXY_CONTAINER,
    )
    assert own["code"] == "OK", own
    after = sum(
        sample(cluster.metrics(p, "identity"), "tether_identity_certify_rejections_total") for p in identities
    )
    assert after - before == len(attempts), f"identity counted {after - before} rejections of {len(attempts)}"
    guarded.finish("Security: identity for another name refused", rejected=after - before)


def _forged_token(serviceaccount: str) -> str:
    """A token of the right form for the ServiceAccount, signed with a key identity does not hold."""
    from tether.identity.tokens.local import generate_token_key_file, load_token_key, mint_token
    from tether.shared.identity_names import WorkloadIdentity

    key = load_token_key(generate_token_key_file())
    identity = WorkloadIdentity(serviceaccount, SHOP, "cluster.local")
    return mint_token(key, identity, datetime.now(UTC), timedelta(hours=1)).decode()


#: (whose credentials, operation, subject): each outside that user's role (tether.shared.permissions).
MISUSE = [
    ("telemetry", "pub", "$KV.tether_endpoints.shop.books"),
    ("telemetry", "pub", "tether.v1.identity.issued"),
    ("telemetry", "sub", "tether.v1.registry.register"),
    ("identity", "pub", "$JS.API.STREAM.DELETE.KV_tether_endpoints"),
    ("identity", "pub", "tether.v1.health.destination.forged"),
    ("public-api", "pub", "tether.v1.telemetry.rollup.shop.deployment.web"),
    ("public-api", "pub", "$KV.tether_leases.destination-writer"),
    ("destination", "pub", "tether.v1.tap.requests"),
    ("destination", "sub", "tether.v1.tap.events.>"),
    ("reader", "pub", "tether.v1.tap.requests"),
    ("reader", "sub", "tether.v1.tap.>"),
    ("reader", "pub", "$KV.tether_endpoints.shop.books"),
]


def test_nats_credentials_confined(healthy_mesh: Mesh, guarded: Guarded) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    # Run from the public API's pod, as its container's user: a component holding others' credentials.
    where = mesh.control_pods("tether-public-api")[0]

    def probe(user: str, *argv: str) -> dict[str, Any]:
        seed, ca = mesh.nats_credentials(user, where)
        return _json(
            cluster,
            where,
            [*NATSPROBE, argv[0], "--user", user, "--seed", str(seed), "--ca", str(ca), *argv[1:]],
        )

    books_before = probe("reader", "kv", "--bucket", "tether_endpoints", "--key", "shop.books")
    results = []
    for user in sorted({user for user, _, _ in MISUSE}):
        operations = [f"{op}:{subject}" for who, op, subject in MISUSE if who == user]
        results += [(user, r) for r in probe(user, "try", *operations)["results"]]
    allowed = [(user, r) for user, r in results if not r["denied"]]
    assert not allowed, f"nats-server allowed: {allowed}"
    # The controls: each user may do what its role says.
    controls = probe(
        "telemetry", "try", "pub:tether.v1.health.telemetry.e2e-control", "sub:tether.v1.tap.requests"
    )
    assert not any(r["denied"] for r in controls["results"]), controls
    books_after = probe("reader", "kv", "--bucket", "tether_endpoints", "--key", "shop.books")
    assert books_after == books_before, "the endpoint bucket changed"
    nats_log = mesh.control_pods("tether-nats")[0].log()
    violations = sum(nats_log.count(kind) for kind in ("Publish Violation", "Subscription Violation"))
    assert violations >= len(results), f"nats-server logged {violations} violations of {len(results)}"
    guarded.finish("Security: NATS credentials confined", refused=len(results))


#: The control plane's gRPC servers: workload and port.
GRPC_TLS_PORTS = (("tether-identity", 8080), ("tether-destination", 8086), ("tether-telemetry", 8087))


def _tls_version(cluster: Cluster, host: str, port: int, server_name: str, highest: ssl.TLSVersion) -> str:
    """The version a handshake from the node with at most ``highest`` settles on, or the error it meets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the version is under test here; the chains are elsewhere
    context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1_2, highest
    context.set_alpn_protocols(["h2"])

    def handshake() -> str:
        try:
            with (
                socket.create_connection((host, port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                return str(tls.version())
        except (ssl.SSLError, ConnectionError) as error:
            return f"refused: {error}"

    return inside(cluster.node.namespace, handshake)


def test_every_tls_listener_refuses_tls12(healthy_mesh: Mesh, guarded: Guarded) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    listeners = [
        (f"{pod.name}:{port}", pod.ip, port, identity_of(workload, "tether"))
        for workload, port in GRPC_TLS_PORTS
        for pod in mesh.control_pods(workload)
    ]
    # A meshed peer's TLS to web's application port, which web's inbound proxy terminates.
    listeners.append((f"{mesh.web.name}:{WEB_PORT}", mesh.web.ip, WEB_PORT, identity_of("web", SHOP)))
    for name, host, port, server_name in listeners:
        assert _tls_version(cluster, host, port, server_name, ssl.TLSVersion.TLSv1_3) == "TLSv1.3", name
        answer = _tls_version(cluster, host, port, server_name, ssl.TLSVersion.TLSv1_2)
        assert answer.startswith("refused"), f"{name} accepted {answer}"
    guarded.finish("Security: every TLS listener refuses TLS 1.2", listeners=len(listeners))
