"""What injection adds to a pod: the ``tether-init`` and ``tether-proxy`` containers and their volumes.

Pure functions of the configuration, the workload's overrides and the trust anchors, so that the same
input always gives the same bytes.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from tether.cli.inject.config import InjectConfig, Overrides, PortRange

INIT_NAME = "tether-init"
PROXY_NAME = "tether-proxy"
CONTAINER_NAMES = (INIT_NAME, PROXY_NAME)
PROXY_UID = 2102
INBOUND_PORT = 4143
OUTBOUND_PORT = 4140
CONTROL_PORT = 4190
ADMIN_PORT = 4191
ADMIN_PORT_NAME = "tether-admin"
INBOUND_PORT_NAME = "tether-proxy"
# The proxy's defaults (tether-proxy run --help): the volumes are mounted where it looks without a flag.
TOKEN_DIR = "/var/run/secrets/tether.io/serviceaccount"
TOKEN_AUDIENCE = "identity.tether.io"
ANCHORS_DIR = "/var/run/tether/identity"
ANCHORS_FILE = "ca.crt"

XTABLES_VOLUME = "tether-init-xtables-lock"
TOKEN_VOLUME = "tether-identity-token"
ANCHORS_VOLUME = "tether-trust-anchors"
VOLUME_NAMES = (XTABLES_VOLUME, TOKEN_VOLUME, ANCHORS_VOLUME)

VERSION_ANNOTATION = "tether.io/proxy-version"
TRUST_ROOT_SHA_ANNOTATION = "tether.io/trust-root-sha256"
# The PEM bundle itself: a pod cannot mount a ConfigMap of the tether namespace, so the anchors travel in
# the pod's own metadata and a downward-API volume writes them to the file the proxy reads. A new bundle
# (re-injection after a rotation) changes the pod template, and so rolls the workload.
TRUST_ANCHORS_ANNOTATION = "tether.io/trust-anchors"
# Only when the input held an empty list or map where injection adds entries, so that uninjecting gives
# back exactly that empty value rather than no key at all.
KEPT_EMPTY_ANNOTATION = "tether.io/inject-kept-empty"
ANNOTATIONS = (VERSION_ANNOTATION, TRUST_ROOT_SHA_ANNOTATION, TRUST_ANCHORS_ANNOTATION, KEPT_EMPTY_ANNOTATION)

# Copied into each container (copy.deepcopy): no two containers share a mutable value.
_HARDENED = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": PROXY_UID,
    "runAsGroup": PROXY_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class TrustAnchors:
    pem: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.pem.encode("ascii")).hexdigest()


def _ports(ranges: tuple[PortRange, ...]) -> str:
    return ",".join(str(r) for r in ranges)


def init_container(config: InjectConfig, overrides: Overrides) -> dict[str, Any]:
    """``tether-proxy init``: the nat rules sending the pod's TCP through the proxy, then it exits."""
    inbound_skip = (PortRange(CONTROL_PORT, CONTROL_PORT), PortRange(ADMIN_PORT, ADMIN_PORT))
    args = [
        "init",
        f"--inbound-port={INBOUND_PORT}",
        f"--outbound-port={OUTBOUND_PORT}",
        f"--proxy-uid={PROXY_UID}",
        f"--inbound-skip-ports={_ports(inbound_skip + overrides.skip_inbound_ports)}",
    ]
    if overrides.skip_outbound_ports:
        args.append(f"--outbound-skip-ports={_ports(overrides.skip_outbound_ports)}")
    return {
        "name": INIT_NAME,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["tether-proxy"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "48Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        # Non-root (the proxy's UID, whose own traffic the rules exempt), adding only NET_ADMIN and NET_RAW
        # to an empty set. A non-root process loses added capabilities when it execs a program, so, as in
        # Linkerd's proxy-init image, the proxy image gives the iptables/ip6tables binaries these two as
        # file capabilities (+ep), and an emptyDir on /run takes their xtables lock. allowPrivilegeEscalation
        # stays false: under no_new_privs the kernel honours a file capability only when the exec'ing
        # process already holds it, so the Python interpreter that runs tether-proxy and execs iptables
        # carries them too, permitted only (+p: without the effective bit, a container lacking them, the
        # proxy's, still runs it). containerd and CRI-O give the added capabilities to the container's first
        # process; Docker (dockershim) does not, and needs proxy-init as root there.
        "securityContext": copy.deepcopy(_HARDENED)
        | {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # iptables takes its lock in /run/xtables.lock, which a read-only root filesystem would refuse.
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
    }


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def proxy_env(
    config: InjectConfig,
    overrides: Overrides,
    probe_ports: tuple[int, ...],
    workload_label: str,
    probe_paths: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    # Kubernetes expands $(NAME) from variables defined earlier in the list: the identity is the pod's
    # ServiceAccount in the pod's namespace, known only once the pod exists.
    env: list[dict[str, Any]] = [
        {"name": "_TETHER_POD_SERVICE_ACCOUNT"} | _field("spec.serviceAccountName"),
        {"name": "TETHER_PROXY_POD_NAME"} | _field("metadata.name"),
        {"name": "TETHER_PROXY_POD_NAMESPACE"} | _field("metadata.namespace"),
        {"name": "TETHER_LOG_FORMAT", "value": "json"},
        {"name": "TETHER_LOG_LEVEL", "value": config.proxy_log_level},
        {
            "name": "TETHER_PROXY_IDENTITY_NAME",
            "value": "$(_TETHER_POD_SERVICE_ACCOUNT).$(TETHER_PROXY_POD_NAMESPACE)"
            f".serviceaccount.identity.{config.trust_domain}",
        },
        {"name": "TETHER_PROXY_IDENTITY_ADDR", "value": config.identity_addr},
        {"name": "TETHER_PROXY_IDENTITY_SERVER_NAME", "value": config.server_name("identity")},
        {"name": "TETHER_PROXY_DESTINATION_ADDR", "value": config.destination_addr},
        {"name": "TETHER_PROXY_DESTINATION_SERVER_NAME", "value": config.server_name("destination")},
        {"name": "TETHER_PROXY_TELEMETRY_ADDR", "value": config.telemetry_addr},
        {"name": "TETHER_PROXY_TELEMETRY_SERVER_NAME", "value": config.server_name("telemetry")},
        {"name": "TETHER_PROXY_INBOUND_POLICY", "value": overrides.inbound_policy},
    ]
    if probe_ports:
        env.append({"name": "TETHER_PROXY_PROBE_PORTS", "value": ",".join(map(str, probe_ports))})
    if probe_paths:
        # Under all-authenticated, plaintext on an HTTP-probed port may only GET or HEAD these paths.
        env.append({"name": "TETHER_PROXY_PROBE_PATHS", "value": ",".join(probe_paths)})
    if overrides.opaque_ports is not None:
        env.append({"name": "TETHER_PROXY_OPAQUE_PORTS", "value": ",".join(map(str, overrides.opaque_ports))})
    if workload_label:
        env.append({"name": "TETHER_PROXY_WORKLOAD_LABELS", "value": workload_label})
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": ADMIN_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    }


def proxy_container(
    config: InjectConfig,
    overrides: Overrides,
    probe_ports: tuple[int, ...],
    workload_label: str,
    probe_paths: tuple[str, ...] = (),
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": PROXY_NAME, "image": config.proxy_image}
    container["imagePullPolicy"] = config.image_pull_policy
    if config.sidecar_mode == "native":
        # A native sidecar: an init container that keeps running. The kubelet starts the containers after it
        # only once its startup probe passed (the proxy holds a certificate), and a Job completes when its
        # own containers end.
        container["restartPolicy"] = "Always"
    resources = overrides.resources
    container |= {
        "command": ["tether-proxy"],
        "args": ["run"],
        "env": proxy_env(config, overrides, probe_ports, workload_label, probe_paths),
        "ports": [
            {"name": INBOUND_PORT_NAME, "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        # /ready waits for the first certificate from identity: up to two minutes at start.
        "startupProbe": _probe("/ready", 1, 120),
        "readinessProbe": _probe("/ready", 10, 3),
        "livenessProbe": _probe("/live", 10, 3),
        "resources": {
            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        },
        "securityContext": copy.deepcopy(_HARDENED) | {"capabilities": {"drop": ["ALL"]}},
        # The proxy's last stderr line names what went wrong: it becomes the termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": ANCHORS_VOLUME, "mountPath": ANCHORS_DIR, "readOnly": True},
        ],
    }
    return container


def volumes() -> list[dict[str, Any]]:
    return [
        {"name": XTABLES_VOLUME, "emptyDir": {}},
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {
            "name": ANCHORS_VOLUME,
            "downwardAPI": {
                "items": [
                    {
                        "path": ANCHORS_FILE,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{TRUST_ANCHORS_ANNOTATION}']"},
                    }
                ]
            },
        },
    ]


def pod_annotations(config: InjectConfig, anchors: TrustAnchors) -> dict[str, str]:
    return {
        VERSION_ANNOTATION: config.proxy_version,
        TRUST_ROOT_SHA_ANNOTATION: anchors.sha256,
        TRUST_ANCHORS_ANNOTATION: anchors.pem,
    }
