"""The injected containers would start: what the kubelet hands them passes the proxy's own parsers.

For every injected pod of the corpus (both sidecar modes) the environment is resolved as Kubernetes
resolves it (downward-API fields, then ``$(NAME)`` references, see kit.Pod) and given, with the container's
args, to exactly what ``tether-proxy`` runs: ``load_config`` as ``service_main`` calls it for ``run``, and
``tether-proxy init``'s own entry point (with ``--dry-run``, which prints the rules instead of applying them).
Every file the proxy is told to read lies on a volume mounted in its container and holds what it needs; every
address resolves to a port of a Service that ``kubectl kustomize deploy/`` renders, and every server name is
the identity the rendered control plane takes.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from inject.kit import ANCHORS, CORPUS, FILES, Pod, documents, inject, injected_pods, render_deploy

from tether.proxy.config import DEFAULT_OPAQUE_PORTS, ProxyConfig
from tether.proxy.init.cli import build_parser as init_parser
from tether.proxy.init.cli import main as init_main
from tether.proxy.init.config import SERVICE as INIT_SERVICE
from tether.proxy.init.config import ProxyInitConfig
from tether.shared.config import config_or_exit, load_config

MODES = ("native", "legacy")


def proxy_config(pod: Pod) -> ProxyConfig:
    container = pod.container("tether-proxy")
    assert container["command"] == ["tether-proxy"]
    argv = container["args"]
    assert argv[0] == "run"  # tether.proxy.__main__ dispatches on it
    return load_config(ProxyConfig, "proxy", argv[1:], pod.environment(container), prog="tether-proxy run")


def init_config(pod: Pod) -> ProxyInitConfig:
    container = pod.container("tether-init")
    assert container["command"] == ["tether-proxy"]
    assert container["args"][0] == "init"
    parser = init_parser()
    namespace = vars(parser.parse_args(container["args"][1:]))
    namespace.pop("dry_run")
    return config_or_exit(parser, ProxyInitConfig, INIT_SERVICE, namespace, pod.environment(container))


def all_pods(mode: str) -> list[Pod]:
    return [pod for name in FILES for pod in injected_pods(inject(CORPUS / name, "--sidecar-mode", mode).out)]


@pytest.fixture(scope="module")
def control_plane() -> list[dict[str, Any]]:
    return documents(render_deploy())


@pytest.mark.parametrize("mode", MODES)
def test_the_proxy_accepts_its_configuration_and_finds_its_files(mode: str) -> None:
    pods = all_pods(mode)
    assert len(pods) >= 10
    anchors = ANCHORS.read_text()
    for pod in pods:
        config = proxy_config(pod)
        container = pod.container("tether-proxy")
        assert config.pod_namespace == pod.namespace
        sa = pod.spec.get("serviceAccountName") or "default"
        assert config.identity.name == f"{sa}.{pod.namespace}.serviceaccount.identity.cluster.local"

        volume, item = pod.volume_for(container, config.identity.token_file)
        sources = volume["projected"]["sources"]
        assert sources == [
            {
                "serviceAccountToken": {
                    "audience": "identity.tether.io",
                    "expirationSeconds": 3600,
                    "path": item,
                }
            }
        ]

        volume, item = pod.volume_for(container, config.identity.trust_anchors)
        [entry] = volume["downwardAPI"]["items"]
        assert entry["path"] == item
        assert pod.field(entry["fieldRef"]["fieldPath"]) == anchors
        annotations = pod.metadata["annotations"]
        assert annotations["tether.io/trust-root-sha256"] == hashlib.sha256(anchors.encode()).hexdigest()
        assert annotations["tether.io/proxy-version"] == "0.1.0"

        # The admin listener is where the probes and the named port point.
        assert config.admin_addr.endswith(":4191")
        assert container["startupProbe"]["httpGet"] == {"path": "/ready", "port": "tether-admin"}
        assert {p["containerPort"] for p in container["ports"]} == {
            4191,
            int(config.inbound_addr.rsplit(":")[1]),
        }


@pytest.mark.parametrize("mode", MODES)
def test_the_init_container_accepts_its_configuration(mode: str) -> None:
    for pod in all_pods(mode):
        config = init_config(pod)
        proxy = proxy_config(pod)
        assert config.proxy_uid == pod.container("tether-proxy")["securityContext"]["runAsUser"]
        assert config.inbound_port == int(proxy.inbound_addr.rsplit(":")[1])
        assert config.outbound_port == int(proxy.outbound_addr.rsplit(":")[1])
        assert {"4190", "4191"} <= set(config.inbound_skip_ports)
        init = pod.container("tether-init")
        volume, _ = pod.volume_for(init, "/run/xtables.lock")
        assert volume == {"name": "tether-init-xtables-lock", "emptyDir": {}}
        out = io.StringIO()
        assert init_main([*init["args"][1:], "--dry-run"], environ={}, stdout=out) == 0
        assert "--to-ports 4143" in out.getvalue()
        assert "--uid-owner 2102" in out.getvalue()


def test_addresses_and_server_names_match_the_rendered_control_plane(
    control_plane: list[dict[str, Any]],
) -> None:
    services = {
        (d["metadata"]["name"], d["metadata"]["namespace"]): {p["port"] for p in d["spec"]["ports"]}
        for d in control_plane
        if d["kind"] == "Service"
    }
    settings: dict[str, str] = {}
    for doc in control_plane:
        if doc["kind"] == "ConfigMap":
            settings |= {k: str(v) for k, v in (doc.get("data") or {}).items()}
    images = {
        c["image"]
        for d in control_plane
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    pod = all_pods("native")[0]
    config = proxy_config(pod)
    for addr in (config.destination_addr, config.identity.addr, config.telemetry_addr):
        host, port = addr.rsplit(":", 1)
        name, namespace, *rest = host.split(".")
        assert rest == ["svc", "cluster", "local"]
        assert int(port) in services[(name, namespace)], f"{addr} is no rendered Service port"
    assert config.destination_server_name == settings["TETHER_DESTINATION_IDENTITY_NAME"]
    assert config.telemetry_server_name == settings["TETHER_TELEMETRY_IDENTITY_NAME"]
    namespace = settings.get("TETHER_IDENTITY_NAMESPACE", "tether")
    assert config.identity.server_name == f"identity.{namespace}.serviceaccount.identity.cluster.local"
    # The proxy image comes from the same registry and release as the control plane's.
    registry = {image.rsplit("/", 1)[0] for image in images if image.startswith("ghcr.io/")}
    assert {pod.container("tether-proxy")["image"].rsplit("/", 1)[0]} == registry


def _pod(name: str, workload: str, mode: str = "native") -> Pod:
    for pod in injected_pods(inject(CORPUS / name, "--sidecar-mode", mode).out):
        if pod.workload["metadata"]["name"] == workload:
            return pod
    raise AssertionError(f"{workload} was not injected")


def test_probe_ports_named_and_numbered_reach_the_proxy() -> None:
    # readiness on the named port http (8080), liveness tcpSocket 8080, startup gRPC 9090, and the metrics
    # sidecar's readiness on its named port metrics (9102).
    assert proxy_config(_pod("deployment-multi-container.yaml", "checkout")).probe_ports == (8080, 9090, 9102)
    # An exec probe is not the network's business; a probe of another host does not reach this pod.
    assert proxy_config(_pod("statefulset-postgres.yaml", "postgres")).probe_ports == (5432,)
    assert proxy_config(_pod("overrides.yaml", "payments")).probe_ports == (8443,)
    assert proxy_config(_pod("list.yaml", "vote-bot")).probe_ports == ()


def test_annotations_override_ports_policy_and_resources() -> None:
    pod = _pod("overrides.yaml", "payments")
    config, init = proxy_config(pod), init_config(pod)
    assert config.inbound_policy == "all-authenticated"  # from the Deployment's own annotations
    assert config.opaque_ports == (3306, 7000, 7001, 7002, 7003)
    assert init.inbound_skip_ports == ("4190", "4191", "9999")
    assert init.outbound_skip_ports == ("3306", "9092-9094")
    resources = pod.container("tether-proxy")["resources"]
    assert resources == {
        "requests": {"cpu": "200m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    }

    job = _pod("cronjob-and-job.yaml", "reindex-search")
    assert job.container("tether-proxy")["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}
    assert proxy_config(job).opaque_ports == DEFAULT_OPAQUE_PORTS
    assert proxy_config(job).workload_labels == ("job=reindex-search",)

    bare = _pod("overrides.yaml", "debug-shell")
    assert proxy_config(bare).opaque_ports == (6379,)
    assert proxy_config(bare).workload_labels == ()
    assert bare.container("tether-proxy")["resources"]["requests"]["memory"] == "32Mi"


def test_native_sidecar_starts_before_the_application_and_its_init_containers() -> None:
    pod = _pod("deployment-multi-container.yaml", "checkout")
    names = [c["name"] for c in pod.spec["initContainers"]]
    assert names == ["tether-init", "tether-proxy", "migrate"]
    assert pod.container("tether-proxy")["restartPolicy"] == "Always"
    assert proxy_config(pod).workload_labels == ("deployment=checkout",)
    cron = _pod("cronjob-and-job.yaml", "nightly-report")
    assert proxy_config(cron).workload_labels == ("cronjob=nightly-report",)
    assert cron.metadata["annotations"]["tether.io/proxy-version"] == "0.1.0"
