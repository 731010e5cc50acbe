"""The mesh on the cluster: the control plane as ``kubectl kustomize deploy/`` renders it, and the shop's
workloads as ``tether inject`` writes them.

Control plane (namespace ``tether``): the bootstrap Job runs first, ``tether-identity kube-bootstrap`` as its
own process against the emulated Kubernetes API (:class:`FakeKubeApi`, the API's wire protocol for Secrets
and ConfigMaps); the Secrets and ConfigMap it creates (issuer, trust roots, nats-server auth.conf and TLS,
one nkey per component) are what the pods mount. Then nats-server (StatefulSet, 1), destination x2,
identity x2, telemetry x2 and public-api x1, each with exactly the rendered container spec, except where
Kubernetes cannot run (each an environment variable set on top, plus the volume it names):

* destination: ``TETHER_DESTINATION_SOURCE=local`` with the harness' registry file
  (``TETHER_DESTINATION_REGISTRY_FILE``) instead of the Kubernetes API;
* identity: ``TETHER_IDENTITY_TOKEN_VERIFIER=local`` with a token key (``TETHER_IDENTITY_TOKEN_KEY``):
  every ServiceAccount token is minted with ``tether-identity mint-token`` instead of by the kubelet;
* public-api: ``TETHER_PUBLIC_API_AUTHZ=none`` (no TokenReview or SubjectAccessReview to ask);
* the Job: ``TETHER_IDENTITY_KUBE_API_URL``, the emulated API's address; it runs in the host's network
  namespace, where that API listens.

The shop (namespace ``shop``): ``client`` (a toolbox pod: loads are exec'd into it), ``web`` (HTTP/1.1),
``books`` x2 (gRPC) and ``redis`` (redis-server, inbound policy ``all-authenticated`` by annotation; an exec
readiness probe, so no probe port is exempt), all injected; ``mallory`` (injected, a workload gone rogue)
and ``plain`` (not injected) for the security and abuse scenarios.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from e2e_cluster import TRUST_DOMAIN, Cluster, Pod, Workload
from e2e_kube import REPO, Doc, inject, kustomize

from tether.identity.bootstrap import CertifiedKey, generate_issuer, generate_trust_anchor
from tether.identity.kube_bootstrap.objects import ISSUER_SECRET, TLS_SECRET_TYPE
from tether.identity.kube_bootstrap.testing import FakeKubeApi, secret_body
from tether.identity.tokens.local import generate_token_key_file

HERE = Path(__file__).resolve().parent
APPS = HERE / "e2e_apps.py"
CONTROL_NAMESPACE = "tether"
SHOP = "shop"
#: Replicas per control-plane workload (the base manifests say 1; issue 15 asks for these).
CONTROL_REPLICAS = {
    "tether-nats": 1,
    "tether-identity": 2,
    "tether-destination": 2,
    "tether-telemetry": 2,
    "tether-public-api": 1,
}
CONTROL_UID = 2103
#: Leaf certificate lifetime for the whole suite: every proxy renews every ~40 s, so every scenario runs
#: across certificate rotations (the identity service's minimum is 60 s).
LEAF_LIFETIME = 60
WEB_PORT, BOOKS_PORT, REDIS_PORT, SECRET_PORT = 8080, 9090, 6379, 7070
BOOKS_HEALTH_PORT = 9091


@dataclass
class ControlPlane:
    """The control plane's rendered objects and what the bootstrap Job made; ``anchor`` is the trust anchor
    with its key, kept (the Job would discard it) so that a test can issue a new issuer under it."""

    rendered: list[Doc]
    api: FakeKubeApi
    trust_anchors: Path
    anchor: CertifiedKey

    def secret(self, name: str) -> dict[str, bytes]:
        return self.api.data("secrets", CONTROL_NAMESPACE, name)


def run_bootstrap_job(cluster: Cluster, rendered: list[Doc], api: FakeKubeApi) -> None:
    """The Job's container, translated and run to completion against the emulated API."""
    from e2e_kube import PodMeta, Translator

    job = next(d for d in rendered if d["kind"] == "Job" and d["metadata"]["name"] == "tether-bootstrap")
    meta = PodMeta("tether-bootstrap-x7k2p", CONTROL_NAMESPACE, "", "tether-bootstrap", {}, {})
    translator = Translator(
        cluster.store,
        cluster.directory / "pods" / "tether-bootstrap",
        cluster.token,
        overrides={"bootstrap": {"TETHER_IDENTITY_KUBE_API_URL": api.url}},
    )
    container = translator.pod(job["spec"]["template"], meta).containers[0]
    argv = [
        "setpriv",
        f"--reuid={container.uid}",
        f"--regid={container.gid}",
        "--clear-groups",
        *container.argv,
    ]
    done = subprocess.run(argv, env=container.env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (
        f"the bootstrap Job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


def issuer_secret(anchor: CertifiedKey, lifetime: timedelta = timedelta(days=30)) -> dict[str, bytes]:
    """Secret tether-identity-issuer's data for a new issuer under ``anchor`` (cert-manager's keys)."""
    issuer = generate_issuer(anchor, datetime.now(UTC), TRUST_DOMAIN, lifetime)
    return {"tls.crt": issuer.certificate_pem, "tls.key": issuer.key_pem, "ca.crt": anchor.certificate_pem}


def start_control_plane(
    cluster: Cluster, api: FakeKubeApi, *, leaf_lifetime: int = LEAF_LIFETIME
) -> ControlPlane:
    """The bootstrap Job, then every control-plane pod, Ready. The issuer Secret is made first, as a user
    bringing their own issuer (cert-manager) would: the Job keeps it and publishes its trust anchor."""
    rendered = kustomize(REPO / "deploy")
    cluster.store.add_manifests(rendered)
    anchor = generate_trust_anchor(datetime.now(UTC), TRUST_DOMAIN, timedelta(days=365))
    api.put("secrets", CONTROL_NAMESPACE, secret_body(ISSUER_SECRET, issuer_secret(anchor), TLS_SECRET_TYPE))
    run_bootstrap_job(cluster, rendered, api)
    for (resource, namespace, _name), obj in api.objects.items():
        kind = "Secret" if resource == "secrets" else "ConfigMap"
        cluster.store.add_manifests(
            [{**obj, "kind": kind, "metadata": {**obj["metadata"], "namespace": namespace}}]
        )
    key_dir = cluster.directory / "token-key"
    key_dir.mkdir(mode=0o755)
    cluster.token_key = key_dir / "token-signing.key"
    cluster.token_key.write_bytes(generate_token_key_file())
    cluster.token_key.chmod(0o440)
    os.chown(cluster.token_key, CONTROL_UID, CONTROL_UID)
    for doc in rendered:
        if doc["kind"] == "Service" and doc["spec"].get("clusterIP") != "None":
            cluster.add_service(doc)
    options: dict[str, dict[str, Any]] = {
        "tether-destination": {
            "overrides": {
                "destination": {
                    "TETHER_DESTINATION_SOURCE": "local",
                    "TETHER_DESTINATION_REGISTRY_FILE": "/var/run/tether/registry/registry.yaml",
                }
            },
            "extra_volumes": {"e2e-registry": cluster.registry_dir},
            "extra_mounts": {"destination": [("e2e-registry", "/var/run/tether/registry")]},
        },
        "tether-identity": {
            "overrides": {
                "identity": {
                    "TETHER_IDENTITY_TOKEN_VERIFIER": "local",
                    "TETHER_IDENTITY_TOKEN_KEY": "/var/run/tether/token-key/token-signing.key",
                    "TETHER_IDENTITY_LEAF_LIFETIME": str(leaf_lifetime),
                }
            },
            "extra_volumes": {"e2e-token-key": key_dir},
            "extra_mounts": {"identity": [("e2e-token-key", "/var/run/tether/token-key")]},
        },
        "tether-public-api": {"overrides": {"public-api": {"TETHER_PUBLIC_API_AUTHZ": "none"}}},
    }
    workloads: list[Workload] = []
    for doc in rendered:
        name = doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "StatefulSet") and name in CONTROL_REPLICAS:
            workload = cluster.add_workload(doc, watch=True, **options.get(name, {}))
            workloads += [workload] * CONTROL_REPLICAS[name]
    cluster.start_pods(workloads)
    cluster.start_watching()
    anchors = cluster.directory / "trust-anchors.pem"
    anchors.write_bytes(
        cluster.store.get("configmap", CONTROL_NAMESPACE, "tether-trust-roots")["ca-bundle.crt"]
    )
    return ControlPlane(rendered, api, anchors, anchor)


# --- the shop ------------------------------------------------------------------------------------------


def deployment(
    name: str,
    command: list[str],
    *,
    ports: dict[str, int] | None = None,
    readiness: Doc | None = None,
    annotations: dict[str, str] | None = None,
    replicas: int = 1,
) -> Doc:
    container: Doc = {
        "name": "app",
        "image": f"shop/{name}:1",
        "command": command,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    }
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    if readiness:
        container["readinessProbe"] = readiness
    template: Doc = {
        "metadata": {"labels": {"app": name}},
        "spec": {"serviceAccountName": name, "containers": [container]},
    }
    if annotations:
        template["metadata"]["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": SHOP},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def service(name: str, port: int, *, opaque: bool = False) -> Doc:
    meta: Doc = {"name": name, "namespace": SHOP}
    if opaque:
        meta["annotations"] = {"tether.io/opaque-ports": str(port)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port, "targetPort": port}]},
    }


def app(*args: str) -> list[str]:
    return [sys.executable, str(APPS), *args]


def shop_manifests() -> tuple[list[Doc], list[Doc], list[Doc]]:
    """(Deployments to inject, Deployments left alone, Services)."""
    meshed = [
        deployment("client", app("idle")),
        deployment(
            "web",
            app("web", "--port", str(WEB_PORT), "--secret-port", str(SECRET_PORT)),
            ports={"http": WEB_PORT},
            readiness={"httpGet": {"path": "/healthz", "port": WEB_PORT}},
        ),
        deployment(
            "books",
            app("books", "--port", str(BOOKS_PORT), "--health-port", str(BOOKS_HEALTH_PORT)),
            ports={"grpc": BOOKS_PORT, "health": BOOKS_HEALTH_PORT},
            readiness={"httpGet": {"path": "/healthz", "port": BOOKS_HEALTH_PORT}},
            replicas=2,
        ),
        deployment(
            "redis",
            [
                "redis-server",
                "--port",
                str(REDIS_PORT),
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            ports={"redis": REDIS_PORT},
            readiness={"exec": {"command": ["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "ping"]}},
            annotations={"config.tether.io/inbound-policy": "all-authenticated"},
        ),
        deployment("mallory", app("idle")),
    ]
    plain = [deployment("plain", app("idle"))]
    services = [
        service("web", WEB_PORT),
        service("books", BOOKS_PORT),
        service("redis", REDIS_PORT, opaque=True),
    ]
    return meshed, plain, services


def start_shop(cluster: Cluster, control: ControlPlane) -> None:
    """Inject, apply and start the shop."""
    meshed, plain, services = shop_manifests()
    for doc in services:
        cluster.add_service(doc)
    injected = inject(meshed, control.trust_anchors)
    workloads: list[Workload] = []
    for doc in [*injected, *plain]:
        workload = cluster.add_workload(doc)
        workloads += [workload] * int(doc["spec"].get("replicas", 1))
    cluster.start_pods(workloads)


@dataclass
class Mesh:
    """The shared cluster: control plane and shop, with the shop's pods by role."""

    cluster: Cluster
    control: ControlPlane

    def one(self, workload: str, namespace: str = SHOP) -> Pod:
        pods = [pod for pod in self.cluster.pods_of(workload, namespace) if not pod.terminating]
        assert pods, f"no {namespace}/{workload} pod"
        return pods[0]

    @property
    def client(self) -> Pod:
        return self.one("client")

    @property
    def web(self) -> Pod:
        return self.one("web")

    @property
    def redis(self) -> Pod:
        return self.one("redis")

    @property
    def mallory(self) -> Pod:
        return self.one("mallory")

    @property
    def plain(self) -> Pod:
        return self.one("plain")

    @property
    def books(self) -> list[Pod]:
        return [pod for pod in self.cluster.pods_of("books", SHOP) if not pod.terminating]

    def deploy(
        self,
        manifests: list[Doc],
        *,
        meshed: bool = True,
        proxy_env: dict[str, str] | None = None,
    ) -> list[Pod]:
        """Apply Deployments (and Services) of a test's own: Services added, Deployments injected (unless
        ``meshed`` is false) and their replicas started, Ready. ``proxy_env``: variables on top of what
        ``tether inject`` wrote for the proxy (``TETHER_PROXY_REPORT_INTERVAL`` ...), as ``kubectl set env``
        would add them. Returns the new pods."""
        for doc in manifests:
            if doc["kind"] == "Service":
                self.cluster.add_service(doc)
        deployments = [doc for doc in manifests if doc["kind"] in ("Deployment", "StatefulSet")]
        if meshed and deployments:
            deployments = inject(deployments, self.control.trust_anchors)
        workloads: list[Workload] = []
        for doc in deployments:
            options: dict[str, Any] = {"overrides": {"tether-proxy": dict(proxy_env)}} if proxy_env else {}
            workload = self.cluster.add_workload(doc, **options)
            workloads += [workload] * int(doc["spec"].get("replicas", 1))
        return self.cluster.start_pods(workloads)

    def nats_credentials(self, user: str, into: Pod) -> tuple[Path, Path]:
        """The user's nkey seed and the NATS CA (Secret tether-nats-<user>), as files that ``into``'s app
        container can read: (seed, CA)."""
        data = self.control.secret(f"tether-nats-{user}")
        directory = into.directory / "nats-credentials" / user
        directory.mkdir(parents=True, exist_ok=True)
        seed, ca = directory / "nkey.seed", directory / "ca.crt"
        seed.write_bytes(data["nkey.seed"])
        ca.write_bytes(data["ca.crt"])
        uid = into.container().run.uid or 0
        for path in (directory, seed, ca):
            os.chown(path, uid, uid)
        return seed, ca

    def control_pods(self, workload: str) -> list[Pod]:
        """The pods of a control-plane workload: tether-destination, tether-identity, tether-telemetry,
        tether-public-api, tether-nats."""
        return self.cluster.pods_of(workload, CONTROL_NAMESPACE)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every pod Ready with every container running (what a scenario may assume when it starts)."""
        from mesh_pods import eventually

        eventually(lambda: not self.unhealthy(), timeout, self._describe_unhealthy, interval=0.2)

    def unhealthy(self) -> list[str]:
        """What keeps the cluster from being healthy: a line per pod not Ready or container not running."""
        found = []
        for pod in list(self.cluster.pods.values()):
            if pod.terminating:
                continue
            stopped = [
                container
                for container in pod.containers.values()
                if container.long_running and not container.running
            ]
            for container in stopped:
                found.append(
                    container.process.describe() if container.process else f"{pod.name}/{container.run.name}"
                )
            if not pod.ready and not stopped:
                found.append(f"{pod.name} not ready")
        return found

    def _describe_unhealthy(self) -> str:
        return "every pod ready with every container running; still not:\n" + "\n".join(self.unhealthy())
